#!/bin/sh
# Builds kvstore-server as a static binary into this build context. testfleet runs it (the
# service's `prepare` command) from the manifest's directory before the image is built.
set -eu
host=$(rustc -vV | sed -n 's/^host: //p')
RUSTFLAGS="-C target-feature=+crt-static" cargo build --quiet --release \
    --bin kvstore-server --target "$host" --target-dir target/static
# Copy beside the build (outside the context, so nothing packing the context sees a half-written
# file), then rename into the context: a concurrent build reads the old binary or the new one.
cp "target/static/$host/release/kvstore-server" "target/static/.kvstore-server.$$"
mv -f "target/static/.kvstore-server.$$" docker/kvstore-server
