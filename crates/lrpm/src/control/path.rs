//! Where the server binds the control socket: the path chain of
//! `lrpm_proto::socket`, which `lrpmctl` follows too, and the private
//! directory the socket lives in.
//!
//! An explicit path (`--socket`, or `LRPM_SOCKET`) always wins. Otherwise
//! the candidates are, in order, `/run/lrpm/control.sock`,
//! `$XDG_RUNTIME_DIR/lrpm/control.sock` and `/tmp/lrpm-$UID/control.sock`.
//! The server takes the first whose directory it can create or own, and
//! makes that directory private (mode 0700); the client takes the first
//! where a socket exists, so it finds a server of its own uid as well as
//! root's.

use std::fs::DirBuilder;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::Access;

use super::msg::ControlError;

/// The socket the server should bind: `explicit` if given (its missing
/// parent directories are created with mode 0700; existing ones are left as
/// they are), else the first default candidate whose directory can be
/// created or is already lrpm's own; that directory is made mode 0700.
pub(crate) fn server_socket(explicit: Option<&Path>) -> Result<PathBuf, ControlError> {
    if let Some(path) = explicit {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            if !parent.exists() {
                DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(parent)
                    .map_err(|source| ControlError::CreateDir {
                        path: parent.to_owned(),
                        source,
                    })?;
            }
        }
        return Ok(path.to_owned());
    }
    let mut tried = Vec::new();
    for path in lrpm_proto::socket::default_candidates(rustix::process::getuid().as_raw()) {
        let dir = path
            .parent()
            .expect("invariant: a default candidate has a directory");
        match private_dir(dir) {
            Ok(()) => return Ok(path),
            Err(e) => tried.push(format!("{}: {e}", dir.display())),
        }
    }
    Err(ControlError::NoSocketDir {
        tried: tried.join("; "),
    })
}

/// Makes `dir` exist as a directory of ours with mode 0700.
fn private_dir(dir: &Path) -> io::Result<()> {
    match DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            let meta = dir.symlink_metadata()?;
            if !meta.is_dir() {
                return Err(io::Error::other("exists and is not a directory"));
            }
            let euid = rustix::process::geteuid().as_raw();
            if meta.uid() != euid {
                return Err(io::Error::other(format!(
                    "is owned by uid {}, not by lrpm's uid {euid}",
                    meta.uid()
                )));
            }
        }
        Err(e) => return Err(e),
    }
    // The umask may have taken bits off, and an existing directory may have
    // had more: set the mode exactly.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    rustix::fs::access(dir, Access::WRITE_OK | Access::EXEC_OK).map_err(io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_dirs_are_created_0700_and_fixed_when_ours() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("lrpm");
        private_dir(&dir).expect("created");
        let mode = |d: &Path| d.metadata().expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        private_dir(&dir).expect("ours");
        assert_eq!(mode(&dir), 0o700);
        let file = tmp.path().join("file");
        std::fs::write(&file, "").expect("write");
        assert!(private_dir(&file).is_err());
    }

    #[test]
    fn explicit_parents_are_created_0700() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join("a/b/control.sock");
        assert_eq!(server_socket(Some(&path)).expect("path"), path);
        let mode = tmp
            .path()
            .join("a/b")
            .metadata()
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
    }
}
