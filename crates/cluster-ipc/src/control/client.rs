//! [`ControlClient`]: the blocking client `cluster status` and friends use.

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use super::{
    ControlError, MAX_RESPONSE, Request, Response, check_peer, check_socket_path, decode_line,
    encode_line,
};

/// A blocking client of a control socket: checks whom it talks to, sends [`Request`]s and
/// reads [`Response`]s, each bounded in size and time.
#[derive(Debug)]
pub struct ControlClient {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl ControlClient {
    /// Connects to the socket at `path` after checking its directory, and checks the process
    /// that answers. Each answer must arrive within `timeout` (`None`: wait as long as it
    /// takes, for a restart or a followed log).
    ///
    /// # Errors
    /// [`ControlError::NotTrusted`] for a socket someone else may have planted,
    /// [`ControlError::Io`] when nobody answers.
    pub fn connect(path: &Path, timeout: Option<Duration>) -> Result<Self, ControlError> {
        check_socket_path(path, true)?;
        let stream = UnixStream::connect(path)?;
        check_peer(&stream)?;
        stream.set_read_timeout(timeout)?;
        Ok(Self {
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
        })
    }

    /// Sends one request.
    ///
    /// # Errors
    /// [`ControlError::Io`].
    pub fn send(&mut self, request: &Request) -> Result<(), ControlError> {
        self.writer.write_all(&encode_line(request)?)?;
        Ok(())
    }

    /// The next answer; `None` once the server closed the connection.
    ///
    /// # Errors
    /// [`ControlError::Malformed`], [`ControlError::TooLong`], [`ControlError::Timeout`],
    /// [`ControlError::Io`].
    pub fn receive(&mut self) -> Result<Option<Response>, ControlError> {
        let mut line = Vec::new();
        let read = io::Read::take(&mut self.reader, MAX_RESPONSE as u64 + 1)
            .read_until(b'\n', &mut line)
            .map_err(|e| match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => ControlError::Timeout(
                    self.writer
                        .read_timeout()
                        .ok()
                        .flatten()
                        .unwrap_or_default(),
                ),
                _ => ControlError::Io(e),
            })?;
        if read == 0 {
            return Ok(None);
        }
        if line.last() == Some(&b'\n') {
            line.pop();
        } else if line.len() > MAX_RESPONSE {
            return Err(ControlError::TooLong(MAX_RESPONSE));
        }
        decode_line(&line).map(Some)
    }

    /// Sends `request` and reads its one answer.
    ///
    /// # Errors
    /// As [`send`](Self::send) and [`receive`](Self::receive); [`ControlError::Closed`] when the
    /// server closed without answering.
    pub fn ask(&mut self, request: &Request) -> Result<Response, ControlError> {
        self.send(request)?;
        self.receive()?.ok_or(ControlError::Closed)
    }
}
