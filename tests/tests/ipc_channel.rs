//! Typed channels: round trips, limits, bad frames, descriptors where none belong,
//! cancellation and halves.

mod support;

use std::os::fd::AsFd;
use std::time::Duration;

use cluster_ipc::{Channel, ChannelError};
use fdpass::{AsyncFdSocket, Limits};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Command {
    Hello { id: u32, name: String },
    Data(Vec<u8>),
    Stop,
}

#[tokio::test]
async fn values_round_trip_in_order_and_eof_is_none() {
    let (a, b) = Channel::<Command, Command>::pair().unwrap();
    let values = vec![
        Command::Hello {
            id: 7,
            name: "worker".into(),
        },
        Command::Data(vec![1; 200_000]),
        Command::Stop,
    ];
    // Large frames need the reader running while the writer writes.
    let to_send = values.clone();
    let writer = tokio::spawn(async move {
        for v in &to_send {
            a.send(v).await.unwrap();
        }
    });
    for v in &values {
        assert_eq!(b.recv().await.unwrap().as_ref(), Some(v));
    }
    writer.await.unwrap();
    assert_eq!(b.recv().await.unwrap(), None);
}

#[tokio::test]
async fn oversize_frames_are_refused_on_both_sides() {
    let (a, b) = Channel::<Vec<u8>, Vec<u8>>::pair().unwrap();
    let a = a.with_limits(Limits::default().max_message_len(1024));
    let err = a.send(&vec![0; 2000]).await.unwrap_err();
    assert!(
        matches!(
            err,
            ChannelError::Transport(fdpass::Error::MessageTooLarge { .. })
        ),
        "{err:?}"
    );
    let b = b.with_limits(Limits::default().max_message_len(1024));
    let (raw_a, raw_b) = AsyncFdSocket::pair().unwrap();
    raw_a.send(&[0; 5000], &[]).await.unwrap();
    let receiver =
        Channel::<(), Vec<u8>>::new(raw_b.with_limits(Limits::default().max_message_len(1024)));
    assert!(matches!(
        receiver.recv().await,
        Err(ChannelError::Transport(
            fdpass::Error::MessageTooLarge { .. }
        ))
    ));
    drop(b);
}

#[tokio::test]
async fn undecodable_and_wrong_type_frames_are_errors() {
    let (raw, theirs) = AsyncFdSocket::pair().unwrap();
    let channel = Channel::<(), Command>::new(theirs);
    raw.send(&[0xFF, 0xFF, 0xFF], &[]).await.unwrap();
    assert!(matches!(channel.recv().await, Err(ChannelError::Decode(_))));
    // A valid frame of another type.
    raw.send(&postcard::to_stdvec(&"a string").unwrap(), &[])
        .await
        .unwrap();
    assert!(matches!(channel.recv().await, Err(ChannelError::Decode(_))));
    // The channel still works afterwards.
    raw.send(&postcard::to_stdvec(&Command::Stop).unwrap(), &[])
        .await
        .unwrap();
    assert_eq!(channel.recv().await.unwrap(), Some(Command::Stop));
}

#[tokio::test]
async fn descriptors_on_a_channel_are_rejected_and_closed() {
    let (raw, theirs) = AsyncFdSocket::pair().unwrap();
    let channel = Channel::<(), Command>::new(theirs);
    let (r, _) = rustix::pipe::pipe().unwrap();
    let target = support::link_of(&r);
    raw.send(&postcard::to_stdvec(&Command::Stop).unwrap(), &[r.as_fd()])
        .await
        .unwrap();
    assert!(matches!(
        channel.recv().await,
        Err(ChannelError::UnexpectedFds {
            expected: 0,
            received: 1
        })
    ));
    assert_eq!(support::refs_to(&target), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn halves_work_from_separate_tasks_and_select_loses_nothing() {
    let (a, b) = Channel::<u32, u32>::pair().unwrap();
    let (a_tx, a_rx) = a.split();
    let (b_tx, b_rx) = b.split();
    // b echoes everything back.
    let echo = tokio::spawn(async move {
        while let Some(n) = b_rx.recv().await.unwrap() {
            b_tx.send(&n).await.unwrap();
        }
    });
    let sender = tokio::spawn(async move {
        for n in 0..2000u32 {
            a_tx.send(&n).await.unwrap();
        }
    });
    let mut expected = 0;
    while expected < 2000 {
        tokio::select! {
            got = a_rx.recv() => {
                assert_eq!(got.unwrap(), Some(expected));
                expected += 1;
            }
            _ = tokio::time::sleep(Duration::from_micros(50)) => {}
        }
    }
    sender.await.unwrap();
    drop(a_rx);
    echo.abort();
}
