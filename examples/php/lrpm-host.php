<?php
// A worker host for lrpm (protocol 1, see docs/hosts.md):
//
//   php lrpm-host.php AUTOLOAD [CLASS...]
//
// Loads the application's autoloader once (and each CLASS, to compile it
// before any fork), then forks one process per worker on lrpm's request.
// The workers share the host's pages copy-on-write and, with
// opcache.enable_cli=1, its OPcache shared memory: they start without
// booting PHP or compiling anything again. A job runs here when it names
// this host and a php-lrpm Worker class, which runs unchanged:
// start($config), then cycle() until SIGTERM or SIGINT, then exit 0.
//
//   {"name": "mailer", "workerClass": "App\\Mailer",
//    "host": ["php", "-d", "opcache.enable_cli=1", "lrpm-host.php", "vendor/autoload.php"]}
//
// Needs php-cli with pcntl, posix, sockets and FFI (ffi.enable=preload, the
// default, allows FFI in the CLI).

declare(strict_types=1);

ini_set('display_errors', 'stderr');
error_reporting(E_ALL);

const LRPM_PROTOCOL = 1;
const LRPM_MAX_DATAGRAM = 4 * 1024 * 1024;
const PR_SET_PDEATHSIG = 1;
const SYS_CLONE3 = 435; // the same number on every architecture
const CLONE_INTO_CGROUP = 0x200000000;

if ($argc < 2) {
    fwrite(STDERR, 'usage: php lrpm-host.php AUTOLOAD [CLASS...]' . PHP_EOL);
    exit(64);
}
require_once $argv[1];
require_once __DIR__ . '/lrpm-compat.php';
require_once __DIR__ . '/lrpm-run.php';
foreach (array_slice($argv, 2) as $preload) {
    class_exists($preload);
}

$libc = FFI::cdef(
    'int dup2(int, int); int close(int); int open(const char *, int);
     int prctl(int, unsigned long, unsigned long, unsigned long, unsigned long);
     void _exit(int); long syscall(long, ...);
     typedef struct {
         uint64_t flags, pidfd, child_tid, parent_tid, exit_signal, stack,
                  stack_size, tls, set_tid, set_tid_size, cgroup;
     } lrpm_clone_args;',
    'libc.so.6'
);

/**
 * The descriptor numbers behind streams, found by their device and inode in
 * one listing of /proc/self/fd.
 */
function lrpm_fds_of(array $streams): array
{
    $want = [];
    foreach ($streams as $i => $stream) {
        $st = fstat($stream);
        $want[$st['dev'] . ':' . $st['ino']][] = $i;
    }
    clearstatcache(); // stat() caches the last path: /proc/self/fd/N is reused
    $fds = [];
    foreach (scandir('/proc/self/fd') as $fd) {
        if (!ctype_digit($fd)) {
            continue;
        }
        $st = @stat("/proc/self/fd/$fd");
        foreach ($st === false ? [] : $want[$st['dev'] . ':' . $st['ino']] ?? [] as $i) {
            $fds[$i] = (int) $fd;
        }
    }
    if (count($fds) !== count($streams)) {
        throw new RuntimeException('a received descriptor is not open');
    }
    return $fds;
}

/**
 * /proc/PID/$file of this very process. Never /proc/self: PHP's realpath
 * cache resolves that link once, so a forked worker would open its host's.
 */
function lrpm_proc(string $file): string
{
    return '/proc/' . posix_getpid() . '/' . $file;
}

/**
 * Where lrpm's LRPM_RUN_ID_SLOT=… lies in the process's original environment
 * block (the one /proc/PID/environ shows, which PHP's CLI no longer uses:
 * it moves the environment elsewhere), as [address, length], or null.
 */
function lrpm_run_id_slot(): ?array
{
    $stat = @file_get_contents(lrpm_proc('stat'));
    $mem = @fopen(lrpm_proc('mem'), 'rb');
    if ($stat === false || $mem === false) {
        return null;
    }
    // env_start and env_end are fields 50 and 51; the name (field 2) may
    // hold spaces, so count after its closing parenthesis.
    $fields = explode(' ', substr($stat, strrpos($stat, ')') + 2));
    [$start, $end] = [(int) ($fields[47] ?? 0), (int) ($fields[48] ?? 0)];
    $block = $start > 0 && $end > $start && fseek($mem, $start) === 0
        ? stream_get_contents($mem, $end - $start) : false;
    fclose($mem);
    $at = $block === false ? false : strpos("\0" . $block, "\0LRPM_RUN_ID_SLOT=");
    if ($at === false) {
        return null;
    }
    $nul = strpos($block, "\0", $at);
    return [$start + $at, ($nul === false ? strlen($block) : $nul) - $at];
}

