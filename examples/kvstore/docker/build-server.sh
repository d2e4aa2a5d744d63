#!/bin/sh
# Builds kvstore-server as a static binary into this build context. testfleet runs it (the
# service's `prepare` command) from the manifest's directory before the image is built.
set -eu
host=$(rustc -vV | sed -n 's/^host: //p')
RUSTFLAGS="-C target-feature=+crt-static" cargo build --quiet --release \
    --bin kvstore-server --target "$host" --target-dir target/static
# Copy, then rename: a concurrent build of the image never reads a half-written binary.
cp "target/static/$host/release/kvstore-server" "docker/.kvstore-server.$$"
mv -f "docker/.kvstore-server.$$" docker/kvstore-server
