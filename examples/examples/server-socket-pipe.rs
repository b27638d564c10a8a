//! The seed's second example: a child process that obtains its listening socket from the
//! parent, so the parent owns the port and the child merely serves on it.
//!
//! ```sh
//! cargo run --example server-socket-pipe            # 127.0.0.1:0: the chosen port is printed
//! cargo run --example server-socket-pipe 127.0.0.1:8080
//! curl http://127.0.0.1:PORT/
//! ```

use std::process::Command;

use cluster_ipc::{
    ListenOptions, Listener, ServerSocketFactory, ServerSocketPipeFactory, ServerSocketProvider,
};
use fdpass::{AsyncFdSocket, FdSocket};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CHILD_FD: &str = "EXAMPLE_PROVIDER_FD";

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    match std::env::var(CHILD_FD) {
        Ok(fd) => child(fd.parse()?).await,
        Err(_) => parent().await,
    }
}

async fn parent() -> Result<(), Box<dyn std::error::Error>> {
    let (ours, theirs) = FdSocket::pair()?;
    let mut command = Command::new(std::env::current_exe()?);
    let number = fdpass::inherit_fd(&mut command, theirs.into());
    command
        .env(CHILD_FD, number.to_string())
        .args(std::env::args().skip(1));
    let mut child = command.spawn()?;
    drop(command);

    println!(
        "parent {}: providing server sockets to child {}",
        std::process::id(),
        child.id()
    );
    let provider = ServerSocketProvider::new();
    let socket = ours.into_async()?;
    tokio::select! {
        served = provider.serve(&socket) => served?,
        _ = tokio::signal::ctrl_c() => {}
    }
    drop(socket);
    child.wait()?;
    Ok(())
}

async fn child(fd: i32) -> Result<(), Box<dyn std::error::Error>> {
    let fd = fdpass::adopt_inherited_fd(fd)?;
    let factory = ServerSocketPipeFactory::new(AsyncFdSocket::from_fd(fd)?);
    let address = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:0".to_owned())
        .parse()?;
    let Listener::Tcp(listener) = factory.listen(&address, &ListenOptions::default()).await? else {
        return Err("this example serves TCP only".into());
    };
    let bound = listener.local_addr()?;
    println!(
        "child {}: listening on http://{bound} (socket bound by the parent)",
        std::process::id()
    );
    println!("try: curl http://{bound}/   (Ctrl-C to stop)");
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (mut client, _) = accepted?;
                let mut request = [0u8; 1024];
                let _ = client.read(&mut request).await?;
                let body = format!("Hello from child {}\n", std::process::id());
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                client.write_all(response.as_bytes()).await?;
            }
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}
