<?php
// Runs a php-lrpm Worker class as an lrpm job's `command`:
//
//   php lrpm-worker.php AUTOLOAD CLASS
//
// As php-lrpm's worker process: start($config) with the job's workerConfig
// (which lrpm passes as JSON in LRPM_WORKER_CONFIG), then cycle() until
// SIGTERM or SIGINT, then exit 0. lrpm-source.php writes this command for
// every job that names a workerClass.

declare(strict_types=1);

ini_set('display_errors', 'stderr');
error_reporting(E_ALL);

if ($argc !== 3) {
    fwrite(STDERR, 'usage: php lrpm-worker.php AUTOLOAD CLASS' . PHP_EOL);
    exit(64);
}
[, $autoload, $class] = $argv;
require_once $autoload;
require_once __DIR__ . '/lrpm-compat.php';

$config = json_decode(getenv('LRPM_WORKER_CONFIG') ?: '{}', true, 512, JSON_THROW_ON_ERROR);
if (!is_array($config)) {
    $config = [];
}

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
    exit(2);
}
$worker->start($config);
while ($running) {
    $worker->cycle();
}
exit(0);
