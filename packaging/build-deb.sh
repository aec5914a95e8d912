#!/usr/bin/env bash
# Builds target/debian/azure-activity-poller_<version>_<arch>.deb: the binary,
# the systemd unit, /etc/azure-activity-poller/poller.toml (a conffile, mode
# 0644: it holds no secret), README, man pages and bash/zsh/fish completions
# generated from the command line's own definitions.
#
# PROFILE=dev packages a debug build instead of a release one (quicker; for
# tests/systemd/run.sh, never for distribution). Extra arguments go to cargo deb.
set -euo pipefail
cd "$(dirname "$0")/.."
profile=${PROFILE:-release}
target=${CARGO_TARGET_DIR:-target}
case $profile in
    release) built="$target/release" ;;
    dev) built="$target/debug" ;;
    *) echo "build-deb.sh: PROFILE is release or dev, not $profile" >&2; exit 64 ;;
esac
command -v cargo-deb >/dev/null || cargo install --locked cargo-deb
cargo build --profile "$profile" --locked --bin azure-activity-poller
# Cargo.toml's assets name target/assets relative to the package, whatever
# CARGO_TARGET_DIR says.
rm -rf target/assets
"$built/azure-activity-poller" generate-assets target/assets >/dev/null
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo deb --no-build --locked --profile "$profile" "$@" >"$log" 2>&1 || status=$?
# cargo-deb warns that a dev profile is not meant for releases: we know.
grep -v -e 'dev profile is not supported' -e 'To enable debug symbols set' -e '\.deb$' "$log" >&2 || true
[ "$status" = 0 ] || exit "$status"
grep '\.deb$' "$log" | tail -1
