//! What to run and how: a [`SpawnRequest`] turned into the argv, the
//! environment and the `PATH` candidates of the low-level [`crate::spawn`],
//! and a child's failure turned into a [`SpawnError`].
//!
//! Every child of lrpm is started here the same way: in a process group of
//! its own, with stdin from `/dev/null`, its stdout and stderr piped to lrpm
//! (or lrpm's own, for an output hub), a parent-death SIGKILL armed (but
//! for the guardian, [`SpawnRequest::outlive_parent`]), the
//! descriptor limit lrpm started with, no descriptor but stdio (and one
//! that the request hands on), and an empty signal mask. It is recorded as
//! an own child ([`crate::children`]) until it is reaped.

use lrpm_core::human;
use std::collections::BTreeMap;
use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use rustix::pipe::PipeFlags;
use rustix::process::{Pid, Rlimit};

use crate::children;
use crate::spawn::{self, Fallbacks, Step, Switch};

/// Settings shared by every spawn of one process.
#[derive(Debug, Clone)]
pub struct SpawnContext {
    /// lrpm's pid: a child whose parent is already someone else by the time
    /// it arms its parent-death signal gives up.
    pub parent: Pid,
    /// The descriptor limit lrpm started with, restored in each child (many
    /// programs misbehave with a soft limit above 1024).
    pub child_nofile: Rlimit,
    /// Environment variables of lrpm's own that no child inherits unless a
    /// request sets them (a source's secret, lrpm's own run id).
    pub hidden_env: &'static [&'static str],
}

impl SpawnContext {
    /// The context of the current process.
    pub fn current(child_nofile: Rlimit, hidden_env: &'static [&'static str]) -> Self {
        Self {
            parent: rustix::process::getpid(),
            child_nofile,
            hidden_env,
        }
    }
}

/// Why a process could not be spawned.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// `user` or `group` do not exist or cannot be switched to.
    #[error("{field}: {reason}")]
    Identity {
        /// `user` or `group`.
        field: &'static str,
        /// Why.
        reason: String,
    },
    /// Setting up the spawn failed in lrpm.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The child failed before it ran its program (exec, cwd, …).
    #[error("{step}: {error}")]
    Child {
        /// What it was doing.
        step: String,
        /// The OS error.
        #[source]
        error: io::Error,
    },
}

/// Resolves the `user` and `group` a child should run as into the ids to
/// switch to, as `su` would (the user's groups, then `group` as the primary
/// group); `None` when neither is given.
pub fn resolve_identity(
    user: Option<&str>,
    group: Option<&str>,
) -> Result<Option<Switch>, SpawnError> {
    use nix::unistd::{Group, User};
    if user.is_none() && group.is_none() {
        return Ok(None);
    }
    let error = |field, reason: String| SpawnError::Identity { field, reason };
    if !rustix::process::geteuid().is_root() {
        let field = if user.is_some() { "user" } else { "group" };
        return Err(error(
            field,
            "switching identity needs lrpm to run as root".into(),
        ));
    }
    let mut id = Switch::default();
    if let Some(name) = user {
        let user = User::from_name(name)
            .map_err(|e| error("user", e.to_string()))?
            .ok_or_else(|| error("user", format!("no such user: {name}")))?;
        id.uid = Some(rustix::process::Uid::from_raw(user.uid.as_raw()));
        id.gid = Some(rustix::process::Gid::from_raw(user.gid.as_raw()));
        let cname = CString::new(name).map_err(|e| error("user", e.to_string()))?;
        let groups = nix::unistd::getgrouplist(&cname, user.gid)
            .map_err(|e| error("user", format!("cannot list its groups: {e}")))?;
        id.groups = groups
            .into_iter()
            .map(|g| rustix::process::Gid::from_raw(g.as_raw()))
            .collect();
    }
    if let Some(name) = group {
        let group = Group::from_name(name)
            .map_err(|e| error("group", e.to_string()))?
            .ok_or_else(|| error("group", format!("no such group: {name}")))?;
        let gid = rustix::process::Gid::from_raw(group.gid.as_raw());
        id.gid = Some(gid);
        if id.uid.is_none() {
            id.groups = vec![gid];
        } else if !id.groups.contains(&gid) {
            id.groups.push(gid);
        }
    }
    Ok(Some(id))
}

