#!/usr/bin/env bash
# A/B: the same emulator backlog, the poller binary named by $1 (base|new), N entries.
set -euo pipefail
which=$1; N=${N:-200000}
repo=/work/wt-progress
dir=$(mktemp -d)
/tmp/ab/emulator --dir "$dir" --subscriptions 1 --rate 0 --backlog "$N" --backlog-span 50m \
    --backlog-succeeded-only --page-size 200 --arm-tls --interval 1m --window 15m > "$dir/emulator.out" 2>&1 &
emu=$!
for _ in $(seq 1 600); do grep -q "Run the poller" "$dir/emulator.out" 2>/dev/null && break; sleep 0.5; done
sed -i "s/^concurrency = 8$/concurrency = 32/" "$dir/poller.toml"
res=$(cd "$dir" && python3 "$repo/bench/measure.py" --env SSL_CERT_FILE="$dir/ca.pem" --env RUST_LOG=info \
    --stderr "$dir/poller.log" -- /tmp/ab/$which-poller --config "$dir/poller.toml" --once --since 1h --log-format json)
took=$(python3 -c 'import json,sys
for l in open(sys.argv[1]):
    if l.startswith("{"):
        v=json.loads(l)
        if v.get("message")=="poll complete": print(v["took_ms"]/1000)' "$dir/poller.log")
echo "$which $N $(echo "$res" | python3 -c 'import json,sys; r=json.load(sys.stdin); print(r["exit"], r["wall_s"], r["cpu_s"], r["peak_rss_kib"])') poll_s=$took load=$(cut -d' ' -f1 /proc/loadavg)"
kill -INT $emu; wait $emu || true
rm -rf "$dir"
