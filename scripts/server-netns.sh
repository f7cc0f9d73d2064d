# Sourced by the test server scripts (postgres-server, s3-server,
# redis-server). A server whose DIR was first started with DURATOM_TEST_NETNS
# and DURATOM_TEST_NET_ADDR set (see scripts/netns) runs inside that network
# namespace and listens on that address; DIR/netns records both, so a restart
# goes back to the same place.
#
#   server_netns DIR SCRIPT ARGS...   called by `start` once what the server
#                                     needs is installed: re-runs SCRIPT ARGS
#                                     inside the namespace when not there yet;
#                                     sets listen_addr (127.0.0.1 otherwise) and
#                                     san_extra (",IP:<that address>" for certificates)
listen_addr=127.0.0.1
san_extra=
server_netns() {
  local dir=$1 ns addr
  shift
  if [ -n "${DURATOM_TEST_NETNS:-}" ] && [ ! -f "$dir/netns" ]; then
    mkdir -p "$dir"
    echo "$DURATOM_TEST_NETNS ${DURATOM_TEST_NET_ADDR:?DURATOM_TEST_NETNS needs DURATOM_TEST_NET_ADDR}" >"$dir/netns"
  fi
  [ -f "$dir/netns" ] || return 0
  read -r ns addr <"$dir/netns"
  listen_addr=$addr
  san_extra=",IP:$addr"
  if [ "$(ip netns identify $$ 2>/dev/null)" != "$ns" ]; then
    exec ip netns exec "$ns" "$@"
  fi
}
