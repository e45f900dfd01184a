#!/usr/bin/env bash
# IVR load: callers dial a number whose target is a call flow (two menus), are answered by
# the switch, press 2 and 4 as RFC 4733 telephone-events (SIPp's dtmf_2833 pcaps), wait in
# the queue and are offered to a registered agent phone, which answers, talks and hangs
# up. Prints a report; exits non-zero when a call failed on either side, when not every
# call succeeded, or when a CDR lacks the digits 24 or the queue (the menus were not
# walked), or one agent had two answered calls at once.
#
#   load/ivr.sh [--agents 400] [--caps 200] [--duration 60] [--talk 5] [--ring-ms 500]
#               [--wrap-up 1] [--reg-rate 1000] [--switch-bin PATH] [--out DIR] [--quick]
#
#   --agents N     agents in queue "support" of tenant cc, each with a SIP user uNNNNNN
#   --caps R       caller attempts per second; --duration S: seconds of calling
#   --talk S       talk time: the agent hangs up S seconds after the ACK
#   --ring-ms MS   ring time: the agent's phone answers MS ms after its 180
#   --wrap-up S    the queue's wrap-up time (wrap_up_secs)
#   --reg-rate R   agent registrations per second
#   --quick        CI size: 40 agents, 5 CAPS, 10 s, talk 2 s (options after it win)
#
# Flow: as load/cc.sh (users.csv, agents.csv, switchyard.toml with a [[tenants.flows]]
# flow "main" on number 8000: menu "welcome" (2 -> menu "sales-menu"), menu "sales-menu"
# (4 -> queue support); check-config; the switch; one SIPp UAS for every agent;
# registrations; the SIPp callers (scenarios/ivr_caller.xml, media on their own port);
# a drain; the report with the switch's switchyard_flow_* series, CPU per IVR call, and
# an SQL check of the CDRs after the switch has stopped.
# Exit status: 0 PASS, 1 FAIL, 2 bad usage or a setup failure.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
# shellcheck source=lib/common.sh
. "$here/lib/common.sh"
scen=$here/scenarios


AGENTS=400 CAPS=200 DURATION=60 TALK=5 RING_MS=500 WRAP_UP=1 REG_RATE=1000
BIN="" OUT=""
while [ $# -gt 0 ]; do
    case "$1" in
        --agents) AGENTS=${2:?}; shift 2 ;;
        --caps) CAPS=${2:?}; shift 2 ;;
        --duration) DURATION=${2:?}; shift 2 ;;
        --talk) TALK=${2:?}; shift 2 ;;
        --ring-ms) RING_MS=${2:?}; shift 2 ;;
        --wrap-up) WRAP_UP=${2:?}; shift 2 ;;
        --reg-rate) REG_RATE=${2:?}; shift 2 ;;
        --switch-bin) BIN=${2:?}; shift 2 ;;
        --out) OUT=${2:?}; shift 2 ;;
        --quick) AGENTS=40 CAPS=5 DURATION=10 TALK=2; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "ivr.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
    esac
done
for v in AGENTS CAPS DURATION TALK RING_MS WRAP_UP REG_RATE; do
    [[ "${!v}" =~ ^[0-9]+$ ]] || die "--$(echo "$v" | tr 'A-Z_' 'a-z-') must be a whole number"
done
[ "$AGENTS" -gt 0 ] && [ "$AGENTS" -le 900000 ] || die "--agents must be 1..900000"
[ "$CAPS" -gt 0 ] && [ "$DURATION" -gt 0 ] && [ "$REG_RATE" -gt 0 ] || die "--caps, --duration and --reg-rate must be > 0"
DTMF_DIR=/usr/share/sip-tester
[ -r "$DTMF_DIR/dtmf_2833_2.pcap" ] && [ -r "$DTMF_DIR/dtmf_2833_4.pcap" ] \
    || die "$DTMF_DIR/dtmf_2833_{2,4}.pcap not found (Debian package sip-tester)"
for tool in sipp python3 curl sqlite3 ss; do
    command -v "$tool" >/dev/null || die "$tool not found (Debian/Ubuntu: sip-tester, python3, curl, sqlite3, iproute2)"
