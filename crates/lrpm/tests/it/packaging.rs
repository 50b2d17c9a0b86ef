//! What lrpm ships beside its binaries: the systemd unit in `contrib/`
//! (checked with `systemd-analyze verify`), `--version` with the git
//! revision, and the man page and completions of `lrpm --generate`.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::support::{lrpm_binary, lrpm_command, prerequisite, run_bounded};

const LONG: Duration = Duration::from_secs(30);

/// The repository's top directory.
fn repo() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

/// Whether `program` is on `PATH`.
fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}

#[test]
fn the_systemd_unit_verifies() {
    if !prerequisite("systemd-analyze", on_path("systemd-analyze")) {
        return;
    }
    let unit = std::fs::read_to_string(repo().join("contrib/lrpm.service")).expect("the unit");
    for needed in [
        "Type=notify",
        "Delegate=yes",
        "RuntimeDirectory=lrpm",
        "KillMode=mixed",
        "WatchdogSec=",
        "ExecStart=/usr/bin/lrpm ",
    ] {
        assert!(unit.contains(needed), "the unit lacks {needed}");
    }
    // The binary it starts must exist for `verify`: this build's, in a copy
    // named as the installed unit is.
    let dir = tempfile::tempdir().expect("tempdir");
    let copy = dir.path().join("lrpm.service");
    let here = lrpm_binary().to_str().expect("utf-8 path");
    std::fs::write(&copy, unit.replace("/usr/bin/lrpm ", &format!("{here} "))).expect("copy");
    let mut verify = Command::new("systemd-analyze");
    // The man pages of Documentation= are checked once installed (.ci/run).
    verify.args(["verify", "--man=no"]).arg(&copy);
    let out = run_bounded(verify, LONG);
    // verify only warns of an unknown key or a bad value: any word is a
    // failure.
    assert!(
        out.status.success() && out.stderr.is_empty() && out.stdout.is_empty(),
        "systemd-analyze verify: {out:?}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `git rev-parse --short=12 HEAD` in the repository, if git can tell.
fn git_head() -> Option<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(repo())
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

#[test]
fn version_shows_the_git_revision() {
    let expected = match (std::env::var("LRPM_GIT_REVISION"), git_head()) {
        (Ok(given), _) => format!("{} (git {given})", env!("CARGO_PKG_VERSION")),
        (Err(_), Some(head)) => format!("{} (git {head})", env!("CARGO_PKG_VERSION")),
        (Err(_), None) => env!("CARGO_PKG_VERSION").to_owned(),
    };
    assert_eq!(lrpm_proto::VERSION, expected);
    // lrpmctl shows the same VERSION (its own tests, which always run a
    // fresh lrpmctl).
    let mut command = lrpm_command();
    command.arg("--version");
    let out = run_bounded(command, LONG);
    assert!(out.status.success(), "lrpm --version: {out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("lrpm {expected}")
    );
}

#[test]
fn lrpm_generates_its_man_page_and_completions() {
    let mut man = lrpm_command();
    man.args(["--generate", "man"]);
    let out = run_bounded(man, LONG);
    assert!(out.status.success(), "{out:?}");
    let page = String::from_utf8_lossy(&out.stdout);
    assert!(page.contains(".TH lrpm"), "{page}");
    let mut bash = lrpm_command();
    bash.args(["--generate", "complete-bash"]);
    let out = run_bounded(bash, LONG);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("--max-removal-ratio"));
}
