//! The seed's first example: a parent that accepts connections and hands each client socket
//! to a child process it started, which answers it.
//!
//! ```sh
//! cargo run --example client-socket-transfer            # listens on 127.0.0.1:0
//! cargo run --example client-socket-transfer 127.0.0.1:8080
//! curl http://127.0.0.1:PORT/     # the port is printed at start
//! ```
//!
//! The parent owns the listening socket and never reads from clients; the child receives each
//! connection with the client's address attached, through `cluster-ipc`'s client-socket pipe.

use std::process::Command;

use cluster_ipc::{ClientSocketReceivePipe, ClientSocketSendPipe};
use fdpass::{AsyncFdSocket, FdSocket};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CHILD_FD: &str = "EXAMPLE_PIPE_FD";

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    match std::env::var(CHILD_FD) {
        Ok(fd) => child(fd.parse()?).await,
        Err(_) => parent().await,
    }
}

async fn parent() -> Result<(), Box<dyn std::error::Error>> {
    let address = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:0".to_owned());
    let listener = tokio::net::TcpListener::bind(&address).await?;

    // Start the child with one end of a socket pair, inherited on purpose.
    let (ours, theirs) = FdSocket::pair()?;
    let mut command = Command::new(std::env::current_exe()?);
    let number = fdpass::inherit_fd(&mut command, theirs.into());
    let mut child = command.env(CHILD_FD, number.to_string()).spawn()?;
    drop(command);
    let pipe = ClientSocketSendPipe::<String>::new(ours.into_async()?);

    println!(
        "parent {}: listening on http://{}",
        std::process::id(),
        listener.local_addr()?
    );
    println!(
        "try: curl http://{}/   (Ctrl-C to stop)",
        listener.local_addr()?
    );
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (client, peer) = accepted?;
                if let Err(failed) = pipe.send(client, &peer.to_string()).await {
                    eprintln!("parent: child unavailable ({}); closing {peer}", failed.error);
                    break;
                }
            }
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    drop(pipe); // the child sees end of file and exits
    child.wait()?;
    Ok(())
}

async fn child(fd: i32) -> Result<(), Box<dyn std::error::Error>> {
    let fd = fdpass::adopt_inherited_fd(fd)?;
    let pipe = ClientSocketReceivePipe::<String>::new(AsyncFdSocket::from_fd(fd)?);
    while let Some(transferred) = pipe.receive().await? {
        let mut client = transferred.socket;
        let mut request = [0u8; 1024];
        let _ = client.read(&mut request).await?;
        let body = format!(
            "Hello from child {}; you are {}\n",
            std::process::id(),
            transferred.data
        );
        let response = format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        client.write_all(response.as_bytes()).await?;
    }
    Ok(())
}