done

ensure_switch_bin
[ -n "$OUT" ] || OUT=$here/out/$(date -u +%Y%m%dT%H%M%SZ)-ivr-$$
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

HOST=127.0.0.1
DOMAIN=cc.example.com
NUMBER=8000
TOKEN=$(random_token)
BUFF=4194304
CALLS=$((CAPS * DURATION))
TALK_MS=$((TALK * 1000))

# ---------------------------------------------------------------- children

pick_port SIP_PORT; pick_port HTTP_PORT
pick_port AGENT_PORT; pick_port AGENT_CP
pick_port REG_PORT; pick_port REG_CP
pick_port CALLER_PORT; pick_port CALLER_CP; pick_port CALLER_MP

# ---------------------------------------------------------------- data and config
gen_agents "$AGENTS" "$DOMAIN" "$OUT" "support:1" skills
# Admission far above the offered load, so nothing is refused (as run.sh sets it).
MAX_CALLS=$(( CAPS * (TALK + 60) * 2 )); [ "$MAX_CALLS" -ge 20000 ] || MAX_CALLS=20000
ADM_CPS=$(( CAPS * 4 )); [ "$ADM_CPS" -ge 5000 ] || ADM_CPS=5000
cat > "$OUT/switchyard.toml" <<CFG
# Written by load/ivr.sh.
data_dir = "$OUT/data"
[media]
rtp_ports = "40000-47999"
bind = "$HOST"
$(sipp_node_config)
[[tenants]]
id = "cc"
domain = "$DOMAIN"
users_csv = "$OUT/users.csv"
agents_csv = "$OUT/agents.csv"
[[tenants.queues]]
id = "support"
strategy = "longest-idle"
ring_timeout_secs = 15
wrap_up_secs = $WRAP_UP
service_level_secs = 20
[[tenants.numbers]]
number = "$NUMBER"
target = "flow:main"
[[tenants.flows]]
id = "main"
[[tenants.flows.steps]]
id = "welcome"
type = "menu"
prompt = "thank-you-for-waiting"
choices = { "1" = "bye", "2" = "sales-menu" }
timeout_secs = 10
[[tenants.flows.steps]]
id = "sales-menu"
type = "menu"
prompt = "all-agents-busy"
choices = { "4" = "sales" }
timeout_secs = 10
[[tenants.flows.steps]]
id = "sales"
type = "queue"
target = "support"
[[tenants.flows.steps]]
id = "bye"
type = "hangup"
CFG
"$BIN" check-config "$OUT/switchyard.toml" > "$OUT/check-config.out" 2>&1 \
    || { cat "$OUT/check-config.out" >&2; die "switchyard check-config refused $OUT/switchyard.toml"; }

# The agent UAS gets a copy of its scenario with the ring and talk times in place of
# the defaults (both are waits that end by timeout, see the scenario).
sed -e 's/timeout="500" ontimeout="answer"/timeout="'"$RING_MS"'" ontimeout="answer"/' \
    -e 's/timeout="20000" ontimeout="hangup"/timeout="'"$TALK_MS"'" ontimeout="hangup"/' \
    "$scen/cc_agent.xml" > "$OUT/cc_agent.xml"
grep -q "timeout=\"$RING_MS\" ontimeout=\"answer\"" "$OUT/cc_agent.xml" \
    && grep -q "timeout=\"$TALK_MS\" ontimeout=\"hangup\"" "$OUT/cc_agent.xml" \
    || die "could not set the ring and talk times in cc_agent.xml"

# SIPp expands no keyword in play_pcap_audio: the caller's scenario gets the pcaps' directory.
sed "s|\[dtmf_dir\]|$DTMF_DIR|g" "$scen/ivr_caller.xml" > "$OUT/ivr_caller.xml"
grep -q "$DTMF_DIR/dtmf_2833_4.pcap" "$OUT/ivr_caller.xml" || die "could not set the pcaps' directory in ivr_caller.xml"

