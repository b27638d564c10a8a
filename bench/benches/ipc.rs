//! `cluster-ipc`: channel round-trip latency and small-message throughput, and client sockets
//! handed to another process per second against plain `accept()` + close in one process,
//! measured interleaved in one run.
//!
//! `cargo bench -p cluster-bench --bench ipc` (`IPC_BENCH_OPS`, `IPC_BENCH_CONNECTIONS`, `BENCH_ROUNDS` override).

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::time::Instant;

use cluster_bench::{env_or, interleaved, print_table};
use cluster_ipc::{Channel, ClientSocketReceivePipe, ClientSocketSendPipe};
use fdpass::{AsyncFdSocket, FdSocket};
use serde::{Deserialize, Serialize};

const CHILD: &str = "IPC_BENCH_CHILD_FD";

#[derive(Serialize, Deserialize)]
struct Small {
    id: u32,
    kind: u8,
    text: String,
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    if let Ok(fd) = std::env::var(CHILD) {
        // Child: receive client sockets and close them, until end of file.
        let fd = fdpass::adopt_inherited_fd(fd.parse().unwrap()).unwrap();
        rt.block_on(async {
            let pipe = ClientSocketReceivePipe::<u32>::new(AsyncFdSocket::from_fd(fd).unwrap());
            while let Some(t) = pipe.receive().await.unwrap() {
                drop(t);
            }
        });
        return;
    }
    let ops = env_or("IPC_BENCH_OPS", 20_000);
    let connections = env_or("IPC_BENCH_CONNECTIONS", 5_000);
    let rounds = env_or("BENCH_ROUNDS", 5) as usize;

    // Channels: a round trip is one request and one reply between two tasks.
    let (a, b) = rt
        .block_on(async { Channel::<Small, Small>::pair() })
        .unwrap();
    let a = std::sync::Arc::new(a);
    let echo = {
        let _guard = rt.enter();
        tokio::spawn(async move {
            while let Ok(Some(m)) = b.recv().await {
                b.send(&m).await.unwrap();
            }
        })
    };
    let small = || Small {
        id: 7,
        kind: 1,
        text: "hello, worker".into(),
    };
    let mut round_trip = || {
        rt.block_on(async {
            for _ in 0..ops {
                a.send(&small()).await.unwrap();
                a.recv().await.unwrap().unwrap();
            }
        })
    };
    let mut one_way = || {
        rt.block_on(async {
            let (tx, rx) = Channel::<Small, Small>::pair().unwrap();
            let sender = tokio::spawn(async move {
                for _ in 0..ops {
                    tx.send(&small()).await.unwrap();
                }
            });
            for _ in 0..ops {
                rx.recv().await.unwrap().unwrap();
            }
            sender.await.unwrap();
        })
    };

    // Client sockets: the same client driver connects `ops` times; the server side either
    // accepts and closes, or accepts and hands the socket to a child process that closes it.
    let (ours, theirs) = FdSocket::pair().unwrap();
    let mut command = Command::new(std::env::current_exe().unwrap());
    let number = fdpass::inherit_fd(&mut command, theirs.into());
    let mut child = command.env(CHILD, number.to_string()).spawn().unwrap();
    drop(command);
    let pipe = {
        let _guard = rt.enter();
        ClientSocketSendPipe::<u32>::new(ours.into_async().unwrap())
    };
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let mut plain_accept = || {
        let clients = drive_clients(addr, connections);
        for _ in 0..connections {
            drop(listener.accept().unwrap());
        }
        clients.join().unwrap();
    };
    let mut through_pipe = || {
        let clients = drive_clients(addr, connections);
        rt.block_on(async {
            for i in 0..connections {
                let (socket, _) = listener.accept().unwrap();
                pipe.send(socket, &(i as u32)).await.unwrap();
            }
        });
        clients.join().unwrap();
    };

    let started = Instant::now();
    let channel = interleaved(
        rounds,
        ops,
        &mut [
            ("channel round trip", &mut round_trip),
            ("channel one-way", &mut one_way),
        ],
    );
    let sockets = interleaved(
        rounds,
        connections,
        &mut [
            ("accept + close, one process", &mut plain_accept),
            ("accept + transfer to child", &mut through_pipe),
        ],
    );
    print_table(
        &format!("cluster-ipc channels: small messages ({ops} per round, {rounds} rounds)"),
        "msg/s",
        &channel,
    );
    println!(
        "- median round-trip latency: {:.1} µs",
        1e6 / channel[0].median()
    );
    print_table(
        &format!("client sockets per second ({connections} per round)"),
        "sockets/s",
        &sockets,
    );
    let ratio = sockets[1].median() / sockets[0].median();
    println!(
        "- transfer through the pipe vs plain accept + close: {ratio:.2}x (no target; reported)"
    );
    println!("(total {:.1} s)", started.elapsed().as_secs_f64());
    drop(pipe);
    echo.abort();
    child.wait().unwrap();
}

/// Connects `n` times from two threads; each client waits for the server side to close first
/// (so `TIME_WAIT` lands on the server and the client never runs short of ephemeral ports).
fn drive_clients(addr: SocketAddr, n: u64) -> std::thread::JoinHandle<()> {
    let connect = move || {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        let _ = std::io::Read::read(&mut stream, &mut [0u8; 1]);
    };
    std::thread::spawn(move || {
        let half = n / 2;
        let other = std::thread::spawn(move || (0..half).for_each(|_| connect()));
        (half..n).for_each(|_| connect());
        other.join().unwrap();
    })
}
