#!/usr/bin/env bash
# The new poller with stderr on a terminal (script(1)): progress bars on.
set -euo pipefail
N=${N:-200000}
repo=/work/wt-progress
dir=$(mktemp -d)
/tmp/ab/emulator --dir "$dir" --subscriptions 1 --rate 0 --backlog "$N" --backlog-span 50m \
    --backlog-succeeded-only --page-size 200 --arm-tls --interval 1m --window 15m > "$dir/emulator.out" 2>&1 &
emu=$!
for _ in $(seq 1 600); do grep -q "Run the poller" "$dir/emulator.out" 2>/dev/null && break; sleep 0.5; done
sed -i "s/^concurrency = 8$/concurrency = 32/" "$dir/poller.toml"
res=$(cd "$dir" && python3 "$repo/bench/measure.py" --env SSL_CERT_FILE="$dir/ca.pem" --env RUST_LOG=info \
    -- script -qefc "/tmp/ab/new-poller --config $dir/poller.toml --once --since 1h" "$dir/tty.out")
took=$(python3 -c 'import re,sys
t=re.sub(r"\x1b\[[0-9;?]*[@-~]","",open(sys.argv[1],errors="replace").read())
m=re.findall(r"took_ms=(\d+)",t); print(int(m[-1])/1000 if m else None)' "$dir/tty.out")
echo "tty $N $(echo "$res" | python3 -c 'import json,sys; r=json.load(sys.stdin); print(r["exit"], r["wall_s"], r["cpu_s"], r["peak_rss_kib"])') poll_s=$took load=$(cut -d' ' -f1 /proc/loadavg)"
cp "$dir/tty.out" /tmp/ab/tty-$N.out
kill -INT $emu; wait $emu || true
rm -rf "$dir"
