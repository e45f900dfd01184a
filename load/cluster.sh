#!/usr/bin/env bash
# Cluster load: etcd, PostgreSQL and three switchyard nodes on 127.0.0.1, 127.0.0.2 and
# 127.0.0.3. Contact-centre callers are spread over the three nodes (one SIPp caller per
# node) and queue for agents whose phones registered through all three; carrier calls are
# spread the same way over a trunk whose channel limit must hold cluster-wide. In the middle
# of the run the node owning the tenant (its queue and agents) is killed with SIGKILL, then
# started again. Prints a report; exits non-zero when a check fails.
#
#   load/cluster.sh [--agents 300] [--caps 300] [--duration 60] [--talk 10]
#                   [--trunk-limit 30] [--trunk-caps 15] [--trunk-hold 6]
#                   [--kill-at 20] [--rejoin-after 10] [--no-kill]
#                   [--switch-bin PATH] [--out DIR] [--quick]
#
#   --agents N       agents in queue "support" of tenant cc, registered a third through each node
#   --caps R         contact-centre caller attempts per second, over the three nodes
#   --duration S     seconds of calling; --talk S: agents hang up S s after answering
#   --trunk-limit L  max_channels of trunk "carrier" (cluster-wide)
#   --trunk-caps R   carrier call attempts per second over the three nodes, each call held
#                    --trunk-hold S seconds: offered R x S concurrent, more than the limit
#   --kill-at S      SIGKILL of the tenant's owner S s into the calls (its SIPp caller stops
#                    at the same moment, as a load balancer would take it out)
#   --rejoin-after S the killed node starts again S s later and takes its share back
#   --quick          CI size: 60 agents, 15 CAPS, 30 s, talk 3 s, kill at 10 s, rejoin 8 s
#
# Checks (exit 1 when one fails):
#   - takeover: every singleton of the killed node owned by a survivor within 5 s of the
#     SIGKILL (GET /cluster polled every 50 ms);
#   - callers on the surviving nodes: every call answered by an agent (none failed);
#     the killed node's caller loses at most the calls it had in progress;
#   - agents registered through the killed node keep receiving calls after the kill;
#   - no CDR lost: every call the callers saw answered and completed has its CDR in
#     PostgreSQL, also the killed node's up to the SIGKILL (a hangup's last message waits for
#     the CDR's commit);
#   - the carrier SIPp never holds more than --trunk-limit calls (1 s samples, and the sum of
#     the nodes' switchyard_trunk_channels), also across the takeover;
#   - no agent on two answered calls at once (CDRs), also across the takeover and the rejoin;
#   - the rejoined node owns its fair share again (what rendezvous hashing gives it);
#   - the queue's counters survive the takeover: its new owner starts from the last
#     checkpoint (answered right after the takeover at least the figure read on the old owner
#     before the kill, less two seconds of calls).
# Exit status: 0 PASS, 1 FAIL, 2 bad usage or a setup failure.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
# shellcheck source=lib/common.sh
. "$here/lib/common.sh"
scen=$here/scenarios

AGENTS=300 CAPS=300 DURATION=60 TALK=10 RING_MS=300
TRUNK_LIMIT=30 TRUNK_CAPS=15 TRUNK_HOLD=6
KILL_AT=20 REJOIN_AFTER=10 KILL=1
BIN="" OUT=""
while [ $# -gt 0 ]; do
    case "$1" in
        --agents) AGENTS=${2:?}; shift 2 ;;
        --caps) CAPS=${2:?}; shift 2 ;;
        --duration) DURATION=${2:?}; shift 2 ;;
        --talk) TALK=${2:?}; shift 2 ;;
        --trunk-limit) TRUNK_LIMIT=${2:?}; shift 2 ;;
        --trunk-caps) TRUNK_CAPS=${2:?}; shift 2 ;;
        --trunk-hold) TRUNK_HOLD=${2:?}; shift 2 ;;
        --kill-at) KILL_AT=${2:?}; shift 2 ;;
        --rejoin-after) REJOIN_AFTER=${2:?}; shift 2 ;;
        --no-kill) KILL=""; shift ;;
        --switch-bin) BIN=${2:?}; shift 2 ;;
        --out) OUT=${2:?}; shift 2 ;;
        --quick) AGENTS=60 CAPS=15 DURATION=30 TALK=3 KILL_AT=10 REJOIN_AFTER=8 TRUNK_LIMIT=12 TRUNK_CAPS=6 TRUNK_HOLD=4; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "cluster.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
    esac
