//! `lrpmctl` on its own, without a running lrpm: its exit codes and the
//! output it makes from its command line alone. (Everything it does with a
//! running lrpm is tested with lrpm, in `crates/lrpm/tests`.)

use std::process::{Command, Output};

fn lrpmctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lrpmctl"))
        .args(args)
        .env_remove("LRPM_SOCKET")
        .output()
        .expect("run lrpmctl")
}

#[test]
fn an_unknown_command_is_a_usage_error() {
    let out = lrpmctl(&["frobnicate"]);
    assert_eq!(out.status.code(), Some(64), "{out:?}");
}

#[test]
fn a_socket_nobody_listens_on_is_unavailable_and_says_where() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("none.sock");
    let out = lrpmctl(&["--socket", socket.to_str().expect("utf-8"), "status"]);
    assert_eq!(out.status.code(), Some(69), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("cannot connect to lrpm at {}", socket.display())),
        "{stderr}"
    );
}

#[test]
fn completions_and_the_man_page_come_from_the_command_line_definition() {
    let out = lrpmctl(&["completions", "bash"]);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("lrpmctl"));
    let out = lrpmctl(&["man"]);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains(".TH lrpmctl"));
}

#[test]
fn version_is_the_shared_one_with_the_git_revision() {
    let out = lrpmctl(&["--version"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("lrpmctl {}", lrpm_proto::VERSION)
    );
}
