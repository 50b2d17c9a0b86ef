<?php
// Prints the job map of a php-lrpm ConfigurationSource as JSON, for lrpm's
// exec: source.
//
//   php lrpm-source.php [--watch SECONDS] [--host] AUTOLOAD CLASS
//
// AUTOLOAD is the file that makes CLASS loadable (usually Composer's
// vendor/autoload.php); CLASS implements PHPLRPM\ConfigurationSource.
//
// Without --watch it prints the configuration once, on one line, and exits:
// run it polled (`lrpm -i 30 exec:'php lrpm-source.php …'`). With --watch it
// keeps running, calls loadConfiguration() every SECONDS and prints a line
// whenever the job map changes: run it streaming (`lrpm -i 0 …`). With
// --watch 0 it calls loadConfiguration() again as soon as it returns, for a
// source that blocks until something changes (php-lrpm's --interval=0).
//
// Jobs that name a `workerClass` and no `command` get a `command` that runs
// the class with lrpm-worker.php, so that an existing configuration source
// works unchanged. With --host they get a `host` instead: lrpm-host.php,
// with the same PHP binary, autoloader and OPcache for the CLI, forks them
// (php-lrpm's fork model: shared memory, no PHP start-up per worker; see
// docs/hosts.md).

declare(strict_types=1);

// Warnings must never reach stdout: that is where the configuration goes.
ini_set('display_errors', 'stderr');
error_reporting(E_ALL);

const EXIT_FAILURE = 1;
const EXIT_CLASS_NOT_FOUND = 2;
const EXIT_USAGE = 64;

function fail(string $message, int $code = EXIT_FAILURE): void
{
    fwrite(STDERR, basename(__FILE__) . ": $message" . PHP_EOL);
    exit($code);
}

$args = array_slice($argv, 1);
$watch = null;
if (($args[0] ?? '') === '--watch') {
    $watch = $args[1] ?? '';
    if (!is_numeric($watch) || (float) $watch < 0) {
        fail('--watch needs a number of seconds >= 0', EXIT_USAGE);
    }
    $watch = (float) $watch;
    $args = array_slice($args, 2);
}
$hosted = ($args[0] ?? '') === '--host';
if ($hosted) {
    $args = array_slice($args, 1);
}
if (count($args) !== 2) {
    fail('usage: php lrpm-source.php [--watch SECONDS] [--host] AUTOLOAD CLASS', EXIT_USAGE);
}
[$autoload, $class] = $args;
$autoload = realpath($autoload);
if ($autoload === false) {
    fail("no such autoload file: {$args[0]}", EXIT_USAGE);
}
require_once $autoload;
require_once __DIR__ . '/lrpm-compat.php';
if (!class_exists($class)) {
    fail("cannot find class $class (is $autoload the right autoloader?)", EXIT_CLASS_NOT_FOUND);
}
$source = new $class();
if (!$source instanceof PHPLRPM\ConfigurationSource) {
    fail("$class does not implement PHPLRPM\\ConfigurationSource", EXIT_CLASS_NOT_FOUND);
}

$worker = $hosted
    ? ['host' => [PHP_BINARY, '-d', 'opcache.enable_cli=1', __DIR__ . '/lrpm-host.php', $autoload]]
    : ['command' => [PHP_BINARY, __DIR__ . '/lrpm-worker.php', $autoload]];

/** The job map as one line of JSON. */
function render(array $jobs, array $worker): string
{
    foreach ($jobs as $id => $job) {
        if (is_array($job) && isset($job['workerClass']) && !isset($job['command'])) {
            if (isset($worker['host'])) {
                $job['host'] = $job['host'] ?? $worker['host'];
            } else {
                $job['command'] = array_merge($worker['command'], [(string) $job['workerClass']]);
                unset($job['workerClass']);
            }
            $jobs[$id] = $job;
        }
    }
    // The top level is always a map, even when the ids are 0, 1, 2…
    return json_encode((object) $jobs, JSON_UNESCAPED_SLASHES | JSON_UNESCAPED_UNICODE | JSON_THROW_ON_ERROR);
}

if ($watch === null) {
    try {
        echo render($source->loadConfiguration(), $worker), PHP_EOL;
    } catch (Throwable $e) {
        fail('loadConfiguration() failed: ' . $e->getMessage());
    }
    exit(0);
}

$last = null;
while (true) {
    try {
        $line = render($source->loadConfiguration(), $worker);
        if ($line !== $last) {
            echo $line, PHP_EOL;
            $last = $line;
        }
    } catch (Throwable $e) {
        // As php-lrpm: report it, keep the last configuration, try again.
        fwrite(STDERR, 'loadConfiguration() failed: ' . $e->getMessage() . PHP_EOL);
        // Even a blocking source must not spin on a persistent error.
        $watch > 0 || sleep(1);
    }
    if ($watch > 0) {
        usleep((int) ($watch * 1e6));
    }
}
