#!/usr/bin/env python3
"""PHP workers under lrpm: started with exec (examples/php/lrpm-worker.php)
or forked by the PHP worker host (examples/php/lrpm-host.php), issue 19;
and, given its sources (--php-lrpm DIR, see bench/README.md), under
php-lrpm itself.

    python3 bench/php_hosts.py --lrpm target/release/lrpm [--jobs 1000] [--classes 200] \
        [--forms host,exec,php-lrpm] [--php-lrpm DIR]

For each form, in one run: N jobs of the same php-lrpm Worker, whose
start() autoloads CLASSES generated classes (about 10 KB of source each),
with OPcache on for the CLI in both forms. It measures:
- the time from lrpm's start until every worker has run its start();
- the total PSS of the workers, and of everything (lrpm, host, workers),
  from /proc/PID/smaps_rollup;
- crash → restart, the median of 20: lrpm's clock (the new run's
  started_at minus the exit's at), and for every system the time from the
  SIGKILL (the harness's clock) to the replacement's start() (its
  microtime(true), written into its started file);
- the shutdown of all N (SIGTERM to lrpm until it exits).
Every process is found through lrpm's status and lrpm's children (under
php-lrpm: the pids the workers write and php-lrpm's children), and the
supervisor is killed by its pid if it outlives the run.
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
        // php-lrpm hands the whole job to start(), lrpm its workerConfig.
        $config = $config['workerConfig'] ?? $config;
        $job = getenv('LRPM_JOB_ID') ?: $config['job'];
        $path = $config['dir'] . '/started/' . $job;
        file_put_contents("$path.tmp", getmypid() . ' ' . microtime(true));
        rename("$path.tmp", $path);
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


def status(sock_path, ids=None):
    """lrpm's status: of every job, or of the jobs ids only (what a crash
    measurement asks for: a status of 1,000 jobs costs lrpm and this
    harness milliseconds of CPU that a restart would compete with)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(sock_path)
    request = {"cmd": "status"} if ids is None else {"cmd": "status", "ids": ids}
    s.sendall(json.dumps(request).encode() + b"\n")
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


def started_files(d):
    """Job id → (pid, microtime) of each worker's last start()."""
    out = {}
    started = os.path.join(d, "started")
    for name in os.listdir(started):
        if name.endswith(".tmp"):
            continue
        try:
            with open(os.path.join(started, name)) as f:
                pid, at = f.read().split()
            out[name] = (int(pid), float(at))
        except (OSError, ValueError):
            pass
    return out


def started_file(d, jid):
    """(pid, microtime) of job jid's last start(), or None: one file, read
    while a crash is measured (reading every worker's would cost the
    harness milliseconds of CPU per look, which the restart competes
    with)."""
    try:
        with open(os.path.join(d, "started", jid)) as f:
            pid, at = f.read().split()
        return int(pid), float(at)
    except (OSError, ValueError):
        return None


def descendants(pid):
    out = []
    for child in children(pid):
        out += [child] + descendants(child)
    return out


# php-lrpm (github.com/vrza/php-lrpm) and its Composer dependencies, each a
# checkout under --php-lrpm DIR: directory → PSR-4 prefixes and folders
# (from each one's composer.json).
PHP_LRPM_TREE = {
    "php-lrpm": [("PHPLRPM\\", "src/")],
    "cardinal-collections": [("CardinalCollections\\", "src/")],
    "array-with-secondary-keys": [("CardinalCollections\\ArrayWithSecondaryKeys\\", "src/")],
    "php-symplib": [("SimpleIPC\\SyMPLib\\", "src/address/"), ("SimpleIPC\\SyMPLib\\", "src/binder/"),
                    ("SimpleIPC\\SyMPLib\\", "src/")],
    "simplogger": [("VladimirVrzic\\Simplogger\\", "src/")],
    "terminal-palette": [("TerminalPalette\\", "src/")],
    "text-table-formatter": [("TextTableFormatter\\", "src/")],
}


def write_php_lrpm(d, tree, n):
    """php-lrpm's entry point for the benchmark (bin/lrpm's, without its
    option parsing), with an autoloader doing what Composer's would, and a
    ConfigurationSource of the same n jobs."""
    prefixes = [(prefix, os.path.join(tree, pkg, folder))
                for pkg, entries in PHP_LRPM_TREE.items() for prefix, folder in entries]
    prefixes.sort(key=lambda e: -len(e[0]))  # the longest prefix first
    with open(os.path.join(d, "src", "PhpLrpmSource.php"), "w") as f:
        f.write("""<?php
namespace Bench;
class PhpLrpmSource implements \\PHPLRPM\\ConfigurationSource
{
    public function loadConfiguration(): array
    {
        $jobs = [];
        for ($i = 0; $i < %d; $i++) {
            $jobs["w$i"] = ['name' => "w$i", 'workerClass' => 'Bench\\Worker', 'mtime' => 1,
                'shortRunTimeSeconds' => 0, 'workerConfig' => ['dir' => %s, 'job' => "w$i"]];
        }
        return $jobs;
    }
}
""" % (n, json.dumps(d)))
    with open(os.path.join(d, "php-lrpm.php"), "w") as f:
        f.write("""<?php
declare(strict_types=1);
error_reporting(E_ALL);
$prefixes = json_decode(%s, true);
spl_autoload_register(function (string $class) use ($prefixes): void {
    foreach ($prefixes as [$prefix, $dir]) {
        if (strncmp($class, $prefix, strlen($prefix)) === 0) {
            $file = $dir . str_replace('\\\\', '/', substr($class, strlen($prefix))) . '.php';
            if (is_file($file)) {
                require $file;
                return;
            }
        }
    }
});
require __DIR__ . '/autoload.php';
(new PHPLRPM\\ProcessManager('Bench\\\\PhpLrpmSource', 5))->run();
""" % json.dumps(json.dumps(prefixes)))


