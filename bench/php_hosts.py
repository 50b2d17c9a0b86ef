#!/usr/bin/env python3
"""PHP workers under lrpm: started with exec (examples/php/lrpm-worker.php)
or forked by the PHP worker host (examples/php/lrpm-host.php), issue 19.

    python3 bench/php_hosts.py --lrpm target/release/lrpm [--jobs 1000] [--classes 200]

For each form, in one run: N jobs of the same php-lrpm Worker, whose
start() autoloads CLASSES generated classes (about 10 KB of source each),
with OPcache on for the CLI in both forms. It measures:
- the time from lrpm's start until every worker has run its start();
- the total PSS of the workers, and of everything (lrpm, host, workers),
  from /proc/PID/smaps_rollup;
- crash → restart (SIGKILL to a worker, lrpm's clock: the new run's
  started_at minus the exit's at), the median of 20;
- the shutdown of all N (SIGTERM to lrpm until it exits).
Every process is found through lrpm's status and lrpm's children, and
lrpm is killed by its pid if it outlives the run.
"""

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PHP = ["php", "-d", "opcache.enable_cli=1"]


def write_app(d, classes):
    src = os.path.join(d, "src")
    os.makedirs(os.path.join(src, "Lib"))
    body = "\n".join(
        f"    public function m{j}(int $x): int {{ return $x * {j} + strlen(self::T{j}); }}\n"
        f"    const T{j} = '{'x' * 120}';" for j in range(40))
    names = []
    for i in range(classes):
        with open(os.path.join(src, "Lib", f"C{i}.php"), "w") as f:
            f.write(f"<?php\nnamespace Bench\\Lib;\nclass C{i}\n{{\n{body}\n}}\n")
        names.append(f"Bench\\Lib\\C{i}")
    with open(os.path.join(src, "Worker.php"), "w") as f:
        f.write("""<?php
namespace Bench;
class Worker implements \\PHPLRPM\\Worker
{
    public function start(array $config): void
    {
        for ($i = 0; $i < %d; $i++) {
            $c = "Bench\\\\Lib\\\\C$i";
            (new $c())->m1($i);
        }
        touch($config['dir'] . '/started/' . getenv('LRPM_JOB_ID'));
    }
    public function cycle(): void
    {
        sleep(1);
    }
}
""" % classes)
    with open(os.path.join(d, "autoload.php"), "w") as f:
        f.write("""<?php
spl_autoload_register(function (string $class): void {
    if (strncmp($class, 'Bench\\\\', 6) === 0) {
        require __DIR__ . '/src/' . str_replace('\\\\', '/', substr($class, 6)) . '.php';
    }
});
""")
    return names


def jobs(d, n, form, preload):
    autoload = os.path.join(d, "autoload.php")
    out = {}
    for i in range(n):
        job = {"name": f"w{i}", "workerConfig": {"dir": d}, "shortRunTimeSeconds": 0}
        if form == "exec":
            job["command"] = PHP + [os.path.join(ROOT, "examples/php/lrpm-worker.php"), autoload,
                                    "Bench\\Worker"]
        else:
            job["workerClass"] = "Bench\\Worker"
            job["host"] = PHP + [os.path.join(ROOT, "examples/php/lrpm-host.php"), autoload,
                                 "Bench\\Worker"] + preload
        out[f"w{i}"] = job
    return out


def status(sock_path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(sock_path)
    s.sendall(b'{"cmd":"status"}\n')
    data = b""
    while not data.endswith(b"\n"):
        chunk = s.recv(1 << 20)
        if not chunk:
            break
        data += chunk
    s.close()
    return json.loads(data)


def pss_kib(pid):
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def children(pid):
    out = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            out += [int(p) for p in f.read().split()]
    return out


def wait(what, timeout, cond):
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.02)


def run(form, lrpm, n, classes):
    d = tempfile.mkdtemp(prefix=f"lrpm-php-{form}-")
    preload = write_app(d, classes)
    os.makedirs(os.path.join(d, "started"))
    cfg = os.path.join(d, "jobs.json")
    with open(cfg, "w") as f:
        json.dump(jobs(d, n, form, preload), f)
    sock = os.path.join(d, "ctl.sock")
    log = open(os.path.join(d, "lrpm.log"), "w")
    t0 = time.monotonic()
    proc = subprocess.Popen([lrpm, "--socket", sock, cfg], stdout=subprocess.DEVNULL, stderr=log,
                            stdin=subprocess.DEVNULL)
    try:
        started = os.path.join(d, "started")
        wait("every worker's start()", 600, lambda: len(os.listdir(started)) >= n)
        start_s = time.monotonic() - t0
        st = wait("status with every pid", 60, lambda: (lambda s: s if all(
            j.get("pid") for j in s["jobs"]) and len(s["jobs"]) == n else None)(status(sock)))
        time.sleep(2)  # let the last starts settle
        pids = [j["pid"] for j in st["jobs"]]
        workers = sum(pss_kib(p) for p in pids)
        others = [p for p in children(proc.pid) if p not in set(pids)]
        everything = workers + pss_kib(proc.pid) + sum(pss_kib(p) for p in others)
        restarts = []
        for i in range(20):
            jid = f"w{i}"
            old = next(j for j in status(sock)["jobs"] if j["id"] == jid)["pid"]
            os.kill(old, signal.SIGKILL)
            job = wait("a restart", 60, lambda: next((j for j in status(sock)["jobs"]
                                                      if j["id"] == jid and j.get("pid")
                                                      and j["pid"] != old), None))
            restarts.append((job["started_at"] - job["last_exit"]["at"]) * 1000)
        t1 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
        shutdown_s = time.monotonic() - t1
        return {
            "form": form, "jobs": n, "start_s": start_s, "workers_pss_mib": workers / 1024,
            "all_pss_mib": everything / 1024, "restart_ms_median": statistics.median(restarts),
            "restart_ms_max": max(restarts), "shutdown_s": shutdown_s,
        }
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
        shutil.rmtree(d, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lrpm", required=True)
    ap.add_argument("--jobs", type=int, default=1000)
    ap.add_argument("--classes", type=int, default=200)
    ap.add_argument("--forms", default="host,exec")
    a = ap.parse_args()
    for form in a.forms.split(","):
        r = run(form, os.path.abspath(a.lrpm), a.jobs, a.classes)
        print(json.dumps(r), flush=True)


if __name__ == "__main__":
    sys.exit(main())
