<?php
// php-lrpm's worker loop, shared by lrpm-worker.php (a worker started as a
// command) and lrpm-host.php (a worker forked by a host).

declare(strict_types=1);

/**
 * Runs the php-lrpm Worker $class as php-lrpm's worker process does:
 * start($config), then cycle() until SIGTERM or SIGINT, which are honoured
 * between two cycles. Returns the exit status.
 */
function lrpm_run_worker_class(string $class, array $config): int
{
    $running = true;
    if (function_exists('pcntl_async_signals')) {
        pcntl_async_signals(true);
        $stop = function () use (&$running) { $running = false; };
        pcntl_signal(SIGTERM, $stop);
        pcntl_signal(SIGINT, $stop);
    }
    $worker = new $class();
    if (!$worker instanceof PHPLRPM\Worker) {
        fwrite(STDERR, "$class does not implement PHPLRPM\\Worker" . PHP_EOL);
        return 2;
    }
    $worker->start($config);
    while ($running) {
        $worker->cycle();
    }
    return 0;
}
