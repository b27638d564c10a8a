//! Client-socket pipes: a parent accepts TCP connections and hands each to a child process,
//! with data of any size; a failed transfer gives the socket back.

mod support;

use std::io::Read;
use std::time::Duration;

use cluster_ipc::{ClientSocketReceivePipe, ClientSocketSendPipe};
use fdpass::AsyncFdSocket;
use support::{spawn_peer, wait_for};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const LIMIT: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepted_clients_are_served_by_the_child_with_their_data_and_prefix() {
    let (ours, mut child) = spawn_peer("ipc-peer", &["client-receiver"]);
    let pipe = ClientSocketSendPipe::<String>::new(ours.into_async().unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();

    // Data far over amphp's 8 KiB limit, and one with bytes the parent already read.
    let cases = [
        ("small".to_owned(), &b""[..]),
        ("x".repeat(1 << 20), &b""[..]),
        ("peeked".to_owned(), &b"GET /"[..]),
    ];
    for (data, prefix) in cases {
        let client = std::thread::spawn(move || {
            let mut stream = std::net::TcpStream::connect(addr).unwrap();
            stream.set_read_timeout(Some(LIMIT)).unwrap();
            let mut answer = String::new();
            stream.read_to_string(&mut answer).unwrap();
            answer
        });
        let (socket, _) = listener.accept().await.unwrap();
        pipe.send_with_prefix(socket, &data, prefix).await.unwrap();
        let answer = tokio::task::spawn_blocking(move || client.join().unwrap())
            .await
            .unwrap();
        let expected = format!(
            "{}|{}|{}",
            &data[..data.len().min(16)],
            String::from_utf8_lossy(prefix),
            data.len()
        );
        assert_eq!(answer, expected);
    }
    drop(pipe);
    assert!(wait_for(&mut child, LIMIT).success());
}

#[tokio::test]
async fn a_failed_transfer_returns_the_socket_still_usable() {
    let (ours, theirs) = AsyncFdSocket::pair().unwrap();
    drop(theirs); // the receiving side is gone
    let pipe = ClientSocketSendPipe::<u32>::new(ours);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let (socket, _) = listener.accept().await.unwrap();
    let err = pipe.send(socket, &1).await.unwrap_err();
    let mut socket = err.socket;
    socket.write_all(b"rerouted").await.unwrap();
    drop(socket);
    let mut got = String::new();
    client.read_to_string(&mut got).await.unwrap();
    assert_eq!(got, "rerouted");
}

#[tokio::test]
async fn data_over_the_frame_limit_is_refused_and_the_socket_returned() {
    let (ours, _theirs) = AsyncFdSocket::pair().unwrap();
    let pipe = ClientSocketSendPipe::<Vec<u8>>::new(
        ours.with_limits(fdpass::Limits::default().max_message_len(4096)),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let _client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let (socket, peer) = listener.accept().await.unwrap();
    let err = pipe.send(socket, &vec![0; 10_000]).await.unwrap_err();
    assert_eq!(err.socket.peer_addr().unwrap(), peer);
}

#[tokio::test]
async fn a_message_without_a_socket_or_of_the_wrong_kind_is_an_error() {
    let (ours, theirs) = AsyncFdSocket::pair().unwrap();
    let receiver = ClientSocketReceivePipe::<u32>::new(theirs);
    ours.send(
        &postcard::to_stdvec(&(1u32, Vec::<u8>::new())).unwrap(),
        &[],
    )
    .await
    .unwrap();
    assert!(matches!(
        receiver.receive().await,
        Err(cluster_ipc::ChannelError::UnexpectedFds {
            expected: 1,
            received: 0
        })
    ));
    // A UDP socket where a TCP stream is expected.
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let sender = ClientSocketSendPipe::<u32>::new(ours);
    sender.send(udp, &2).await.unwrap();
    assert!(matches!(
        receiver.receive().await,
        Err(cluster_ipc::ChannelError::SocketKind(_))
    ));
    drop(sender);
    assert!(receiver.receive().await.unwrap().is_none());
}

/// A pipe whose sender vouches for its sockets (the watcher's, to its workers) takes them as
/// they come: the kind unchecked, `O_NONBLOCK` as the sender set it.
#[tokio::test]
async fn a_vouched_pipe_takes_sockets_unchecked_and_as_they_are() {
    let (ours, theirs) = AsyncFdSocket::pair().unwrap();
    let receiver = ClientSocketReceivePipe::<u32>::new(theirs).vouched();
    let sender = ClientSocketSendPipe::<u32>::new(ours);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let (accepted, _) = listener.accept().unwrap();
    accepted.set_nonblocking(true).unwrap();
    sender.send(accepted, &1).await.unwrap();
    let mut received = receiver.receive().await.unwrap().unwrap();
    assert_eq!(received.data, 1);
    received.socket.write_all(b"vouched").await.unwrap();
    drop(received);
    let mut got = String::new();
    client.read_to_string(&mut got).await.unwrap();
    assert_eq!(got, "vouched");
    // What the sender vouched for is not looked at: a UDP socket is taken too.
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    udp.set_nonblocking(true).unwrap();
    sender.send(udp, &2).await.unwrap();
    assert_eq!(receiver.receive().await.unwrap().unwrap().data, 2);
}
