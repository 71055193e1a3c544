#!/usr/bin/env bash
# Builds the Ferry image (deploy/Dockerfile) from this repository's release binaries, on a base made here:
# the binaries' shared libraries (from ldd), /etc/passwd and /etc/group with the `ferry` user (uid 10001),
# /tmp and the data dir, imported with `docker import` (nothing is pulled from a registry).
#
#   deploy/image.sh [TAG]     # default ferry:dev; prints the tag
set -euo pipefail
cd "$(dirname "$0")/.."
tag="${1:-ferry:dev}"
# -p ferry-broker -p ferry-cli: a release ferryd without the test-only fault-injection feature.
cargo build --release --locked -p ferry-broker -p ferry-cli --bins >&2
ctx=target/image
rm -rf "$ctx"
mkdir -p "$ctx/rootfs/etc" "$ctx/rootfs/tmp" "$ctx/rootfs/var/lib/ferry" "$ctx/rootfs/usr/local/bin"
cp target/release/ferryd target/release/ferry "$ctx/"
# Debug info stays in target/release; the image keeps symbols (backtraces) only.
strip --strip-debug "$ctx/ferryd" "$ctx/ferry"
if ! "$ctx/ferryd" --version >/dev/null; then
    echo "image.sh: the release ferryd does not run" >&2
    exit 1
fi
# The dynamic loader and every library the two binaries link, at the same paths.
libs=$(ldd "$ctx/ferryd" "$ctx/ferry" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}' | sort -u)
for lib in $libs; do
    cp --parents -L "$lib" "$ctx/rootfs/"
done
printf 'root:x:0:0:root:/root:/sbin/nologin\nferry:x:10001:10001:Ferry:/var/lib/ferry:/sbin/nologin\n' \
    > "$ctx/rootfs/etc/passwd"
printf 'root:x:0:\nferry:x:10001:\n' > "$ctx/rootfs/etc/group"
printf 'hosts: files dns\n' > "$ctx/rootfs/etc/nsswitch.conf"
chmod 1777 "$ctx/rootfs/tmp"
# The data dir belongs to the ferry user (a fresh volume copies the image's owner and mode).
tar --numeric-owner --owner=0 --group=0 --exclude=./var/lib/ferry -C "$ctx/rootfs" -cf "$ctx/base.tar" .
tar --numeric-owner --owner=10001 --group=10001 -C "$ctx/rootfs" -rf "$ctx/base.tar" ./var/lib/ferry
docker import "$ctx/base.tar" ferry-base:local >/dev/null
docker build --quiet -f deploy/Dockerfile -t "$tag" "$ctx" >/dev/null
echo "$tag"
