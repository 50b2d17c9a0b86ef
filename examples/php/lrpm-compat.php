<?php
// The two interfaces of php-lrpm, for a deployment that no longer installs
// php-lrpm itself. When php-lrpm is installed, its autoloader provides them
// and nothing here is declared.

declare(strict_types=1);

namespace PHPLRPM;

if (!interface_exists(ConfigurationSource::class)) {
    interface ConfigurationSource
    {
        public function loadConfiguration(): array;
    }
}

if (!interface_exists(Worker::class)) {
    interface Worker
    {
        public function start(array $config): void;
        public function cycle(): void;
    }
}
