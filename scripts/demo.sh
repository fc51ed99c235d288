#!/usr/bin/env bash
# A local cluster of three nodes on loopback: one key, their own ports and
# data dirs. Shows the members and a request answered by all three, deploys
# the example modules from mods/ (fetched peer to peer, no HTTP server),
# rolls a new config out in waves, lists the deployments table, every
# node's modules and the fleet's status, then stops them.
# Usage: scripts/demo.sh [path/to/conjoiner]
# With KEEP=1 (`make demo KEEP=1`) the nodes keep running until Ctrl-C, so
# you can open the dashboard and try the CLI against them.
set -euo pipefail

BIN=${1:-target/release/conjoiner}
BIN=$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")
# From the repository, so the transcript names packages as `mods/hello`.
cd "$(dirname "$0")/.."
WORK=$(mktemp -d /tmp/conjoiner-demo.XXXXXX)
PIDS=()

cleanup() {
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

# Waits up to 20 s for a file a node writes once it listens.
wait_file() {
    for _ in $(seq 1 200); do [ -s "$1" ] && return 0; sleep 0.1; done
    echo "demo: $1 never appeared; see $WORK/*.log" >&2
    exit 1
}

export CONJOINER_KEY
CONJOINER_KEY=$("$BIN" keygen 2>/dev/null)
echo "== cluster key made with \`conjoiner keygen\`; all three nodes share it"

start_node() {
    local name=$1 role=$2; shift 2
    "$BIN" agent --name "$name" --tag "role=$role" --http 127.0.0.1:0 --bind 127.0.0.1:0 \
        --no-mdns --status-interval 2s --data-dir "$WORK/$name" "$@" 2>"$WORK/$name.log" &
    PIDS+=($!)
    wait_file "$WORK/$name/http.addr"
}

start_node demo-1 web
SEED=$(cat "$WORK/demo-1/cluster.addr")
start_node demo-2 web --join "$SEED"
start_node demo-3 db --join "$SEED"
export CONJOINER_HTTP CONJOINER_TOKEN_FILE
CONJOINER_HTTP=$(cat "$WORK/demo-1/http.addr")
# Commands that change anything need the node's API token (0600 in its data dir).
CONJOINER_TOKEN_FILE="$WORK/demo-1/api.token"
echo "== three nodes started; demo-2 and demo-3 joined demo-1 at $SEED"

for _ in $(seq 1 100); do
    [ "$("$BIN" --json members --status alive | grep -o '"name"' | wc -l)" -eq 3 ] && break
    sleep 0.1
done

echo
echo "\$ conjoiner members"
"$BIN" members
echo
echo "\$ conjoiner request mod.echo '{\"hello\":\"cluster\"}'"
"$BIN" request mod.echo '{"hello":"cluster"}'
echo
echo "\$ conjoiner request mod.echo '{\"only\":\"web\"}' --target tag.role=web"
"$BIN" request mod.echo '{"only":"web"}' --target tag.role=web
MODS=mods
echo
echo "\$ conjoiner deploy hello --from mods/hello --config '{\"greeting\":\"hi from the demo\"}'"
"$BIN" deploy hello --from "$MODS/hello" --config '{"greeting":"hi from the demo"}'
echo
echo "\$ conjoiner deploy uptime --from mods/uptime --target tag.role=web"
"$BIN" deploy uptime --from "$MODS/uptime" --target tag.role=web
echo
echo "\$ conjoiner deploy hello --from mods/hello --config '{\"greeting\":\"hi again\"}' --canary 1 --health-window 1s"
"$BIN" deploy hello --from "$MODS/hello" --config '{"greeting":"hi again"}' --canary 1 --health-window 1s
echo
echo "\$ conjoiner deployments"
"$BIN" deployments
echo
echo "\$ conjoiner tags --set tier=gold"
"$BIN" tags --set tier=gold
echo
echo "\$ conjoiner request mod.hello '{\"from\":\"demo\"}'"
"$BIN" request mod.hello '{"from":"demo"}'
echo
echo "\$ conjoiner request mod.uptime --target tag.role=web"
"$BIN" request mod.uptime --target tag.role=web
echo
echo "\$ conjoiner modules"
"$BIN" modules || echo "(exit $?: a node's report is stale)"
echo
echo "\$ conjoiner status"
"$BIN" status || echo "(exit $?: something is failing)"
echo
if [ "${KEEP:-}" = 1 ]; then
    echo "== dashboard: http://$CONJOINER_HTTP/   CLI: export CONJOINER_HTTP=$CONJOINER_HTTP CONJOINER_TOKEN_FILE=$CONJOINER_TOKEN_FILE"
    echo "== the nodes keep running; press Ctrl-C to stop them"
    wait
fi
echo "== stopping the nodes (each says it leaves)"
