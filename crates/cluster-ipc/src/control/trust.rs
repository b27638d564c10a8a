//! Whom to believe on a control socket: its place on the file system, and the process at
//! the other end.

use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use super::ControlError;

/// Checks that a control socket at `path` cannot have been planted, nor be replaced, by
/// another user: its directory is a directory (not a link) of this user's (or, with
/// `or_root`, root's) that no one else can write to, or a sticky one (`/tmp`: nobody can
/// remove or rename what another created there); and the socket, if it exists already,
/// belongs to this user (or, with `or_root`, to root). A server checks its own path
/// without `or_root`; a client may talk to a cluster root runs.
///
/// # Errors
/// [`ControlError::NotTrusted`] saying what is wrong; [`ControlError::Io`].
pub fn check_socket_path(path: &Path, or_root: bool) -> Result<(), ControlError> {
    let me = rustix::process::geteuid().as_raw();
    let trusted = |uid: u32| uid == me || (or_root && uid == 0);
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or_else(|| Path::new("."));
    let meta = std::fs::symlink_metadata(dir)?;
    let mode = meta.permissions().mode();
    let sticky = mode & 0o1000 != 0;
    if !meta.is_dir() || !(sticky || (trusted(meta.uid()) && mode & 0o022 == 0)) {
        return Err(ControlError::NotTrusted(format!(
            "{} is not a directory of this user (uid {me}) that no one else can write to, \
             nor a sticky one (owner uid {}, mode {:o}): refusing it, someone else may have \
             made it",
            dir.display(),
            meta.uid(),
            mode & 0o7777
        )));
    }
    match std::fs::symlink_metadata(path) {
        Ok(socket) if !trusted(socket.uid()) => Err(ControlError::NotTrusted(format!(
            "{} belongs to uid {}, not to this user (uid {me}){}",
            path.display(),
            socket.uid(),
            if or_root { " or root" } else { "" }
        ))),
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Checks the process at the other end of `socket` (`SO_PEERCRED`) runs as this user or as
/// root; its uid otherwise.
///
/// # Errors
/// [`ControlError::NotTrusted`] naming the uid, [`ControlError::Io`].
pub fn check_peer(socket: impl AsFd) -> Result<(), ControlError> {
    // Only the uid: a peer in another PID namespace has no pid here.
    let peer = fdpass::peer_credentials(socket)?;
    let me = rustix::process::geteuid().as_raw();
    if peer.uid != me && peer.uid != 0 {
        return Err(ControlError::NotTrusted(format!(
            "the other end of the control socket runs as uid {}, not as this user ({me}) or root",
            peer.uid
        )));
    }
    Ok(())
}