def restart_of(d, jid, old, t_kill):
    """Waits for job jid's new start() after its worker old was killed at
    t_kill (time.time()); returns its pid and the milliseconds between."""
    pid, at = wait("a restart", 60, lambda: (lambda e: e if e and e[0] != old else None)(
        started_file(d, jid)))
    return pid, (at - t_kill) * 1000


def run(form, lrpm, n, classes, php_lrpm):
    d = tempfile.mkdtemp(prefix=f"lrpm-php-{form}-")
    preload = write_app(d, classes)
    os.makedirs(os.path.join(d, "started"))
    sock = os.path.join(d, "ctl.sock")
    log = open(os.path.join(d, "supervisor.log"), "w")
    if form == "php-lrpm":
        write_php_lrpm(d, php_lrpm, n)
        argv = PHP + [os.path.join(d, "php-lrpm.php")]
    else:
        cfg = os.path.join(d, "jobs.json")
        with open(cfg, "w") as f:
            json.dump(jobs(d, n, form, preload), f)
        argv = [lrpm, "--socket", sock, cfg]
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=log, stdin=subprocess.DEVNULL,
                            cwd=d)
    try:
        wait("every worker's start()", 900, lambda: len(started_files(d)) >= n)
        start_s = time.monotonic() - t0
        if form == "php-lrpm":
            time.sleep(2)  # let the last starts settle
            pids = [pid for pid, _ in started_files(d).values()]
            pid_of = lambda jid: started_file(d, jid)[0]
        else:
            st = wait("status with every pid", 60, lambda: (lambda s: s if all(
                j.get("pid") for j in s["jobs"]) and len(s["jobs"]) == n else None)(status(sock)))
            time.sleep(2)  # let the last starts settle
            pids = [j["pid"] for j in st["jobs"]]
            pid_of = lambda jid: status(sock, [jid])["jobs"][0]["pid"]
        workers = sum(pss_kib(p) for p in pids)
        others = [p for p in descendants(proc.pid) if p not in set(pids)]
        everything = workers + pss_kib(proc.pid) + sum(pss_kib(p) for p in others)
        own_clock, kill_to_start = [], []
        for i in range(20):
            jid = f"w{i}"
            old = pid_of(jid)
            t_kill = time.time()
            os.kill(old, signal.SIGKILL)
            _, took = restart_of(d, jid, old, t_kill)
            kill_to_start.append(took)
            if form != "php-lrpm":
                job = wait("a restart", 60, lambda: next((j for j in status(sock, [jid])["jobs"]
                                                          if j.get("pid") and j["pid"] != old),
                                                         None))
                own_clock.append((job["started_at"] - job["last_exit"]["at"]) * 1000)
        t1 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=300)
        shutdown_s = time.monotonic() - t1
        out = {
            "form": form, "jobs": n, "start_s": start_s, "workers_pss_mib": workers / 1024,
            "all_pss_mib": everything / 1024,
            "kill_to_start_ms_median": statistics.median(kill_to_start),
            "kill_to_start_ms_max": max(kill_to_start), "shutdown_s": shutdown_s,
        }
        if own_clock:
            out["restart_ms_median"] = statistics.median(own_clock)
            out["restart_ms_max"] = max(own_clock)
        return out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        # What a supervisor killed with SIGKILL leaves (php-lrpm's workers
        # outlive it): the workers that wrote their pids here.
        for pid, _ in started_files(d).values():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if b"php" in f.read():
                        os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        log.close()
        shutil.rmtree(d, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lrpm", required=True)
    ap.add_argument("--jobs", type=int, default=1000)
    ap.add_argument("--classes", type=int, default=200)
    ap.add_argument("--forms", default="host,exec")
    ap.add_argument("--php-lrpm", help="a directory of php-lrpm's checkouts (bench/README.md)")
    a = ap.parse_args()
    forms = a.forms.split(",")
    if "php-lrpm" in forms and not a.php_lrpm:
        ap.error("the php-lrpm form needs --php-lrpm DIR")
    for form in forms:
        r = run(form, os.path.abspath(a.lrpm), a.jobs, a.classes,
                a.php_lrpm and os.path.abspath(a.php_lrpm))
        print(json.dumps(r), flush=True)


if __name__ == "__main__":
    sys.exit(main())
