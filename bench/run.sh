#!/usr/bin/env bash
# The benchmarks of BENCHMARKS.md, against the emulator on loopback, release
# build. One command: `bench/run.sh [catchup|idle|overlap|micro|latency|all]`.
#
#   N=1000000 RUNS=3 bench/run.sh catchup   # catch-up throughput, peak RSS, and the SDK's listing rate
#   SUBS=1000 bench/run.sh idle              # idle cost of many subscriptions
#   bench/run.sh overlap                     # requests and bytes per poll by window/interval
#   bench/run.sh micro                       # criterion: parse and normalize one page
#   N=1000000 bench/run.sh backends          # the catch-up and idle runs on SQLite, then on a
#                                            # local PostgreSQL (started here), and their ratio
#   N=1000000 RUNS=1 SDK=0 bench/run.sh journal
#                                            # the catch-up and idle runs with the delivery
#                                            # journal on, then off, and its bytes per million
#   bench/run.sh latency [catchup|burst|capacity|fairness|schedule]
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
# Where the poller keeps its state: sqlite (the emulator's default) or
# postgres (a server started by this script, see start_postgres).
STATE=${STATE:-sqlite}
# SDK=0 leaves the Python SDK out of the catch-up runs.
SDK=${SDK:-1}
# JOURNAL=0 turns the delivery journal off ([journal] retention = "0"), to
# measure what it costs (`journal` runs the catch-up with it on and off).
JOURNAL=${JOURNAL:-1}
out=bench/results/$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$out"
# BIN=DIR runs another build's binaries (an A/B against an older commit)
# instead of building this one.
bin=$(realpath -m "${BIN:-target/release}")

[ -n "${BIN:-}" ] || cargo build --release --locked --bins >&2
{
    echo "date: $(date -u +%FT%TZ)"
    echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | xargs) x $(nproc)"
    echo "memory: $(free -g | awk '/Mem:/ {print $2}') GiB"
    echo "kernel: $(uname -r)"
    echo "rustc: $(rustc -V)"
    echo "commit: $(git rev-parse --short HEAD)${BIN:+ (binaries: $BIN)}"
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
trap 'stop_emulator; stop_postgres' EXIT
report() { # DIR
    local arm; arm=$(awk '/Azure Resource Manager/ {print $4}' "$1/emulator.out")
    curl -sf --cacert "$1/ca.pem" "$arm/_emulator/report"
}
# A PostgreSQL server of this run's own, from the distribution's packages
# (Debian: apt-get install postgresql), on a free port, with its default
# (durable) settings: every commit waits for its WAL flush.
pg_dir= pg_bin= pg_port= pg_as=()
start_postgres() {
    pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
    [ -x "$pg_bin/initdb" ] || { echo "no PostgreSQL server binaries: apt-get install postgresql" >&2; return 1; }
    pg_dir=$(mktemp -d)
    if [ "$(id -u)" = 0 ]; then chown nobody: "$pg_dir"; pg_as=(runuser -u nobody --); fi
    "${pg_as[@]}" "$pg_bin/initdb" -D "$pg_dir/data" -A trust -U postgres -E UTF8 --no-locale > /dev/null
    pg_port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    "${pg_as[@]}" "$pg_bin/pg_ctl" start -w -D "$pg_dir/data" -l "$pg_dir/server.log" \
        -o "-p $pg_port -k $pg_dir -c listen_addresses=127.0.0.1" > /dev/null
    echo "postgres: $("$pg_bin/postgres" --version)" >> "$out/machine.txt"
}
stop_postgres() {
    if [ -n "$pg_dir" ]; then
        "${pg_as[@]}" "$pg_bin/pg_ctl" stop -w -D "$pg_dir/data" -m fast > /dev/null 2>&1 || true
        rm -rf "$pg_dir"; pg_dir=
    fi
}
# CPU ticks of the PostgreSQL server so far: the postmaster, its children
# (and the children that already exited); 0 without a server.
pg_ticks() {
    [ -n "$pg_dir" ] || { echo 0; return; }
    local pm; pm=$(head -1 "$pg_dir/data/postmaster.pid")
    { awk '{print $14+$15+$16+$17}' "/proc/$pm/stat"
      for c in $(pgrep -P "$pm"); do awk '{print $14+$15}' "/proc/$c/stat" 2>/dev/null || true; done
    } | awk '{s += $1} END {print s + 0}'
}
# Points DIR/poller.toml at the chosen state: for postgres, a fresh database.
use_state() { # DIR
    [ "$STATE" = postgres ] || return 0
    [ -n "$pg_dir" ] || start_postgres
    "$pg_bin/psql" -qX -h 127.0.0.1 -p "$pg_port" -U postgres -d postgres \
        -c "DROP DATABASE IF EXISTS poller WITH (FORCE)" -c "CREATE DATABASE poller" > /dev/null
    sed -i "s|^path = \"state.db\"$|url = \"postgres://postgres@127.0.0.1:$pg_port/poller\"|" "$1/poller.toml"
    grep -q "^url = \"postgres://" "$1/poller.toml"
}