done
for v in AGENTS CAPS DURATION TALK TRUNK_LIMIT TRUNK_CAPS TRUNK_HOLD KILL_AT REJOIN_AFTER; do
    [[ "${!v}" =~ ^[0-9]+$ ]] || die "--$(echo "$v" | tr 'A-Z_' 'a-z-') must be a whole number"
done
[ "$AGENTS" -ge 3 ] && [ "$CAPS" -ge 3 ] && [ "$DURATION" -gt 0 ] || die "--agents and --caps at least 3, --duration > 0"
[ -z "$KILL" ] || [ "$KILL_AT" -lt "$DURATION" ] || die "--kill-at must be before the end of --duration"
for tool in sipp python3 curl ss etcd runuser; do
    command -v "$tool" >/dev/null || die "$tool not found (Debian: sip-tester, python3, curl, iproute2, etcd-server, util-linux)"
done
PG_BIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
[ -x "$PG_BIN/initdb" ] || die "PostgreSQL not found (Debian: postgresql)"

ensure_switch_bin
[ -n "$OUT" ] || OUT=$here/out/$(date -u +%Y%m%dT%H%M%SZ)-cluster-$$
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

HOST=127.0.0.1
DOMAIN=cc.example.com
NUMBER=5000
TOKEN=$(random_token)
BUFF=4194304
NODES=(n1 n2 n3)
declare -A IP=([n1]=127.0.0.1 [n2]=127.0.0.2 [n3]=127.0.0.3) PID=()
# Each node listens on its own address, on the same ports.
pick_port SIP_PORT; pick_port HTTP_PORT; pick_port CL_PORT
pick_port ETCD_PORT; pick_port ETCD_PEER; pick_port PG_PORT
pick_port AGENT_PORT; pick_port AGENT_CP; pick_port CARRIER_PORT; pick_port CARRIER_CP
for n in "${NODES[@]}"; do
    pick_port "REG_PORT_$n"; pick_port "CALLER_PORT_$n"; pick_port "TRUNK_PORT_$n"
done

: > "$OUT/report.txt"
say "== switchyard cluster load ($(date -u +%FT%TZ), $(nproc) cores)"
say "nodes                  n1 ${IP[n1]}, n2 ${IP[n2]}, n3 ${IP[n3]} (sip udp :$SIP_PORT, http :$HTTP_PORT, inter-node :$CL_PORT)"
say "contact centre         $AGENTS agents in cc/support, $CAPS CAPS for $DURATION s over the three nodes, talk ${TALK} s"
say "trunk                  carrier: max_channels $TRUNK_LIMIT, offered $TRUNK_CAPS CAPS x ${TRUNK_HOLD} s"

# ---------------------------------------------------------------- etcd
(exec etcd --name load --data-dir "$OUT/etcd" \
    --listen-client-urls "http://$HOST:$ETCD_PORT" --advertise-client-urls "http://$HOST:$ETCD_PORT" \
    --listen-peer-urls "http://$HOST:$ETCD_PEER" --initial-advertise-peer-urls "http://$HOST:$ETCD_PEER" \
    --initial-cluster "load=http://$HOST:$ETCD_PEER" \
    --auto-compaction-mode=periodic --auto-compaction-retention=10m) > "$OUT/etcd.log" 2>&1 < /dev/null &
ETCD=$!
CHILD_PIDS+=("$ETCD")
for _ in $(seq 1 100); do
    curl -sf --max-time 1 "http://$HOST:$ETCD_PORT/health" | grep -q true && break
    kill -0 "$ETCD" 2>/dev/null || die "etcd exited (log: $OUT/etcd.log)"
    sleep 0.1
done

