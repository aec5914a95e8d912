#!/usr/bin/env bash
# Builds target/debian/azure-activity-poller_<version>_<arch>.deb: the binary,
# the systemd unit, /etc/azure-activity-poller/poller.toml (a conffile), man
# pages and bash/zsh/fish completions generated from the command line's own
# definitions.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo-deb >/dev/null || cargo install --locked cargo-deb
cargo build --release --locked
rm -rf target/assets
target/release/azure-activity-poller generate-assets target/assets >/dev/null
cargo deb --no-build --locked "$@"
ls -1 target/debian/*.deb
