//! lrpm on a machine whose memory controller is on cgroup v2 (Debian's
//! default, and systemd's), which the test host, with the memory controller
//! on cgroup v1, is not: a Debian kernel booted under QEMU (software
//! emulation, a few seconds) with an initramfs of busybox, lrpm and lrpmctl.
//!
//! `.ci/run` installs QEMU and busybox and fetches the kernel into
//! `target/test-vm/vmlinuz` (`LRPM_TEST_VM_KERNEL` names another). The
//! guest mounts cgroup2, hands the memory controller down from the root
//! as systemd does for its slices, and starts lrpm alone in a cgroup of
//! its own, `lrpm.service`, as systemd starts a service with
//! `Delegate=yes`. It prints what the test checks between marker lines on
//! its serial console, which is the QEMU process's standard output.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::support::{job_in, lrpm_binary, lrpmctl_binary, prerequisite, run_bounded};

/// How long the guest may take, boot included (about 5 s when quiet).
const GUEST_TIMEOUT: Duration = Duration::from_secs(240);

/// The guest's jobs: `hog` writes 100 MiB under a 32 MiB cap (busybox's
/// `dd` fills its 100 MiB buffer from /dev/zero), `calm` sleeps under a
/// 48 MiB cap, `free` has none.
const JOBS: &str = r#"{
  "hog": {"name": "hog", "command": ["/bin/dd", "if=/dev/zero", "of=/dev/null", "bs=100M", "count=1"],
          "memoryMax": "32M", "shortRunTimeSeconds": 0},
  "calm": {"name": "calm", "command": ["/bin/sleep", "1000"], "memoryMax": "48M"},
  "free": {"name": "free", "command": ["/bin/sleep", "1000"]}
}"#;

/// The guest's init: sets the machine up, runs lrpm until `hog` was
/// OOM-killed twice, and prints what the test reads.
const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
echo 1 > /proc/sys/kernel/printk
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs tmp /tmp
mount -t cgroup2 cgroup2 /sys/fs/cgroup
echo +memory > /sys/fs/cgroup/cgroup.subtree_control
mkdir /sys/fs/cgroup/lrpm.service
sh -c 'echo $$ > /sys/fs/cgroup/lrpm.service/cgroup.procs; exec /lrpm --socket /tmp/ctl.sock /jobs.json' >/tmp/lrpm.log 2>&1 &
lrpm=$!
i=0
while [ $i -lt 600 ]; do
  if /lrpmctl --socket /tmp/ctl.sock status --json hog 2>/dev/null | grep -q '"oom_kills": *[2-9]'; then break; fi
  sleep 0.1
  i=$((i+1))
done
echo "== status"
/lrpmctl --socket /tmp/ctl.sock status --json
echo
echo "== calm"
calm=$(grep '^0::' /proc/$(cat /sys/fs/cgroup/lrpm.service/lrpm-*/job-calm-*/cgroup.procs | head -1)/cgroup | cut -d: -f3)
echo "cgroup $calm"
echo "memory.max $(cat /sys/fs/cgroup$calm/memory.max)"
echo "memory.swap.max $(cat /sys/fs/cgroup$calm/memory.swap.max 2>/dev/null || echo absent)"
echo "lrpm $(grep '^0::' /proc/$lrpm/cgroup)"
kill -TERM $lrpm
wait $lrpm
echo "== exit $?"
echo "== trees $(ls -d /sys/fs/cgroup/lrpm.service/lrpm-* 2>/dev/null | wc -l)"
echo "== log"
cat /tmp/lrpm.log
echo "== end"
poweroff -f
"#;

/// The kernel to boot, or `None` when it has not been fetched.
fn kernel() -> Option<PathBuf> {
    let path = std::env::var_os("LRPM_TEST_VM_KERNEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/test-vm/vmlinuz")
        });
    path.is_file().then_some(path)
}

/// Copies `binary` into the guest's root at `dest`, stripped of its debug
/// information (a debug build is ten times the size), with the shared
/// libraries it needs at their own paths.
fn install(root: &Path, binary: &Path, dest: &str) {
    let out = root.join(dest);
    let stripped = Command::new("strip")
        .arg("--strip-debug")
        .arg("-o")
        .arg(&out)
        .arg(binary)
        .status()
        .is_ok_and(|s| s.success());
    if !stripped {
        std::fs::copy(binary, &out).expect("copy a binary into the guest");
    }
    let ldd = Command::new("ldd").arg(binary).output().expect("run ldd");
    for lib in String::from_utf8_lossy(&ldd.stdout)
        .split_whitespace()
        .filter(|word| word.starts_with('/'))
    {
        let to = root.join(lib.trim_start_matches('/'));
        if !to.exists() {
            std::fs::create_dir_all(to.parent().expect("a directory")).expect("mkdir");
            std::fs::copy(lib, &to).expect("copy a library into the guest");
        }
    }
}