# Report lines go to the terminal and to report.txt.
: > "$OUT/report.txt"
say "== switchyard IVR load ($(date -u +%FT%TZ), $(nproc) cores)"
say "agents                 $AGENTS in queue support of tenant cc ($DOMAIN), longest-idle, wrap-up ${WRAP_UP} s"
say "offered                $CALLS calls to $NUMBER (flow main: digits 2, 4 as RFC 4733) at $CAPS CAPS for $DURATION s; ring ${RING_MS} ms, talk ${TALK} s"
say "switch                 udp:$HOST:$SIP_PORT http:$HOST:$HTTP_PORT ($BIN)"
say "agent phones           SIPp UAS udp:$HOST:$AGENT_PORT (registered from udp:$HOST:$REG_PORT)"

# ---------------------------------------------------------------- switch
start_switch

# ---------------------------------------------------------------- agent phones (UAS)
start_agent_uas "$OUT/cc_agent.xml"

# ---------------------------------------------------------------- registrations
VERDICT=PASS
REASONS=()
register_agents

# ---------------------------------------------------------------- agents available
wait_agents_available

# ---------------------------------------------------------------- callers
scrape "$OUT/metrics_before.txt" || die "GET /metrics failed before the calls"
CPU_BEFORE=$(cpu_ticks "$SW")
RSS_BEFORE_KB=$(status_kb "$SW" VmRSS)
# A caller waits in the queue, then rings, then talks: each recv gets talk time + 2 min.
RECV_TIMEOUT_MS=$(( (TALK + 120) * 1000 ))
T_START=$(now_s)
(
    cd "$OUT"
    exec sipp "$HOST:$SIP_PORT" -sf "$OUT/ivr_caller.xml" -s "$NUMBER" -key domain "$DOMAIN" \
        -i "$HOST" -p "$CALLER_PORT" -cp "$CALLER_CP" -mi "$HOST" -mp "$CALLER_MP" \
        -m "$CALLS" -l "$CALLS" -r "$CAPS" -rp 1000 -nostdin -buff_size "$BUFF" -max_socket 50000 \
        -recv_timeout "$RECV_TIMEOUT_MS" \
        -trace_stat -stf "$OUT/caller_stat.csv" -fd 1 \
        -trace_rtt -rtt_freq 1 \
        -trace_err -error_file "$OUT/caller_errors.log" \
        -trace_screen -screen_file "$OUT/caller_screen.log"
) > "$OUT/caller.out" 2>&1 < /dev/null &
CALLER_PID=$!
CHILD_PIDS+=("$CALLER_PID")

# Sample the switch once a second while the callers run.
SAMPLES=$OUT/switch_samples.csv
echo "t_s;cpu_ticks;rss_kb;calls_active" > "$SAMPLES"
HARD_TIMEOUT_S=$(( DURATION + TALK + RING_MS / 1000 + 150 ))
watch_caller "$CALLER_PID"
# The agent UAS keeps each call 2 s after its BYE.
sleep 3
sipp_stop "$AGENT_PID"

SW_CPU_S=NA SW_CPU_TOTAL_S=NA SW_HWM_KB=NA SW_RSS_KB=NA
if kill -0 "$SW" 2>/dev/null; then
    CPU_AFTER=$(cpu_ticks "$SW")
    SW_CPU_S=$(ticks_s $((CPU_AFTER - CPU_BEFORE)))
    SW_CPU_TOTAL_S=$(ticks_s "$CPU_AFTER")
    SW_HWM_KB=$(status_kb "$SW" VmHWM)
    SW_RSS_KB=$(status_kb "$SW" VmRSS)
    scrape "$OUT/metrics_after.txt" || true
    { api_get "/queues?tenant=cc" || api_get "/queues" || echo "(GET /queues failed)"; } > "$OUT/queues.json"
    # SIGTERM: a clean stop, so every CDR is in the database before it is read.
    kill -TERM "$SW" 2>/dev/null || true
    for _ in $(seq 1 150); do kill -0 "$SW" 2>/dev/null || break; sleep 0.2; done
    if kill -0 "$SW" 2>/dev/null; then
        echo "ivr.sh: WARNING: switch still running 30 s after SIGTERM, killing it" >&2
        kill -KILL "$SW" 2>/dev/null || true
    fi
    wait "$SW" 2>/dev/null || true
