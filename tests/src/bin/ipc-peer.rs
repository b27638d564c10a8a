//! Helper process for the `ipc_*` tests: the child's side of each `cluster-ipc` component.
//!
//! `ipc-peer <mode> [args]`:
//! * `hub-echo`: connect to the hub at `HUB_PATH` with `HUB_KEY` and echo `String`s until EOF.
//! * `client-receiver`: receive client sockets on the inherited socket in `FDPASS_FD`; answer
//!   each client with `<data>|<prefix>|<data length>` and close it.
//! * `connect-as-nobody PATH KEY`: drop to uid/gid 65534, connect to the hub, print the
//!   verdict (`connected`, `denied: io`, `denied: rejected`).
//! * `listen ADDR...`: ask the provider on `FDPASS_FD` for each address and print `ok ADDR` or
//!   `err OS_ERROR MESSAGE`; then accept one client on the first listener and greet it.

use cluster_ipc::{
    Channel, ClientSocketReceivePipe, Key, ListenOptions, Listener, ServerSocketFactory,
    ServerSocketPipeFactory, connect,
};
use fdpass::AsyncFdSocket;
use tokio::io::AsyncWriteExt;

fn inherited() -> AsyncFdSocket {
    let number: i32 = std::env::var("FDPASS_FD")
        .expect("FDPASS_FD")
        .parse()
        .expect("number");
    let fd = fdpass::adopt_inherited_fd(number).expect("an inherited descriptor");
    AsyncFdSocket::from_fd(fd).expect("a seqpacket socket")
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("hub-echo") => {
            let path = std::env::var("HUB_PATH").expect("HUB_PATH");
            let key = Key::from_hex(&std::env::var("HUB_KEY").expect("HUB_KEY")).expect("key");
            let socket = connect(path.as_ref(), &key).await.expect("connect");
            let channel = Channel::<String, String>::new(socket);
            while let Some(text) = channel.recv().await.expect("recv") {
                channel.send(&format!("echo: {text}")).await.expect("send");
            }
        }
        Some("client-receiver") => {
            let pipe = ClientSocketReceivePipe::<String>::new(inherited());
            while let Some(transferred) = pipe.receive().await.expect("receive") {
                let mut client = transferred.socket;
                let prefix = String::from_utf8_lossy(&transferred.prefix).into_owned();
                let answer = format!(
                    "{}|{}|{}",
                    &transferred.data[..transferred.data.len().min(16)],
                    prefix,
                    transferred.data.len()
                );
                client.write_all(answer.as_bytes()).await.expect("write");
            }
        }
        Some("connect-as-nobody") => {
            // Become user and group 65534 (this helper is single-threaded here), then try.
            rustix::thread::set_thread_res_gid(
                rustix::process::Gid::from_raw(65534),
                rustix::process::Gid::from_raw(65534),
                rustix::process::Gid::from_raw(65534),
            )
            .expect("setgid");
            rustix::thread::set_thread_res_uid(
                rustix::process::Uid::from_raw(65534),
                rustix::process::Uid::from_raw(65534),
                rustix::process::Uid::from_raw(65534),
            )
            .expect("setuid");
            let key = Key::from_hex(&args[2]).expect("key");
            match connect(args[1].as_ref(), &key).await {
                Ok(_) => println!("connected"),
                Err(cluster_ipc::HubError::Rejected) => println!("denied: rejected"),
                Err(cluster_ipc::HubError::Io(_)) => println!("denied: io"),
                Err(other) => println!("denied: {other}"),
            }
        }
        Some("listen") => {
            let factory = ServerSocketPipeFactory::new(inherited());
            let mut first: Option<Listener> = None;
            for address in &args[1..] {
                let address = address.parse().expect("address");
                match factory.listen(&address, &ListenOptions::default()).await {
                    Ok(listener) => {
                        println!("ok {}", listener.local_addr().expect("addr"));
                        first.get_or_insert(listener);
                    }
                    Err(cluster_ipc::ServerSocketError::Bind { source, .. }) => {
                        println!("err {} {source}", source.raw_os_error().unwrap_or(0));
                    }
                    Err(other) => println!("err 0 {other}"),
                }
            }
            if let Some(Listener::Tcp(listener)) = first {
                let (mut client, _) = listener.accept().await.expect("accept");
                client
                    .write_all(format!("served by {}", std::process::id()).as_bytes())
                    .await
                    .expect("write");
            }
        }
        other => {
            eprintln!("ipc-peer: unknown mode {other:?}");
            std::process::exit(2);
        }
    }
}
