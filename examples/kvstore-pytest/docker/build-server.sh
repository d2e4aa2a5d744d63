#!/bin/sh
# Builds the kvstore server (the Rust example beside this one, or the Cargo project that
# KVSTORE_MANIFEST names) as a static binary into this build context. testfleet runs it (the
# service's `prepare` command) from the manifest's directory before the image is built.
set -eu
manifest=${KVSTORE_MANIFEST:-../kvstore/Cargo.toml}
target="$(dirname "$manifest")/target/static"
host=$(rustc -vV | sed -n 's/^host: //p')
RUSTFLAGS="-C target-feature=+crt-static" cargo build --quiet --release \
    --manifest-path "$manifest" --bin kvstore-server --target "$host" --target-dir "$target"
# Copy beside the context, then rename into it: a concurrent build reads the old binary or the new.
cp "$target/$host/release/kvstore-server" "docker/.kvstore-server.$$"
mv -f "docker/.kvstore-server.$$" docker/kvstore-server