fi

# ---------------------------------------------------------------- CDR check
# Real column names are read from the table: the agent column is "agent" (else "target",
# the agent's contact), answer/end times "answer_at"/"end_at" (epoch ms).
DB=$OUT/data/switchyard.db
CDR_DIGITS=NA CDR_TOTAL=NA CDR_ANSWERED=NA CDR_AGENTS=NA OVERLAPS=NA SHORT_WRAPS=NA MIN_GAP=NA CDR_NOTE="" MIN_ALLOWED=NA
sq() { sqlite3 -batch -noheader "$DB" "$1" 2>>"$OUT/sqlite.err"; }
if [ -s "$DB" ]; then
    cols=" $(sq "SELECT name FROM pragma_table_info('cdrs')" | tr '\n' ' ')"
    has() { case "$cols" in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
    AG=agent; has agent || { AG=target; CDR_NOTE="no agent column; agent = target"; }
    ANS=answer_at; has answer_at || ANS=answer_ms
    END=end_at; has end_at || END=end_ms
    if has "$AG" && has "$ANS" && has "$END"; then
        where="$AG IS NOT NULL AND $AG <> '' AND $ANS IS NOT NULL"
        CDR_TOTAL=$(sq "SELECT COUNT(*) FROM cdrs")
        CDR_DIGITS=$(sq "SELECT COUNT(*) FROM cdrs WHERE dtmf = '24' AND queue = 'cc/support'")
        CDR_ANSWERED=$(sq "SELECT COUNT(*) FROM cdrs WHERE $where")
        CDR_AGENTS=$(sq "SELECT COUNT(DISTINCT $AG) FROM cdrs WHERE $where")
        # An agent's answered calls sorted by answer time: one overlaps an earlier one
        # when it was answered before the latest end among the earlier ones.
        gaps="WITH t AS (SELECT id, $AG AS agent, $ANS AS a, $END AS e,
                MAX($END) OVER (PARTITION BY $AG ORDER BY $ANS, id
                    ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS prev_end
                FROM cdrs WHERE $where)
            SELECT id, agent, a, e, prev_end FROM t WHERE prev_end IS NOT NULL"
        overlap_sql="$gaps AND a < prev_end"
        OVERLAPS=$(sq "SELECT COUNT(*) FROM ($overlap_sql)")
        # An agent's next call is offered after its wrap-up and answered a ring time later:
        # no gap may be shorter than both (100 ms allowed for timer and clock steps).
        MIN_ALLOWED=$(( WRAP_UP * 1000 + RING_MS - 100 )); [ "$MIN_ALLOWED" -ge 0 ] || MIN_ALLOWED=0
        SHORT_WRAPS=$(sq "SELECT COUNT(*) FROM ($gaps AND a >= prev_end AND a - prev_end < $MIN_ALLOWED)")
        MIN_GAP=$(sq "SELECT IFNULL(MIN(a - prev_end), 'NA') FROM ($gaps)")
        [ "$OVERLAPS" = 0 ] || sq "$overlap_sql LIMIT 5" > "$OUT/overlaps.txt"
        extra=""
        has queue && extra="$extra, queue calls $(sq "SELECT COUNT(*) FROM cdrs WHERE queue IS NOT NULL AND queue <> ''")"
        has abandoned && extra="$extra, abandoned $(sq "SELECT COUNT(*) FROM cdrs WHERE abandoned")"
        has wait_ms && extra="$extra, wait_ms avg $(sq "SELECT IFNULL(ROUND(AVG(wait_ms)),'NA') FROM cdrs WHERE $ANS IS NOT NULL") max $(sq "SELECT IFNULL(MAX(wait_ms),'NA') FROM cdrs")"
        extra="$extra, most calls by one agent $(sq "SELECT IFNULL(MAX(c),0) FROM (SELECT COUNT(*) AS c FROM cdrs WHERE $where GROUP BY $AG)")"
        CDR_NOTE="${CDR_NOTE:+$CDR_NOTE; }${extra#, }"
    else
        CDR_NOTE="cdrs has no $AG/$ANS/$END columns:$cols"
    fi
    [ -n "$OVERLAPS" ] || OVERLAPS=NA
else
    CDR_NOTE="no database at $DB"
fi

# ---------------------------------------------------------------- report
CS=$OUT/caller_stat.csv AS=$OUT/agent_stat.csv
CREATED=$(stat_col "$CS" "OutgoingCall(C)")
SUCCESS=$(stat_col "$CS" "SuccessfulCall(C)")
FAILED=$(stat_col "$CS" "FailedCall(C)")
C_UNEXP=$(stat_col "$CS" "FailedUnexpectedMessage(C)")
C_TIMEOUT=$(stat_col "$CS" "FailedTimeoutOnRecv(C)")
C_RETRANS=$(stat_col "$CS" "FailedMaxUDPRetrans(C)")
C_PEAK=$(stat_col "$CS" CurrentCall max)
A_IN=$(stat_col "$AS" "IncomingCall(C)")
A_OK=$(stat_col "$AS" "SuccessfulCall(C)")
A_FAILED=$(stat_col "$AS" "FailedCall(C)")
A_PEAK=$(stat_col "$AS" CurrentCall max)
C_RTT=$(ls -1 "$OUT"/ivr_caller_*_rtt.csv 2>/dev/null | head -1 || true)
A_RTT=$(ls -1 "$OUT"/cc_agent_*_rtt.csv 2>/dev/null | head -1 || true)
read -r ANS_N ANS_P50 ANS_P99 ANS_MAX <<< "$(rtd_stats "$C_RTT" answer)"
read -r RING_N RING_P50 RING_P99 RING_MAX <<< "$(rtd_stats "$C_RTT" agent)"
read -r A_HUNGUP _ _ _ <<< "$(rtd_stats "$A_RTT" hungup)"
read -r A_RELEASED _ _ _ <<< "$(rtd_stats "$A_RTT" released)"
read -r A_CANCELLED _ _ _ <<< "$(rtd_stats "$A_RTT" cancelled)"
PEAK_SW=$(awk -F';' 'NR>1 && $4!="NA" && $4!="" { if (!s || $4+0>m) m=$4+0; s=1 } END { print s ? m : "NA" }' "$SAMPLES")
PEAK_RSS_KB=$(awk -F';' 'NR>1 && $3+0>m { m=$3+0 } END { print m+0 }' "$SAMPLES")

[ "$FAILED" = 0 ] || fail "caller failed calls: $FAILED"
[ "$A_FAILED" = 0 ] || fail "agent-side failed calls: $A_FAILED"
[ "$SUCCESS" = "$CREATED" ] && [ "$CREATED" = "$CALLS" ] || fail "caller successful $SUCCESS of $CREATED created ($CALLS offered)"
[ "$OVERLAPS" = 0 ] || fail "agents on two answered calls at once (CDR overlaps): $OVERLAPS"
[ "$CDR_DIGITS" = "$CALLS" ] || fail "CDRs with digits 24 and the queue: $CDR_DIGITS of $CALLS calls"
[ "$SHORT_WRAPS" = 0 ] || fail "agents answered a call less than wrap-up + ring ($MIN_ALLOWED ms) after their last: $SHORT_WRAPS"
! is_num "$CDR_ANSWERED" || [ "$CDR_ANSWERED" -gt 0 ] || fail "no answered CDR with an agent to check"
[ -z "$TIMED_OUT" ] || fail "hard timeout (${HARD_TIMEOUT_S} s) reached"
[ -z "$SW_DIED" ] || fail "switch died during the run (log: $OUT/switch.log)"
[ "$CA_AFTER" = 0 ] || fail "switchyard_calls_active $CA_AFTER after the run, not 0"

{
    echo "caller (SIPp)          created $CREATED, successful $SUCCESS, failed $FAILED (unexpected msg $C_UNEXP, recv timeout $C_TIMEOUT, max retrans $C_RETRANS); peak concurrent $C_PEAK; wall $(elapsed "$T_START" "$T_END") s"
    echo "agents (SIPp UAS)      incoming $A_IN, successful $A_OK (answered and hung up $A_HUNGUP, answered and released by the switch $A_RELEASED, cancelled while ringing $A_CANCELLED), failed $A_FAILED; peak concurrent $A_PEAK"
    echo "time to answer ms      p50 $ANS_P50  p99 $ANS_P99  max $ANS_MAX  (INVITE->200: the switch answers the flow, n=$ANS_N)"
    echo "ACK to agent's BYE ms  p50 $RING_P50  p99 $RING_P99  max $RING_MAX  (menus + queue wait + ring + talk, n=$RING_N)"
    echo "menus walked (CDRs)    $CDR_DIGITS of $CDR_TOTAL with digits 24 and the queue"
    echo "switch calls_active    peak $PEAK_SW (1 s samples), after the run $CA_AFTER"
    echo "switch CPU             $SW_CPU_S s during the calls ($(awk -v s="$SW_CPU_S" -v n="$CREATED" 'BEGIN { if (s=="NA" || n=="NA" || n+0==0) print "NA"; else printf "%.0f", s*1e6/n }') us per IVR call: answer, prompts, digits, queue, agent, media relay), $SW_CPU_TOTAL_S s since start"
    echo "switch memory          VmHWM $(kib_mib "$SW_HWM_KB"), sampled peak VmRSS $(kib_mib "$PEAK_RSS_KB"), VmRSS before calls $(kib_mib "$RSS_BEFORE_KB"), after $(kib_mib "$SW_RSS_KB")"
    echo "CDRs                   $CDR_TOTAL rows, $CDR_ANSWERED answered with an agent, $CDR_AGENTS agents; overlapping calls of one agent: $OVERLAPS; shortest time from an agent's call end to its next answer $MIN_GAP ms, shorter than wrap-up + ring - 100 ms ($MIN_ALLOWED): $SHORT_WRAPS${CDR_NOTE:+ ($CDR_NOTE)}"
    echo "switch log             $(log_counts)"
    [ "$BUILD_SEEN" = 0 ] || echo "WARNING                rustc/cargo ran during the run: CPU and latency figures are disturbed"
    echo "switchyard_flow_* (after the run):"
    if [ -s "$OUT/metrics_after.txt" ]; then
        grep '^switchyard_flow_' "$OUT/metrics_after.txt" | grep -v '_bucket' | sed 's/^/    /' || echo "    (none)"
    fi
    echo "switchyard_queue_* (tenant cc, after the run):"
    if [ -s "$OUT/metrics_after.txt" ]; then
        grep '^switchyard_queue_' "$OUT/metrics_after.txt" | grep 'tenant="cc"' | sed 's/^/    /' || echo "    (none)"
    else
        echo "    (no scrape after the run)"
    fi
    echo "switchyard_agent* (tenant cc, after the run):"
    if [ -s "$OUT/metrics_after.txt" ]; then
        grep '^switchyard_agent' "$OUT/metrics_after.txt" | grep 'tenant="cc"' | sed 's/^/    /' || echo "    (none)"
    fi
    echo "GET /queues:"
    if [ -s "$OUT/queues.json" ]; then
        python3 -m json.tool "$OUT/queues.json" 2>/dev/null | sed 's/^/    /' || sed 's/^/    /' "$OUT/queues.json"
    else
        echo "    (not fetched)"
    fi
    verdict_line
    echo "files                  $OUT"
} | tee -a "$OUT/report.txt"

if [ "$VERDICT" != PASS ]; then
    # The agent's error log also notes every ring-time expiry ("jumping to label"): not errors.
    for f in "$OUT/caller_errors.log" "$OUT/agent_errors.log"; do
        [ -s "$f" ] || continue
        echo "--- first errors in $f ---" >&2
        sed 's/\(2[0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]\t\)/\n\1/g' "$f" | grep -v -e "jumping to label" -e "^The following events occurred" | grep -v '^$' | head -20 >&2 || true
    done
    [ -s "$OUT/overlaps.txt" ] && { echo "--- overlapping CDRs (id|agent|answer|end|earlier end) ---" >&2; cat "$OUT/overlaps.txt" >&2; }
    grep -E ' (WARN|ERROR) ' "$OUT/switch.log" | head -20 | sed 's/^/switch.log: /' >&2 || true
    exit 1
fi
exit 0
