//! HTTP/1.1 on 127.0.0.1, one request per connection.

use std::io::{Read, Write};
use std::net::IpAddr;
use std::time::Duration;

/// A free TCP port on 127.0.0.1 (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on 127.0.0.1")
}

/// One `GET /` on a new connection to 127.0.0.1:`port`; the body, or why it failed.
pub fn http_get(port: u16) -> Result<String, String> {
    http_get_at(std::net::Ipv4Addr::LOCALHOST.into(), port)
}

/// [`http_get`] to another local address (`127.0.0.2`, say); waits at most 10 s.
pub fn http_get_at(ip: IpAddr, port: u16) -> Result<String, String> {
    let stream = std::net::TcpStream::connect((ip, port)).map_err(|e| format!("connect: {e}"))?;
    let request = b"GET / HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n";
    let response = exchange_once(stream, request)?;
    Ok(response
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_owned())
}

/// Whether one `GET /` on a new connection answers 200 (waits at most 2 s).
pub fn http_ok(port: u16) -> bool {
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if stream
        .write_all(b"GET / HTTP/1.1\r\nhost: b\r\nconnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response.starts_with("HTTP/1.1 200")
}

/// One `GET path` on a new connection from the local address `source` (`127.0.0.7`, say) to
/// 127.0.0.1:`port`, with `headers` (`"cookie: sid=1\r\n"`) added; the whole response,
/// head and body, or why it failed (a status other than 200 included). Waits at most 10 s.
pub fn http_get_from(
    source: std::net::Ipv4Addr,
    port: u16,
    path: &str,
    headers: &str,
) -> Result<String, String> {
    http_request_from(source, port, "GET", path, headers, "")
}

/// [`http_get_from`] with any method and a body.
pub fn http_request_from(
    source: std::net::Ipv4Addr,
    port: u16,
    method: &str,
    path: &str,
    headers: &str,
    body: &str,
) -> Result<String, String> {
    use rustix::net::{AddressFamily, SocketType, bind, connect, socket};
    let fd = socket(AddressFamily::INET, SocketType::STREAM, None).map_err(|e| e.to_string())?;
    bind(&fd, &std::net::SocketAddr::from((source, 0))).map_err(|e| format!("bind: {e}"))?;
    connect(&fd, &std::net::SocketAddr::from(([127, 0, 0, 1], port)))
        .map_err(|e| format!("connect: {e}"))?;
    let request = format!(
        "{method} {path} HTTP/1.1\r\nhost: test\r\n{headers}content-length: {}\r\n\
         connection: close\r\n\r\n{body}",
        body.len()
    );
    exchange_once(std::net::TcpStream::from(fd), request.as_bytes())
}

/// Sends `request` on `stream` and reads the whole response (the server closes); an error
/// unless it is a 200. Waits at most 10 s for it.
fn exchange_once(mut stream: std::net::TcpStream, request: &[u8]) -> Result<String, String> {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    stream
        .write_all(request)
        .map_err(|e| format!("write: {e}"))?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .map_err(|e| format!("read: {e}"))?;
    if !response.starts_with("HTTP/1.1 200") {
        return Err(format!("bad response {response:?}"));
    }
    Ok(response)
}

/// The value of header `name` (lower case) in a response head, if there.
pub fn header_of<'a>(response: &'a str, name: &str) -> Option<&'a str> {
    response
        .split("\r\n\r\n")
        .next()?
        .split("\r\n")
        .filter_map(|line| line.split_once(':'))
        .find(|(key, _)| key.trim().eq_ignore_ascii_case(name))
        .map(|(_, value)| value.trim())
}