/// What to run: a program, its arguments, additions to its environment, its
/// working directory, identity and cgroup; [`spawn_command`] adds what every
/// child of lrpm gets.
#[derive(Debug, Default)]
pub struct SpawnRequest {
    program: OsString,
    arg0: Option<OsString>,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    cwd: Option<PathBuf>,
    identity: Option<Switch>,
    cgroup: Option<OwnedFd>,
    memory_procs: Option<OwnedFd>,
    inherit_output: bool,
    handed: Option<OwnedFd>,
    fallbacks: Fallbacks,
    outlives_parent: bool,
}

impl SpawnRequest {
    /// Runs `program`: a path if it holds a `/` (relative to the working
    /// directory), otherwise a name looked up in `PATH` (the child's, if
    /// [`SpawnRequest::env`] sets one, else lrpm's).
    pub fn new(program: impl Into<OsString>) -> Self {
        Self {
            program: program.into(),
            ..Self::default()
        }
    }

    /// Appends an argument.
    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Appends arguments.
    pub fn args<I: IntoIterator<Item = S>, S: Into<OsString>>(mut self, args: I) -> Self {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Sets `argv[0]` (the program by default).
    pub fn arg0(mut self, arg0: impl Into<OsString>) -> Self {
        self.arg0 = Some(arg0.into());
        self
    }

    /// Sets an environment variable (over lrpm's own).
    pub fn env(mut self, name: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.env.push((name.into(), value.into()));
        self
    }

    /// Sets the working directory.
    pub fn current_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cwd = Some(dir.into());
        self
    }

    /// Runs the child as `identity` ([`resolve_identity`]).
    pub fn identity(mut self, identity: Option<Switch>) -> Self {
        self.identity = identity;
        self
    }

    /// Starts the child in the cgroup whose directory is `dir` (cloned into
    /// it, or joining it before anything else where it cannot be).
    pub fn cgroup(mut self, dir: Option<OwnedFd>) -> Self {
        self.cgroup = dir;
        self
    }

    /// Makes the child join, before it executes its program, the cgroup v1
    /// memory cgroup whose `cgroup.procs` is `procs` (open for writing; see
    /// [`crate::containment::MemoryTree`]).
    pub fn memory_cgroup(mut self, procs: Option<OwnedFd>) -> Self {
        self.memory_procs = procs;
        self
    }

    /// Gives the child lrpm's own stdout and stderr instead of pipes.
    pub fn inherit_output(mut self) -> Self {
        self.inherit_output = true;
        self
    }

    /// Hands `fd` to the child as its descriptor [`HANDED_FD`].
    pub fn hand(mut self, fd: OwnedFd) -> Self {
        self.handed = Some(fd);
        self
    }

    /// Lets the child outlive lrpm: no parent-death signal, and lrpm's own
    /// `oom_score_adj` rather than the workers'. For lrpm's guardian only,
    /// which must see lrpm die and clean up after it.
    pub fn outlive_parent(mut self) -> Self {
        self.outlives_parent = true;
        self
    }

    /// Takes the fallback paths of older kernels even where the kernel has
    /// the newer calls, so that tests can run them.
    pub fn fallbacks(mut self, fallbacks: Fallbacks) -> Self {
        self.fallbacks = fallbacks;
        self
    }
}

/// The number a descriptor given with [`SpawnRequest::hand`] has in the
/// child.
pub const HANDED_FD: i32 = 3;

/// A process just spawned.
#[derive(Debug)]
pub struct Spawned {
    /// Its pid, which is also its process-group id.
    pub pid: Pid,
    /// Its pidfd.
    pub pidfd: OwnedFd,
    /// The read ends of its stdout and stderr, unless it inherited lrpm's.
    pub output: Option<(OwnedFd, OwnedFd)>,
}

/// The environment of a child: lrpm's without the context's hidden
/// variables, with `set` over it.
fn environment(set: &[(OsString, OsString)], hidden: &[&str]) -> Vec<(OsString, OsString)> {
    let mut env: BTreeMap<OsString, OsString> = std::env::vars_os()
        .filter(|(name, _)| !hidden.iter().any(|h| name == h))
        .collect();
    for (name, value) in set {
        env.insert(name.clone(), value.clone());
    }
    env.into_iter().collect()
}

