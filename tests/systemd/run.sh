#!/usr/bin/env bash
# README's install, under a real systemd.
#
# Boots a Debian 12 root (debootstrap, cached) with systemd as PID 1 in
# `systemd-nspawn --boot --private-network`, installs the binary, the unit and
# the configuration with README's own commands (the script checks that README
# has each of them, verbatim), runs the project's emulator on the guest's
# loopback as Azure and Guardrails, and checks with systemctl and journalctl:
# READY, delivery exactly once, the open-files limit, reload, stop, exit 78 without restart,
# README's journal queries, `systemd-analyze security`, and the Debian package
# (lintian, `apt install`, started as shipped once the secrets are in place).
#
# Prints PASS or FAIL per check and exits 1 if any check failed; exits 77 with
# `SYSTEMD TEST NOT RUN: <reason>` when this machine cannot run it at all (not
# root, tools missing, no container boots).
#
# Environment:
#   AAP_SYSTEMD_CACHE  where the Debian root is kept between runs
#                      (default /var/cache/azure-activity-poller/systemd-test)
#   PROFILE            dev (default, quicker) or release: what is built and packaged
#   CARGO_TARGET_DIR   as for cargo
#   AAP_SYSTEMD_KEEP=1 keep the run's guest root and logs (the path is printed)
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
REPO=$PWD
T0=$(date +%s)
CACHE=${AAP_SYSTEMD_CACHE:-/var/cache/azure-activity-poller/systemd-test}
PROFILE=${PROFILE:-dev}
TARGET=${CARGO_TARGET_DIR:-$REPO/target}
case $PROFILE in
    dev) BUILT=$TARGET/debug ;;
    release) BUILT=$TARGET/release ;;
    *) echo "PROFILE is dev or release, not $PROFILE" >&2; exit 64 ;;