/**
 * Rewrites the slot, in the worker, as LRPM_RUN_ID=$runId (padded with NULs):
 * /proc/PID/environ then names the worker's run as an exec'd worker's does,
 * which is how lrpm without cgroups, and its guardian, recognise the
 * processes of a run (daemons that left it included).
 */
function lrpm_mark_run(?array $slot, $runId): void
{
    $entry = 'LRPM_RUN_ID=' . $runId;
    if ($slot === null || !is_string($runId) || strlen($entry) > $slot[1]) {
        return;
    }
    $mem = @fopen(lrpm_proc('mem'), 'r+b');
    if ($mem !== false) {
        if (fseek($mem, $slot[0]) === 0) {
            fwrite($mem, str_pad($entry, $slot[1], "\0"));
        }
        fclose($mem);
    }
}

function lrpm_send(Socket $sock, array $msg): void
{
    $data = json_encode($msg, JSON_THROW_ON_ERROR);
    socket_send($sock, $data, strlen($data), 0);
}

/** The worker, after the second fork. Never returns. */
function lrpm_run_worker(FFI $libc, array $request, array $fds, Socket $own, array $keep): void
{
    [$out, $err, $ownFd] = $fds;
    posix_setsid();
    $null = $libc->open('/dev/null', 0);
    $libc->dup2($null, 0);
    $libc->dup2($out, 1);
    $libc->dup2($err, 2);
    // Every other descriptor goes, the host's socket included, but the
    // worker's own socket and OPcache's lock file (its shared memory's).
    foreach (scandir('/proc/self/fd') as $fd) {
        if (!ctype_digit($fd) || (int) $fd <= 2 || (int) $fd === $ownFd) {
            continue;
        }
        $target = @readlink("/proc/self/fd/$fd");
        if ($target !== false && strpos($target, 'ZendSem') !== false) {
            continue;
        }
        $libc->close((int) $fd);
    }
    // The objects of the descriptors closed above stay referenced (`$keep`)
    // until exit, so that PHP never closes a number reused since.
    $GLOBALS['lrpm_closed'] = $keep;
    socket_send($own, '{"type":"hello"}', 16, 0);
    $answer = '';
    $n = @socket_recv($own, $answer, 4096, 0);
    $go = $n ? json_decode($answer, true) : null;
    if (!is_array($go) || ($go['type'] ?? '') !== 'go') {
        $libc->_exit(1); // lrpm did not take it: no user code runs
    }
    socket_close($own);
    // Dies with lrpm, its parent from now on (the host forked twice).
    $libc->prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
    if (posix_getppid() !== ($go['pid'] ?? 0)) {
        $libc->_exit(1);
    }
    lrpm_mark_run($GLOBALS['lrpm_run_id_slot'], $request['env']['LRPM_RUN_ID'] ?? null);
    foreach ($request['env'] ?? [] as $name => $value) {
        putenv("$name=$value");
        $_ENV[$name] = $_SERVER[$name] = $value;
    }
    if (!empty($request['cwd'])) {
        chdir($request['cwd']);
    }
    foreach ([SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGALRM, SIGWINCH] as $sig) {
        pcntl_signal($sig, SIG_DFL);
    }
    $config = is_array($request['config'] ?? null) ? $request['config'] : [];
    exit(lrpm_run_worker_class($request['class'], $config));
}

/**
 * Forks the intermediate process: into the run's cgroup (directory $cgroup)
 * with clone3(CLONE_INTO_CGROUP) when lrpm sent one, so that the worker it
 * forks starts there and lrpm need not move it; a plain fork otherwise, or
 * when clone3 fails (an old kernel: lrpm then moves the worker itself).
 * The intermediate only forks and exits: glibc's fork() bookkeeping, which
 * a raw clone3 skips, matters to neither it nor the worker (forked with
 * fork()).
 */
