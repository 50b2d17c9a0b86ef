#!/usr/bin/env python3
"""A worker host for lrpm (protocol 1, see docs/hosts.md), standard library only.

    python3 lrpm_host.py [--path DIR]... [MODULE]...

imports each MODULE once (the application: its imports are shared, copy-on-write,
by every worker), then forks one process per worker on lrpm's request. A job runs
here when it names this host and a worker class:

    {"name": "mailer", "workerClass": "myapp.workers:Mailer",
     "host": ["python3", "/path/to/lrpm_host.py", "--path", "/srv/app", "myapp.workers"]}

A worker class has php-lrpm's shape: `start(config)` once, then `cycle()` again
and again until SIGTERM (or the job's stopSignal), which is honoured between two
cycles. `workerClass` is `module:Class` (or `module.Class`).
"""

import ctypes
import importlib
import json
import os
import signal
import socket
import sys
import traceback

PROTOCOL = 1
MAX_DATAGRAM = 4 * 1024 * 1024
PR_SET_PDEATHSIG = 1
SYS_CLONE3 = 435  # the same number on every architecture
CLONE_INTO_CGROUP = 0x200000000


class CloneArgs(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint64) for name in (
        "flags", "pidfd", "child_tid", "parent_tid", "exit_signal", "stack", "stack_size",
        "tls", "set_tid", "set_tid_size", "cgroup")]


_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long

_classes = {}


def resolve(name):
    """The class named `module:Class` or `module.Class`, imported once."""
    if name not in _classes:
        module, sep, attr = name.partition(":")
        if not sep:
            module, _, attr = name.rpartition(".")
        if not module or not attr:
            raise ValueError(f"{name!r} is not module:Class")
        _classes[name] = getattr(importlib.import_module(module), attr)
    return _classes[name]


