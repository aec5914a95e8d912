#!/usr/bin/env bash
# Builds the runtime image OFFLINE (no registry needed): the release binary,
# the shared libraries it links (as ldd finds them) and the system's CA
# bundle, on an empty base (`buildah from scratch`). The same image as
# ../Containerfile builds where a registry is reachable: the same paths,
# user 65532, entrypoint, volume and port.
#
# Writes target/oci/azure-activity-poller.oci.tar (an OCI image layout with a
# Docker manifest.json beside it, as `docker save` writes since Docker 25),
# loadable by `podman load` and `docker load`, tagged
# azure-activity-poller:<version from Cargo.toml>; prints its path.
#
# Needs buildah (Debian: buildah) and python3. Its storage is its own, under
# target/oci/, on the vfs driver (no overlay or fuse needed). PROFILE=dev
# packs a debug build instead (quicker; for tests, never for distribution).
set -euo pipefail
cd "$(dirname "$0")/.."
profile=${PROFILE:-release}
target=${CARGO_TARGET_DIR:-$PWD/target}
case $profile in
    release) built="$target/release" ;;
    dev) built="$target/debug" ;;
    *) echo "build-image.sh: PROFILE is release or dev, not $profile" >&2; exit 64 ;;
esac
command -v buildah >/dev/null || { echo "build-image.sh: buildah is not installed (apt-get install buildah)" >&2; exit 69; }

cargo build --profile "$profile" --locked --bins >&2
bin="$built/azure-activity-poller"
meta=$(cargo metadata --no-deps --format-version 1 --locked |
    python3 -c 'import json,sys; p=[p for p in json.load(sys.stdin)["packages"] if p["name"]=="azure-activity-poller"][0]; print(p["version"], p["license"] or "", p["repository"] or "")')
read -r version license repository <<<"$meta"
revision=$(git rev-parse HEAD 2>/dev/null || echo unknown)
tag="azure-activity-poller:$version"

out="$target/oci"
mkdir -p "$out"
root="$out/rootfs"
rm -rf "$root"
mkdir -p "$root/usr/bin" "$root/etc/ssl/certs" "$root/etc/azure-activity-poller" "$root/tmp"
chmod 1777 "$root/tmp"
install -m 0755 "$bin" "$root/usr/bin/azure-activity-poller"
# The dynamic loader and every library, each at the path the binary asks for.
ldd "$bin" | awk '/=> \// { print $3 } /^\t\// { print $1 }' | while read -r lib; do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
done
ca=/etc/ssl/certs/ca-certificates.crt
[ -s "$ca" ] || { echo "build-image.sh: no CA bundle at $ca (apt-get install ca-certificates)" >&2; exit 69; }
install -m 0644 "$ca" "$root$ca"
# A name for 65532 (distroless' nonroot), so that tools inside show one.
printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/var/lib/azure-activity-poller:/sbin/nologin\n' >"$root/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' >"$root/etc/group"

bh=(buildah --root "$out/storage" --runroot "$out/run" --storage-driver vfs)
ctr=$("${bh[@]}" from --quiet scratch)
trap '"${bh[@]}" rm "$ctr" >/dev/null 2>&1 || true' EXIT
"${bh[@]}" copy --quiet --chown 0:0 "$ctr" "$root/" / >/dev/null
# The state directory (SQLite), writable by the user the image runs as.
state=$(mktemp -d)
"${bh[@]}" copy --quiet --chown 65532:65532 "$ctr" "$state" /var/lib/azure-activity-poller >/dev/null
rmdir "$state"
"${bh[@]}" config \
    --entrypoint '["/usr/bin/azure-activity-poller"]' \
    --cmd '["--config", "/etc/azure-activity-poller/poller.toml"]' \
    --user 65532:65532 \
    --env MALLOC_ARENA_MAX=2 \
    --env MALLOC_MMAP_THRESHOLD_=131072 \
    --workingdir /var/lib/azure-activity-poller \
    --volume /var/lib/azure-activity-poller \
    --port 9464/tcp \
    --label "org.opencontainers.image.title=azure-activity-poller" \
    --label "org.opencontainers.image.version=$version" \
    --label "org.opencontainers.image.licenses=$license" \
    --label "org.opencontainers.image.source=$repository" \
    --label "org.opencontainers.image.revision=$revision" \
    "$ctr"
tar="$out/azure-activity-poller.oci.tar"
rm -f "$tar"
"${bh[@]}" commit --quiet --format oci --timestamp 0 "$ctr" "oci-archive:$tar:$tag" >/dev/null

# Docker before 25 loads only its own manifest.json: add one naming the same
# blobs, as `docker save` does now (podman reads the OCI index).
python3 - "$tar" "$tag" <<'EOF'
import json, sys, tarfile, io
path, tag = sys.argv[1], sys.argv[2]
with tarfile.open(path) as t:
    names = t.getnames()
    blob = lambda d: json.load(t.extractfile("blobs/" + d.replace(":", "/")))
    index = json.load(t.extractfile("index.json"))
    manifest = blob(index["manifests"][0]["digest"])
docker = [{
    "Config": "blobs/" + manifest["config"]["digest"].replace(":", "/"),
    "RepoTags": [tag],
    "Layers": ["blobs/" + l["digest"].replace(":", "/") for l in manifest["layers"]],
}]
data = json.dumps(docker).encode()
with tarfile.open(path, "a") as t:
    info = tarfile.TarInfo("manifest.json")
    info.size, info.mode = len(data), 0o644
    t.addfile(info, io.BytesIO(data))
EOF
rm -rf "$root"
echo "$tar"
