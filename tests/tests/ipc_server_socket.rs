//! Server-socket sharing: a child process asks this process's provider for listeners; the same
//! address gives the same socket (port 0 included), and bind errors travel back typed.

mod support;

use std::io::Read;
use std::time::Duration;

use cluster_ipc::{
    ListenAddress, ListenOptions, Listener, LocalServerSocketFactory, ServerSocketError,
    ServerSocketFactory, ServerSocketProvider,
};
use support::{spawn_peer, wait_for};

const LIMIT: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_gets_the_same_socket_for_the_same_address_and_typed_bind_errors() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy_addr = busy.local_addr().unwrap().to_string();
    let dir = std::env::temp_dir().join(format!("ipc-server-socket-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let unix = format!("unix:{}", dir.join("s.sock").display());
    let args = [
        "listen",
        "127.0.0.1:0",
        "tcp://127.0.0.1:0",
        &busy_addr,
        "[::1]:0",
        &unix,
    ];
    let (ours, mut child) = spawn_peer("ipc-peer", &args);
    let provider = ServerSocketProvider::new();
    let served = {
        let provider = provider.clone();
        tokio::spawn(async move {
            let socket = ours.into_async().unwrap();
            provider.serve(&socket).await
        })
    };
    // The child prints one line per request, then serves one client on the first listener.
    let mut stdout = String::new();
    let output = tokio::task::spawn_blocking(move || {
        let status = wait_for(&mut child, LIMIT);
        let mut out = String::new();
        child.stdout.take().map(|mut s| s.read_to_string(&mut out));
        (status, out)
    });
    // Connect to the shared port as soon as the provider bound it.
    let port = loop {
        let sockets = provider.sockets();
        if let Some((_, fd)) = sockets.iter().find(|(a, _)| a.to_string() == "127.0.0.1:0") {
            let listener = std::net::TcpListener::from(fd.try_clone().unwrap());
            break listener.local_addr().unwrap().port();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let mut client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    client.set_read_timeout(Some(LIMIT)).unwrap();
    let mut greeting = String::new();
    client.read_to_string(&mut greeting).unwrap();
    assert!(greeting.starts_with("served by "), "{greeting}");
    let (status, out) = output.await.unwrap();
    stdout.push_str(&out);
    assert!(status.success());
    served.await.unwrap().unwrap();

    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 5, "{stdout}");
    assert_eq!(lines[0], format!("ok 127.0.0.1:{port}"));
    assert_eq!(
        lines[1], lines[0],
        "tcp://127.0.0.1:0 is the same key, the same socket"
    );
    assert!(
        lines[2].starts_with(&format!("err {} ", libc_eaddrinuse())),
        "{}",
        lines[2]
    );
    assert!(
        lines[3].starts_with("ok [::1]:") || lines[3].starts_with("err "),
        "{}",
        lines[3]
    );
    assert_eq!(
        lines[4],
        format!("ok {unix}"),
        "the factory keeps working after an error"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

fn libc_eaddrinuse() -> i32 {
    rustix::io::Errno::ADDRINUSE.raw_os_error()
}

#[tokio::test]
async fn local_factory_binds_here_with_options_and_reports_os_errors() {
    let factory = LocalServerSocketFactory;
    let options = ListenOptions {
        reuse_port: true,
        backlog: 16,
        ..ListenOptions::default()
    };
    let first = factory
        .listen(&"127.0.0.1:0".parse().unwrap(), &options)
        .await
        .unwrap();
    let Listener::Tcp(first) = first else {
        panic!("tcp expected")
    };
    let addr: ListenAddress = first.local_addr().unwrap().to_string().parse().unwrap();
    // SO_REUSEPORT on both: a second socket on the same port is allowed.
    factory.listen(&addr, &options).await.unwrap();
    // Without it: address in use, with the OS error attached.
    let err = factory
        .listen(&addr, &ListenOptions::default())
        .await
        .unwrap_err();
    let ServerSocketError::Bind { source, .. } = err else {
        panic!("{err:?}")
    };
    assert_eq!(source.kind(), std::io::ErrorKind::AddrInUse);
    // A non-local address.
    let err = factory
        .listen(&"192.0.2.1:80".parse().unwrap(), &options)
        .await
        .unwrap_err();
    assert!(matches!(err, ServerSocketError::Bind { .. }));
    assert!("nonsense".parse::<ListenAddress>().is_err());
    assert!("localhost:99999".parse::<ListenAddress>().is_err());
}

#[tokio::test]
async fn a_stale_unix_socket_file_is_replaced_but_a_live_one_is_not() {
    let dir = std::env::temp_dir().join(format!("ipc-stale-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("app.sock");
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap()); // leaves the file behind
    let address = ListenAddress::Unix(path.clone());
    let live = LocalServerSocketFactory
        .listen(&address, &ListenOptions::default())
        .await
        .unwrap();
    let err = LocalServerSocketFactory
        .listen(&address, &ListenOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, ServerSocketError::Bind { .. }), "{err:?}");
    drop(live);
    std::fs::remove_dir_all(&dir).unwrap();
}
