//! The `NOTIFY_SOCKET` that programs which do not link `cluster-worker` report to, in the
//! sd_notify protocol (`READY=1`, `STATUS=…`, `WATCHDOG=1`, `STOPPING=1`).
//!
//! One datagram socket per worker, in a directory made fresh for the cluster (0711: nobody
//! can list it, nothing planted there can be followed), each socket 0600 and owned by the
//! user its worker runs as. What arrives on a worker's socket is that worker's: any of its
//! processes can report for it (gunicorn's master and workers, a `systemd-notify` that
//! exits right after sending), and no other user can.

use std::io::{self, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvFlags, SocketAddrUnix, SocketFlags, SocketType,
};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// The largest datagram read; longer ones are cut (the protocol's messages are short).
const MAX_DATAGRAM: usize = 4096;

/// What one datagram said.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Notification {
    pub(crate) ready: bool,
    pub(crate) watchdog: bool,
    pub(crate) stopping: bool,
    pub(crate) status: Option<String>,
}

/// The private directory every worker's notify socket lives in; removed on drop.
#[derive(Debug)]
pub(crate) struct NotifyDir {
    path: PathBuf,
}

impl NotifyDir {
    /// A fresh directory under `$XDG_RUNTIME_DIR` or the temporary directory: 0711, so a
    /// worker running as another user (`--user`) can reach its own socket by name, while
    /// no one can list the directory.
    pub(crate) fn create() -> io::Result<Self> {
        let base = std::env::var_os("XDG_RUNTIME_DIR")
            .map(PathBuf::from)
            .filter(|dir| dir.is_dir())
            .unwrap_or_else(std::env::temp_dir);
        let mut random = [0u8; 8];
        rustix::rand::getrandom(&mut random, rustix::rand::GetRandomFlags::empty())?;
        let suffix: String = random.iter().map(|b| format!("{b:02x}")).collect();
        let path = base.join(format!("cluster-notify-{}-{suffix}", std::process::id()));
        // `create`, not `create_all`: it fails if anything already has the name.
        std::os::unix::fs::DirBuilderExt::mode(&mut std::fs::DirBuilder::new(), 0o711)
            .create(&path)?;
        // The umask may have taken the search bits away.
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o711))?;
        Ok(Self { path })
    }
}

impl Drop for NotifyDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// One worker's notify socket: what arrives on it is that worker's, whoever of its
/// processes sent it (a child that exits right after sending included). Its file is
/// removed on drop.
#[derive(Debug)]
pub(crate) struct NotifySocket {
    path: PathBuf,
    socket: AsyncFd<OwnedFd>,
}

impl NotifySocket {
    /// Binds `name` in `dir`, mode 0600 (for `owner`'s processes only, when given: the
    /// user a worker runs as).
    pub(crate) fn bind(dir: &NotifyDir, name: &str, owner: Option<u32>) -> io::Result<Self> {
        let path = dir.path.join(name);
        let _ = std::fs::remove_file(&path);
        let fd = rustix::net::socket_with(
            AddressFamily::UNIX,
            SocketType::DGRAM,
            SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
            None,
        )?;
        rustix::net::bind(&fd, &SocketAddrUnix::new(path.as_path())?)?;
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
        if let Some(uid) = owner {
            std::os::unix::fs::chown(&path, Some(uid), None)?;
        }
        let socket = fdpass::register(fd, Interest::READABLE)?;
        Ok(Self { path, socket })
    }

    /// The socket's path, for `NOTIFY_SOCKET`.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The next notification.
    pub(crate) async fn recv(&self) -> io::Result<Notification> {
        let text = self
            .socket
            .async_io(Interest::READABLE, |fd| Ok(receive(fd)?))
            .await?;
        Ok(parse(&text))
    }

    /// A notification already waiting, if any (after the worker exited: what it sent last).
    pub(crate) fn try_recv(&self) -> Option<Notification> {
        receive(self.socket.get_ref()).ok().map(|text| parse(&text))
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// One datagram's text (anything a sender attached, descriptors included, is closed).
fn receive(fd: &OwnedFd) -> rustix::io::Result<String> {
    let mut buf = [0u8; MAX_DATAGRAM];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmCredentials(1))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let received = rustix::net::recvmsg(
        fd,
        &mut [IoSliceMut::new(&mut buf)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )?;
    // Anything a sender attached (descriptors) is closed as the messages drop.
    control.drain().for_each(drop);
    let len = received.bytes.min(MAX_DATAGRAM);
    Ok(String::from_utf8_lossy(&buf[..len]).into_owned())
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
    async fn a_datagram_is_its_sockets_worker_s_even_when_its_sender_is_gone() {
        let dir = NotifyDir::create().unwrap();
        let mode = std::fs::metadata(&dir.path).unwrap();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
            0o711
        );
        let socket = NotifySocket::bind(&dir, "1-1.sock", None).unwrap();
        // A child that sends and exits at once: nothing about the sender is needed.
        let status = std::process::Command::new("python3")
            .args([
                "-c",
                "import socket,sys; s=socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); s.sendto(b'READY=1\\nSTATUS=up', sys.argv[1])",
            ])
            .arg(socket.path())
            .status()
            .unwrap();
        assert!(status.success());
        let n = socket.recv().await.unwrap();
        assert!(n.ready);
        assert_eq!(n.status.as_deref(), Some("up"));
        assert_eq!(socket.try_recv(), None);
        let path = socket.path().to_owned();
        drop(socket);
        assert!(!path.exists());
        let dir_path = dir.path.clone();
        drop(dir);
        assert!(!dir_path.exists());
    }
}