# ---------------------------------------------------------------- PostgreSQL
# initdb refuses root: run it as postgres in a directory postgres owns.
PGDIR=$(mktemp -d /tmp/switchyard-pg.XXXXXX)
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
[ "$(id -u)" != 0 ] || chown postgres "$PGDIR"
as_pg "$PG_BIN/initdb" -D "$PGDIR/data" -A trust -U switchyard > "$OUT/initdb.log" 2>&1 \
    || { tail "$OUT/initdb.log" >&2; die "initdb failed"; }
as_pg "$PG_BIN/pg_ctl" -D "$PGDIR/data" -l "$PGDIR/log" -w \
    -o "-c listen_addresses=$HOST -p $PG_PORT -k $PGDIR -c fsync=on -c max_connections=50" start > "$OUT/pg_ctl.log" 2>&1 \
    || { cat "$PGDIR/log" >&2; die "PostgreSQL did not start"; }
pg_stop() { as_pg "$PG_BIN/pg_ctl" -D "$PGDIR/data" -m fast stop > /dev/null 2>&1 || true; rm -rf "$PGDIR"; }
as_pg "$PG_BIN/createdb" -h "$HOST" -p "$PG_PORT" -U switchyard switchyard
PG_URL="host=$HOST port=$PG_PORT user=switchyard dbname=switchyard"
psql_q() { as_pg psql -h "$HOST" -p "$PG_PORT" -U switchyard -d switchyard -At -c "$1" 2>>"$OUT/psql.err"; }
trap 'cleanup; pg_stop' EXIT

# ---------------------------------------------------------------- configuration
gen_agents "$AGENTS" "$DOMAIN" "$OUT" "support:1" ""
cat > "$OUT/switchyard.toml" <<CFG
# Written by load/cluster.sh: the same file for every node.
[http]
token = "$TOKEN"
# SIPp runs on loopback: its addresses are trusted peers (nothing is by default;
# untrusted callers reach only tenants' numbers and users, never a route).
[security]
trusted = ["127.0.0.0/8"]
[admission]
max_calls = 50000
cps = 5000
per_source_cps = 0
# SIPp sends far above a phone's rate from loopback: never banned (README "The edge").
[security.flood]
exempt = ["127.0.0.0/8"]
[registrar]
max_auth_failures = 1000000
algorithms = ["MD5"]
max_expires_secs = 7200
[[trunks]]
id = "carrier"
gateways = ["sip:$HOST:$CARRIER_PORT"]
max_channels = $TRUNK_LIMIT
[[routes]]
prefix = "9"
trunks = ["carrier"]
[[tenants]]
id = "cc"
domain = "$DOMAIN"
users_csv = "$OUT/users.csv"
agents_csv = "$OUT/agents.csv"
[[tenants.queues]]
id = "support"
strategy = "longest-idle"
ring_timeout_secs = 15
wrap_up_secs = 1
[[tenants.numbers]]
number = "$NUMBER"
target = "queue:support"
CFG
"$BIN" check-config "$OUT/switchyard.toml" > "$OUT/check-config.out" 2>&1 \
    || { cat "$OUT/check-config.out" >&2; die "switchyard check-config refused $OUT/switchyard.toml"; }
for n in "${NODES[@]}"; do
    cat > "$OUT/$n.cluster.toml" <<CFG
name = "$n"
listen = "${IP[$n]}:$CL_PORT"
secret = "cluster-load-secret-0123456789"
channel_hold_secs = $((TRUNK_HOLD * 2 + 5))
[etcd]
endpoints = ["http://$HOST:$ETCD_PORT"]
prefix = "/switchyard"
lease_ttl_secs = 3
[database]
url = "$PG_URL"
CFG
done

