#!/bin/sh
# Builds the image the order service's tests run PostgreSQL and Redis from, out of Debian's own
# packages: a minimal bookworm root filesystem made by debootstrap, imported into the local Docker
# engine. No registry is involved, so it works on a machine that reaches only Debian's mirrors.
# Nothing happens when the image is already there; `--rebuild` builds it again.
#
#   sh services/build-image.sh [--rebuild]
#
# Needs root (debootstrap), debootstrap itself (`apt-get install debootstrap`) and Docker.
set -eu

image=${ORDERS_SERVICES_IMAGE:-testfleet-example/orders-services:bookworm}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
here=$(cd "$(dirname "$0")" && pwd)

if [ "${1:-}" != "--rebuild" ] && docker image inspect "$image" >/dev/null 2>&1; then
    echo "$image is already built"
    exit 0
fi
command -v debootstrap >/dev/null || {
    echo "build-image.sh needs debootstrap: apt-get install debootstrap" >&2
    exit 1
}

root=$(mktemp -d)
builder=testfleet-orders-image-builder-$$
trap 'rm -rf "$root"; docker rm -f "$builder" >/dev/null 2>&1 || true' EXIT
echo "building $image from Debian bookworm's postgresql and redis-server packages"
debootstrap --variant=minbase --include=postgresql,redis-server bookworm "$root" "$mirror" >"$root.log" 2>&1 || {
    tail -20 "$root.log" >&2
    rm -f "$root.log"
    exit 1
}
rm -f "$root.log"
# The image only has to start two servers: drop the package caches, documentation and manuals.
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* \
    "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/*
install -m 0755 "$here/serve" "$root/usr/local/bin/serve"
tar -C "$root" -c . | docker import - "$image-rootfs" >/dev/null
# The database cluster is made once here, not by every container at its start.
docker rm -f "$builder" >/dev/null 2>&1 || true
docker run --name "$builder" "$image-rootfs" /usr/local/bin/serve init
docker commit \
    --change 'ENTRYPOINT ["/usr/local/bin/serve"]' \
    --change 'ENV LANG=C.UTF-8' \
    --message "PostgreSQL and Redis from Debian bookworm, for the testfleet order-service example" \
    "$builder" "$image" >/dev/null
docker rm "$builder" >/dev/null
docker rmi "$image-rootfs" >/dev/null
echo "built $image"