# Turns DIR/poller.toml's delivery journal off when JOURNAL=0.
use_journal() { # DIR
    [ "$JOURNAL" = 0 ] || return 0
    printf '\n[journal]\nretention = "0"\n' >> "$1/poller.toml"
}
# The journal's bytes in DIR's state: SQLite's pages of its tables (the
# rows and their outcomes, dbstat), or PostgreSQL's relation sizes with
# their indexes and TOAST.
journal_bytes() { # DIR
    if [ "$STATE" = postgres ]; then
        "$pg_bin/psql" -qAtX -h 127.0.0.1 -p "$pg_port" -U postgres -d poller \
            -c "SELECT COALESCE(pg_total_relation_size(to_regclass('journal')), 0)
                   + COALESCE(pg_total_relation_size(to_regclass('journal_outcome')), 0)"
    else
        python3 -c 'import sqlite3, sys
c = sqlite3.connect(sys.argv[1])
print(c.execute("SELECT COALESCE(SUM(pgsize), 0) FROM dbstat WHERE name IN (\"journal\", \"journal_outcome\")").fetchone()[0])' "$1/state.db"
    fi
}
# What pruning costs on DIR's full SQLite journal: the pruner's statement
# (store/sqlite/journal.rs) when nothing has expired, as every idle minute
# runs it, then every row expired and pruned in its batches of 1,000.
prune_cost() { # DIR
    python3 - "$1/state.db" "$(load)" <<'PY' | tee -a "$out/prune.jsonl"
import json, sqlite3, sys, time
c = sqlite3.connect(sys.argv[1], isolation_level=None)
rows = c.execute("SELECT count(*) FROM journal").fetchone()[0]
oldest = "SELECT id FROM (SELECT id, fetched_at_ns FROM journal ORDER BY id LIMIT 1000) WHERE fetched_at_ns < ?"
outcomes = f"DELETE FROM journal_outcome WHERE journal_id IN ({oldest})"
sql = f"DELETE FROM journal WHERE id IN ({oldest})"
def batch(cut):
    c.execute("BEGIN"); c.execute(outcomes, (cut,)); n = c.execute(sql, (cut,)).rowcount; c.execute("COMMIT")
    return n
idle = []
for _ in range(20):
    t = time.perf_counter(); batch(0); idle.append(time.perf_counter() - t)
cut, batches, t0 = time.time_ns() + 10**9, 0, time.perf_counter()
while True:
    n = batch(cut); batches += 1
    if n < 1000: break
took = time.perf_counter() - t0
print(json.dumps({"summary": "prune", "rows": rows, "idle_statement_ms": round(sorted(idle)[len(idle) // 2] * 1000, 3),
    "prune_all_s": round(took, 2), "batches": batches, "batch_ms": round(took / batches * 1000, 2), "load": sys.argv[2]}))
PY
}
# The machine's load when a result was taken (it is shared).
load() { cut -d' ' -f1-3 /proc/loadavg | sed 's/ /, /g'; }

sdk_python() {
    if [ ! -x bench/.venv/bin/python ]; then
        python3 -m venv bench/.venv >&2
        bench/.venv/bin/pip install -q -r bench/requirements.txt >&2
    fi
    echo bench/.venv/bin/python
}

catchup() {
    local py=; [ "$SDK" = 1 ] && py=$(sdk_python)
    for run in $(seq 1 "$RUNS"); do
        local dir; dir=$(mktemp -d)
        start_emulator "$dir" --subscriptions 1 --rate 0 --backlog "$N" --backlog-span 50m \
            --backlog-succeeded-only --page-size 200 --arm-tls --interval 1m --window 15m
        sed -i "s/^concurrency = 8$/concurrency = $CONCURRENCY/" "$dir/poller.toml"
        use_state "$dir"
        use_journal "$dir"
        local load0; load0=$(load)
        local start end
        start=$(date -u -d '-1 hour' +%FT%TZ); end=$(date -u +%FT%TZ)
        local poller s0 s1
        s0=$(pg_ticks)
        poller=$(cd "$dir" && python3 "$OLDPWD/bench/measure.py" --env SSL_CERT_FILE="$dir/ca.pem" --env RUST_LOG=info \
            --stderr "$dir/poller.log" -- "$bin/azure-activity-poller" --config "$dir/poller.toml" --once --since 1h --log-format json)
        s1=$(pg_ticks)
        local server_cpu; server_cpu=$(python3 -c "print(round(($s1 - $s0) / $(getconf CLK_TCK), 2))")
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
        local sdk=null
        [ -n "$py" ] && sdk=$(REQUESTS_CA_BUNDLE="$dir/ca.pem" "$py" bench/sdk_list.py "$dir" 00000000-0000-4000-8000-000000000001 "$start" "$end")
        local line="{\"run\": $run, \"state\": \"$STATE\", \"journal\": $JOURNAL, \"journal_bytes\": $(journal_bytes "$dir"), \"load_before\": [$load0], \"load_after\": [$(load)], \"entries\": $N, \"concurrency\": $CONCURRENCY, \"poller\": $poller, \"server_cpu_s\": $server_cpu, \"poll_phase\": $poll, \"endpoint\": $delivered, \"sdk\": $sdk}"
        echo "$line" | tee -a "$out/catchup.jsonl"
        [ "$JOURNAL" = 1 ] && [ "$STATE" = sqlite ] && prune_cost "$dir"
        stop_emulator
        rm -rf "$dir"
    done
    python3 - "$out/catchup.jsonl" "$STATE" "$JOURNAL" <<'PY' | tee -a "$out/summary.jsonl"
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if json.loads(l).get("state", "sqlite") == sys.argv[2] and json.loads(l).get("journal", 1) == int(sys.argv[3])]
med = lambda xs: statistics.median(xs)
p = med([r["entries"] / r["poller"]["wall_s"] for r in rows])
pp = med([r["poll_phase"]["fetched"] / r["poll_phase"]["took_s"] for r in rows])
summary = {"summary": "catchup", "state": sys.argv[2], "journal": int(sys.argv[3]), "runs": len(rows),
    "journal_bytes_per_million": round(med([r.get("journal_bytes", 0) * 1e6 / r["entries"] for r in rows])),
    "poller_entries_per_s": round(p), "poller_peak_rss_mib": round(med([r["poller"]["peak_rss_kib"] for r in rows]) / 1024, 1),
    "poller_cpu_s": round(med([r["poller"]["cpu_s"] for r in rows]), 1),
    "server_cpu_s": round(med([r.get("server_cpu_s", 0) for r in rows]), 1),
    "poll_phase_entries_per_s": round(pp),
    "all_delivered": all(r["endpoint"]["missing"] == 0 and r["endpoint"]["delivered"] == r["entries"] and r["endpoint"]["duplicates"] == 0 for r in rows)}
if all(r["sdk"] for r in rows):
    s = med([r["sdk"]["entries_per_s"] for r in rows])
    summary.update({"sdk_entries_per_s": round(s), "sdk_peak_rss_mib": round(med([r["sdk"]["peak_rss_kib"] for r in rows]) / 1024, 1),
        "ratio": round(p / s, 2), "poll_phase_ratio": round(pp / s, 2)})
print(json.dumps(summary))
PY
}

idle() {
    # 1,000 subscriptions with no entries. Time is scaled down tenfold: every
    # 6 s instead of 60 s, for 60 s, stands for 10 minutes at 60 s.
    local dir; dir=$(mktemp -d)
    local interval=${IDLE_INTERVAL:-6} seconds=${IDLE_SECONDS:-60}
    start_emulator "$dir" --subscriptions "$SUBS" --rate 0 --interval "${interval}s" --window "$((interval * 3))s"
    sed -i "s/^concurrency = 4$/concurrency = 16/" "$dir/poller.toml"
    use_state "$dir"
    use_journal "$dir"
    (cd "$dir" && SSL_CERT_FILE="$dir/ca.pem" RUST_LOG=warn "$bin/azure-activity-poller" --config "$dir/poller.toml" 2> "$dir/poller.log") &
    local pid=$!
    # Let the first round (a probe and a poll each) pass, then measure.
    sleep $((interval * 2))
    local pid_poller; pid_poller=$(pgrep -P "$pid" azure-activity || echo "$pid")
    local p0; p0=$(pg_ticks)
    local t0 r0; t0=$(awk '{print $14+$15}' "/proc/$pid_poller/stat"); r0=$(report "$dir" | python3 -c 'import json,sys; print(sum(s["requests"] for s in json.load(sys.stdin)["subscriptions"]))')
    sleep "$seconds"
    local p1; p1=$(pg_ticks)
    local t1 r1; t1=$(awk '{print $14+$15}' "/proc/$pid_poller/stat"); r1=$(report "$dir" | python3 -c 'import json,sys; print(sum(s["requests"] for s in json.load(sys.stdin)["subscriptions"]))')
    local rss; rss=$(awk '/VmRSS/ {print $2}' "/proc/$pid_poller/status")
    local hz; hz=$(getconf CLK_TCK)
    kill -TERM "$pid_poller"; wait "$pid" || true
    python3 - "$t0" "$t1" "$hz" "$seconds" "$interval" "$SUBS" "$rss" "$r0" "$r1" "$STATE" "$p0" "$p1" "$JOURNAL" "$(load)" <<'PY' | tee -a "$out/idle.jsonl"
import json, sys
t0, t1, hz, secs, interval, subs, rss, r0, r1 = map(float, sys.argv[1:10])
cpu = (t1 - t0) / hz
polls = subs * secs / interval
per_poll = cpu / polls
# At a 60 s interval: subs * 60 polls an hour.
cpu_per_hour = per_poll * subs * 60
server_cpu = (float(sys.argv[12]) - float(sys.argv[11])) / hz
print(json.dumps({"summary": "idle", "state": sys.argv[10], "journal": int(sys.argv[13]), "load_after": sys.argv[14], "subscriptions": int(subs),
    "server_cpu_s_measured": round(server_cpu, 2), "server_core_percent_at_60s": round(server_cpu / polls * subs * 60 / 36, 3), "interval_s": interval, "measured_s": secs,
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
        (cd "$dir" && SSL_CERT_FILE="$dir/ca.pem" RUST_LOG=info "$bin/azure-activity-poller" --config "$dir/poller.toml" --log-format json 2> "$dir/poller.log") &
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

# The catch-up and idle runs on SQLite, then on PostgreSQL, and the ratios.
# The idle run counts the poller's CPU only; the server's is reported beside it.
backends() {
    local state
    for state in sqlite postgres; do
        STATE=$state SDK=0 catchup
        STATE=$state idle
    done
    python3 - "$out" <<'PY' | tee "$out/backends.json"
import json, sys
d = sys.argv[1]
cat = {r["state"]: r for r in map(json.loads, open(f"{d}/summary.jsonl")) if r.get("summary") == "catchup"}
idle = {r["state"]: r for r in map(json.loads, open(f"{d}/idle.jsonl"))}
print(json.dumps({"summary": "backends",
    "catchup_entries_per_s": {k: v["poller_entries_per_s"] for k, v in cat.items()},
    "catchup_server_cpu_s": cat["postgres"]["server_cpu_s"],
    "catchup_poller_cpu_s": {k: v["poller_cpu_s"] for k, v in cat.items()},
    "catchup_postgres_over_sqlite": round(cat["postgres"]["poller_entries_per_s"] / cat["sqlite"]["poller_entries_per_s"], 2),
    "poll_phase_postgres_over_sqlite": round(cat["postgres"]["poll_phase_entries_per_s"] / cat["sqlite"]["poll_phase_entries_per_s"], 2),
    "idle_core_percent": {k: v["core_percent_at_60s"] for k, v in idle.items()},
    "idle_postgres_over_sqlite": round(idle["postgres"]["core_percent_at_60s"] / idle["sqlite"]["core_percent_at_60s"], 2),
    "idle_server_core_percent": idle["postgres"]["server_core_percent_at_60s"],
    "all_delivered": all(v["all_delivered"] for v in cat.values())}))
PY
}

case "$what" in
    catchup) catchup ;;
    # The delivery journal's cost: the catch-up and the idle daemon with it
    # on, then off (RUNS each), and the journal's bytes.
    journal) JOURNAL=1 catchup; JOURNAL=0 catchup; JOURNAL=1 idle; JOURNAL=0 idle ;;
    backends) backends ;;
    latency) latency ;;
    idle) idle ;;
    overlap) overlap ;;
    micro) micro ;;
    all) catchup; idle; overlap; micro ;;
    *) echo "usage: bench/run.sh [catchup|idle|backends|journal|overlap|micro|latency [SCENARIO]|all]" >&2; exit 64 ;;
esac
echo "results: $out" >&2
