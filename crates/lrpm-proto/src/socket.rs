//! Where the control socket lives: the one path chain that both the server
//! and `lrpmctl` follow.
//!
//! An explicit path (`--socket`, or `LRPM_SOCKET`) always wins. Otherwise
//! the candidates are, in order, `/run/lrpm/control.sock`,
//! `$XDG_RUNTIME_DIR/lrpm/control.sock` and `/tmp/lrpm-$UID/control.sock`.
//! The server takes the first whose directory it can create or own, and
//! makes that directory private (mode 0700); the client takes the first
//! where a socket exists, so it finds a server of its own uid as well as
//! root's.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// The environment variable that names the socket, for both ends.
pub const SOCKET_ENV: &str = "LRPM_SOCKET";

/// The file name of the socket in the default directories.
pub const SOCKET_NAME: &str = "control.sock";

/// The default socket paths for a process of user `uid`, most preferred
/// first.
pub fn default_candidates(uid: u32) -> Vec<PathBuf> {
    candidates(std::env::var_os("XDG_RUNTIME_DIR"), uid)
}

fn candidates(xdg_runtime_dir: Option<OsString>, uid: u32) -> Vec<PathBuf> {
    let mut paths = vec![Path::new("/run/lrpm").join(SOCKET_NAME)];
    // A relative XDG_RUNTIME_DIR is invalid by the XDG specification; it is
    // ignored rather than resolved against whatever the current directory is.
    if let Some(dir) = xdg_runtime_dir
        .map(PathBuf::from)
        .filter(|d| d.is_absolute())
    {
        paths.push(dir.join("lrpm").join(SOCKET_NAME));
    }
    paths.push(PathBuf::from(format!("/tmp/lrpm-{uid}")).join(SOCKET_NAME));
    paths
}

/// The socket a client of user `uid` should connect to: `explicit` if
/// given, else the first default candidate where something exists.
///
/// When nothing exists anywhere, the error lists every path tried.
pub fn client_socket(explicit: Option<&Path>, uid: u32) -> Result<PathBuf, Vec<PathBuf>> {
    if let Some(path) = explicit {
        return Ok(path.to_owned());
    }
    let candidates = default_candidates(uid);
    match candidates.iter().find(|p| p.symlink_metadata().is_ok()) {
        Some(path) => Ok(path.clone()),
        None => Err(candidates),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chain_is_run_then_xdg_then_tmp() {
        assert_eq!(
            candidates(Some("/run/user/1000".into()), 1000),
            [
                PathBuf::from("/run/lrpm/control.sock"),
                PathBuf::from("/run/user/1000/lrpm/control.sock"),
                PathBuf::from("/tmp/lrpm-1000/control.sock"),
            ]
        );
        assert_eq!(
            candidates(None, 0),
            [
                PathBuf::from("/run/lrpm/control.sock"),
                PathBuf::from("/tmp/lrpm-0/control.sock"),
            ]
        );
        assert_eq!(candidates(Some("relative".into()), 5).len(), 2);
    }

    #[test]
    fn an_explicit_path_wins() {
        let path = Path::new("/nonexistent/x.sock");
        assert_eq!(client_socket(Some(path), 0), Ok(path.to_owned()));
    }
}
