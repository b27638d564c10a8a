//! `fdpass` messages per second: a 64-byte payload with 0, 1 and 8 descriptors, blocking and
//! tokio, measured interleaved in one run.
//!
//! Targets: a 1-fd message costs at most 2x a plain one; 8-fd messages move at least 3x the
//! descriptors per second of 1-fd messages.
//!
//! `cargo bench -p cluster-bench --bench fdpass` (`FDPASS_BENCH_MESSAGES`, `BENCH_ROUNDS`
//! override the defaults).

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::thread;

use cluster_bench::{Samples, env_or, interleaved, print_ratio, print_table};
use fdpass::{AsyncFdSocket, FdSocket};

fn main() {
    let messages = env_or("FDPASS_BENCH_MESSAGES", 50_000);
    let rounds = env_or("BENCH_ROUNDS", 5) as usize;
    let fds: &'static [OwnedFd] = Box::leak(
        (0..8)
            .map(|_| rustix::pipe::pipe().unwrap().0)
            .collect::<Vec<_>>()
            .into_boxed_slice(),
    );

    // A sender thread (task) and a receiver, `messages` per round.
    let run_sync = |count: usize| {
        let (a, b) = FdSocket::pair().unwrap();
        let sender = thread::spawn(move || {
            let borrowed: Vec<BorrowedFd<'_>> = fds[..count].iter().map(|f| f.as_fd()).collect();
            let payload = [7u8; 64];
            for _ in 0..messages {
                a.send(&payload, &borrowed).unwrap();
            }
        });
        for _ in 0..messages {
            let message = b.recv().unwrap().unwrap();
            assert_eq!(message.fds.len(), count);
        }
        sender.join().unwrap();
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let run_async = |count: usize| {
        runtime.block_on(async {
            let (a, b) = AsyncFdSocket::pair().unwrap();
            let sender = tokio::spawn(async move {
                let borrowed: Vec<BorrowedFd<'_>> =
                    fds[..count].iter().map(|f| f.as_fd()).collect();
                let payload = [7u8; 64];
                for _ in 0..messages {
                    a.send(&payload, &borrowed).await.unwrap();
                }
            });
            for _ in 0..messages {
                let message = b.recv().await.unwrap().unwrap();
                assert_eq!(message.fds.len(), count);
            }
            sender.await.unwrap();
        })
    };
    let samples = interleaved(
        rounds,
        messages,
        &mut [
            ("sync, 0 fds", &mut || run_sync(0)),
            ("sync, 1 fd", &mut || run_sync(1)),
            ("sync, 8 fds", &mut || run_sync(8)),
            ("async, 0 fds", &mut || run_async(0)),
            ("async, 1 fd", &mut || run_async(1)),
            ("async, 8 fds", &mut || run_async(8)),
        ],
    );
    print_table(
        &format!("fdpass: 64-byte messages/s ({messages} per round, {rounds} rounds)"),
        "msg/s",
        &samples,
    );
    report(&samples[0..3], "sync");
    report(&samples[3..6], "async");
}

fn report(s: &[Samples], mode: &str) {
    let (plain, one, eight) = (s[0].median(), s[1].median(), s[2].median());
    let cost = plain / one;
    print_ratio(
        &format!("{mode}: cost of a 1-fd message vs a plain one"),
        cost,
        "<= 2x",
        cost <= 2.0,
    );
    let batch = (eight * 8.0) / one;
    print_ratio(
        &format!("{mode}: fds/s of 8-fd messages vs 1-fd messages"),
        batch,
        ">= 3x",
        batch >= 3.0,
    );
}