# ---------------------------------------------------------------- nodes
start_node() { # name
    local n=$1
    NO_COLOR=1 "$BIN" --config "$OUT/switchyard.toml" --cluster "$OUT/$n.cluster.toml" \
        --sip-listen "udp:${IP[$n]}:$SIP_PORT" --http-listen "${IP[$n]}:$HTTP_PORT" \
        --data-dir "$OUT/data-$n" >> "$OUT/$n.log" 2>&1 < /dev/null &
    PID[$n]=$!
    CHILD_PIDS+=("${PID[$n]}")
}
http_of() { echo "http://${IP[$1]}:$HTTP_PORT"; }
cluster_view() { curl -sf --max-time 2 -H "Authorization: Bearer $TOKEN" "$(http_of "$1")/cluster"; }
# "owner-of-key" for every owned key, from node $1's view.
owners_of() {
    { cluster_view "$1" || true; } | python3 -c '
import json, sys
d = json.load(sys.stdin)
for n in d["nodes"]:
    for k in n["owns"]:
        print(k, n["name"])
' 2>/dev/null || true
}
for n in "${NODES[@]}"; do start_node "$n"; done
for n in "${NODES[@]}"; do
    for _ in $(seq 1 150); do
        kill -0 "${PID[$n]}" 2>/dev/null || { tail -20 "$OUT/$n.log" >&2; die "$n exited during start-up"; }
        curl -sf --max-time 1 "$(http_of "$n")/health" >/dev/null 2>&1 && break
        sleep 0.2
    done
done
# Every singleton owned, seen alike by every node.
for _ in $(seq 1 100); do
    a=$(owners_of n1 | sort); b=$(owners_of n2 | sort); c=$(owners_of n3 | sort)
    [ -n "$a" ] && [ "$a" = "$b" ] && [ "$b" = "$c" ] && [ "$(echo "$a" | wc -l)" -ge 3 ] && break
    sleep 0.2
done
owners_of n1 | sort > "$OUT/owners_before.txt"
say "ownership              $(tr '\n' ' ' < "$OUT/owners_before.txt")"
owner() { awk -v k="$1" '$1==k { print $2 }' "$2"; }
VICTIM=$(owner tenant/cc "$OUT/owners_before.txt")
[ -n "$VICTIM" ] || die "nobody owns tenant/cc (see $OUT/owners_before.txt)"

# ---------------------------------------------------------------- phones and carrier
sed -e 's/timeout="500" ontimeout="answer"/timeout="'"$RING_MS"'" ontimeout="answer"/' \
    -e 's/timeout="20000" ontimeout="hangup"/timeout="'"$((TALK * 1000))"'" ontimeout="hangup"/' \
    "$scen/cc_agent.xml" > "$OUT/cc_agent.xml"
(cd "$OUT" && exec sipp -sf "$OUT/cc_agent.xml" -i "$HOST" -p "$AGENT_PORT" -cp "$AGENT_CP" \
    -nostdin -buff_size "$BUFF" -recv_timeout $(( (TALK + 60) * 1000 )) \
    -trace_stat -stf "$OUT/agent_stat.csv" -fd 1 -trace_err -error_file "$OUT/agent_errors.log") > "$OUT/agent.out" 2>&1 < /dev/null &
AGENT_PID=$!; CHILD_PIDS+=("$AGENT_PID")
wait_udp_bound "$AGENT_PORT" "$AGENT_PID" "SIPp agent UAS"
# The carrier answers and holds each call until the caller's BYE; without the scenario's
# closing pause, SIPp's CurrentCall counts exactly the calls between INVITE and BYE.
sed '/<pause milliseconds="2000"\/>/d' "$scen/carrier_ok.xml" > "$OUT/carrier.xml"
! grep -q '<pause' "$OUT/carrier.xml" || die "could not take the closing pause out of carrier_ok.xml"
(cd "$OUT" && exec sipp -sf "$OUT/carrier.xml" -aa -i "$HOST" -p "$CARRIER_PORT" -cp "$CARRIER_CP" -nostdin \
    -buff_size "$BUFF" -trace_stat -stf "$OUT/carrier_stat.csv" -fd 1) > "$OUT/carrier.out" 2>&1 < /dev/null &
CARRIER_PID=$!; CHILD_PIDS+=("$CARRIER_PID")
wait_udp_bound "$CARRIER_PORT" "$CARRIER_PID" "SIPp carrier UAS"

