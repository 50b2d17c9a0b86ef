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
require_once __DIR__ . '/lrpm-run.php';

$config = json_decode(getenv('LRPM_WORKER_CONFIG') ?: '{}', true, 512, JSON_THROW_ON_ERROR);
if (!is_array($config)) {
    $config = [];
}

exit(lrpm_run_worker_class($class, $config));
