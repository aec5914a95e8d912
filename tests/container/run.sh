#!/usr/bin/env bash
# The OCI image, as a container runtime runs it.
#
# Builds the image offline (packaging/build-image.sh), loads the archive with
# `podman load`, checks that it is what Containerfile describes (entrypoint,
# user 65532, volume, port, labels matching Cargo.toml), then runs it
# `--read-only`, as user 65532, on the host's network against the project's
# emulator on the host's loopback: once on SQLite in a named volume (copied
# up from the image's volume, so owned by 65532), once on a PostgreSQL server
# this script starts (initdb and pg_ctl, as tests/support/postgres.rs does).
# Each time: events delivered exactly once (the emulator's report: what was
# delivered against what it served), `/readyz` 200, and `podman stop`
# (SIGTERM) ends it with exit 0.
#
# Podman runs with its own storage under the work directory, `--storage-driver
# vfs` and `--runtime runc` (the cgroup layout here is hybrid: crun refuses),
# and `--ulimit nofile/nproc` at the host's soft limits (raising them is
# refused; nproc at most kernel.pid_max).
#
# Prints PASS or FAIL per check and exits 1 if any check failed; exits 77 with
# `CONTAINER TEST NOT RUN: <reason>` when this machine cannot run it at all
# (podman or buildah missing, or podman cannot start a container here).
#
# Environment:
#   PROFILE            release (default: the image as shipped) or dev (a debug
#                      build: quicker, what CI's tests already built)
#   CARGO_TARGET_DIR   as for cargo
#   AAP_CONTAINER_KEEP=1 keep the work directory (the path is printed)
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
REPO=$PWD
T0=$(date +%s)
PROFILE=${PROFILE:-release}
TARGET=${CARGO_TARGET_DIR:-$REPO/target}
case $PROFILE in
    dev) BUILT=$TARGET/debug ;;
    release) BUILT=$TARGET/release ;;
    *) echo "PROFILE is dev or release, not $PROFILE" >&2; exit 64 ;;
esac
SUB1=00000000-0000-4000-8000-000000000001
SUB2=00000000-0000-4000-8000-000000000002
ETC=/etc/azure-activity-poller

