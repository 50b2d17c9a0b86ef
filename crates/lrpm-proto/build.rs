//! Records the git revision lrpm is built from, for `--version` and the
//! status document (`lrpm_proto::VERSION`).
//!
//! The revision comes from `LRPM_GIT_REVISION` when it is set (a build from
//! a source tarball, a packager's choice), else from `git` when this crate
//! is built from a checkout of lrpm's repository; without either (a
//! `cargo install` from crates.io, no `git` installed) the version is the
//! bare package version. A build never fails for want of git.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=LRPM_GIT_REVISION");
    let revision = match std::env::var("LRPM_GIT_REVISION") {
        Ok(given) => Some(given.trim().to_owned()).filter(|r| !r.is_empty()),
        Err(_) => from_git(),
    };
    let version = env!("CARGO_PKG_VERSION");
    let full = match revision {
        Some(revision) => format!("{version} (git {revision})"),
        None => version.to_owned(),
    };
    println!("cargo:rustc-env=LRPM_VERSION={full}");
}

/// The short hash of `HEAD`, when this crate's directory is tracked by a
/// git checkout (and not merely inside some other repository); the build
/// script then runs again when `HEAD` moves.
fn from_git() -> Option<String> {
    let dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR")?);
    // lrpm's own checkout (this crate is `crates/lrpm-proto` in it), not a
    // parent project's repository that happens to hold a copy.
    let top = git(&dir, &["rev-parse", "--show-toplevel"])?;
    let ours = dir.join("../..").canonicalize().ok()?;
    if Path::new(&top).canonicalize().ok()? != ours {
        return None;
    }
    let revision = git(&dir, &["rev-parse", "--short=12", "HEAD"])?;
    // HEAD itself (a checkout), the branch it points to (a commit), and
    // packed-refs (a branch whose ref was packed).
    let git_dir = git(&dir, &["rev-parse", "--absolute-git-dir"])?;
    let common = git(&dir, &["rev-parse", "--git-common-dir"])
        .map(|c| absolute(&dir, &c))
        .unwrap_or_else(|| PathBuf::from(&git_dir));
    // Only files that exist: cargo runs a build script again on every
    // build while a file it watches is missing.
    let mut watched = vec![Path::new(&git_dir).join("HEAD"), common.join("packed-refs")];
    if let Some(branch) = git(&dir, &["symbolic-ref", "-q", "HEAD"]) {
        watched.push(common.join(branch));
    }
    for path in watched.iter().filter(|p| p.exists()) {
        println!("cargo:rerun-if-changed={}", path.display());
    }
    Some(revision)
}

/// `path` resolved against `dir` (git prints the common directory relative
/// to the working directory when it is not absolute).
fn absolute(dir: &Path, path: &str) -> PathBuf {
    let path = Path::new(path);
    if path.is_absolute() {
        path.to_owned()
    } else {
        dir.join(path)
    }
}

/// The trimmed output of `git ARGS` run in `dir`, if it succeeded.
fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).ok()?;
    Some(text.trim().to_owned()).filter(|t| !t.is_empty())
}
