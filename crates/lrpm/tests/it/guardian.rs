//! lrpm's guardian (`crates/lrpm/src/guardian.rs`): workers never outlive
//! lrpm, even a daemon that left its job's process group when lrpm is
//! SIGKILLed; a guardian that dies is started again; the heartbeat's
//! deadline (the cluster mode's dead-man's switch) kills the farm; a clean
//! shutdown kills nothing more.
//!
//! How long a kill took is measured from the test's SIGKILL to the
//! daemon's end as its pidfd reports it. Every process a test starts is
//! ended by pid; each test checks that the guardian is gone at its end.

use std::os::fd::{AsFd, OwnedFd};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use lrpm_process::command::{HANDED_FD, SpawnContext, SpawnRequest, spawn_command};
use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::net::{AddressFamily, RecvFlags, SendFlags, SocketFlags, SocketType};
use rustix::process::{Pid, PidfdFlags, Signal};

use crate::support::{
    Lrpm, cgroup_dir, cgroup_of, children_of, fd_count, is_guardian, lrpm_binary, pid_alive,
    prerequisite, read_pid, signal, wait_until,
};

/// How long anything may take on a loaded 2-core machine.
const LONG: Duration = Duration::from_secs(30);

/// The promise: a daemon of a worker is gone this soon after lrpm's death.
const PROMISE: Duration = Duration::from_secs(1);

/// The guardian among the children of lrpm `lrpm`.
fn guardian_of(lrpm: u32) -> Option<u32> {
    children_of(lrpm)
        .into_iter()
        .find(|child| is_guardian(*child))
}

/// A pidfd of process `pid`.
fn pidfd(pid: u32) -> OwnedFd {
    let pid = Pid::from_raw(i32::try_from(pid).expect("a pid")).expect("a pid");
    rustix::process::pidfd_open(pid, PidfdFlags::empty()).expect("pidfd_open")
}

/// Waits up to `timeout` for `fd` to become readable (a pidfd: its process
/// ended); returns whether it did.
fn readable(fd: impl AsFd, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let ts = Timespec {
            tv_sec: i64::try_from(left.as_secs()).expect("seconds"),
            tv_nsec: i64::from(left.subsec_nanos()),
        };
        let mut fds = [PollFd::new(&fd, PollFlags::IN)];
        match rustix::event::poll(&mut fds, Some(&ts)) {
            Ok(n) if n > 0 => return true,
            Ok(_) => return false,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => panic!("poll: {e}"),
        }
    }
}

/// A `sleep` started by the test whose environment says it belongs to run
/// `run_id` (`LRPM_RUN_ID`), killed by pid when dropped.
struct Sleeper(Child);

impl Sleeper {
    fn start(run_id: &str) -> Sleeper {
        Sleeper(
            Command::new("sleep")
                .arg("1000")
                .env("LRPM_RUN_ID", run_id)
                .stdin(Stdio::null())
                .spawn()
                .expect("spawn sleep"),
        )
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }

    fn alive(&mut self) -> bool {
        matches!(self.0.try_wait(), Ok(None))
    }
}

impl Drop for Sleeper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A job whose worker starts a daemon that leaves its process group and
/// session (`setsid`) and writes its pid to `daemon.pid`.
const DAEMON_JOB: &str = "[d]\nname = \"d\"\ncommand = \"setsid sh -c 'echo $$ > daemon.pid; exec \
                          sleep 1000' & exec sleep 1000\"\n";

/// Starts lrpm with `args` on [`DAEMON_JOB`] and returns it with its
/// daemon's pid, once the daemon runs in a session of its own.
fn lrpm_with_a_daemon(args: &[&str]) -> (Lrpm, u32) {
    let lrpm = Lrpm::start("jobs.toml", DAEMON_JOB, args);
    let daemon = read_pid(&lrpm.dir.path().join("daemon.pid"));
    wait_until("the daemon to run", LONG, || pid_alive(daemon));
    (lrpm, daemon)
}

/// SIGKILLs lrpm and returns how long its daemon lived after that; panics
/// if the daemon lived on past [`LONG`].
fn sigkill_and_time_the_daemon(lrpm: &mut Lrpm, daemon: u32) -> Duration {
    let daemon_fd = pidfd(daemon);
    let killed = Instant::now();
    signal(lrpm.pid(), Signal::KILL);
    assert!(
        readable(&daemon_fd, LONG),
        "the daemon {daemon} outlived lrpm by {LONG:?}\n{}",
        lrpm.stderr()
    );
    let took = killed.elapsed();
    assert!(lrpm.wait_timeout(LONG).is_some(), "lrpm is dead");
    took
}

