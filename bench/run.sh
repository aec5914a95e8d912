#!/usr/bin/env bash
# The benchmarks of BENCHMARKS.md, against the emulator on loopback, release
# build. One command: `bench/run.sh [catchup|idle|overlap|micro|latency|all]`.
#
#   N=1000000 RUNS=3 bench/run.sh catchup   # catch-up throughput, peak RSS, and the SDK's listing rate
#   SUBS=1000 bench/run.sh idle              # idle cost of many subscriptions
#   bench/run.sh overlap                     # requests and bytes per poll by window/interval
#   bench/run.sh micro                       # criterion: parse and normalize one page
#   bench/run.sh latency [catchup|capacity|fairness|schedule]
#                                            # over a WAN: bench/latency_proxy.py delays ARM and
#                                            # the endpoint; see bench/wan.py for the settings
#
# Results: bench/results/<UTC time>/*.jsonl, plus machine.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
what=${1:-all}
scenario=${2:-all}
N=${N:-1000000}
RUNS=${RUNS:-3}
SUBS=${SUBS:-1000}
CONCURRENCY=${CONCURRENCY:-32}
out=bench/results/$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$out"
bin=target/release

cargo build --release --locked --bins >&2
{
    echo "date: $(date -u +%FT%TZ)"
    echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | xargs) x $(nproc)"
    echo "memory: $(free -g | awk '/Mem:/ {print $2}') GiB"
    echo "kernel: $(uname -r)"
    echo "rustc: $(rustc -V)"
    echo "commit: $(git rev-parse --short HEAD)"
} > "$out/machine.txt"
cat "$out/machine.txt" >&2

emu_pid=
start_emulator() { # DIR ARGS...
    local dir=$1; shift
    "$bin/activity-log-emulator" --dir "$dir" "$@" > "$dir/emulator.out" 2>&1 &
    emu_pid=$!
    for _ in $(seq 1 600); do
        grep -q "Run the poller" "$dir/emulator.out" 2>/dev/null && return 0
        kill -0 "$emu_pid" 2>/dev/null || { cat "$dir/emulator.out" >&2; return 1; }
        sleep 0.5
    done
    echo "the emulator did not start" >&2; return 1
}
stop_emulator() { kill -INT "$emu_pid" 2>/dev/null || true; wait "$emu_pid" 2>/dev/null || true; }
trap stop_emulator EXIT
report() { # DIR
    local arm; arm=$(awk '/Azure Resource Manager/ {print $4}' "$1/emulator.out")
    curl -sf --cacert "$1/ca.pem" "$arm/_emulator/report"
}
sdk_python() {
    if [ ! -x bench/.venv/bin/python ]; then
        python3 -m venv bench/.venv >&2
        bench/.venv/bin/pip install -q -r bench/requirements.txt >&2
    fi
    echo bench/.venv/bin/python
}

