//! Property tests on every decoder that reads peer bytes through a real socket: the hub
//! handshake and the channel frame decoder. Random input never panics, never hangs past its
//! timeout, never leaks a descriptor. CI runs a bounded number of cases; set
//! `PROPTEST_CASES` for a longer run.

mod support;

use std::time::Duration;

use cluster_ipc::{Channel, HubConfig, IpcHub, connect};
use fdpass::AsyncFdSocket;
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

proptest! {
    // Failures are kept under target/, not beside the sources.
    #![proptest_config(ProptestConfig {
        cases: 64,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "../target/proptest-regressions/ipc_fuzz.txt",
        ))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn the_hub_rejects_random_hellos_and_keeps_serving(
        hellos in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..128), 1..8)
    ) {
        let _serial = support::serial();
        runtime().block_on(async {
            let hub = IpcHub::with_config(HubConfig {
                handshake_timeout: Duration::from_millis(200),
                ..HubConfig::default()
            }).unwrap();
            let before = open_fds();
            for hello in &hellos {
                let socket = AsyncFdSocket::connect(hub.path()).await.unwrap();
                let _ = fdpass::send_raw(&socket, hello, &[]);
                let reply = tokio::time::timeout(Duration::from_secs(5), socket.recv()).await;
                assert!(matches!(reply, Ok(Ok(None)) | Ok(Err(_))), "{reply:?}");
            }
            let key = hub.generate_key();
            let (client, server) = tokio::join!(connect(hub.path(), &key), hub.accept(&key));
            drop((client.unwrap(), server.unwrap()));
            // Handshake tasks close their sockets as they finish.
            tokio::time::sleep(Duration::from_millis(20)).await;
            assert_eq!(open_fds(), before);
        });
    }

    #[test]
    fn channels_decode_random_frames_to_values_or_errors(
        frames in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..256), 1..16)
    ) {
        let _serial = support::serial();
        runtime().block_on(async {
            let (raw, theirs) = AsyncFdSocket::pair().unwrap();
            let channel = Channel::<(), (u8, String, Vec<u32>, Option<i64>)>::new(theirs);
            for frame in &frames {
                raw.send(frame, &[]).await.unwrap();
                let _ = channel.recv().await;
            }
        });
    }
}
