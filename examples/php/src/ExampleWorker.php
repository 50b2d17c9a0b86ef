<?php
// A php-lrpm Worker: consumes one queue (here it only says so).

declare(strict_types=1);

namespace App;

use PHPLRPM\Worker;

class ExampleWorker implements Worker
{
    private string $queue = '';
    private int $batch = 1;

    public function start(array $config): void
    {
        $this->queue = (string) ($config['queue'] ?? 'default');
        $this->batch = (int) ($config['batch'] ?? 1);
        echo "consuming queue {$this->queue} in batches of {$this->batch}", PHP_EOL;
    }

    public function cycle(): void
    {
        // A real worker would take up to $batch messages off the queue here.
        // Back off at the end of a cycle, as php-lrpm recommends.
        sleep(1);
    }
}
