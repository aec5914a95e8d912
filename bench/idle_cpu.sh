#!/bin/bash
# The daemon's own CPU and context switches at 10,000 idle subscriptions on
# loopback (ARM over TLS, 1-minute interval), measured over 60 s after 10 s
# of start: for A/B comparisons of the scheduling code (BENCHMARKS.md
# section 12). Usage: bench/idle_cpu.sh BINDIR LABEL (BINDIR holds
# azure-activity-poller and activity-log-emulator). Prints one line.
set -u
BIN=$1; L=$2; D=$(mktemp -d "/tmp/idle-cpu-$L.XXXX")
"$BIN/activity-log-emulator" --dir "$D" --subscriptions 10000 --rate 0 --arm-tls > "$D/emu.out" 2>&1 &
EMU=$!
for _ in $(seq 1 50); do [ -f "$D/poller.toml" ] && break; sleep 0.2; done
sed -i 's/^interval = .*/interval = "1m"/; s/^window = .*/window = "15m"/' "$D/poller.toml"
cd "$D" || exit 1
SSL_CERT_FILE="$D/ca.pem" RUST_LOG=warn "$BIN/azure-activity-poller" --config "$D/poller.toml" > "$D/poller.out" 2>&1 &
P=$!
ticks() { awk '{print $14 + $15}' "/proc/$P/stat"; }
switches() { cat /proc/$P/task/*/status | awk '/ctxt_switches/ {s += $2} END {print s}'; }
sleep 10
T0=$(ticks); C0=$(switches)
sleep 60
T1=$(ticks); C1=$(switches)
echo "$L cpu_s_per_60s=$(awk -v a="$T0" -v b="$T1" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.2f", (b - a) / hz }') context_switches=$((C1 - C0)) $(grep VmHWM /proc/$P/status | tr -s ' \t' ' ')"
kill -9 $P $EMU 2>/dev/null; wait 2>/dev/null; rm -rf "$D"
