#!/bin/sh
# Builds the image `testfleet:local` from a static testfleet binary: FROM scratch, so no base
# image (and no registry) is involved.
set -eu
cd "$(dirname "$0")/.."
host=$(rustc -vV | sed -n 's/^host: //p')
RUSTFLAGS="-C target-feature=+crt-static" cargo build --release -p testfleet \
    --target "$host" --target-dir target/static
context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT
cp deploy/Dockerfile "$context/"
cp "target/static/$host/release/testfleet" "$context/testfleet"
docker build --quiet -t testfleet:local "$context"