# A third of the agents register through each node (SIPp's injection file split in three).
python3 - "$OUT" <<'PY'
import sys
out = sys.argv[1]
lines = open(f"{out}/sipp_users.csv").read().splitlines()[1:]
for k in range(3):
    with open(f"{out}/sipp_users_n{k+1}.csv", "w") as f:
        f.write("SEQUENTIAL\n")
        f.writelines(l + "\n" for i, l in enumerate(lines) if i % 3 == k)
PY
REG_OK=0
for n in "${NODES[@]}"; do
    rp="REG_PORT_$n"
    cnt=$(( $(wc -l < "$OUT/sipp_users_$n.csv") - 1 ))
    (cd "$OUT" && timeout 60 sipp "${IP[$n]}:$SIP_PORT" -sf "$scen/cc_register.xml" -auth_uri "$DOMAIN" \
        -inf "$OUT/sipp_users_$n.csv" -key agent_port "$AGENT_PORT" -m "$cnt" -r 200 \
        -i "$HOST" -p "${!rp}" -nostdin -trace_stat -stf "$OUT/register_${n}_stat.csv" -fd 1 \
        > "$OUT/register_$n.out" 2>&1 < /dev/null) || true
    ok=$(stat_col "$OUT/register_${n}_stat.csv" "SuccessfulCall(C)")
    is_num "$ok" && REG_OK=$((REG_OK + ok))
done
say "registrations          $REG_OK of $AGENTS (a third through each node)"
[ "$REG_OK" = "$AGENTS" ] || die "registrations failed (see $OUT/register_*.out)"

# Every agent available on the tenant's owner (its agents run there).
avail() { curl -sf --max-time 2 -H "Authorization: Bearer $TOKEN" "$(http_of "$1")/agents?tenant=cc&state=available&limit=1" \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["total"])' 2>/dev/null || echo 0; }
for _ in $(seq 1 150); do
    [ "$(avail "$VICTIM")" -ge "$AGENTS" ] && break
    sleep 0.2
done
say "agents available       $(avail "$VICTIM") on $VICTIM (owner of tenant/cc; phones registered through all nodes)"

# ---------------------------------------------------------------- load
T_START=$(now_s)
PER_NODE_CAPS=$(awk -v c="$CAPS" 'BEGIN { printf "%.2f", c/3 }')
PER_NODE_TRUNK=$(awk -v c="$TRUNK_CAPS" 'BEGIN { printf "%.2f", c/3 }')
declare -A CALLER_PID=() TRUNK_PID=()
for n in "${NODES[@]}"; do
    cp="CALLER_PORT_$n" tp="TRUNK_PORT_$n"
    (cd "$OUT" && exec sipp "${IP[$n]}:$SIP_PORT" -sf "$scen/cc_caller.xml" -s "$NUMBER" -key domain "$DOMAIN" \
        -i "$HOST" -p "${!cp}" -m $(( CAPS * DURATION / 3 )) -r "$PER_NODE_CAPS" -rp 1000 -nostdin \
        -buff_size "$BUFF" -recv_timeout $(( (TALK + 60) * 1000 )) \
        -trace_stat -stf "$OUT/caller_${n}_stat.csv" -fd 1 -trace_err -error_file "$OUT/caller_${n}_errors.log") \
        > "$OUT/caller_$n.out" 2>&1 < /dev/null &
    CALLER_PID[$n]=$!; CHILD_PIDS+=("${CALLER_PID[$n]}")
    (cd "$OUT" && exec sipp "${IP[$n]}:$SIP_PORT" -sn uac -s 9000 -d $((TRUNK_HOLD * 1000)) \
        -i "$HOST" -p "${!tp}" -m $(( TRUNK_CAPS * DURATION / 3 )) -r "$PER_NODE_TRUNK" -rp 1000 -nostdin \
        -buff_size "$BUFF" -recv_timeout 30000 -trace_stat -stf "$OUT/trunk_${n}_stat.csv" -fd 1) \
        > "$OUT/trunk_$n.out" 2>&1 < /dev/null &
    TRUNK_PID[$n]=$!; CHILD_PIDS+=("${TRUNK_PID[$n]}")