function lrpm_fork_intermediate(FFI $libc, int $cgroup): int
{
    if ($cgroup >= 0) {
        $args = $libc->new('lrpm_clone_args');
        $args->flags = CLONE_INTO_CGROUP;
        $args->exit_signal = SIGCHLD;
        $args->cgroup = $cgroup;
        $pid = $libc->syscall(SYS_CLONE3, FFI::addr($args), FFI::sizeof($args));
        if ($pid >= 0) {
            return $pid;
        }
    }
    return pcntl_fork();
}

/**
 * Forks the worker through an intermediate process, which exits at once so
 * that the worker is re-parented to lrpm (a subreaper); returns the
 * worker's pid once the intermediate is reaped.
 */
function lrpm_fork(FFI $libc, Socket $host, array $request, array $received): int
{
    $class = $request['class'] ?? '';
    if (!is_string($class) || !class_exists($class)) {
        throw new RuntimeException("no class $class");
    }
    [$out, $err, $own] = $received;
    $cgroup = $received[3] ?? null;
    if (!$own instanceof Socket) {
        throw new RuntimeException('the third descriptor is not a socket');
    }
    $streams = [$out, $err, socket_export_stream($own)];
    if (is_resource($cgroup)) {
        $streams[] = $cgroup;
    }
    $found = lrpm_fds_of($streams);
    $fds = [$found[0], $found[1], $found[2]];
    $pair = stream_socket_pair(STREAM_PF_UNIX, STREAM_SOCK_STREAM, STREAM_IPPROTO_IP);
    $middle = lrpm_fork_intermediate($libc, $found[3] ?? -1);
    if ($middle === -1) {
        throw new RuntimeException('fork failed');
    }
    if ($middle === 0) {
        $worker = pcntl_fork();
        if ($worker === 0) {
            lrpm_run_worker($libc, $request, $fds, $own, [$host, $out, $err, $pair, $cgroup]);
        }
        fwrite($pair[1], (string) $worker);
        $libc->_exit(0);
    }
    fclose($pair[1]);
    // The intermediate wrote the pid before it exited: once it is reaped,
    // the pid waits in the pair. Reading to end-of-file instead would wait
    // for the worker too, which holds the pair until it has closed its
    // descriptors.
    pcntl_waitpid($middle, $status);
    stream_set_blocking($pair[0], false);
    $pid = (int) fread($pair[0], 32);
    fclose($pair[0]);
    if ($pid <= 0) {
        throw new RuntimeException('the intermediate process could not fork');
    }
    return $pid;
}

$fd = getenv('LRPM_HOST_FD');
putenv('LRPM_HOST_FD');
$lrpm_run_id_slot = lrpm_run_id_slot();
putenv('LRPM_RUN_ID_SLOT');
unset($_ENV['LRPM_RUN_ID_SLOT'], $_SERVER['LRPM_RUN_ID_SLOT']);
$host = socket_import_stream(fopen("php://fd/$fd", 'r+'));
$libc->close((int) $fd); // the import holds a copy
lrpm_send($host, ['type' => 'ready', 'protocol' => LRPM_PROTOCOL, 'cgroup' => true]);
while (true) {
    $msg = [
        'name' => [],
        'buffer_size' => LRPM_MAX_DATAGRAM,
        'controllen' => socket_cmsg_space(SOL_SOCKET, SCM_RIGHTS, 4),
    ];
    if (@socket_recvmsg($host, $msg, 0) === false) {
        if (socket_last_error($host) === SOCKET_EINTR) {
            continue;
        }
        exit(0);
    }
    $data = $msg['iov'][0] ?? '';
    if ($data === '') {
        exit(0); // lrpm has gone
    }
    $received = $msg['control'][0]['data'] ?? [];
    $request = json_decode($data, true);
    $wanted = !empty($request['cgroup']) ? 4 : 3;
    if (!is_array($request) || ($request['type'] ?? '') !== 'fork' || count($received) !== $wanted) {
        foreach ($received as $r) {
            $r instanceof Socket ? socket_close($r) : fclose($r);
        }
        continue;
    }
    try {
        $pid = lrpm_fork($libc, $host, $request, $received);
        lrpm_send($host, ['type' => 'forked', 'id' => $request['id'], 'pid' => $pid]);
    } catch (Throwable $e) {
        lrpm_send($host, ['type' => 'error', 'id' => $request['id'], 'message' => $e->getMessage()]);
    }
    foreach ($received as $r) {
        $r instanceof Socket ? socket_close($r) : fclose($r);
    }
}
