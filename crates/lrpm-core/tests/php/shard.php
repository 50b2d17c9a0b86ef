<?php
// Assigns job ids to the nodes of a static cluster as php-lrpm-cluster's
// three filters do, with PHP's own ksort and crc32, for the golden test
// (crates/lrpm-core/tests/php_golden.rs).
//
// stdin: a JSON object whose keys are the ids, in the order a source would
// deliver them (json_decode turns integer-like keys into integer keys, as
// it does for php-lrpm's sources). argv[1]: the largest cluster size.
// stdout: one JSON line per strategy, size and id: ["STRATEGY", N, NODE, "ID"].

$ids = json_decode(stream_get_contents(STDIN), true, 512, JSON_THROW_ON_ERROR);
$maxSize = (int) $argv[1];

// php-rendezvous-hashing's score: weight / -ln((crc32(NAME . ': ' . KEY) + 1) / 2^32).
function score(string $node, float $weight, string $key): float
{
    $unit = (crc32($node . ': ' . $key) + 1) / (1 << 32);
    return $weight / (-log($unit));
}

function line(string $strategy, int $size, int $node, $key): void
{
    echo json_encode([$strategy, $size, $node, (string) $key], JSON_THROW_ON_ERROR), "\n";
}

for ($size = 1; $size <= $maxSize; $size++) {
    // balanced: ksort, then the i-th key to node i mod N.
    $sorted = $ids;
    ksort($sorted);
    $i = 0;
    foreach ($sorted as $key => $_) {
        line('balanced', $size, $i++ % $size, $key);
    }
    // hash: crc32(key) mod N.
    foreach ($ids as $key => $_) {
        line('hash', $size, crc32((string) $key) % $size, $key);
    }
    // rendezvous: the highest score over nodes "0".."N-1" of weight 1, the first on a tie.
    foreach ($ids as $key => $_) {
        $best = null;
        $bestScore = null;
        for ($node = 0; $node < $size; $node++) {
            $s = score((string) $node, 1.0, (string) $key);
            if ($bestScore === null || $s > $bestScore) {
                $best = $node;
                $bestScore = $s;
            }
        }
        line('rendezvous', $size, $best, $key);
    }
}