def run_id_slot():
    """Where lrpm's LRPM_RUN_ID_SLOT=... lies in the process's original
    environment block (the one /proc/PID/environ shows), as (address,
    length), or None."""
    try:
        with open("/proc/self/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # env_start and env_end are fields 50 and 51; the name (field 2) may
    # hold spaces, so count after its closing parenthesis.
    fields = stat[stat.rindex(b")") + 2:].split()
    start, end = int(fields[47]), int(fields[48])
    if start <= 0 or end <= start:
        return None
    block = ctypes.string_at(start, end - start)
    at = (b"\0" + block).find(b"\0LRPM_RUN_ID_SLOT=")
    if at < 0:
        return None
    nul = block.find(b"\0", at)
    return start + at, (len(block) if nul < 0 else nul) - at


def mark_run(slot, run_id):
    """Rewrites the slot, in the worker, as LRPM_RUN_ID=run_id (padded with
    NULs): /proc/PID/environ then names the worker's run as an exec'd
    worker's does, which is how lrpm without cgroups, and its guardian,
    recognise the processes of a run (daemons that left it included)."""
    entry = f"LRPM_RUN_ID={run_id}".encode()
    if slot is None or not isinstance(run_id, str) or len(entry) > slot[1]:
        return
    ctypes.memmove(slot[0], entry.ljust(slot[1], b"\0"), slot[1])


_run_id_slot = None


def send(sock, **msg):
    sock.send(json.dumps(msg).encode())


def run_worker(host_sock, request, stdout, stderr, own, cls):
    """The worker, after the second fork. Never returns."""
    code = 1
    try:
        os.setsid()  # its own session and process group
        null = os.open("/dev/null", os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(stdout, 1)
        os.dup2(stderr, 2)
        # Keep stdio and its own socket (moved to 3), close everything else,
        # the host's socket included.
        host_sock.detach()
        os.dup2(own, 3)
        os.closerange(4, os.sysconf("SC_OPEN_MAX"))
        link = socket.socket(fileno=3)
        link.send(b'{"type":"hello"}')
        answer = link.recv(4096)
        go = json.loads(answer) if answer else {}
        if go.get("type") != "go":
            os._exit(1)  # lrpm did not take it: no user code runs
        link.close()
        # Dies with lrpm, its parent from now on (the host forked twice).
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != go.get("pid"):
            os._exit(1)
        mark_run(_run_id_slot, (request.get("env") or {}).get("LRPM_RUN_ID"))
        os.environ.update(request.get("env") or {})
        if request.get("cwd"):
            os.chdir(request["cwd"])
        sys.stdin = open(0, "r", closefd=False)
        sys.stdout = open(1, "w", buffering=1, closefd=False)
        sys.stderr = open(2, "w", buffering=1, closefd=False)
        stopping = []

        def stop(_signum, _frame):
            stopping.append(True)

        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT,
                    signal.SIGUSR1, signal.SIGUSR2):
            signal.signal(sig, stop)
        worker = cls()
        worker.start(request.get("config"))
        while not stopping:
            worker.cycle()
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except BaseException:
        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def fork_intermediate(cgroup):
    """Forks the intermediate process: into the run's cgroup (the directory
    `cgroup`) with clone3(CLONE_INTO_CGROUP) when lrpm sent one, so that the
    worker it forks starts there and lrpm need not move it; a plain fork
    otherwise, or when clone3 fails (an old kernel: lrpm then moves the
    worker itself). The intermediate only forks and exits: what os.fork()
    does beside the system call matters to neither it nor the worker
    (forked with os.fork())."""
    if cgroup is not None:
        args = CloneArgs(flags=CLONE_INTO_CGROUP, exit_signal=signal.SIGCHLD, cgroup=cgroup)
        pid = _libc.syscall(ctypes.c_long(SYS_CLONE3), ctypes.byref(args),
                            ctypes.c_size_t(ctypes.sizeof(args)))
        if pid >= 0:
            return pid
    return os.fork()


def fork(host_sock, request, fds):
    """Forks the worker through an intermediate process, which exits at
    once so that the worker is re-parented to lrpm (a subreaper); returns
    the worker's pid once the intermediate is reaped."""
    stdout, stderr, own = fds[:3]
    cgroup = fds[3] if len(fds) > 3 else None
    cls = resolve(request["class"])
    sys.stdout.flush()
    sys.stderr.flush()
    r, w = os.pipe()
    middle = fork_intermediate(cgroup)
    if middle == 0:
        try:
            os.close(r)
            worker = os.fork()
            if worker == 0:
                os.close(w)
                run_worker(host_sock, request, stdout, stderr, own, cls)
            os.write(w, str(worker).encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as pipe:
        pid = pipe.read()
    os.waitpid(middle, 0)
    if not pid:
        raise OSError("the intermediate process could not fork")
    return int(pid)


def main():
    args = sys.argv[1:]
    while args and args[0] == "--path":
        sys.path.insert(0, args[1])
        args = args[2:]
    for module in args:
        importlib.import_module(module)
    global _run_id_slot
    _run_id_slot = run_id_slot()
    os.environ.pop("LRPM_RUN_ID_SLOT", None)
    fd = int(os.environ.pop("LRPM_HOST_FD"))
    host_sock = socket.socket(fileno=fd)
    send(host_sock, type="ready", protocol=PROTOCOL, cgroup=True)
    while True:
        msg, fds, _flags, _addr = socket.recv_fds(host_sock, MAX_DATAGRAM, 4)
        if not msg:
            return  # lrpm has gone
        try:
            request = json.loads(msg)
            if request.get("type") != "fork" or len(fds) != (4 if request.get("cgroup") else 3):
                continue
            try:
                pid = fork(host_sock, request, fds)
                send(host_sock, type="forked", id=request["id"], pid=pid)
            except Exception as e:  # a class that does not load, a failed fork
                send(host_sock, type="error", id=request["id"], message=f"{type(e).__name__}: {e}")
        finally:
            for fd in fds:
                os.close(fd)


if __name__ == "__main__":
    main()