done

# Once a second: the nodes' trunk channels (their sum must stay within the limit).
SAMPLES=$OUT/channels.csv
echo "t_s;n1;n2;n3;sum;carrier_current" > "$SAMPLES"
sample() {
    local row="" sum=0 v n
    for n in "${NODES[@]}"; do
        v=$( { curl -sf --max-time 1 "$(http_of "$n")/metrics" 2>/dev/null || true; } | awk '/^switchyard_trunk_channels\{/ && /trunk="carrier"/ { print $NF+0 }' | head -1)
        [ -n "$v" ] || v=0
        row="$row;$v"; sum=$((sum + ${v%.*}))
    done
    echo "$(elapsed "$T_START" "$(now_s)")$row;$sum;$(stat_col "$OUT/carrier_stat.csv" CurrentCall)" >> "$SAMPLES"
}

TAKEOVER=NA KILLED_AT="" KILL_MS=0 REJOINED="" FAILED_AT_KILL=NA SURVIVOR=""
QANS_BEFORE=NA QANS_AFTER=NA
# The queue's answered counter as node $1 (its owner) reports it.
queue_answered() {
    { curl -sf --max-time 1 -H "Authorization: Bearer $TOKEN" "$(http_of "$1")/queues/cc/support" 2>/dev/null || true; } \
        | grep -o '"answered":[0-9]*' | head -1 | cut -d: -f2
}
deadline=$(( $(date +%s) + DURATION + TALK + 120 ))
while :; do
    t=$(elapsed "$T_START" "$(now_s)")
    sample
    if [ -n "$KILL" ] && [ -z "$KILLED_AT" ]; then
        v=$(queue_answered "$VICTIM"); is_num "$v" && QANS_BEFORE=$v
    fi
    if [ -n "$KILL" ] && [ -z "$KILLED_AT" ] && awk -v t="$t" -v k="$KILL_AT" 'BEGIN { exit !(t >= k) }'; then
        for n in "${NODES[@]}"; do [ "$n" != "$VICTIM" ] && { SURVIVOR=$n; break; }; done
        kill -KILL "${PID[$VICTIM]}"
        k0=$(now_s); KILLED_AT=$t; KILL_MS=$(date +%s%3N)
        # The load balancer takes the dead node out: its callers stop where they are
        # (SIGUSR1: SIPp writes its statistics and quits; reaped at the end).
        kill -USR1 "${CALLER_PID[$VICTIM]}" "${TRUNK_PID[$VICTIM]}" 2>/dev/null || true
        say "SIGKILL                $VICTIM at t=${t} s (owned: $(awk -v v="$VICTIM" '$2==v { printf "%s ", $1 }' "$OUT/owners_before.txt"))"
        # Every singleton owned by a survivor.
        while :; do
            owners_of "$SURVIVOR" > "$OUT/owners_after.txt" || true
            if [ -s "$OUT/owners_after.txt" ] && ! grep -q " $VICTIM\$" "$OUT/owners_after.txt" \
               && [ "$(wc -l < "$OUT/owners_after.txt")" -ge "$(wc -l < "$OUT/owners_before.txt")" ]; then
                TAKEOVER=$(elapsed "$k0" "$(now_s)"); break
            fi
            awk -v a="$k0" -v b="$(now_s)" 'BEGIN { exit !(b - a > 30) }' && break
            sleep 0.05
        done
        say "takeover               ${TAKEOVER} s after the SIGKILL: $(tr '\n' ' ' < "$OUT/owners_after.txt")"
        NEWQ=$(owner queue/cc/support "$OUT/owners_after.txt")
        for _ in $(seq 1 20); do
            v=$(queue_answered "$NEWQ"); is_num "$v" && { QANS_AFTER=$v; break; }; sleep 0.1
        done
    fi
    if [ -n "$KILLED_AT" ] && [ -z "$REJOINED" ] && awk -v t="$t" -v k="$KILLED_AT" -v r="$REJOIN_AFTER" 'BEGIN { exit !(t >= k + r) }'; then
        REJOINED=$t
        start_node "$VICTIM"
        say "restart                $VICTIM at t=${t} s"
    fi
    running=""
    for n in "${NODES[@]}"; do kill -0 "${CALLER_PID[$n]}" 2>/dev/null && running=1; done
    [ -n "$running" ] || break
    [ "$(date +%s)" -lt "$deadline" ] || { echo "cluster.sh: callers still running at the deadline" >&2; break; }
    sleep 1
