//! The `NOTIFY_SOCKET` that programs which do not link `cluster-worker` report to, in the
//! sd_notify protocol (`READY=1`, `STATUS=…`, `WATCHDOG=1`, `STOPPING=1`).
//!
//! One datagram socket for the whole cluster, in a directory only this user can enter
//! (0700, created fresh: nothing planted there can be followed). Senders are identified by
//! the kernel's credentials (`SO_PASSCRED`), never by what they write: the datagram's pid
//! is mapped to its process group, which is the worker's (each worker leads its own), so a
//! program's own children (gunicorn's master and workers) can report for it.

use std::io::{self, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SocketAddrUnix,
    SocketFlags, SocketType,
};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// The largest datagram read; longer ones are cut (the protocol's messages are short).
const MAX_DATAGRAM: usize = 4096;

/// What one datagram said, and who sent it.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Notification {
    /// The process group of the sender: the worker's pid.
    pub(crate) group: u32,
    pub(crate) ready: bool,
    pub(crate) watchdog: bool,
    pub(crate) stopping: bool,
    pub(crate) status: Option<String>,
}

/// The bound socket; its directory is removed on drop.
#[derive(Debug)]
pub(crate) struct NotifySocket {
    dir: PathBuf,
    path: PathBuf,
    socket: AsyncFd<OwnedFd>,
}

impl NotifySocket {
    /// Binds a fresh socket in a new private directory under `$XDG_RUNTIME_DIR` or the
    /// temporary directory.
    pub(crate) fn bind() -> io::Result<Self> {
        let base = std::env::var_os("XDG_RUNTIME_DIR")
            .map(PathBuf::from)
            .filter(|dir| dir.is_dir())
            .unwrap_or_else(std::env::temp_dir);
        let mut random = [0u8; 8];
        rustix::rand::getrandom(&mut random, rustix::rand::GetRandomFlags::empty())?;
        let suffix: String = random.iter().map(|b| format!("{b:02x}")).collect();
        let dir = base.join(format!("cluster-notify-{}-{suffix}", std::process::id()));
        // `create`, not `create_all`: it fails if anything already has the name.
        std::os::unix::fs::DirBuilderExt::mode(&mut std::fs::DirBuilder::new(), 0o700)
            .create(&dir)?;
        let path = dir.join("notify.sock");
        let bound = (|| -> io::Result<OwnedFd> {
            let fd = rustix::net::socket_with(
                AddressFamily::UNIX,
                SocketType::DGRAM,
                SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
                None,
            )?;
            rustix::net::sockopt::set_socket_passcred(&fd, true)?;
            rustix::net::bind(&fd, &SocketAddrUnix::new(path.as_path())?)?;
            Ok(fd)
        })();
        let socket = match bound.and_then(|fd| fdpass::register(fd, Interest::READABLE)) {
            Ok(socket) => socket,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e);
            }
        };
        Ok(Self { dir, path, socket })
    }

    /// The socket's path, for `NOTIFY_SOCKET`.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The next notification from a process this user may have started (datagrams without
    /// credentials, or from a process that is gone, are skipped).
    pub(crate) async fn recv(&self) -> io::Result<Notification> {
        loop {
            let (pid, text) = self
                .socket
                .async_io(Interest::READABLE, |fd| Ok(receive(fd)?))
                .await?;
            let Some(pid) = pid else { continue };
            let Ok(group) = rustix::process::getpgid(Some(pid)) else {
                continue;
            };
            let mut notification = parse(&text);
            notification.group = group.as_raw_nonzero().get() as u32;
            return Ok(notification);
        }
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One datagram: the sender's pid (from its credentials) and the text.
fn receive(fd: &OwnedFd) -> rustix::io::Result<(Option<rustix::process::Pid>, String)> {
    let mut buf = [0u8; MAX_DATAGRAM];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmCredentials(1))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let received = rustix::net::recvmsg(
        fd,
        &mut [IoSliceMut::new(&mut buf)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )?;
    let mut pid = None;
    // Anything else a sender attached (descriptors) is closed as the messages drop.
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmCredentials(credentials) = message {
            pid = Some(credentials.pid);
        }
    }
    let len = received.bytes.min(MAX_DATAGRAM);
    Ok((pid, String::from_utf8_lossy(&buf[..len]).into_owned()))
}

/// The sd_notify fields this watcher understands; others are ignored.
fn parse(text: &str) -> Notification {
    let mut notification = Notification::default();
    for line in text.lines() {
        match line.split_once('=') {
            Some(("READY", "1")) => notification.ready = true,
            Some(("WATCHDOG", "1")) => notification.watchdog = true,
            Some(("STOPPING", "1")) => notification.stopping = true,
            Some(("STATUS", status)) => {
                notification.status = Some(crate::sanitize::sanitize(status, 256).into_owned())
            }
            _ => {}
        }
    }
    notification
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_read_line_by_line() {
        let n = parse("READY=1\nSTATUS=Gunicorn arbiter booted\nMAINPID=7");
        assert!(n.ready && !n.watchdog);
        assert_eq!(n.status.as_deref(), Some("Gunicorn arbiter booted"));
        assert!(parse("WATCHDOG=1").watchdog);
        assert!(!parse("READY=0").ready);
    }

    #[tokio::test]
    async fn a_datagram_is_attributed_by_credentials() {
        let socket = NotifySocket::bind().unwrap();
        let mode = std::fs::metadata(socket.path().parent().unwrap()).unwrap();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
            0o700
        );
        let sender = std::os::unix::net::UnixDatagram::unbound().unwrap();
        sender
            .send_to(b"READY=1\nSTATUS=up", socket.path())
            .unwrap();
        let n = socket.recv().await.unwrap();
        assert!(n.ready);
        let own_group = rustix::process::getpgid(None).unwrap();
        assert_eq!(n.group, own_group.as_raw_nonzero().get() as u32);
        let dir = socket.path().parent().unwrap().to_owned();
        drop(socket);
        assert!(!dir.exists());
    }
}