/// Waits for the guardian `guardian` to exit.
fn wait_for_the_guardian_to_exit(guardian: u32) {
    wait_until("the guardian to exit", LONG, || !pid_alive(guardian));
}

#[test]
fn sigkill_of_lrpm_kills_a_setsid_daemon_within_a_second_with_cgroups() {
    let (mut lrpm, daemon) = lrpm_with_a_daemon(&[]);
    if !prerequisite("a writable cgroup v2", lrpm.uses_cgroups()) {
        return;
    }
    let guardian = guardian_of(lrpm.pid()).expect("lrpm has a guardian");
    // Few descriptors (stdio, its socket, lrpm's pidfd), and not in a job's
    // cgroup: in lrpm's own.
    assert!(fd_count(guardian) <= 5, "{:?}", fd_count(guardian));
    assert_eq!(cgroup_of(guardian), cgroup_of(lrpm.pid()));
    // A process that carries another lrpm's run id is left alone.
    let mut bystander = Sleeper::start("1.1");
    let tree = cgroup_of(lrpm.pid())
        .and_then(|path| cgroup_dir(&path))
        .map(|dir| dir.join(format!("lrpm-{}", lrpm.pid())))
        .expect("lrpm's cgroup tree");
    assert!(tree.is_dir());
    let took = sigkill_and_time_the_daemon(&mut lrpm, daemon);
    eprintln!("cgroups: the daemon was gone {took:?} after lrpm's SIGKILL");
    assert!(took < PROMISE, "the daemon lived {took:?} after lrpm");
    wait_for_the_guardian_to_exit(guardian);
    // The guardian removed the tree, as lrpm would have.
    assert!(!tree.exists(), "{} is left", tree.display());
    assert!(bystander.alive());
    assert!(lrpm.stderr().contains("ended without shutting down"));
}

#[test]
fn sigkill_of_lrpm_kills_a_setsid_daemon_within_a_second_without_cgroups() {
    let (mut lrpm, daemon) = lrpm_with_a_daemon(&["--cgroup", "off"]);
    let guardian = guardian_of(lrpm.pid()).expect("lrpm has a guardian");
    let mut bystander = Sleeper::start("1.1");
    let took = sigkill_and_time_the_daemon(&mut lrpm, daemon);
    eprintln!("run ids: the daemon was gone {took:?} after lrpm's SIGKILL");
    assert!(took < PROMISE, "the daemon lived {took:?} after lrpm");
    wait_for_the_guardian_to_exit(guardian);
    assert!(bystander.alive());
}

#[test]
fn a_guardian_killed_is_started_again_and_guards_as_well() {
    let (mut lrpm, daemon) = lrpm_with_a_daemon(&[]);
    let first = guardian_of(lrpm.pid()).expect("lrpm has a guardian");
    signal(first, Signal::KILL);
    let second = crate::support::wait_for_value("a new guardian", LONG, || {
        guardian_of(lrpm.pid()).filter(|pid| *pid != first)
    });
    assert!(
        lrpm.stderr()
            .contains("the guardian ended (killed by SIGKILL)")
    );
    let took = sigkill_and_time_the_daemon(&mut lrpm, daemon);
    eprintln!("second guardian: the daemon was gone {took:?} after lrpm's SIGKILL");
    assert!(took < PROMISE, "the daemon lived {took:?} after lrpm");
    wait_for_the_guardian_to_exit(second);
}

#[test]
fn a_clean_shutdown_ends_the_guardian_and_kills_nothing_more() {
    let (mut lrpm, daemon) = lrpm_with_a_daemon(&["--cgroup", "off"]);
    let guardian = guardian_of(lrpm.pid()).expect("lrpm has a guardian");
    // It carries one of this lrpm's run ids, but lrpm did not start it: a
    // guardian that killed by run id at a clean shutdown would kill it.
    let mut marked = Sleeper::start(&format!("{}.999999", lrpm.pid()));
    assert!(lrpm.terminate().success(), "{}", lrpm.stderr());
    wait_for_the_guardian_to_exit(guardian);
    assert!(marked.alive(), "the guardian killed at a clean shutdown");
    assert!(!lrpm.stderr().contains("ended without shutting down"));
    // Without cgroups, the daemon lived until lrpm's shutdown, which
    // killed it as one of its job's (by its run id).
    wait_until("the daemon to be gone", LONG, || !pid_alive(daemon));
}

/// A guardian the test started for itself, as lrpm starts one: the test
/// plays lrpm (its parent, over its socket), and its farm is the
/// processes with one of the test's run ids.
struct Guardian {
    pid: u32,
    pidfd: OwnedFd,
    socket: OwnedFd,
}

