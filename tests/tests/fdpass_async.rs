//! The tokio face of `fdpass`: no lost wake-ups, cancel-safe receive and send, concurrent
//! senders that never interleave.

mod support;

use std::os::fd::AsFd;
use std::time::Duration;

use fdpass::{AsyncFdSocket, MAX_CHUNK};
use support::link_of;
use tokio::time::{sleep, timeout};

const LIMIT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn second_receive_wakes_when_a_late_message_arrives() {
    let (a, b) = AsyncFdSocket::pair().unwrap();
    let receiver = tokio::spawn(async move {
        let first = b.recv().await.unwrap().unwrap();
        let second = b.recv().await.unwrap().unwrap();
        (first.data, second.data)
    });
    a.send(b"one", &[]).await.unwrap();
    sleep(Duration::from_millis(300)).await;
    a.send(b"two", &[]).await.unwrap();
    let (first, second) = timeout(LIMIT, receiver)
        .await
        .expect("no lost wake-up")
        .unwrap();
    assert_eq!(
        (first.as_slice(), second.as_slice()),
        (&b"one"[..], &b"two"[..])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receives_dropped_by_select_lose_no_message() {
    let (a, b) = AsyncFdSocket::pair().unwrap();
    let sender = tokio::spawn(async move {
        for i in 0u32..300 {
            let len = if i % 50 == 0 { 2 * MAX_CHUNK + 7 } else { 4 };
            let mut data = vec![0u8; len];
            data[..4].copy_from_slice(&i.to_le_bytes());
            a.send(&data, &[]).await.unwrap();
            if i % 7 == 0 {
                sleep(Duration::from_millis(1)).await;
            }
        }
    });
    let mut next = 0u32;
    let mut cancelled = 0;
    let deadline = tokio::time::Instant::now() + LIMIT;
    while next < 300 {
        assert!(tokio::time::Instant::now() < deadline, "stalled at {next}");
        tokio::select! {
            message = b.recv() => {
                let message = message.unwrap().unwrap();
                assert_eq!(message.data[..4], next.to_le_bytes());
                next += 1;
            }
            _ = sleep(Duration::from_micros(200)) => cancelled += 1,
        }
    }
    sender.await.unwrap();
    assert!(cancelled > 0, "the test must actually cancel some receives");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_senders_never_interleave_their_packets() {
    let (a, b) = AsyncFdSocket::pair().unwrap();
    let a = std::sync::Arc::new(a);
    let (r, _w) = rustix::pipe::pipe().unwrap();
    let target = link_of(&r);
    let r = std::sync::Arc::new(r);
    let mut tasks = Vec::new();
    for sender in 0u8..4 {
        let (a, r) = (a.clone(), r.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..25 {
                let data = vec![sender; 3 * MAX_CHUNK / 2];
                a.send(&data, &[r.as_fd()]).await.unwrap();
            }
        }));
    }
    for _ in 0..100 {
        let message = timeout(LIMIT, b.recv()).await.unwrap().unwrap().unwrap();
        let first = message.data[0];
        assert!(
            message.data.iter().all(|&byte| byte == first),
            "packets interleaved"
        );
        assert_eq!(message.data.len(), 3 * MAX_CHUNK / 2);
        assert_eq!(link_of(&message.fds[0]), target);
    }
    for task in tasks {
        task.await.unwrap();
    }
}

#[tokio::test]
async fn a_send_cancelled_midway_is_finished_by_flush() {
    let (a, b) = AsyncFdSocket::pair().unwrap();
    // Far larger than the socket buffer, so the send must wait for the reader.
    let data: Vec<u8> = (0..4 * 1024 * 1024).map(|i| (i % 253) as u8).collect();
    let cancelled = timeout(Duration::from_millis(100), a.send(&data, &[])).await;
    assert!(cancelled.is_err(), "the send must block on the full socket");
    let reader = tokio::spawn(async move { b.recv().await.unwrap().unwrap().data });
    timeout(LIMIT, a.flush()).await.unwrap().unwrap();
    let received = timeout(LIMIT, reader).await.unwrap().unwrap();
    assert_eq!(received.len(), data.len());
    assert!(received == data);
}

#[tokio::test]
async fn senders_blocked_on_a_full_queue_resume_as_the_reader_drains_it() {
    let (a, b) = AsyncFdSocket::pair().unwrap();
    const COUNT: u32 = 2_000; // the default send buffer holds about 280 small packets
    let sender = tokio::spawn(async move {
        for i in 0..COUNT {
            a.send(&i.to_le_bytes(), &[]).await.unwrap();
        }
    });
    sleep(Duration::from_millis(100)).await;
    assert!(
        !sender.is_finished(),
        "the sender must be blocked on the full queue"
    );
    for i in 0..COUNT {
        let message = timeout(LIMIT, b.recv()).await.unwrap().unwrap().unwrap();
        assert_eq!(message.data, i.to_le_bytes());
        if i % 100 == 0 {
            // Let the sender find the queue full again and wait for room.
            sleep(Duration::from_millis(2)).await;
        }
    }
    timeout(LIMIT, sender).await.unwrap().unwrap();
}

#[tokio::test]
async fn try_send_reports_a_full_queue_and_sends_nothing() {
    let (a, b) = AsyncFdSocket::pair().unwrap();
    let (r, _w) = rustix::pipe::pipe().unwrap();
    let mut sent = 0u32;
    let full = loop {
        match a.try_send(&sent.to_le_bytes(), &[r.as_fd()]) {
            Ok(()) => sent += 1,
            Err(e) => break e,
        }
        assert!(sent < 100_000, "the queue never filled");
    };
    assert!(
        matches!(&full, fdpass::Error::Io(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "{full:?}"
    );
    // Everything reported sent arrives, nothing else does, and there is room again.
    for i in 0..sent {
        let message = timeout(LIMIT, b.recv()).await.unwrap().unwrap().unwrap();
        assert_eq!(
            (message.data.as_slice(), message.fds.len()),
            (&i.to_le_bytes()[..], 1)
        );
    }
    a.try_send(b"again", &[]).unwrap();
    let long = vec![0u8; MAX_CHUNK + 1];
    assert!(
        matches!(a.try_send(&long, &[]), Err(fdpass::Error::Io(e)) if e.kind() == std::io::ErrorKind::InvalidInput),
        "a message of more than one packet is refused, not half sent"
    );
    let message = timeout(LIMIT, b.recv()).await.unwrap().unwrap().unwrap();
    assert_eq!(message.data, b"again");
}

#[tokio::test]
async fn adopting_a_wrong_descriptor_is_an_error() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let err = AsyncFdSocket::from_fd(listener.into()).unwrap_err();
    assert!(
        matches!(err, fdpass::SocketKindError::Mismatch { .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn received_listener_becomes_a_tokio_listener() {
    let (a, b) = AsyncFdSocket::pair().unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    a.send(b"", &[listener.as_fd()]).await.unwrap();
    let fd = b.recv().await.unwrap().unwrap().fds.pop().unwrap();
    let tokio_listener: tokio::net::TcpListener = fdpass::into_socket(fd).unwrap();
    let addr = tokio_listener.local_addr().unwrap();
    let (accepted, connected) = tokio::join!(
        tokio_listener.accept(),
        tokio::net::TcpStream::connect(addr)
    );
    assert_eq!(
        accepted.unwrap().1,
        connected.unwrap().local_addr().unwrap()
    );
}
