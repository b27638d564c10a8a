//! The IPC hub: a real child process connects with its key; every bad client is turned away
//! while the hub keeps serving the good ones.

mod support;

use std::os::fd::AsFd;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

use cluster_ipc::{Channel, HubConfig, HubError, IpcHub, Key, connect};
use fdpass::AsyncFdSocket;
use support::{wait_for, workspace_bin};

const LIMIT: Duration = Duration::from_secs(10);

fn quick_hub() -> IpcHub {
    IpcHub::with_config(HubConfig {
        handshake_timeout: Duration::from_millis(300),
        accept_timeout: Duration::from_secs(2),
        ..HubConfig::default()
    })
    .unwrap()
}

#[tokio::test]
async fn a_child_process_connects_with_its_key_and_talks() {
    let hub = IpcHub::new().unwrap();
    let key = hub.generate_key();
    let mut child = Command::new(workspace_bin("ipc-peer"))
        .arg("hub-echo")
        .env("HUB_PATH", hub.path())
        .env("HUB_KEY", key.to_hex())
        .spawn()
        .unwrap();
    let channel = Channel::<String, String>::new(hub.accept(&key).await.unwrap());
    channel.send(&"ping".to_owned()).await.unwrap();
    assert_eq!(channel.recv().await.unwrap().as_deref(), Some("echo: ping"));
    drop(channel);
    assert!(wait_for(&mut child, LIMIT).success());
}

#[tokio::test]
async fn directory_and_socket_are_private_and_removed_on_drop() {
    let hub = IpcHub::new().unwrap();
    let path = hub.path().to_owned();
    let dir = path.parent().unwrap().to_owned();
    assert_eq!(
        std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
        0o700
    );
    assert_eq!(
        std::fs::symlink_metadata(&path)
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    drop(hub);
    assert!(!path.exists() && !dir.exists());
}

#[tokio::test]
async fn connect_before_accept_is_kept_until_accepted() {
    let hub = IpcHub::new().unwrap();
    let key = hub.generate_key();
    let client = connect(hub.path(), &key).await.unwrap();
    let server = hub.accept(&key).await.unwrap();
    client.send(b"early", &[]).await.unwrap();
    assert_eq!(server.recv().await.unwrap().unwrap().data, b"early");
}

/// After a bad client, the hub must still serve a good one.
async fn still_serves(hub: &IpcHub) {
    let key = hub.generate_key();
    let (client, server) = tokio::join!(connect(hub.path(), &key), hub.accept(&key));
    client.unwrap().send(b"ok", &[]).await.unwrap();
    assert_eq!(server.unwrap().recv().await.unwrap().unwrap().data, b"ok");
}

/// A raw connection that says `hello` (or nothing) must be closed without a welcome.
async fn rejected(hub: &IpcHub, hello: Option<&[u8]>, fds: &[std::os::fd::BorrowedFd<'_>]) {
    let socket = AsyncFdSocket::connect(hub.path()).await.unwrap();
    if let Some(bytes) = hello {
        let _ = fdpass::send_raw(&socket, bytes, fds);
    }
    let reply = tokio::time::timeout(LIMIT, socket.recv())
        .await
        .expect("hub must close it");
    assert!(matches!(reply, Ok(None) | Err(_)), "got {reply:?}");
}

#[tokio::test]
async fn wrong_malformed_stalled_and_fd_carrying_clients_are_rejected() {
    let hub = quick_hub();
    let _unused = hub.generate_key();
    let mut hello = b"CLHUB/1\0".to_vec();
    hello.extend_from_slice(&[0u8; 32]);
    rejected(&hub, Some(&hello), &[]).await; // wrong key
    rejected(&hub, None, &[]).await; // says nothing: closed after the handshake timeout
    rejected(&hub, Some(b"GET / HTTP/1.1\r\n\r\n"), &[]).await; // garbage
    rejected(&hub, Some(&hello[..20]), &[]).await; // half a hello
    rejected(&hub, Some(&[0xFD, 1, 0, 0, 0xFF, 0xFF, 0xFF, 0x7F]), &[]).await; // huge length
    let (r, _w) = rustix::pipe::pipe().unwrap();
    let key = hub.generate_key();
    let mut good_hello = b"CLHUB/1\0".to_vec();
    good_hello.extend_from_slice(&hex_bytes(&key));
    let framed = [
        &[0xFD, 1, 1, 0][..],
        &(good_hello.len() as u32).to_le_bytes(),
        &good_hello,
    ]
    .concat();
    rejected(&hub, Some(&framed), &[r.as_fd()]).await; // right key but carries a descriptor
    // Rejected before its key was looked at, so the key is still good for the real child.
    assert!(connect(hub.path(), &key).await.is_ok());
    still_serves(&hub).await;
}

fn hex_bytes(key: &Key) -> Vec<u8> {
    let hex = key.to_hex();
    (0..32)
        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
        .collect()
}

#[tokio::test]
async fn a_key_works_once() {
    let hub = quick_hub();
    let key = hub.generate_key();
    let (first, _server) = tokio::join!(connect(hub.path(), &key), hub.accept(&key));
    first.unwrap();
    assert!(matches!(
        connect(hub.path(), &key).await,
        Err(HubError::Rejected)
    ));
    assert!(matches!(hub.accept(&key).await, Err(HubError::UnknownKey)));
    still_serves(&hub).await;
}

#[tokio::test]
async fn an_unclaimed_key_expires() {
    let hub = quick_hub();
    let key = hub.generate_key();
    let started = std::time::Instant::now();
    assert!(matches!(
        hub.accept(&key).await,
        Err(HubError::AcceptTimeout(_))
    ));
    assert!(started.elapsed() < LIMIT);
    assert!(matches!(
        connect(hub.path(), &key).await,
        Err(HubError::Rejected)
    ));
    // A key from another hub is unknown here.
    let other = quick_hub().generate_key();
    assert!(matches!(
        hub.accept(&other).await,
        Err(HubError::UnknownKey)
    ));
    still_serves(&hub).await;
}

#[tokio::test]
async fn the_key_never_appears_in_debug_output() {
    let hub = IpcHub::new().unwrap();
    let key = hub.generate_key();
    let shown = format!("{key:?} {hub:?}");
    assert!(!shown.contains(&key.to_hex()), "{shown}");
}