impl Guardian {
    fn start() -> Guardian {
        let (ours, theirs) = rustix::net::socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )
        .expect("socketpair");
        let request = SpawnRequest::new(lrpm_binary())
            .args(["__lrpm-guardian".to_owned(), std::process::id().to_string()])
            .inherit_output()
            .outlive_parent()
            .hand(theirs);
        let ctx = SpawnContext::current(
            rustix::process::getrlimit(rustix::process::Resource::Nofile),
            &[],
        );
        let spawned = spawn_command(request, &ctx).expect("spawn the guardian");
        assert_eq!(HANDED_FD, 3);
        Guardian {
            pid: spawned.pid.as_raw_nonzero().get().unsigned_abs(),
            pidfd: spawned.pidfd,
            socket: ours,
        }
    }

    fn send(&self, order: &str) {
        rustix::net::send(&self.socket, order.as_bytes(), SendFlags::NOSIGNAL).expect("send");
    }

    /// Arms it with a deadline `after` from now, on the monotonic clock.
    fn arm(&self, after: Duration) -> Instant {
        let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
        let at =
            Duration::new(now.tv_sec.unsigned_abs(), now.tv_nsec.unsigned_abs() as u32) + after;
        self.send(&format!("arm {}", at.as_nanos()));
        Instant::now() + after
    }

    /// Its next message, within `timeout`.
    fn hear(&self, timeout: Duration) -> Option<String> {
        if !readable(&self.socket, timeout) {
            return None;
        }
        let mut buf = [0u8; 64];
        let (n, _) =
            rustix::net::recv(&self.socket, &mut buf[..], RecvFlags::DONTWAIT).expect("recv");
        Some(String::from_utf8_lossy(&buf[..n]).into_owned())
    }

    /// Waits for it to exit and reaps it; returns its exit code.
    fn reap(&self) -> Option<i32> {
        assert!(readable(&self.pidfd, LONG), "the guardian did not exit");
        let status = rustix::process::waitid(
            rustix::process::WaitId::PidFd(self.pidfd.as_fd()),
            rustix::process::WaitIdOptions::EXITED,
        )
        .expect("waitid")
        .expect("a status");
        status.exit_status()
    }
}

impl Drop for Guardian {
    fn drop(&mut self) {
        let _ = rustix::process::pidfd_send_signal(&self.pidfd, Signal::KILL);
        let _ = rustix::process::waitid(
            rustix::process::WaitId::PidFd(self.pidfd.as_fd()),
            rustix::process::WaitIdOptions::EXITED,
        );
    }
}

#[test]
fn a_late_heartbeat_kills_the_farm_and_bye_kills_nothing() {
    let run = |n: u32| format!("{}.{n}", std::process::id());
    let guardian = Guardian::start();
    let mut bystander = Sleeper::start("1.7");

    // Armed, and no newer heartbeat: the farm dies at the deadline, not
    // before, and the guardian says so.
    let mut farm = [Sleeper::start(&run(7)), Sleeper::start(&run(8))];
    let deadline = guardian.arm(Duration::from_millis(1500));
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        farm.iter_mut().all(Sleeper::alive),
        "killed before the deadline"
    );
    let fired = guardian.hear(LONG).expect("the guardian says it fired");
    let late = Instant::now().saturating_duration_since(deadline);
    assert_eq!(fired, "fired 2");
    let fds: Vec<OwnedFd> = farm.iter().map(|s| pidfd(s.pid())).collect();
    assert!(fds.iter().all(|fd| readable(fd, Duration::ZERO)));
    assert!(Instant::now() >= deadline);
    eprintln!("heartbeat: the farm was killed {late:?} after the deadline");
    assert!(late < PROMISE, "{late:?} after the deadline");

    // Heartbeats that keep coming, then a disarm: nothing is killed, and
    // the guardian, disarmed after it fired, is armed again.
    let mut spared = Sleeper::start(&run(9));
    for _ in 0..4 {
        guardian.arm(Duration::from_millis(600));
        std::thread::sleep(Duration::from_millis(200));
    }
    guardian.disarm_and_wait(Duration::from_millis(1200));
    assert!(spared.alive(), "killed after a disarm");

    // `bye`: it exits and kills nothing.
    guardian.send("bye");
    assert_eq!(guardian.reap(), Some(0));
    assert!(spared.alive(), "killed at bye");
    assert!(bystander.alive(), "another lrpm's run was killed");
    assert!(!pid_alive(guardian.pid));
}

impl Guardian {
    /// Disarms it and waits `pause`.
    fn disarm_and_wait(&self, pause: Duration) {
        self.send("disarm");
        std::thread::sleep(pause);
    }
}