esac
SUITE=bookworm
MIRROR=${AAP_DEBIAN_MIRROR:-http://deb.debian.org/debian}
INCLUDE=systemd,systemd-sysv,dbus,procps,ca-certificates,curl
UNIT=azure-activity-poller
SUB1=00000000-0000-4000-8000-000000000001
SUB2=00000000-0000-4000-8000-000000000002

# README's commands, verbatim. The script runs each (without `sudo`: the
# guest's shell is root's) and first checks that README says exactly this.
README_INSTALL=(
    'sudo install -m 0755 target/release/azure-activity-poller /usr/bin/'
    'sudo install -d -m 0755 /etc/azure-activity-poller'
    'sudo install -m 0644 poller.toml.example /etc/azure-activity-poller/poller.toml'
    'sudo install -m 0644 systemd/azure-activity-poller.service /etc/systemd/system/'
)
README_SYSTEMD=(
    'sudo install -m 0600 /dev/stdin /etc/azure-activity-poller/client-secret <<< "$CLIENT_SECRET"'
    'sudo install -m 0600 /dev/stdin /etc/azure-activity-poller/ingest-url <<< "$INGEST_URL"'
    'sudo azure-activity-poller check-config --config /etc/azure-activity-poller/poller.toml'
    'sudo systemctl daemon-reload'
    'sudo systemctl enable --now azure-activity-poller'
)
README_RELOAD='sudo systemctl reload azure-activity-poller'
README_JOURNAL='journalctl -u azure-activity-poller SUBSCRIPTION_NAME=production'
README_JOURNAL_ID='journalctl -u azure-activity-poller SUBSCRIPTION_ID=$SUBSCRIPTION_ID -o verbose'
README_DEB='sudo apt install ./target/debian/azure-activity-poller_*.deb'

not_run() {
    echo "SYSTEMD TEST NOT RUN: $*"
    exit 77
}

RESULTS=()
FAILED=0
pass() {
    echo "PASS  $1"
    RESULTS+=("PASS  $1")
}
fail() {
    local name=$1
    shift
    echo "FAIL  $name"
    [ $# -gt 0 ] && printf '%s\n' "$@" | sed 's/^/      /'
    RESULTS+=("FAIL  $name")
    FAILED=$((FAILED + 1))
}
# check NAME FUNCTION ARGS...: PASS if the function succeeds. What it says
# is shown under the line: its last lines under a PASS (what was seen), all
# of it under a FAIL.
check() {
    local name=$1 out
    shift
    if out=$("$@" 2>&1); then
        pass "$name"
        [ -n "$out" ] && tail -12 <<<"$out" | sed 's/^/      /'
    else
        fail "$name" "$out"
    fi
    return 0
}

# Polls `"$@"` every half second until it succeeds or `secs` pass.
wait_until() {
    local secs=$1 deadline
    shift
    deadline=$(($(date +%s) + secs))
    until "$@" >/dev/null 2>&1; do
        if [ "$(date +%s)" -ge "$deadline" ]; then
            return 1
        fi
        sleep 0.5
    done
}

# ------------------------------------------------------------ preconditions --
[ "$(id -u)" = 0 ] || not_run "needs root (systemd-nspawn, debootstrap)"
for tool in systemd-nspawn nsenter python3 timeout lintian; do
    command -v "$tool" >/dev/null || not_run "$tool is not installed (apt-get install systemd-container util-linux python3 coreutils lintian)"
done

echo "== azure-activity-poller $(git describe --always --dirty 2>/dev/null || echo '?'), $(date -u '+%Y-%m-%d %H:%M UTC'), host $(uname -r), $(systemd-nspawn --version | head -1)"
echo "== build ($PROFILE)"
cargo build --locked --profile "$PROFILE" --bins || { echo "FAIL  build"; exit 1; }
DEB=$(PROFILE=$PROFILE packaging/build-deb.sh) && [ -f "$DEB" ] || { echo "FAIL  packaging/build-deb.sh"; exit 1; }

# ---------------------------------------------------------- the Debian root --
mkdir -p "$CACHE"
KEY="$SUITE $MIRROR $INCLUDE"
exec 9>"$CACHE/lock"
flock -w 1200 9 || not_run "another run holds $CACHE/lock"
if [ ! -x "$CACHE/root/lib/systemd/systemd" ] || [ "$(cat "$CACHE/root.key" 2>/dev/null)" != "$KEY" ]; then
    command -v debootstrap >/dev/null || not_run "debootstrap is not installed and no cached root is in $CACHE"
    echo "== debootstrap $SUITE into $CACHE/root (cached for later runs)"
    TD=$(date +%s)
    rm -rf "$CACHE/root" "$CACHE/root.new"
    if ! timeout 1200 debootstrap --variant=minbase --include="$INCLUDE" "$SUITE" "$CACHE/root.new" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1; then
        tail -5 "$CACHE/debootstrap.log"
        not_run "debootstrap failed (network? see $CACHE/debootstrap.log)"
    fi
    # Not interactive, and a local .deb installs without asking.
    printf 'APT::Get::Assume-Yes "true";\n' >"$CACHE/root.new/etc/apt/apt.conf.d/90assume-yes"
    mv "$CACHE/root.new" "$CACHE/root"
    echo "$KEY" >"$CACHE/root.key"
    ROOT_FROM="made by debootstrap in $(($(date +%s) - TD)) s"
else
    ROOT_FROM="cached in $CACHE"
fi
echo "== Debian root: $ROOT_FROM"
WORK=$(mktemp -d "$CACHE/run.XXXXXX")
ROOT=$WORK/root
cp -a --reflink=auto "$CACHE/root" "$ROOT"
flock -u 9
MACHINE=aap-test-$$
echo "$MACHINE" >"$ROOT/etc/hostname"

# What README's commands expect to find in a checkout, and the emulator.
SRC=$ROOT/root/src
mkdir -p "$SRC/target/release" "$SRC/target/debian" "$SRC/systemd"
cp README.md poller.toml.example "$SRC/"
cp systemd/$UNIT.service "$SRC/systemd/"
cp "$BUILT/azure-activity-poller" "$SRC/target/release/" # a debug build when PROFILE=dev
cp "$DEB" "$SRC/target/debian/"
cp "$BUILT/activity-log-emulator" "$ROOT/usr/local/bin/"

# ---------------------------------------------------------------- the guest --
NSPAWN=
PID1=
cleanup() {
    if [ -n "$NSPAWN" ] && kill -0 "$NSPAWN" 2>/dev/null; then
        kill -TERM "$NSPAWN" 2>/dev/null # nspawn shuts the guest down cleanly
        for _ in $(seq 60); do kill -0 "$NSPAWN" 2>/dev/null || break; sleep 0.5; done
        kill -KILL "$NSPAWN" 2>/dev/null
        wait "$NSPAWN" 2>/dev/null
    fi
    if [ "${AAP_SYSTEMD_KEEP:-}" = 1 ]; then
        echo "kept: $WORK"
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Runs a command in the guest, as root, in /root/src, bounded by $GT seconds.
GT=60
g() {
    timeout "$GT" nsenter -t "$PID1" -a env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        HOME=/root LANG=C.UTF-8 TERM=dumb SYSTEMD_PAGER= SYSTEMD_COLORS=0 \
        CLIENT_SECRET="${CLIENT_SECRET:-}" INGEST_URL="${INGEST_URL:-}" SUBSCRIPTION_ID="${SUBSCRIPTION_ID:-}" \
        bash -c 'cd /root/src && eval "$1"' guest "$1"
}
prop() { g "systemctl show -P $1 $UNIT"; }

echo "== boot $MACHINE"
systemd-nspawn --boot --private-network --register=no --keep-unit \
    --directory="$ROOT" --machine="$MACHINE" --console=passive >"$WORK/console.log" 2>&1 &
NSPAWN=$!
guest_pid1() {
    PID1=$(pgrep -P "$NSPAWN" | head -1)
    [ -n "$PID1" ] && [ "$(cat "/proc/$PID1/comm" 2>/dev/null)" = systemd ]
}
if ! wait_until 60 guest_pid1; then
    tail -20 "$WORK/console.log"
    not_run "systemd-nspawn could not boot a container here (privileges?): see the console above"
fi
# Until PID 1 listens, systemctl cannot ask it; then it waits for the boot.
booted() {
    state=$(GT=90 g 'systemctl is-system-running --wait' 2>/dev/null)
    [ "$state" = running ] || [ "$state" = degraded ]
}
state=
if wait_until 120 booted; then
    pass "boot: systemd $(g 'systemctl --version | head -1 | cut -d" " -f2') is PID 1 in the guest ($state)"
else
    tail -20 "$WORK/console.log"
    not_run "the container did not finish booting (state: ${state:-none})"
fi

# ------------------------------------------------------------- the emulator --
g "systemd-run --unit=activity-log-emulator /usr/local/bin/activity-log-emulator --dir /var/lib/emulator \
    --subscriptions 2 --rate 3 --backlog 20 --backlog-span 5m --interval 2s --window 10m --seed 8" >/dev/null 2>&1
EMU=$ROOT/var/lib/emulator
emulator_ready() { [ "$(grep -c '^\[\[subscription\]\]' "$EMU/poller.toml" 2>/dev/null)" = 2 ]; }
if ! wait_until 30 emulator_ready; then
    fail "emulator started" "$(g 'journalctl -u activity-log-emulator --no-pager | tail -20')"
    exit 1
fi
ARM=$(sed -n 's|^resource_manager_url = "http://\(.*\)"|\1|p' "$EMU/poller.toml")
CLIENT_SECRET=$(cat "$EMU/client-secret")
INGEST_URL=$(cat "$EMU/ingest-url")
# The emulated Entra ID's CA, trusted the way an operator behind a
# TLS-inspecting proxy would: in the system store, not in the unit.
install -m 0644 "$EMU/ca.pem" "$ROOT/usr/local/share/ca-certificates/activity-log-emulator.crt"
g update-ca-certificates >/dev/null 2>&1

# The configurations an operator would write for this Azure: the emulator's,
# with README's state path, first with one subscription, then with both.
python3 - "$EMU/poller.toml" "$WORK" <<'EOF'
import re, sys
text = open(sys.argv[1]).read()
text = text.replace('path = "state.db"', 'path = "/var/lib/azure-activity-poller/state.db"')
text = text.replace('name = "emulated-1"', 'name = "production"').replace('name = "emulated-2"', 'name = "staging"')
first, second = text.split("\n[[subscription]]", 2)[1:]
head = text.split("\n[[subscription]]")[0]
one = head + "\n[[subscription]]" + first
two = one + "\n[[subscription]]" + second
open(sys.argv[2] + "/one.toml", "w").write(one)
open(sys.argv[2] + "/two.toml", "w").write(two)
open(sys.argv[2] + "/bad.toml", "w").write(two.replace('interval = "2s"', 'interval = "soon"'))
open(sys.argv[2] + "/handlers.toml", "w").write(two.rstrip("\n") + "\nevent_handlers = true\n")
EOF
CONF=$ROOT/etc/azure-activity-poller/poller.toml
# Rewrites the installed configuration's contents, keeping its mode and owner.
configure() { cat "$WORK/$1.toml" >"$CONF"; }

report() { g "curl -sf --max-time 5 http://$ARM/_emulator/report"; }
# exactly_once SUB...: each named subscription has everything visible
# delivered once (and something delivered); nothing anywhere duplicated or
# unknown. With MORE_THAN=N, more than N deliveries in all.
exactly_once() {
    report | python3 -c '
import json, os, sys
r = json.load(sys.stdin)
subs = {s["subscription"]: s for s in r["subscriptions"]}
bad = []
for sid in sys.argv[1:]:
    s = subs.get(sid)
    if not s or s["expected"] == 0 or s["missing"] or s["delivered"] != s["expected"]:
        bad.append(f"{sid}: " + (json.dumps({k: s[k] for k in ("expected", "delivered", "duplicates")} | {"missing": len(s["missing"])}) if s else "absent"))
dups = sum(s["duplicates"] for s in r["subscriptions"])
unexpected = len(r["unexpected"])
if dups or unexpected:
    bad.append(f"duplicates {dups}, unexpected {unexpected}")
total = sum(s["delivered"] for s in r["subscriptions"])
if total <= int(os.environ.get("MORE_THAN", "0")):
    bad.append(f"delivered {total} in all")
ok = ("%s: %d delivered once" % (sid, subs[sid]["delivered"]) for sid in sys.argv[1:])
print("; ".join(bad) if bad else "; ".join(ok))
sys.exit(1 if bad else 0)
' "$@"
}
delivered_total() { report | python3 -c 'import json,sys; print(sum(s["delivered"] for s in json.load(sys.stdin)["subscriptions"]))'; }
# retry SECS COMMAND...: waits for the command to succeed, then runs it once
# more for what it says (why it failed, or what it saw).
retry() {
    wait_until "$1" "${@:2}"
    "${@:2}"
}

# -------------------------------------------------------------------- README --
readme_has() {
    # The command is a whole line of README (a trailing `# comment` allowed).
    awk -v c="$1" 'index($0, c) == 1 && (length($0) == length(c) || substr($0, length(c) + 1, 1) == " ") { found = 1 } END { exit !found }' README.md
}
readme_commands() {
    local c missing=0
    for c in "${README_INSTALL[@]}" "${README_SYSTEMD[@]}" "$README_RELOAD" "$README_JOURNAL" "$README_JOURNAL_ID" "$README_DEB"; do
        readme_has "$c" || { echo "README lacks: $c"; missing=1; }
    done
    return $missing
}
check "README has, verbatim, every command this test runs" readme_commands
run_readme() {
    local c
    for c in "$@"; do
        echo "# ${c#sudo }"
        g "${c#sudo }" || { echo "exit $?"; return 1; }
    done
}

# ----------------------------------------------------- install from source --
check "install from source as README says" run_readme "${README_INSTALL[@]}"
configure one
# README's commands for secrets, check-config and start; `enable --now`
# returns once the Type=notify unit sent READY.
check_start() {
    run_readme "${README_SYSTEMD[@]}" >"$WORK/start.out" 2>&1 || { cat "$WORK/start.out"; return 1; }
    if grep -q '^warning:' "$WORK/start.out"; then
        cat "$WORK/start.out"
        return 1
    fi
    cat "$WORK/start.out"
    local state
    state="$(prop ActiveState)/$(prop SubState) NRestarts=$(prop NRestarts) STATUS=$(prop StatusText)"
    echo "$state"
    [[ $state == "active/running NRestarts=0 STATUS="?* ]]
}
check "secrets, check-config (valid, no warning) and enable --now as README says: active (READY), STATUS= set" check_start
check "events delivered exactly once (emulator's report)" retry 90 exactly_once "$SUB1"

# What PID 1 gave the process: the unit's LimitNOFILE (systemd's soft default
# of 1024 is below what 10,000 subscriptions' connections and 512 POSTs in
# flight can hold at once). systemd sets the closest it may: 65,536, or its
# own hard limit when the container's is lower (a host's 20,000, say).
open_files() {
    local own cap want
    own=$(g "awk '/^Max open files/ {print \$4, \$5}' /proc/$(prop MainPID)/limits")
    cap=$(g "awk '/^Max open files/ {print \$5}' /proc/1/limits")
    want=65536
    [ "$cap" != unlimited ] && [ "$cap" -lt "$want" ] && want=$cap
    echo "service: soft and hard $own; PID 1's hard limit $cap; expected $want $want"
    [ "$own" = "$want $want" ] && [ "$want" -gt 1024 ]
}
check "the service may hold 65,536 open files (LimitNOFILE; at most PID 1's own hard limit)" open_files

arenas() {
    local env
    env=$(g "tr '\\0' '\\n' </proc/$(prop MainPID)/environ | grep '^MALLOC_ARENA_MAX=' || true")
    echo "service: ${env:-MALLOC_ARENA_MAX unset}"
    [ "$env" = MALLOC_ARENA_MAX=2 ]
}
check "the service runs with two malloc arenas (MALLOC_ARENA_MAX=2, the unit's Environment=)" arenas

staging_silent() { [ "$(report | python3 -c 'import json,sys; print([s["delivered"] for s in json.load(sys.stdin)["subscriptions"]][1])')" = 0 ]; }
check "an unconfigured subscription gets nothing" staging_silent

journal_query() {
    local out
    out=$(g "$README_JOURNAL")
    grep -q 'poll complete' <<<"$out" || { echo "$out" | tail; return 1; }
    SUBSCRIPTION_ID=$SUB1
    out=$(g "$README_JOURNAL_ID")
    grep -q "SUBSCRIPTION_ID=$SUB1" <<<"$out" && grep -q 'SUBSCRIPTION_NAME=production' <<<"$out" &&
        grep -q 'FETCHED=' <<<"$out" && grep -q 'WINDOW_START=' <<<"$out" && ! grep -q '^ *F_' <<<"$out" ||
        { echo "$out" | tail -40; return 1; }
    echo "$(g "$README_JOURNAL" | grep -c 'poll complete') poll lines for production"
}
check "README's journal queries return the poll lines with their fields (no F_ prefix)" retry 20 journal_query

# -------------------------------------------------------------------- reload --
check_reload() {
    local pid
    pid=$(prop MainPID)
    configure two
    run_readme "$README_RELOAD" || return 1
    retry 90 exactly_once "$SUB1" "$SUB2" || return 1
    [ "$(prop MainPID)" = "$pid" ] && [ "$(prop NRestarts)" = 0 ] && [ "$(prop ActiveState)" = active ] ||
        { echo "MainPID $pid -> $(prop MainPID), NRestarts $(prop NRestarts)"; return 1; }
    g "journalctl -u $UNIT SUBSCRIPTION_NAME=staging" | grep -q 'poll complete'
}
check "reload (README) adds a subscription, same process, delivered exactly once" check_reload

security() {
    local out rating
    out=$(g "systemd-analyze security $UNIT.service --no-pager")
    rating=$(sed -n "s/.*Overall exposure level for $UNIT.service: \([0-9.]*\).*/\1/p" <<<"$out")
    echo "exposure ${rating:-?}"
    [ -n "$rating" ] && python3 -c "import sys; sys.exit(0 if $rating <= 1.5 else 1)" || { echo "$out" | tail -15; return 1; }
}
check "systemd-analyze security on the loaded unit <= 1.5" security

# ---------------------------------------------------------------------- stop --
check_stop() {
    GT=90 g "systemctl stop $UNIT" || return 1
    local s
    s="$(prop ActiveState) Result=$(prop Result) ExecMainCode=$(prop ExecMainCode) ExecMainStatus=$(prop ExecMainStatus)"
    echo "$s"
    [ "$s" = "inactive Result=success ExecMainCode=1 ExecMainStatus=0" ]
}
check "stop: exit 0" check_stop

# --------------------------------------------------- exit 78, and no restart --
# Starts the unit with configuration $1; it must fail at once with 78 and
# stay failed, unrestarted, past RestartSec.
refused() {
    configure "$1"
    g "systemctl reset-failed $UNIT" >/dev/null 2>&1
    g "systemctl start $UNIT" >/dev/null 2>&1 && { echo "start succeeded"; return 1; }
    local restart_s s deadline
    restart_s=$(($(prop RestartUSec | sed 's/[^0-9]//g') + 5))
    deadline=$(($(date +%s) + restart_s))
    while [ "$(date +%s)" -lt "$deadline" ]; do
        s="$(prop ActiveState)/$(prop SubState) Result=$(prop Result) ExecMainStatus=$(prop ExecMainStatus) NRestarts=$(prop NRestarts)"
        [ "$s" = "failed/failed Result=exit-code ExecMainStatus=78 NRestarts=0" ] || { echo "$s"; g "journalctl -u $UNIT -n 5"; return 1; }
        sleep 1
    done
    echo "$s for ${restart_s}s (RestartSec + 5s); journal: $(g "journalctl -u $UNIT -n 30 -o cat" | grep -m1 "$2")"
}
check "a configuration error: failed with 78, not restarted" refused bad 'interval'
check "event_handlers = true: failed with 78, not restarted" refused handlers 'event handlers'
g "systemctl reset-failed $UNIT" >/dev/null 2>&1
configure two

# -------------------------------------------------------------- the package --
lint() {
    local out
    out=$(lintian "$DEB" 2>&1)
    echo "$out" | grep -v 'root privileges' | sed 's/^/lintian: /'
    ! grep -q '^E:' <<<"$out"
}
check "lintian: no error on $(basename "$DEB")" lint

# From the source install to the package: the binary and unit go, the state
# and the secrets stay; the operator's poller.toml is put aside so that the
# package installs its own.
g "rm /usr/bin/azure-activity-poller /etc/systemd/system/$UNIT.service && mv /etc/azure-activity-poller/poller.toml /root/poller.toml.mine && systemctl daemon-reload" >/dev/null 2>&1
check_deb_install() {
    GT=180 run_readme "$README_DEB" >"$WORK/apt.out" 2>&1 || { tail -20 "$WORK/apt.out"; return 1; }
    local s
    s="$(g "dpkg-query -W -f '\${Status}' azure-activity-poller"); poller.toml $(stat -c %a "$CONF"); unit $(prop FragmentPath)"
    echo "$s"
    [ "$s" = "install ok installed; poller.toml 644; unit /lib/systemd/system/$UNIT.service" ]
}
check "apt install ./*.deb (README) in the guest" check_deb_install
docs() {
    local d
    d=$(prop Documentation)
    echo "Documentation=$d"
    d=${d//\"/} # systemctl quotes the man page's parentheses
    [ "$d" = "man:azure-activity-poller(1) file:/usr/share/doc/azure-activity-poller/README.md" ] &&
        [ -f "$ROOT/usr/share/man/man1/azure-activity-poller.1.gz" ] &&
        [ -f "$ROOT/usr/share/doc/azure-activity-poller/README.md" ]
}
check "Documentation= names the installed man page and README, which exist" docs
shipped_config() {
    local out
    out=$(g 'azure-activity-poller check-config --config /etc/azure-activity-poller/poller.toml' 2>&1)
    echo "$out"
    ! grep -q '^warning:' <<<"$out" && grep -q valid <<<"$out"
}
check "check-config on the shipped poller.toml, secrets in place: valid, no warning" shipped_config
unreadable_warning() {
    local out
    g "chmod 0640 /etc/azure-activity-poller/poller.toml"
    out=$(g 'azure-activity-poller check-config --config /etc/azure-activity-poller/poller.toml' 2>&1)
    g "chmod 0644 /etc/azure-activity-poller/poller.toml"
    echo "$out" | grep '^warning:'
    grep -q '^warning: /etc/azure-activity-poller/poller.toml is not readable by other users .*DynamicUser' <<<"$out"
}
check "check-config warns that a 0640 poller.toml is unreadable to the service" unreadable_warning
check_deb_start() {
    local before
    before=$(delivered_total)
    g "cat /root/poller.toml.mine > /etc/azure-activity-poller/poller.toml" # the operator's edits
    check_start || return 1
    MORE_THAN=$before retry 120 exactly_once "$SUB1" "$SUB2" || return 1
    echo "delivered before the package: $before, after: $(delivered_total)"
}
check "the packaged unit, as shipped, starts with README's commands once the secrets are in place; exactly once" check_deb_start

# ------------------------------------------------------ a state disk fills --
# The state on a small filesystem of the service's own (a tmpfs in its mount
# namespace; the state copied in by the service's own shell before it execs
# the poller, since every Exec*= line gets a namespace of its own), filled
# from inside that namespace while the emulator's log goes on, then freed:
# the unit stays active, never restarted, says why in its status, and
# delivers exactly once.
SMALL=/var/lib/aap-small
full_disk() {
    local dropin=/etc/systemd/system/$UNIT.service.d pid s i
    GT=90 g "systemctl stop $UNIT" || return 1
    mkdir -p "$ROOT$dropin"
    cat >"$ROOT$dropin/small-state.conf" <<EOF_DROPIN
[Service]
TemporaryFileSystem=$SMALL:size=16M,mode=0777
ExecStart=
ExecStart=/bin/sh -c 'cp /var/lib/$UNIT/state.db* $SMALL/ && exec /usr/bin/azure-activity-poller --config /etc/azure-activity-poller/poller.toml'
EOF_DROPIN
    sed -i "s|/var/lib/$UNIT/state.db|$SMALL/state.db|" "$CONF"
    g "systemctl daemon-reload && systemctl reset-failed $UNIT; systemctl start $UNIT" || { g "journalctl -u $UNIT -n 20 --no-pager"; return 1; }
    pid=$(prop MainPID)
    g "nsenter -t $pid -m -- sh -c 'ls -l $SMALL; cat /dev/zero > $SMALL/filler 2>/dev/null; df -h $SMALL | tail -1'"
    status_says() { prop StatusText | grep -q 'the state database unavailable'; }
    wait_until 90 status_says || { echo "STATUS=$(prop StatusText)"; g "journalctl -u $UNIT -n 20 --no-pager"; return 1; }
    echo "STATUS=$(prop StatusText)"
    # Longer than RestartSec and many retries: still the same process.
    for i in $(seq 1 25); do
        s="$(prop ActiveState)/$(prop SubState) NRestarts=$(prop NRestarts) MainPID=$(prop MainPID)"
        [ "$s" = "active/running NRestarts=0 MainPID=$pid" ] || { echo "$s"; return 1; }
        sleep 1
    done
    g "nsenter -t $pid -m -- rm -f $SMALL/filler" || return 1
    recovered() { g "journalctl -u $UNIT -o cat --no-pager" | grep -q 'the state database is available again after'; }
    wait_until 90 recovered || { g "journalctl -u $UNIT -n 30 --no-pager"; return 1; }
    g "journalctl -u $UNIT -o cat --no-pager" | grep -m1 'available again'
    retry 120 exactly_once "$SUB1" "$SUB2" || return 1
    s="$(prop ActiveState)/$(prop SubState) NRestarts=$(prop NRestarts) MainPID=$(prop MainPID)"
    echo "$s"
    [ "$s" = "active/running NRestarts=0 MainPID=$pid" ]
}
check "a state disk that fills up and frees again: active, NRestarts=0, STATUS= says why, exactly once" full_disk
check "systemd-analyze security on the packaged unit <= 1.5" security
check "stop the packaged unit: exit 0" check_stop

# ------------------------------------------------------------------- summary --
echo
echo "== summary ($(($(date +%s) - T0)) s in all; $PROFILE build; guest $SUITE, root $ROOT_FROM)"
printf '%s\n' "${RESULTS[@]}"
if [ "$FAILED" -gt 0 ]; then
    echo "$FAILED check(s) FAILED"
    g "journalctl -u $UNIT --no-pager -n 60" 2>/dev/null | sed 's/^/journal: /'
    exit 1
fi
echo "all ${#RESULTS[@]} checks passed"