done
for n in "${NODES[@]}"; do sipp_stop "${CALLER_PID[$n]}"; sipp_stop "${TRUNK_PID[$n]}"; done
sleep 3
owners_of n1 | sort > "$OUT/owners_end.txt" || true
for n in "${NODES[@]}"; do curl -sf --max-time 2 "$(http_of "$n")/metrics" > "$OUT/metrics_$n.txt" || true; done
sipp_stop "$AGENT_PID"; sipp_stop "$CARRIER_PID"
# A clean stop so every CDR is committed before it is counted.
for n in "${NODES[@]}"; do kill -TERM "${PID[$n]}" 2>/dev/null || true; done
for n in "${NODES[@]}"; do
    for _ in $(seq 1 100); do kill -0 "${PID[$n]}" 2>/dev/null || break; sleep 0.2; done
done

# ---------------------------------------------------------------- report
VERDICT=PASS REASONS=()
col() { stat_col "$1" "$2"; }
SUCC_TOTAL=0
for n in "${NODES[@]}"; do
    f=$OUT/caller_${n}_stat.csv
    c=$(col "$f" "OutgoingCall(C)"); s=$(col "$f" "SuccessfulCall(C)"); x=$(col "$f" "FailedCall(C)")
    is_num "$s" && SUCC_TOTAL=$((SUCC_TOTAL + s))
    role=survivor; [ -n "$KILL" ] && [ "$n" = "$VICTIM" ] && role="killed at t=$KILLED_AT s"
    say "callers via $n         created $c, answered and completed $s, failed $x ($role)"
    if [ "$role" = survivor ]; then
        [ "$x" = 0 ] || fail "callers through surviving node $n: $x failed"
    fi
    tf=$OUT/trunk_${n}_stat.csv
    say "carrier calls via $n   created $(col "$tf" "OutgoingCall(C)"), completed $(col "$tf" "SuccessfulCall(C)"), refused/failed $(col "$tf" "FailedCall(C)")"
done
AG_IN=$(col "$OUT/agent_stat.csv" "IncomingCall(C)")
say "agents (SIPp UAS)      incoming $AG_IN, completed $(col "$OUT/agent_stat.csv" "SuccessfulCall(C)"), failed $(col "$OUT/agent_stat.csv" "FailedCall(C)")"
if [ -n "$KILL" ]; then
    is_num "${TAKEOVER%.*}" && awk -v t="$TAKEOVER" 'BEGIN { exit !(t < 5) }' || fail "takeover $TAKEOVER s, not under 5 s"
    # Agents registered through the killed node (user uN <-> agent aN): calls they answered
    # after the kill, from the CDRs.
    IN_LIST=$(awk -F';' 'NR>1 { sub(/^u/, "a", $1); printf "%s'"'"'%s'"'"'", (n++ ? "," : ""), $1 }' "$OUT/sipp_users_$VICTIM.csv")
    AFTER=$(psql_q "SELECT count(*) FROM cdrs WHERE answer_at > $KILL_MS + 1000 AND agent IN ($IN_LIST)" || echo 0)
    say "agents via $VICTIM     answered $AFTER calls after the kill (phones registered through the killed node)"
    [ "${AFTER:-0}" -gt 0 ] || fail "agents registered through $VICTIM got no call after the kill"
