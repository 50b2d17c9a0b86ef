<?php
// A php-lrpm ConfigurationSource, written as one would for php-lrpm: one job
// per message queue. A real one would query a database; this one reads an
// INI file with a section per queue (EXAMPLE_QUEUES_FILE, by default
// ../queues.ini).

declare(strict_types=1);

namespace App;

use PHPLRPM\ConfigurationSource;
use RuntimeException;

class ExampleConfigurationSource implements ConfigurationSource
{
    public function loadConfiguration(): array
    {
        $file = getenv('EXAMPLE_QUEUES_FILE') ?: __DIR__ . '/../queues.ini';
        $queues = @parse_ini_file($file, true, INI_SCANNER_TYPED);
        if ($queues === false) {
            throw new RuntimeException("cannot read $file");
        }
        $jobs = [];
        foreach ($queues as $queue => $settings) {
            $jobs["consumer-$queue"] = [
                'name' => "Consumer of queue $queue",
                'workerClass' => ExampleWorker::class,
                'mtime' => (int) ($settings['mtime'] ?? 0),
                'workerConfig' => ['queue' => (string) $queue, 'batch' => (int) ($settings['batch'] ?? 1)],
            ];
        }
        return $jobs;
    }
}