/// The paths to try for `program`, as `execvpe` would: the program itself
/// if it holds a `/`, else each directory of `path` (`/bin:/usr/bin` when
/// unset; an empty entry is the working directory) joined with it.
fn candidates(program: &OsStr, path: Option<&OsStr>) -> Vec<OsString> {
    let bytes = program.as_bytes();
    if bytes.is_empty() {
        return Vec::new();
    }
    if bytes.contains(&b'/') {
        return vec![program.to_owned()];
    }
    let path = path.unwrap_or(OsStr::new("/bin:/usr/bin"));
    path.as_bytes()
        .split(|b| *b == b':')
        .map(|dir| {
            if dir.is_empty() {
                program.to_owned()
            } else {
                let mut full = dir.to_vec();
                if !dir.ends_with(b"/") {
                    full.push(b'/');
                }
                full.extend_from_slice(bytes);
                OsString::from_vec(full)
            }
        })
        .collect()
}

fn cstring(what: &str, s: impl Into<Vec<u8>>) -> Result<CString, SpawnError> {
    CString::new(s).map_err(|_| {
        SpawnError::Io(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{what} holds a NUL byte"),
        ))
    })
}

/// Spawns `cmd` the way every child of lrpm is spawned (see the module
/// documentation) and returns it with its pidfd.
///
/// The child is not reaped here: the caller reaps it through the pidfd
/// ([`children::reap_child`]), and until then it is an own child
/// ([`children::is_own_child`]).
pub fn spawn_command(cmd: SpawnRequest, ctx: &SpawnContext) -> Result<Spawned, SpawnError> {
    let env = environment(&cmd.env, ctx.hidden_env);
    let path = env
        .iter()
        .find(|(name, _)| name == "PATH")
        .map(|(_, value)| value.as_os_str());
    let candidates = candidates(&cmd.program, path)
        .into_iter()
        .map(|c| cstring("the program", c.into_vec()))
        .collect::<Result<Vec<_>, _>>()?;
    let mut argv = vec![cstring(
        "the program",
        cmd.arg0.as_ref().unwrap_or(&cmd.program).as_bytes(),
    )?];
    for arg in &cmd.args {
        argv.push(cstring("an argument", arg.as_bytes())?);
    }
    let envp = env
        .iter()
        .map(|(name, value)| {
            let mut entry = name.as_bytes().to_vec();
            entry.push(b'=');
            entry.extend_from_slice(value.as_bytes());
            cstring("the environment", entry)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let cwd = cmd
        .cwd
        .as_ref()
        .map(|dir| cstring("the working directory", dir.as_os_str().as_bytes()))
        .transpose()?;
    let pipes = if cmd.inherit_output {
        None
    } else {
        let out = rustix::pipe::pipe_with(PipeFlags::CLOEXEC).map_err(io::Error::from)?;
        let err = rustix::pipe::pipe_with(PipeFlags::CLOEXEC).map_err(io::Error::from)?;
        Some((out, err))
    };
    let (own_out, own_err) = (io::stdout(), io::stderr());
    let (stdout, stderr): (BorrowedFd<'_>, BorrowedFd<'_>) = match &pipes {
        Some(((_, out_w), (_, err_w))) => (out_w.as_fd(), err_w.as_fd()),
        None => (own_out.as_fd(), own_err.as_fd()),
    };
    let plan = spawn::Plan {
        candidates: &candidates,
        argv: &argv,
        envp: &envp,
        cwd: cwd.as_deref(),
        identity: cmd.identity.as_ref(),
        parent: ctx.parent,
        nofile: ctx.child_nofile,
        cgroup: cmd.cgroup.as_ref().map(AsFd::as_fd),
        memory_procs: cmd.memory_procs.as_ref().map(AsFd::as_fd),
        stdout,
        stderr,
        handed: cmd.handed.as_ref().map(AsFd::as_fd),
        fallbacks: cmd.fallbacks,
        outlives_parent: cmd.outlives_parent,
    };
    let child = spawn::spawn(&plan).map_err(|failure| child_error(&cmd, failure))?;
    children::register(child.pid);
    // lrpm keeps only the read ends: the output ends when the child dies.
    let output = pipes.map(|((out_r, _), (err_r, _))| (out_r, err_r));
    Ok(Spawned {
        pid: child.pid,
        pidfd: child.pidfd,
        output,
    })
}

/// The error for a child that did not reach its program.
fn child_error(cmd: &SpawnRequest, failure: spawn::Failure) -> SpawnError {
    let program = cmd.program.to_string_lossy();
    let step = match failure.step {
        None => "cannot start a process".to_owned(),
        Some(Step::Unshare) => "cannot get a descriptor table".to_owned(),
        Some(Step::Cgroup) => "cannot join the run's cgroup".to_owned(),
        Some(Step::ProcessGroup) => "cannot make a process group".to_owned(),
        Some(Step::Stdio) => "cannot set up stdin, stdout and stderr".to_owned(),
        Some(Step::Groups) => "cannot set the supplementary groups".to_owned(),
        Some(Step::Gid) => "cannot switch group".to_owned(),
        Some(Step::Uid) => "cannot switch user".to_owned(),
        Some(Step::DeathSignal) => "cannot arm the parent-death signal".to_owned(),
        Some(Step::ParentGone) => "lrpm ended while it started".to_owned(),
        Some(Step::Chdir) => format!(
            "cannot change to the working directory {}",
            human::cut(cmd.cwd.as_deref().unwrap_or(Path::new("")).display())
        ),
        Some(Step::Signals) => "cannot reset its signals".to_owned(),
        Some(Step::OomScoreAdj) => "cannot set its oom_score_adj".to_owned(),
        Some(Step::MemoryCgroup) => "cannot join its memory cgroup (memoryMax)".to_owned(),
        Some(Step::Exec) if failure.error.raw_os_error() == Some(libc::E2BIG) => format!(
            "cannot run {}: its arguments and environment (LRPM_WORKER_CONFIG, env, and \
             lrpm's own environment) are over the kernel's limits",
            human::cut(format_args!("{program:?}"))
        ),
        Some(Step::Exec) => format!("cannot run {}", human::cut(format_args!("{program:?}"))),
    };
    SpawnError::Child {
        step,
        error: failure.error,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use lrpm_core::job::JobId;
    use lrpm_core::supervisor::RunId;
    use rustix::process::{Resource, getrlimit, kill_process_group};

    use super::*;
    use crate::children::reap_child_blocking;
    use crate::containment::{CgroupChoice, Containment};

    fn strings(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    fn context() -> SpawnContext {
        SpawnContext::current(getrlimit(Resource::Nofile), &["LRPM_TEST_HIDDEN"])
    }

    #[test]
    fn a_program_with_a_slash_is_not_searched() {
        assert_eq!(
            candidates(OsStr::new("./bin/w"), Some(OsStr::new("/a:/b"))),
            strings(&["./bin/w"])
        );
        assert!(candidates(OsStr::new(""), None).is_empty());
    }

    #[test]
    fn path_is_searched_in_order_as_execvp_does() {
        assert_eq!(
            candidates(OsStr::new("w"), Some(OsStr::new("/a:/b/::/c"))),
            strings(&["/a/w", "/b/w", "w", "/c/w"])
        );
        assert_eq!(
            candidates(OsStr::new("w"), None),
            strings(&["/bin/w", "/usr/bin/w"])
        );
    }

    #[test]
    fn the_environment_drops_hidden_variables_unless_set() {
        // PATH is always in the test's environment: hide it.
        let env = environment(
            &[(OsString::from("A_NEW_ONE"), OsString::from("1"))],
            &["PATH"],
        );
        assert!(env.iter().any(|(n, v)| n == "A_NEW_ONE" && v == "1"));
        assert!(!env.iter().any(|(n, _)| n == "PATH"));
        let env = environment(&[(OsString::from("PATH"), OsString::from("/x"))], &["PATH"]);
        assert!(env.iter().any(|(n, v)| n == "PATH" && v == "/x"));
    }

    /// Spawns `sleep 1000` into a run's cgroup and returns the cgroup the
    /// kernel says it is in, or `None` where lrpm would not use cgroups.
    fn cgroup_of_a_spawn(run: u64, fallbacks: Fallbacks) -> Option<(String, String)> {
        let containment = Containment::setup(&CgroupChoice::Auto).ok()?;
        let tree = containment.cgroups.as_ref()?;
        let job = JobId::from("cgroup-test");
        let (cgroup, dir) = tree
            .runs()
            .create_run(&job, RunId(run))
            .expect("create the run's cgroup");
        let request = SpawnRequest::new("sleep")
            .arg("1000")
            .cgroup(Some(dir))
            .fallbacks(fallbacks);
        let spawned = spawn_command(request, &context()).expect("spawn sleep");
        let pid = spawned.pid.as_raw_nonzero().get();
        let inside = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("its cgroup");
        let _ = kill_process_group(spawned.pid, rustix::process::Signal::KILL);
        reap_child_blocking(spawned.pid, spawned.pidfd.as_fd());
        let expected = cgroup.dir().file_name()?.to_string_lossy().into_owned();
        cgroup.remove();
        Some((inside, expected))
    }

    #[test]
    fn a_child_starts_in_its_cgroup_cloned_into_it_or_joining_it() {
        let Some((inside, expected)) = cgroup_of_a_spawn(1, Fallbacks::default()) else {
            assert!(
                std::env::var_os("LRPM_TEST_REQUIRE_ALL").is_none(),
                "no writable cgroup v2 here, and LRPM_TEST_REQUIRE_ALL is set"
            );
            eprintln!("no writable cgroup v2 here: nothing to check");
            return;
        };
        assert!(inside.contains(&expected), "{inside} (expected {expected})");
        let fallback = Fallbacks {
            join_cgroup: true,
            ..Fallbacks::default()
        };
        let (inside, expected) = cgroup_of_a_spawn(2, fallback).expect("cgroups a moment ago");
        assert!(inside.contains(&expected), "{inside} (expected {expected})");
    }

    /// Spawns `sleep 1000` as `request` says and returns what a test
    /// checks: its descriptors and /proc status; kills and reaps it.
    fn spawn_sleep_and_inspect(request: SpawnRequest) -> (Vec<u32>, String) {
        let spawned = spawn_command(request, &context()).expect("spawn sleep");
        let pid = spawned.pid.as_raw_nonzero().get();
        let read_fds = || {
            let mut fds: Vec<u32> = std::fs::read_dir(format!("/proc/{pid}/fd"))
                .expect("fds")
                .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect();
            fds.sort_unstable();
            fds
        };
        // `sleep` may hold a file of its own for a moment as it starts (its
        // locale): wait, boundedly, for it to settle; a leaked descriptor
        // stays and fails the test.
        let expected: &[u32] = if request_hands() {
            &[0, 1, 2, 3]
        } else {
            &[0, 1, 2]
        };
        let deadline = Instant::now() + std::time::Duration::from_secs(10);
        let mut fds = read_fds();
        while fds != expected && Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
            fds = read_fds();
        }
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
        let _ = kill_process_group(spawned.pid, rustix::process::Signal::KILL);
        reap_child_blocking(spawned.pid, spawned.pidfd.as_fd());
        (fds, status)
    }

    thread_local! {
        static HANDS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }

    fn request_hands() -> bool {
        HANDS.with(std::cell::Cell::get)
    }

    #[test]
    fn a_child_holds_only_stdio_with_close_range_and_with_the_fallback() {
        let (fds, _) = spawn_sleep_and_inspect(SpawnRequest::new("sleep").arg("1000"));
        assert_eq!(fds, [0, 1, 2]);
        // As on a kernel without CLOSE_RANGE_UNSHARE: unshare(CLONE_FILES).
        let fallback = Fallbacks {
            unshare: true,
            ..Fallbacks::default()
        };
        let request = SpawnRequest::new("sleep").arg("1000").fallbacks(fallback);
        let (fds, status) = spawn_sleep_and_inspect(request);
        assert_eq!(fds, [0, 1, 2]);
        let blocked = status
            .lines()
            .find_map(|l| l.strip_prefix("SigBlk:"))
            .expect("SigBlk");
        assert_eq!(u64::from_str_radix(blocked.trim(), 16), Ok(0), "{status}");
    }

    #[test]
    fn a_handed_descriptor_is_the_childs_fd_3_and_nothing_else_leaks() {
        let (ours, theirs) = rustix::pipe::pipe_with(PipeFlags::CLOEXEC).expect("pipe");
        HANDS.with(|h| h.set(true));
        let request = SpawnRequest::new("sleep")
            .arg("1000")
            .inherit_output()
            .hand(theirs);
        let (fds, _) = spawn_sleep_and_inspect(request);
        HANDS.with(|h| h.set(false));
        assert_eq!(fds, [0, 1, 2, 3]);
        drop(ours);
    }

    #[test]
    fn a_missing_program_or_directory_is_a_clear_error() {
        let err = spawn_command(SpawnRequest::new("/nonexistent/lrpm-x"), &context())
            .expect_err("no such program");
        assert_eq!(
            err.to_string(),
            "cannot run \"/nonexistent/lrpm-x\": No such file or directory (os error 2)"
        );
        let err = spawn_command(
            SpawnRequest::new("true").current_dir("/nonexistent/lrpm-dir"),
            &context(),
        )
        .expect_err("no such directory");
        assert_eq!(
            err.to_string(),
            "cannot change to the working directory /nonexistent/lrpm-dir: \
             No such file or directory (os error 2)"
        );
    }
}