/// Builds the guest's initramfs in `dir`; returns its path.
fn initramfs(dir: &Path) -> PathBuf {
    let root = dir.join("root");
    for sub in ["bin", "proc", "sys", "dev", "tmp"] {
        std::fs::create_dir_all(root.join(sub)).expect("mkdir");
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).expect("copy busybox");
    install(&root, lrpm_binary(), "lrpm");
    install(&root, &lrpmctl_binary(), "lrpmctl");
    std::fs::write(root.join("jobs.json"), JOBS).expect("write the jobs");
    std::fs::write(root.join("init"), INIT).expect("write init");
    let chmod = Command::new("chmod")
        .arg("755")
        .arg(root.join("init"))
        .status();
    assert!(chmod.is_ok_and(|s| s.success()));
    let image = dir.join("initramfs.cpio");
    let cpio = Command::new("sh")
        .arg("-c")
        .arg("find . | cpio -o -H newc --quiet > \"$0\"")
        .arg(&image)
        .current_dir(&root)
        .status();
    assert!(cpio.is_ok_and(|s| s.success()), "cpio failed");
    image
}

/// The lines of `console` between the marker `== NAME` and the next marker.
fn section<'a>(console: &'a str, name: &str) -> &'a str {
    let marker = format!("== {name}");
    let start = console
        .find(&marker)
        .unwrap_or_else(|| panic!("no {marker:?} on the console:\n{console}"));
    let rest = &console[start + marker.len()..];
    let end = rest.find("\n== ").map_or(rest.len(), |i| i + 1);
    rest[..end].trim()
}

#[test]
fn memory_max_caps_a_worker_through_cgroup_v2_under_a_delegated_cgroup() {
    let tools = ["qemu-system-x86_64", "cpio", "ldd"]
        .iter()
        .all(|tool| which(tool))
        && Path::new("/bin/busybox").is_file();
    let Some(kernel) = kernel().filter(|_| tools) else {
        prerequisite(
            "a test kernel in target/test-vm and qemu-system-x86_64, cpio, busybox \
             (.ci/run installs them)",
            false,
        );
        return;
    };
    let dir = tempfile::tempdir().expect("a temp dir");
    let image = initramfs(dir.path());
    let mut qemu = Command::new("qemu-system-x86_64");
    qemu.args(["-accel", "tcg", "-m", "1024", "-smp", "2", "-nographic"])
        .args(["-no-reboot", "-nodefaults", "-serial", "stdio"])
        .arg("-kernel")
        .arg(&kernel)
        .arg("-initrd")
        .arg(&image)
        .args(["-append", "console=ttyS0 loglevel=1 panic=-1"]);
    let out = run_bounded(qemu, GUEST_TIMEOUT);
    let console = String::from_utf8_lossy(&out.stdout).replace('\r', "");
    assert!(
        console.contains("== end"),
        "the guest did not finish:\n{console}"
    );

    let log = section(&console, "log");
    assert!(
        log.contains("moved lrpm into /sys/fs/cgroup/lrpm.service/supervisor"),
        "{log}"
    );
    assert!(
        log.contains(
            "jobs with memoryMax are capped by the memory.max of their cgroup under \
             /sys/fs/cgroup/lrpm.service/lrpm-"
        ),
        "{log}"
    );

    // Two OOM kills of `hog`, each its run's reason; the others untouched.
    let status: Value = serde_json::from_str(section(&console, "status"))
        .unwrap_or_else(|e| panic!("status is not JSON ({e}):\n{console}"));
    let hog = job_in(&status, "hog").expect("hog in status");
    assert!(hog["oom_kills"].as_u64() >= Some(2), "{hog:#}\n{log}");
    assert_eq!(hog["last_exit"]["reason"], "oom-killed", "{hog:#}");
    for id in ["calm", "free"] {
        let job = job_in(&status, id).expect("in status");
        assert_eq!(job["state"], "running", "{job:#}");
        assert_eq!(job["oom_kills"].as_u64(), Some(0), "{job:#}");
    }

    // `calm`'s cap is its own cgroup's memory.max, with no swap beyond it;
    // lrpm runs in the leaf it moved itself into.
    let calm: Vec<&str> = section(&console, "calm").lines().collect();
    let has = |line: &str| calm.contains(&line);
    assert!(
        calm.iter()
            .any(|l| l.starts_with("cgroup /lrpm.service/lrpm-")),
        "{calm:?}"
    );
    assert!(has(&format!("memory.max {}", 48u64 << 20)), "{calm:?}");
    assert!(
        has("memory.swap.max 0") || has("memory.swap.max absent"),
        "{calm:?}"
    );
    assert!(has("lrpm 0::/lrpm.service/supervisor"), "{calm:?}");

    // A clean shutdown: exit status 0, its tree removed.
    assert_eq!(section(&console, "exit"), "0", "{log}");
    assert_eq!(section(&console, "trees"), "0", "{log}");
}

/// Whether `tool` is on the PATH.
fn which(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(tool).is_file()))
}