catchup() {
    local py; py=$(sdk_python)
    for run in $(seq 1 "$RUNS"); do
        local dir; dir=$(mktemp -d)
        start_emulator "$dir" --subscriptions 1 --rate 0 --backlog "$N" --backlog-span 50m \
            --backlog-succeeded-only --page-size 200 --arm-tls --interval 1m --window 15m
        sed -i "s/^concurrency = 8$/concurrency = $CONCURRENCY/" "$dir/poller.toml"
        local start end
        start=$(date -u -d '-1 hour' +%FT%TZ); end=$(date -u +%FT%TZ)
        local poller
        poller=$(cd "$dir" && python3 "$OLDPWD/bench/measure.py" --env SSL_CERT_FILE="$dir/ca.pem" --env RUST_LOG=info \
            --stderr "$dir/poller.log" -- "$OLDPWD/$bin/azure-activity-poller" --config "$dir/poller.toml" --once --since 1h --log-format json)
        # The poll phase alone (fetch, keep, record), from the poll line.
        local poll
        poll=$(python3 -c 'import json,sys
for l in open(sys.argv[1]):
    if l.startswith("{"):
        v = json.loads(l)
        if v.get("message") == "poll complete":
            print(json.dumps({"took_s": v["took_ms"] / 1000, "fetched": v["fetched"], "pages": v["pages"], "requests": v["requests"], "bytes": v["bytes"]}))' "$dir/poller.log")
        local delivered
        delivered=$(report "$dir" | python3 -c 'import json,sys; r=json.load(sys.stdin); print(json.dumps({"delivered": sum(s["delivered"] for s in r["subscriptions"]), "missing": sum(len(s["missing"]) for s in r["subscriptions"]), "duplicates": sum(s["duplicates"] for s in r["subscriptions"])}))')
        local sdk
        sdk=$(REQUESTS_CA_BUNDLE="$dir/ca.pem" "$py" bench/sdk_list.py "$dir" 00000000-0000-4000-8000-000000000001 "$start" "$end")
        local line="{\"run\": $run, \"entries\": $N, \"concurrency\": $CONCURRENCY, \"poller\": $poller, \"poll_phase\": $poll, \"endpoint\": $delivered, \"sdk\": $sdk}"
        echo "$line" | tee -a "$out/catchup.jsonl"
        stop_emulator
        rm -rf "$dir"
    done
    python3 - "$out/catchup.jsonl" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
med = lambda xs: statistics.median(xs)
p = med([r["entries"] / r["poller"]["wall_s"] for r in rows])
pp = med([r["poll_phase"]["fetched"] / r["poll_phase"]["took_s"] for r in rows])
s = med([r["sdk"]["entries_per_s"] for r in rows])
print(json.dumps({"summary": "catchup", "runs": len(rows),
    "poller_entries_per_s": round(p), "poller_peak_rss_mib": round(med([r["poller"]["peak_rss_kib"] for r in rows]) / 1024, 1),
    "sdk_entries_per_s": round(s), "sdk_peak_rss_mib": round(med([r["sdk"]["peak_rss_kib"] for r in rows]) / 1024, 1),
    "ratio": round(p / s, 2),
    "poll_phase_entries_per_s": round(pp), "poll_phase_ratio": round(pp / s, 2),
    "all_delivered": all(r["endpoint"]["missing"] == 0 and r["endpoint"]["delivered"] == r["entries"] for r in rows)}))
PY
}

idle() {
    # 1,000 subscriptions with no entries. Time is scaled down tenfold: every
    # 6 s instead of 60 s, for 60 s, stands for 10 minutes at 60 s.
    local dir; dir=$(mktemp -d)
    local interval=${IDLE_INTERVAL:-6} seconds=${IDLE_SECONDS:-60}
    start_emulator "$dir" --subscriptions "$SUBS" --rate 0 --interval "${interval}s" --window "$((interval * 3))s"
    sed -i "s/^concurrency = 4$/concurrency = 16/" "$dir/poller.toml"
    (cd "$dir" && SSL_CERT_FILE="$dir/ca.pem" RUST_LOG=warn "$OLDPWD/$bin/azure-activity-poller" --config "$dir/poller.toml" 2> "$dir/poller.log") &
    local pid=$!
    # Let the first round (a probe and a poll each) pass, then measure.
    sleep $((interval * 2))
    local pid_poller; pid_poller=$(pgrep -P "$pid" azure-activity || echo "$pid")
    local t0 r0; t0=$(awk '{print $14+$15}' "/proc/$pid_poller/stat"); r0=$(report "$dir" | python3 -c 'import json,sys; print(sum(s["requests"] for s in json.load(sys.stdin)["subscriptions"]))')
    sleep "$seconds"
    local t1 r1; t1=$(awk '{print $14+$15}' "/proc/$pid_poller/stat"); r1=$(report "$dir" | python3 -c 'import json,sys; print(sum(s["requests"] for s in json.load(sys.stdin)["subscriptions"]))')
    local rss; rss=$(awk '/VmRSS/ {print $2}' "/proc/$pid_poller/status")
    local hz; hz=$(getconf CLK_TCK)
    kill -TERM "$pid_poller"; wait "$pid" || true
    python3 - "$t0" "$t1" "$hz" "$seconds" "$interval" "$SUBS" "$rss" "$r0" "$r1" <<'PY' | tee -a "$out/idle.jsonl"
import json, sys
t0, t1, hz, secs, interval, subs, rss, r0, r1 = map(float, sys.argv[1:])
cpu = (t1 - t0) / hz
polls = subs * secs / interval
per_poll = cpu / polls
# At a 60 s interval: subs * 60 polls an hour.
cpu_per_hour = per_poll * subs * 60
print(json.dumps({"summary": "idle", "subscriptions": int(subs), "interval_s": interval, "measured_s": secs,
    "cpu_s_measured": round(cpu, 2), "cpu_ms_per_poll": round(per_poll * 1000, 3),
    "cpu_s_per_hour_at_60s": round(cpu_per_hour, 1), "core_percent_at_60s": round(cpu_per_hour / 36, 3),
    "rss_mib": round(rss / 1024, 1), "requests_per_poll": round((r1 - r0) / polls, 3)}))
PY
    stop_emulator
    rm -rf "$dir"
}

overlap() {
    # One subscription at 600 operations a minute (about 1,300 entries a
    # minute); a 10 s interval; windows from 20 s to 160 s.
    for window in 20 40 80 160; do
        local dir; dir=$(mktemp -d)
        start_emulator "$dir" --subscriptions 1 --rate 600 --backlog 2000 --backlog-span 5m --interval 10s --window "${window}s"
        (cd "$dir" && SSL_CERT_FILE="$dir/ca.pem" RUST_LOG=info "$OLDPWD/$bin/azure-activity-poller" --config "$dir/poller.toml" --log-format json 2> "$dir/poller.log") &
        local pid=$!
        sleep 65
        kill -TERM "$(pgrep -P "$pid" azure-activity || echo "$pid")" 2>/dev/null || true; wait "$pid" || true
        python3 - "$dir/poller.log" "$window" <<'PY' | tee -a "$out/overlap.jsonl"
import json, sys
polls = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
polls = [p for p in polls if p.get("message") == "poll complete"][1:]  # the first poll catches up
n = len(polls) or 1
avg = lambda k: round(sum(p.get(k, 0) for p in polls) / n, 1)
print(json.dumps({"summary": "overlap", "window_s": int(sys.argv[2]), "interval_s": 10, "polls": len(polls),
    "requests_per_poll": avg("requests"), "pages_per_poll": avg("pages"), "bytes_per_poll": avg("bytes"),
    "fetched_per_poll": avg("fetched"), "new_per_poll": avg("new")}))
PY
        stop_emulator
        rm -rf "$dir"
    done
}

micro() {
    cargo bench --locked --bench page -- --noplot 2>&1 | tee "$out/micro.txt" | grep -E "time:|^[a-z_/]+ " >&2
}

latency() {
    python3 bench/wan.py --out "$out" "$scenario" > /dev/null
}

case "$what" in
    catchup) catchup ;;
    latency) latency ;;
    idle) idle ;;
    overlap) overlap ;;
    micro) micro ;;
    all) catchup; idle; overlap; micro ;;
    *) echo "usage: bench/run.sh [catchup|idle|overlap|micro|latency [SCENARIO]|all]" >&2; exit 64 ;;
esac
echo "results: $out" >&2