fi
MAX_SUM=$(awk -F';' 'NR>1 && $5+0>m { m=$5+0 } END { print m+0 }' "$SAMPLES")
MAX_CARRIER=$(col "$OUT/carrier_stat.csv" CurrentCall max)
say "trunk channels         peak sum over the nodes $MAX_SUM, carrier's peak concurrent $MAX_CARRIER (limit $TRUNK_LIMIT; 1 s samples in $SAMPLES)"
[ "$MAX_SUM" -le "$TRUNK_LIMIT" ] || fail "nodes held $MAX_SUM carrier channels, over the limit $TRUNK_LIMIT"
! is_num "$MAX_CARRIER" || [ "$MAX_CARRIER" -le "$TRUNK_LIMIT" ] || fail "the carrier saw $MAX_CARRIER concurrent calls, over the limit $TRUNK_LIMIT"
CDR_ANSWERED=$(psql_q "SELECT count(*) FROM cdrs WHERE queue IS NOT NULL AND answer_at IS NOT NULL" || echo NA)
# The guarantee: every call a caller saw completed (its 200 to the agent's BYE sent) has its
# CDR, the killed node's calls up to the SIGKILL included: the BYE reaches the caller only
# once the CDR is committed.
say "CDRs in PostgreSQL     $(psql_q "SELECT count(*) FROM cdrs" || echo NA) rows, $CDR_ANSWERED answered queue calls; callers saw $SUCC_TOTAL answered and completed"
is_num "$CDR_ANSWERED" && [ "$CDR_ANSWERED" -ge "$SUCC_TOTAL" ] || fail "CDRs lost: $CDR_ANSWERED answered queue CDRs for $SUCC_TOTAL completed calls"
# One agent on two answered calls at once (an agent that moved with its tenant must come back
# busy, not available): its answered calls sorted by answer time, each against the latest end
# among the earlier ones.
OVERLAPS=$(psql_q "WITH t AS (SELECT agent, answer_at AS a, MAX(end_at) OVER (PARTITION BY agent
    ORDER BY answer_at, id ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS prev_end
    FROM cdrs WHERE agent IS NOT NULL AND answer_at IS NOT NULL)
    SELECT count(*) FROM t WHERE prev_end IS NOT NULL AND a < prev_end" || echo NA)
say "agent overlaps         $OVERLAPS answered calls of an agent that began before its previous one ended (CDRs)"
[ "$OVERLAPS" = 0 ] || fail "agents on two answered calls at once: $OVERLAPS"
if [ -n "$KILL" ]; then
    say "queue counters         answered $QANS_BEFORE on $VICTIM before the kill, $QANS_AFTER on the new owner right after the takeover"
    is_num "$QANS_BEFORE" && is_num "$QANS_AFTER" && [ "$QANS_AFTER" -ge $((QANS_BEFORE - 2 * CAPS)) ] \
        || fail "queue counters restarted on the new owner: answered $QANS_BEFORE before, $QANS_AFTER after"
fi
if [ -n "$REJOINED" ]; then
    say "after rejoin           $(tr '\n' ' ' < "$OUT/owners_end.txt")"
    cmp -s "$OUT/owners_before.txt" "$OUT/owners_end.txt" || fail "the rejoined node did not get its share back (see owners_before.txt / owners_end.txt)"
fi
# Mean of histogram $1 in milliseconds (its _sum over its _count, unrounded).
mean_ms() {
    awk -v m="$1" '$1 == m "_sum" { s = $2 } $1 == m "_count" { c = $2 }
        END { if (c + 0 > 0) printf "%.2f ms", 1000 * s / c; else print "NA" }' "$2"
}
for n in "${NODES[@]}"; do
    say "metrics $n             takeovers $(metric_sum switchyard_cluster_takeover_seconds_count "$OUT/metrics_$n.txt"), moves $(metric_sum switchyard_cluster_ownership_moves_total "$OUT/metrics_$n.txt"), inter-node sent $(metric_sum switchyard_cluster_messages_sent_total "$OUT/metrics_$n.txt"), failed $(metric_sum switchyard_cluster_message_failures_total "$OUT/metrics_$n.txt"); CDR commit before the hangup: mean $(mean_ms switchyard_cdr_durable_wait_seconds "$OUT/metrics_$n.txt"), not durable $(metric_sum switchyard_cdr_not_durable_total "$OUT/metrics_$n.txt")"
done
say "$(verdict_line)"
say "files                  $OUT"
[ "$VERDICT" = PASS ]
