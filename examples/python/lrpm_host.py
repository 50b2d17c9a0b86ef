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


def fork(host_sock, request, fds):
    """Forks the worker through an intermediate process, which exits at
    once so that the worker is re-parented to lrpm (a subreaper); returns
    the worker's pid once the intermediate is reaped."""
    stdout, stderr, own = fds
    cls = resolve(request["class"])
    sys.stdout.flush()
    sys.stderr.flush()
    r, w = os.pipe()
    middle = os.fork()
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
    fd = int(os.environ.pop("LRPM_HOST_FD"))
    host_sock = socket.socket(fileno=fd)
    send(host_sock, type="ready", protocol=PROTOCOL)
    while True:
        msg, fds, _flags, _addr = socket.recv_fds(host_sock, MAX_DATAGRAM, 3)
        if not msg:
            return  # lrpm has gone
        try:
            request = json.loads(msg)
            if request.get("type") != "fork" or len(fds) != 3:
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
