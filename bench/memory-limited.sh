#!/bin/bash
# The memory a farm needs in a memory cgroup (docs/reliability.md, "A
# memory-limited run"): runs lrpm with N jobs of `sleep 100000` in a new
# cgroup v1 memory cgroup under this shell's, limited to LIMIT_MIB if given,
# and prints the cgroup's usage once all N run (or after 30 s). Needs root
# and the v1 memory hierarchy; builds nothing (LRPM, LRPMCTL: the binaries).
# Usage: bench/memory-limited.sh N [LIMIT_MIB]
set -u
N=$1; LIMIT=${2:-0}
LRPM=${LRPM:-target/release/lrpm}; LRPMCTL=${LRPMCTL:-target/release/lrpmctl}
M=/sys/fs/cgroup/memory$(grep ':memory:' /proc/self/cgroup | cut -d: -f3)/lrpm-measure-$$
mkdir "$M"
[ "$LIMIT" != 0 ] && echo $((LIMIT << 20)) > "$M/memory.limit_in_bytes"
D=$(mktemp -d)
python3 -c "import json; print(json.dumps({f'j{i}': {'name': f'j{i}', 'command': ['sleep','100000']} for i in range($N)}))" > "$D/jobs.json"
sh -c "echo \$\$ > $M/cgroup.procs; exec $LRPM --socket $D/s $D/jobs.json" 2> "$D/log" &
P=$!
R=0
for _ in $(seq 60); do
  R=$("$LRPMCTL" --socket "$D/s" status --json 2>/dev/null |
    python3 -c "import json,sys; print(sum(1 for j in json.load(sys.stdin)['jobs'] if j.get('pid')))" 2>/dev/null)
  [ "$R" = "$N" ] && break
  sleep 0.5
done
sleep 1
echo "jobs running: $R of $N; lrpm alive: $(kill -0 $P 2>/dev/null && echo yes || echo no)"
echo "usage_in_bytes: $(($(cat "$M/memory.usage_in_bytes") >> 10)) KiB"
echo "kmem.usage_in_bytes: $(($(cat "$M/memory.kmem.usage_in_bytes") >> 10)) KiB"
grep -E "^(rss|cache) " "$M/memory.stat" | awk '{printf "%s %d KiB\n", $1, $2/1024}'
grep VmRSS /proc/$P/status 2>/dev/null
grep oom_kill "$M/memory.oom_control"
grep oom_score_adj "$D/log" | head -2
kill $P 2>/dev/null; wait $P 2>/dev/null
for _ in $(seq 100); do rmdir "$M" 2>/dev/null && break; sleep 0.1; done
rm -rf "$D"
