#!/usr/bin/env bash
# Runs the suite with plain pytest against containers of its own, as one would without testfleet:
# builds the image if needed, starts PostgreSQL and Redis, waits until both say they are ready,
# runs pytest with the arguments given, and removes the containers whatever pytest's outcome.
#
#   bash services/pytest-with-services.sh [pytest arguments...]
#
# Its exit status is pytest's.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
image=${ORDERS_SERVICES_IMAGE:-testfleet-example/orders-services:bookworm}
sh "$here/build-image.sh" >/dev/null

containers=()
cleanup() {
    [ ${#containers[@]} -eq 0 ] || docker rm -f "${containers[@]}" >/dev/null 2>&1 || true
}
trap cleanup EXIT

start() { # SERVER PORT: starts the server, publishing PORT on a free loopback port
    docker run -d --label testfleet-example=orders -p "127.0.0.1::$2" "$image" "$1"
}

wait_for_line() { # CONTAINER LINE: returns once the container's log holds LINE (60 s at most)
    local logs
    exec {logs}< <(docker logs --follow "$1" 2>&1)
    local follower=$!
    if ! timeout 60 grep --quiet --max-count=1 --fixed-strings "$2" <&"$logs"; then
        echo "container $1 did not say \"$2\" within 60 s:" >&2
        docker logs "$1" 2>&1 | tail -20 >&2
        exit 1
    fi
    kill "$follower" 2>/dev/null || true
    exec {logs}<&-
}

host_port() { # CONTAINER PORT
    docker port "$1" "$2/tcp" | head -1 | sed 's/.*://'
}

postgres=$(start postgres 5432)
containers+=("$postgres")
redis=$(start redis 6379)
containers+=("$redis")
wait_for_line "$postgres" "database system is ready to accept connections"
wait_for_line "$redis" "Ready to accept connections"
export DATABASE_URL="postgresql://orders@127.0.0.1:$(host_port "$postgres" 5432)/postgres"
export REDIS_URL="redis://127.0.0.1:$(host_port "$redis" 6379)/0"

cd "$here/.."
status=0
python3 -m pytest "$@" || status=$?
exit "$status"
