# shellcheck shell=bash
# Sourced by scripts/test, scripts/bench and scripts/release (from the
# checkout's top directory): the test servers, each on free ports in one
# fresh temporary directory.
#
#   start_servers        starts a private PostgreSQL cluster, a local S3
#                        server and a Redis server (scripts/postgres-server,
#                        s3-server, redis-server), reads their env files (the
#                        DURATOM_TEST_PG_*, _S3_* and _REDIS_* the tests read)
#                        and exports DURATOM_TEST_PG_DIR, _S3_DIR, _REDIS_DIR,
#                        through which fault tests stop, restart or freeze them
#   start_netns_servers  after start_servers: a second set inside a network
#                        namespace (scripts/netns; needs root), for the network
#                        fault tests and the history checker; exports
#                        DURATOM_TEST_NET_DIR
#   stop_servers         stops every server started, removes the namespace
#                        (its veth pair and every fault rule go with it) and
#                        the directory; harmless when nothing runs
#
# Call `trap stop_servers EXIT` first, so that they stop at the end, also on
# failure or Ctrl-C. A server that cannot start says why on stderr (its
# script names what is missing or shows the server's log) and, under
# `set -e`, ends the caller.

servers_dir=""
servers_netns=false

start_servers() {
  servers_dir=$(mktemp -d /tmp/duratom-servers.XXXXXX)
  chmod 755 "$servers_dir"  # the postgres user must reach its data directory inside
  scripts/postgres-server start "$servers_dir/pg" >/dev/null
  scripts/s3-server start "$servers_dir/s3" >/dev/null
  scripts/redis-server start "$servers_dir/redis" >/dev/null
  # shellcheck disable=SC1091
  . "$servers_dir/pg/env"
  # shellcheck disable=SC1091
  . "$servers_dir/s3/env"
  # shellcheck disable=SC1091
  . "$servers_dir/redis/env"
  export DURATOM_TEST_PG_DIR="$servers_dir/pg" DURATOM_TEST_S3_DIR="$servers_dir/s3" \
    DURATOM_TEST_REDIS_DIR="$servers_dir/redis"
}

start_netns_servers() {
  # `scripts/netns up` says what is missing (root, ip, tc, nft, kernel
  # features) and fails.
  servers_netns=true
  scripts/netns up "$servers_dir/net" >/dev/null
  (
    # shellcheck disable=SC1091
    . "$servers_dir/net/env"
    export DURATOM_TEST_NETNS DURATOM_TEST_NET_ADDR
    scripts/postgres-server start "$servers_dir/net/pg"
    scripts/s3-server start "$servers_dir/net/s3"
    scripts/redis-server start "$servers_dir/net/redis"
  ) >/dev/null
  export DURATOM_TEST_NET_DIR="$servers_dir/net"
}

stop_servers() {
  [ -n "$servers_dir" ] || return 0
  local d dirs=("$servers_dir")
  if $servers_netns; then dirs+=("$servers_dir/net"); fi
  for d in "${dirs[@]}"; do
    scripts/postgres-server stop "$d/pg" >/dev/null 2>&1 || true
    scripts/s3-server stop "$d/s3" >/dev/null 2>&1 || true
    scripts/redis-server stop "$d/redis" >/dev/null 2>&1 || true
  done
  if $servers_netns; then
    scripts/netns down "$servers_dir/net" >/dev/null 2>&1 || true
  fi
  rm -rf "$servers_dir"
  servers_dir=""
  servers_netns=false
servers_netns=false
}