not_run() {
    echo "CONTAINER TEST NOT RUN: $*"
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
# check NAME FUNCTION ARGS...: PASS if the function succeeds; what it says
# is shown under the line (its last lines under a PASS, all of it under a FAIL).
check() {
    local name=$1 out
    shift
    if out=$("$@" 2>&1); then
        pass "$name"
        [ -n "$out" ] && tail -8 <<<"$out" | sed 's/^/      /'
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
        [ "$(date +%s)" -ge "$deadline" ] && return 1
        sleep 0.5
    done
}
# retry SECS COMMAND...: waits for the command to succeed, then runs it once
# more for what it says (why it failed, or what it saw).
retry() {
    wait_until "$1" "${@:2}"
    "${@:2}"
}
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# ------------------------------------------------------------ preconditions --
for tool in podman buildah python3 curl; do
    command -v "$tool" >/dev/null || not_run "$tool is not installed (apt-get install podman buildah runc uidmap python3 curl)"
done
command -v runc >/dev/null || not_run "runc is not installed (apt-get install runc): crun refuses this machine's hybrid cgroups"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/aap-container.XXXXXX")
P=(podman --root "$WORK/storage" --runroot "$WORK/run" --storage-driver vfs --runtime runc
    --cgroup-manager cgroupfs --events-backend file)
# Podman's defaults (over a million) are above the host's limits, and runc
# may not raise them: the host's soft limits, and nproc no higher than
# kernel.pid_max (above it runc's setrlimit is refused here, EPERM).
NOFILE=$(ulimit -Sn)
NPROC=$(ulimit -Su)
[ "$NOFILE" = unlimited ] && NOFILE=65536
PID_MAX=$(cat /proc/sys/kernel/pid_max 2>/dev/null || echo 32768)
{ [ "$NPROC" = unlimited ] || [ "$NPROC" -gt "$PID_MAX" ]; } && NPROC=$PID_MAX
EMU_PID=
PG_DIR=
PG_BIN=
PG_AS=()
cleanup() {
    "${P[@]}" rm -f -a -t 0 >/dev/null 2>&1
    [ -n "$EMU_PID" ] && { kill -INT "$EMU_PID" 2>/dev/null; wait "$EMU_PID" 2>/dev/null; }
    if [ -n "$PG_DIR" ]; then
        "${PG_AS[@]}" "$PG_BIN/pg_ctl" stop -w -D "$PG_DIR/data" -m fast >/dev/null 2>&1
        rm -rf "$PG_DIR"
    fi
    if [ "${AAP_CONTAINER_KEEP:-}" = 1 ]; then
        echo "kept: $WORK"
    else
        # vfs layers hold files owned by the container's users.
        "${P[@]}" system reset -f >/dev/null 2>&1
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

echo "== azure-activity-poller $(git describe --always --dirty 2>/dev/null || echo '?'), $(date -u '+%Y-%m-%d %H:%M UTC'), host $(uname -r), $(podman --version), runc $(runc --version | head -1 | awk '{print $3}')"
echo "== build the image ($PROFILE, packaging/build-image.sh)"
TAR=$(PROFILE=$PROFILE packaging/build-image.sh) && [ -f "$TAR" ] || { echo "FAIL  packaging/build-image.sh"; exit 1; }
VERSION=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -1)
LICENSE=$(sed -n 's/^license = "\(.*\)"$/\1/p' Cargo.toml | head -1)
IMAGE=azure-activity-poller:$VERSION
echo "   $TAR ($(du -h "$TAR" | cut -f1))"

# ------------------------------------------------------------------- load --
load() {
    "${P[@]}" load -i "$TAR" || return 1
    "${P[@]}" image exists "$IMAGE" || "${P[@]}" image exists "localhost/$IMAGE" || { "${P[@]}" images; return 1; }
    "${P[@]}" images --format '{{.Repository}}:{{.Tag}} {{.Size}}'
}
if ! out=$(load 2>&1); then
    echo "$out" | tail -5
    not_run "podman cannot load an image here (storage, privileges?)"
fi
pass "podman load $(basename "$TAR"): $IMAGE"
# podman names images it loads without a registry localhost/...
"${P[@]}" image exists "$IMAGE" || IMAGE=localhost/$IMAGE
if ! out=$("${P[@]}" run --rm --read-only --user 65532:65532 --network host \
    --ulimit "nofile=$NOFILE:$NOFILE" --ulimit "nproc=$NPROC:$NPROC" "$IMAGE" --version 2>&1); then
    echo "$out" | tail -5
    not_run "podman cannot start a container here (runc, cgroups, privileges?)"
fi
pass "the image runs: $out"

docker_manifest() {
    python3 - "$TAR" "${IMAGE#localhost/}" <<'EOF'
import json, sys, tarfile
with tarfile.open(sys.argv[1]) as t:
    names = set(t.getnames())
    m = json.load(t.extractfile("manifest.json"))
    index = json.load(t.extractfile("index.json"))
ok = (m[0]["RepoTags"] == [sys.argv[2]] and m[0]["Config"] in names and all(l in names for l in m[0]["Layers"])
      and "oci-layout" in names and index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"] == sys.argv[2])
print(json.dumps(m[0]["RepoTags"]), len(m[0]["Layers"]), "layer(s); OCI index and docker manifest.json name the same blobs")
sys.exit(0 if ok else 1)
EOF
}
check "the archive is an OCI layout with a docker manifest.json, tagged $IMAGE" docker_manifest

# The loaded image is what Containerfile describes, and both agree with Cargo.toml.
described() {
    local got want bad=0
    got=$("${P[@]}" image inspect "$IMAGE" --format \
        'entrypoint={{json .Config.Entrypoint}} cmd={{json .Config.Cmd}} user={{.Config.User}} volumes={{json .Config.Volumes}} ports={{json .Config.ExposedPorts}} version={{index .Config.Labels "org.opencontainers.image.version"}} licenses={{index .Config.Labels "org.opencontainers.image.licenses"}}')
    want="entrypoint=[\"/usr/bin/azure-activity-poller\"] cmd=[\"--config\",\"$ETC/poller.toml\"] user=65532:65532 volumes={\"/var/lib/azure-activity-poller\":{}} ports={\"9464/tcp\":{}} version=$VERSION licenses=$LICENSE"
    echo "$got"
    [ "$got" = "$want" ] || { echo "want $want"; bad=1; }
    local line
    for line in 'ENTRYPOINT ["/usr/bin/azure-activity-poller"]' "CMD [\"--config\", \"$ETC/poller.toml\"]" \
        'USER 65532:65532' 'VOLUME ["/var/lib/azure-activity-poller"]' 'EXPOSE 9464/tcp' "ARG VERSION=$VERSION" \
        "org.opencontainers.image.licenses=\"$LICENSE\"" 'ENV MALLOC_ARENA_MAX=2'; do
        grep -qF "$line" Containerfile || { echo "Containerfile lacks: $line"; bad=1; }
    done
    grep -q "image: ${IMAGE#localhost/} " deploy/kubernetes/azure-activity-poller.yaml ||
        { echo "the Kubernetes manifest does not name ${IMAGE#localhost/}"; bad=1; }
    return $bad
}
check "the image is what Containerfile says (entrypoint, cmd, user 65532, volume, port, labels from Cargo.toml); the manifest names it" described

# Containerfile's runtime stage, built by podman without a registry: its
# build stage stood in by the binary already built, its base (distroless cc)
# by the offline image's libraries and /etc (no /var: the stage must make
# the state directory itself). It must build and give the same
# configuration, with the state directory owned by 65532.
containerfile_stage() {
    local ctx=$WORK/containerfile base=gcr.io/distroless/cc-debian12:nonroot
    mkdir -p "$ctx/out/usr/bin" "$ctx/out/etc/azure-activity-poller" "$ctx/state"
    cp "$BUILT/azure-activity-poller" "$ctx/out/usr/bin/"
    grep -q "^FROM $base$" Containerfile || { echo "Containerfile's runtime base is not $base"; return 1; }
    { printf 'FROM scratch AS build\nCOPY out /out\nCOPY state /state\n'; sed -n '/^FROM .* AS build$/,$p' Containerfile | sed -n '/^FROM '"${base//\//\\/}"'$/,$p'; } >"$ctx/Containerfile"
    printf 'FROM scratch\nCOPY --from=%s /usr /usr\nCOPY --from=%s /lib /lib\nCOPY --from=%s /lib64 /lib64\nCOPY --from=%s /etc /etc\n' \
        "$IMAGE" "$IMAGE" "$IMAGE" "$IMAGE" >"$ctx/Base"
    "${P[@]}" build -q --pull=never -t "$base" -f "$ctx/Base" "$ctx" >/dev/null || return 1
    "${P[@]}" build -q --pull=never --build-arg "VERSION=$VERSION" -t aap-containerfile -f "$ctx/Containerfile" "$ctx" >/dev/null || return 1
    local got want
    want=$("${P[@]}" image inspect "$IMAGE" --format '{{json .Config.Entrypoint}} {{json .Config.Cmd}} {{.Config.User}} {{json .Config.Volumes}} {{json .Config.ExposedPorts}} {{.Config.WorkingDir}}')
    got=$("${P[@]}" image inspect aap-containerfile --format '{{json .Config.Entrypoint}} {{json .Config.Cmd}} {{.Config.User}} {{json .Config.Volumes}} {{json .Config.ExposedPorts}} {{.Config.WorkingDir}}')
    echo "$got"
    [ "$got" = "$want" ] || { echo "offline image: $want"; return 1; }
    local owner
    owner=$("${P[@]}" run --rm --read-only --user 0:0 --network host --ulimit "nofile=$NOFILE:$NOFILE" \
        --ulimit "nproc=$NPROC:$NPROC" --entrypoint /usr/bin/azure-activity-poller aap-containerfile --version >/dev/null &&
        stat -c %u:%g "$("${P[@]}" image mount aap-containerfile)/var/lib/azure-activity-poller")
    "${P[@]}" image unmount aap-containerfile >/dev/null 2>&1
    "${P[@]}" rmi -f aap-containerfile "$base" >/dev/null 2>&1
    echo "state directory owned by $owner"
    [ "$owner" = 65532:65532 ]
}
check "Containerfile's runtime stage builds offline (base and build stage stood in) into the same configuration" containerfile_stage

# ------------------------------------------------------------- an emulator --
# start_emulator DIR: the emulator on the host's loopback, writing its files in DIR.
start_emulator() {
    [ -n "$EMU_PID" ] && { kill -INT "$EMU_PID" 2>/dev/null; wait "$EMU_PID" 2>/dev/null; }
    mkdir -p "$1"
    "$BUILT/activity-log-emulator" --dir "$1" --subscriptions 2 --rate 3 --backlog 20 --backlog-span 5m \
        --interval 2s --window 10m --seed 8 >"$1/emulator.out" 2>&1 &
    EMU_PID=$!
    wait_until 30 emulator_ready "$1"
}
emulator_ready() { [ "$(grep -c '^\[\[subscription\]\]' "$1/poller.toml" 2>/dev/null)" = 2 ]; }
ARM=
report() { curl -sf --max-time 5 "http://$ARM/_emulator/report"; }
# exactly_once: both subscriptions have everything they served delivered,
# once each; nothing duplicated or unknown.
exactly_once() {
    report | python3 -c '
import json, sys
r = json.load(sys.stdin)
bad, ok = [], []
for s in r["subscriptions"]:
    line = "%s: %d served, %d delivered, %d duplicates, %d missing" % (s["subscription"], s["expected"], s["delivered"], s["duplicates"], len(s["missing"]))
    (bad if s["expected"] == 0 or s["missing"] or s["duplicates"] or s["delivered"] != s["expected"] else ok).append(line)
if r["unexpected"]:
    bad.append("%d unexpected" % len(r["unexpected"]))
print("\n".join(bad + ok))
sys.exit(1 if bad else 0)
'
}

# configure NAME STATE_LINE: the emulator's configuration as an operator
# would mount it at /etc/azure-activity-poller, readable by 65532 only (with
# STATE_URL, the database URL in the secret file state-url); prints the
# telemetry port.
configure() {
    local conf=$WORK/$1/etc port
    mkdir -p "$conf"
    cp "$WORK/$1/emu/client-secret" "$WORK/$1/emu/ingest-url" "$WORK/$1/emu/ca.pem" "$conf/"
    [ -n "${STATE_URL:-}" ] && printf '%s\n' "$STATE_URL" >"$conf/state-url"
    port=$(free_port)
    sed "s|^path = \"state.db\"$|$2|" "$WORK/$1/emu/poller.toml" >"$conf/poller.toml"
    printf '\n[telemetry]\nlisten = "127.0.0.1:%s"\n' "$port" >>"$conf/poller.toml"
    chown -R 65532:65532 "$conf"
    chmod 0700 "$conf"
    echo "$port"
}

# run_case NAME STATE_LINE EXTRA_PODMAN_ARGS...: one container on one state.
# (CASE, not a local: `check` has a local `name` of its own, which the
# functions it runs would see instead.)
run_case() {
    CASE=$1
    local state=$2 port
    shift 2
    start_emulator "$WORK/$CASE/emu" || { fail "$CASE: the emulator started" "$(tail "$WORK/$CASE/emu/emulator.out")"; return; }
    ARM=$(sed -n 's|^resource_manager_url = "http://\(.*\)"|\1|p' "$WORK/$CASE/emu/poller.toml")
    port=$(configure "$CASE" "$state")
    local cid
    if ! cid=$("${P[@]}" run -d --name "aap-$CASE" --read-only --user 65532:65532 --network host \
        --ulimit "nofile=$NOFILE:$NOFILE" --ulimit "nproc=$NPROC:$NPROC" \
        -e SSL_CERT_FILE=$ETC/ca.pem -v "$WORK/$CASE/etc:$ETC:ro" "$@" "$IMAGE" 2>&1); then
        fail "$CASE: podman run" "$cid"
        return
    fi
    as_user() {
        local pid uid
        pid=$("${P[@]}" inspect --format '{{.State.Pid}}' "aap-$CASE")
        uid=$(awk '/^Uid:/ {print $2, $3}' "/proc/$pid/status")
        echo "pid $pid runs as uid $uid (real, effective); root filesystem read-only: $("${P[@]}" inspect --format '{{.HostConfig.ReadonlyRootfs}}' "aap-$CASE"); $(tr '\0' '\n' <"/proc/$pid/environ" | grep '^MALLOC_ARENA_MAX=' || echo 'MALLOC_ARENA_MAX unset')"
        [ "$uid" = "65532 65532" ] && [ "$("${P[@]}" inspect --format '{{.HostConfig.ReadonlyRootfs}}' "aap-$CASE")" = true ] &&
            tr '\0' '\n' <"/proc/$pid/environ" | grep -qx 'MALLOC_ARENA_MAX=2'
    }
    check "$CASE: running read-only as 65532, with the image's MALLOC_ARENA_MAX=2" as_user
    ready() { [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "http://127.0.0.1:$port/readyz")" = 200 ]; }
    readyz() { retry 90 ready && curl -s --max-time 5 "http://127.0.0.1:$port/readyz"; }
    check "$CASE: /readyz 200" readyz
    check "$CASE: events delivered exactly once (emulator's report)" retry 120 exactly_once
    stop() {
        "${P[@]}" stop -t 40 "aap-$CASE" >/dev/null || return 1
        local s
        s=$("${P[@]}" inspect --format 'status={{.State.Status}} exit={{.State.ExitCode}} oom={{.State.OOMKilled}}' "aap-$CASE")
        echo "$s; last line: $("${P[@]}" logs "aap-$CASE" 2>&1 | tail -1)"
        [ "$s" = "status=exited exit=0 oom=false" ]
    }
    check "$CASE: podman stop (SIGTERM) exits 0" stop
    [ "$FAILED" -gt 0 ] && "${P[@]}" logs "aap-$CASE" 2>&1 | tail -30 | sed "s/^/$CASE log: /"
    "${P[@]}" rm -f "aap-$CASE" >/dev/null 2>&1
}

# ----------------------------------------------------------------- SQLite --
"${P[@]}" volume create aap-state >/dev/null
run_case sqlite 'path = "/var/lib/azure-activity-poller/state.db"' -v aap-state:/var/lib/azure-activity-poller
state_in_volume() {
    local dir
    dir=$("${P[@]}" volume inspect aap-state --format '{{.Mountpoint}}')
    ls -ln "$dir"
    [ "$(stat -c %u "$dir/state.db")" = 65532 ]
}
check "sqlite: the state is in the volume, owned by 65532" state_in_volume

# ------------------------------------------------------------- PostgreSQL --
start_postgres() {
    PG_BIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
    [ -x "$PG_BIN/initdb" ] || { echo "no PostgreSQL server binaries (apt-get install postgresql)"; return 1; }
    # Its own directory: the server's user (nobody, as root) cannot enter $WORK.
    PG_DIR=$(mktemp -d "${TMPDIR:-/tmp}/aap-container-pg.XXXXXX")
    if [ "$(id -u)" = 0 ]; then chown nobody: "$PG_DIR"; PG_AS=(runuser -u nobody --); fi
    "${PG_AS[@]}" "$PG_BIN/initdb" -D "$PG_DIR/data" -A trust -U postgres -E UTF8 --no-sync --no-locale >/dev/null || return 1
    PG_PORT=$(free_port)
    "${PG_AS[@]}" "$PG_BIN/pg_ctl" start -w -D "$PG_DIR/data" -l "$PG_DIR/server.log" \
        -o "-p $PG_PORT -k $PG_DIR -c listen_addresses=127.0.0.1" >/dev/null || { cat "$PG_DIR/server.log"; return 1; }
    "$PG_BIN/psql" -qX -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres -c "CREATE DATABASE poller" >/dev/null
}
# Not in $(...): what it sets (PG_PORT, PG_DIR) is needed here and by cleanup.
if start_postgres >"$WORK/postgres.out" 2>&1; then
    STATE_URL="postgres://postgres@127.0.0.1:$PG_PORT/poller" run_case postgres 'url_file = "state-url"'
    state_in_postgres() {
        local rows
        rows=$("$PG_BIN/psql" -qAtX -h 127.0.0.1 -p "$PG_PORT" -U postgres -d poller \
            -c "SELECT count(*) FROM cursor" -c "SELECT count(*) FROM seen" | paste -sd' ')
        echo "cursors, seen ids: $rows"
        [ "${rows%% *}" = 2 ]
    }
    check "postgres: the state is in PostgreSQL (a cursor per subscription)" state_in_postgres
else
    fail "postgres: a PostgreSQL server started" "$(cat "$WORK/postgres.out")"
fi

# ------------------------------------------------------------------ summary --
echo
echo "== summary ($(($(date +%s) - T0)) s in all; $PROFILE build; $(podman --version))"
printf '%s\n' "${RESULTS[@]}"
if [ "$FAILED" -gt 0 ]; then
    echo "$FAILED check(s) FAILED"
    exit 1
fi
echo "all ${#RESULTS[@]} checks passed"
