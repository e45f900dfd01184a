#!/usr/bin/env bash
# Blind-transfer load (issue 17): SIPp callers dial tenant user 1002; 1002's phone (a SIPp
# UAS registered with digest) answers and blind-transfers each call with a REFER to user
# 1003 (RFC 3515); the switch carries the transfer out (202, NOTIFY 100, rings 1003 with
# its own SDP, NOTIFY 200, BYE to 1002); 1003's phone (another registered SIPp UAS)
# answers and talks with the caller until the caller hangs up. Prints a report; exits
# non-zero when a call failed on any of the three sides, when not every call was
# transferred, or when a CDR does not show the transfer.
#
#   load/transfer.sh [--caps 100] [--duration 20] [--before-ms 1000] [--after-ms 2000]
#                    [--switch-bin PATH] [--out DIR] [--quick]
#
#   --caps R        caller attempts per second; --duration S: seconds of calling
#                   (caps x duration calls in all)
#   --before-ms MS  how long 1002 talks with the caller before it sends the REFER
#   --after-ms MS   how long the caller then talks with 1003 before its BYE (the caller's
#                   -d is before + after + 500 ms for the transfer itself)
#   --quick         CI size: 10 CAPS for 5 s, 500 ms before, 1000 ms after (options after
#                   it win)
#
# Flow: users.csv (1002, 1003 with HA1s; the switch never sees a password), switchyard.toml
# (media anchored on every call: transfers need it; the SIPp sources trusted and exempt
# from flood bans), `switchyard check-config`, the switch, the
# two SIPp phones (scenarios/xfer_transferor.xml as 1002, scenarios/uas.xml as 1003), both
# registered through SIPp with digest (scenarios/cc_register.xml, Contact on each phone's
# port), a wait for both bindings, the SIPp callers (scenarios/xfer_caller.xml), a drain,
# then the report: the three SIPp sides, the switch's transfer counters, CPU and memory,
# and an SQL check of every CDR (sqlite3) after the switch has stopped: the call to 1002
# answered, ended by the caller, and transferred to 1003 (the `transfers` column and the
# `cdr_legs` table where the store has them, else the CDR's target `user:1003`).
# Exit status: 0 PASS, 1 FAIL, 2 bad usage or a setup failure.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
# shellcheck source=lib/common.sh
. "$here/lib/common.sh"
scen=$here/scenarios

CAPS=100 DURATION=20 BEFORE_MS=1000 AFTER_MS=2000
BIN="" OUT=""
while [ $# -gt 0 ]; do
    case "$1" in
        --caps) CAPS=${2:?--caps needs a value}; shift 2 ;;
        --duration) DURATION=${2:?--duration needs a value}; shift 2 ;;
        --before-ms) BEFORE_MS=${2:?--before-ms needs a value}; shift 2 ;;
        --after-ms) AFTER_MS=${2:?--after-ms needs a value}; shift 2 ;;
        --switch-bin) BIN=${2:?--switch-bin needs a value}; shift 2 ;;
        --out) OUT=${2:?--out needs a value}; shift 2 ;;
        --quick) CAPS=10 DURATION=5 BEFORE_MS=500 AFTER_MS=1000; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "transfer.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
    esac
done
for v in CAPS DURATION BEFORE_MS AFTER_MS; do
    [[ "${!v}" =~ ^[0-9]+$ ]] || die "--$(echo "$v" | tr 'A-Z_' 'a-z-') must be a whole number"
done
[ "$CAPS" -gt 0 ] && [ "$DURATION" -gt 0 ] || die "--caps and --duration must be > 0"
[ "$CAPS" -le 1000 ] || die "--caps above 1000 is not what this script is for"
for tool in sipp python3 curl sqlite3 ss awk; do
    command -v "$tool" >/dev/null || die "$tool not found (Debian/Ubuntu: sip-tester, python3, curl, sqlite3, iproute2)"
done

ensure_switch_bin
[ -n "$OUT" ] || OUT=$here/out/$(date -u +%Y%m%dT%H%M%SZ)-transfer-$$
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

HOST=127.0.0.1
DOMAIN=xfer.example.com
TRANSFEROR=1002
TARGET=1003
TOKEN=$(random_token)
BUFF=4194304
CALLS=$((CAPS * DURATION))
# The caller talks to 1002 for BEFORE_MS, then (after the transfer's few ms) to 1003.
CALLER_MS=$((BEFORE_MS + 500 + AFTER_MS))

# "n p50 p99 max" (nearest rank) of the rtd named $2 in SIPp rtt file $1.
rtd_stats() {
    if [ -z "$1" ] || [ ! -s "$1" ]; then echo "0 NA NA NA"; return; fi
    awk -F';' -v name="$2" 'NR>1 && $3==name { print $2+0 }' "$1" | sort -g | awk '{ v[NR]=$1 }
        function rank(p,  r) { r=int(p*NR); if (r<p*NR) r++; if (r<1) r=1; return v[r] }
        END { if (NR==0) print "0 NA NA NA"; else printf "%d %s %s %s\n", NR, rank(0.50), rank(0.99), v[NR] }'
}
delta() { # metric file_before file_after label...: after - before (NA if never seen)
    local m=$1 b=$2 a=$3 x y; shift 3
    x=$(metric_sum "$m" "$b" "$@"); y=$(metric_sum "$m" "$a" "$@")
    [ "$y" = NA ] && { echo NA; return; }
    [ "$x" = NA ] && x=0
    echo $((y - x))
}

pick_port SIP_PORT; pick_port HTTP_PORT
pick_port XFR_PORT; pick_port XFR_CP
pick_port TGT_PORT; pick_port TGT_CP
pick_port REG_PORT; pick_port REG_CP
pick_port CALLER_PORT; pick_port CALLER_CP

# ---------------------------------------------------------------- data and config
python3 - "$DOMAIN" "$OUT" "$TRANSFEROR" "$TARGET" <<'PY'
import hashlib, sys
domain, out, users = sys.argv[1], sys.argv[2], sys.argv[3:]
with open(f"{out}/users.csv", "w") as u:
    u.write("# username,ha1_md5,ha1_sha256\n")
    for user in users:
        pw = f"pw-{user}-secret"
        a1 = f"{user}:{domain}:{pw}".encode()
        u.write(f"{user},{hashlib.md5(a1).hexdigest()},{hashlib.sha256(a1).hexdigest()}\n")
        # One SIPp injection file per phone (username;[authentication ...];domain), as
        # register.sh writes them: SIPp does not expand fields inside [authentication].
        with open(f"{out}/sipp_{user}.csv", "w") as s:
            s.write("SEQUENTIAL\n")
            s.write(f"{user};[authentication username={user} password={pw}];{domain}\n")
PY
MAX_CALLS=$(( CAPS * (CALLER_MS / 1000 + 60) * 2 )); [ "$MAX_CALLS" -ge 20000 ] || MAX_CALLS=20000
ADM_CPS=$(( CAPS * 4 )); [ "$ADM_CPS" -ge 5000 ] || ADM_CPS=5000
cat > "$OUT/switchyard.toml" <<CFG
# Written by load/transfer.sh.
data_dir = "$OUT/data"
[sip]
listen = ["udp:$HOST:$SIP_PORT"]
[http]
listen = "$HOST:$HTTP_PORT"
token = "$TOKEN"
[admission]
max_calls = $MAX_CALLS
cps = $ADM_CPS
per_source_cps = 0
[media]
# A transfer needs the call's media anchored (the target gets the switch's own offer).
anchor_all = true
bind = "$HOST"
# SIPp sends no RTP in this run: no call may end for silent media.
rtp_timeout_secs = 0
# SIPp runs on loopback: its addresses are trusted peers (nothing is by default;
# untrusted callers reach only tenants' numbers and users, never a route).
[security]
trusted = ["127.0.0.0/8"]
# SIPp sends far above a phone's rate from loopback: never banned (README "The edge").
[security.flood]
exempt = ["127.0.0.0/8"]
[registrar]
max_auth_failures = 1000000
# SIPp 3.6 answers only the first challenge and knows only MD5.
algorithms = ["MD5"]
max_expires_secs = 7200
[[tenants]]
id = "xfer"
domain = "$DOMAIN"
users_csv = "$OUT/users.csv"
CFG
"$BIN" check-config "$OUT/switchyard.toml" > "$OUT/check-config.out" 2>&1 \
    || { cat "$OUT/check-config.out" >&2; die "switchyard check-config refused $OUT/switchyard.toml"; }

: > "$OUT/report.txt"
say "== switchyard blind-transfer load ($(date -u +%FT%TZ), $(nproc) cores)"
say "offered                $CALLS calls to $TRANSFEROR@$DOMAIN at $CAPS CAPS for $DURATION s; REFER to $TARGET after ${BEFORE_MS} ms, caller's BYE after ${CALLER_MS} ms"
say "switch                 udp:$HOST:$SIP_PORT http:$HOST:$HTTP_PORT ($BIN); media anchored; 127.0.0.0/8 trusted"
say "phones                 $TRANSFEROR SIPp udp:$HOST:$XFR_PORT, $TARGET SIPp udp:$HOST:$TGT_PORT (registered from udp:$HOST:$REG_PORT)"

# ---------------------------------------------------------------- switch
start_switch

# ---------------------------------------------------------------- phones (UAS)
# -recv_timeout bounds a call that never gets its ACK, NOTIFY or BYE.
start_phone() { # name scenario port cp -d extra...
    local name=$1 sf=$2 port=$3 cp=$4 d=$5; shift 5
    (
        cd "$OUT"
        exec sipp -sf "$sf" -i "$HOST" -p "$port" -cp "$cp" -d "$d" "$@" \
            -nostdin -buff_size "$BUFF" -max_socket 50000 \
            -recv_timeout $(( CALLER_MS + 60000 )) \
            -trace_stat -stf "$OUT/${name}_stat.csv" -fd 1 \
            -trace_rtt -rtt_freq 1 \
            -trace_err -error_file "$OUT/${name}_errors.log" \
            -trace_screen -screen_file "$OUT/${name}_screen.log"
    ) > "$OUT/$name.out" 2>&1 < /dev/null &
    PHONE_PID=$!
    CHILD_PIDS+=("$PHONE_PID")
    wait_udp_bound "$port" "$PHONE_PID" "SIPp phone $name"
}
start_phone transferor "$scen/xfer_transferor.xml" "$XFR_PORT" "$XFR_CP" "$BEFORE_MS" \
    -key target "$TARGET" -key domain "$DOMAIN"
XFR_PID=$PHONE_PID
start_phone target "$scen/uas.xml" "$TGT_PORT" "$TGT_CP" 0
TGT_PID=$PHONE_PID

# ---------------------------------------------------------------- registrations
VERDICT=PASS
REASONS=()
# SIPp's digest uri is sip:<remote ip>:<port> unless -auth_uri (without "sip:") says otherwise; the switch
# wants the Request-URI there (sip:<domain> in cc_register.xml).
register() { # user contact_port
    (cd "$OUT" && timeout 30 sipp "$HOST:$SIP_PORT" -sf "$scen/cc_register.xml" \
        -inf "$OUT/sipp_$1.csv" -key agent_port "$2" -m 1 -r 1 -auth_uri "$DOMAIN" \
        -i "$HOST" -p "$REG_PORT" -cp "$REG_CP" -nostdin \
        -trace_stat -stf "$OUT/register_$1_stat.csv" -fd 1 \
        -trace_err -error_file "$OUT/register_$1_errors.log" \
        > "$OUT/register_$1.out" 2>&1 < /dev/null) || true
    [ "$(stat_col "$OUT/register_$1_stat.csv" "SuccessfulCall(C)")" = 1 ]
}
register "$TRANSFEROR" "$XFR_PORT" || { say "result                 FAIL: $TRANSFEROR did not register (see $OUT/register_${TRANSFEROR}_errors.log)"; exit 1; }
register "$TARGET" "$TGT_PORT" || { say "result                 FAIL: $TARGET did not register (see $OUT/register_${TARGET}_errors.log)"; exit 1; }
BINDINGS=NA
for _ in $(seq 1 50); do
    scrape "$OUT/metrics_reg.txt" && BINDINGS=$(metric_sum switchyard_registrar_bindings "$OUT/metrics_reg.txt" 'tenant="xfer"')
    [ "$BINDINGS" = 2 ] && break
    sleep 0.2
done
[ "$BINDINGS" = 2 ] || { say "result                 FAIL: bindings $BINDINGS after the registrations, not 2"; exit 1; }
say "registrations          $TRANSFEROR and $TARGET with digest (MD5): bindings $BINDINGS"

# ---------------------------------------------------------------- callers
scrape "$OUT/metrics_before.txt" || die "GET /metrics failed before the calls"
CPU_BEFORE=$(cpu_ticks "$SW")
RSS_BEFORE_KB=$(status_kb "$SW" VmRSS)
T_START=$(now_s)
(
    cd "$OUT"
    exec sipp "$HOST:$SIP_PORT" -sf "$scen/xfer_caller.xml" -s "$TRANSFEROR" -key domain "$DOMAIN" \
        -i "$HOST" -p "$CALLER_PORT" -cp "$CALLER_CP" -d "$CALLER_MS" \
        -m "$CALLS" -l "$CALLS" -r "$CAPS" -rp 1000 -nostdin -buff_size "$BUFF" -max_socket 50000 \
        -recv_timeout 30000 \
        -trace_stat -stf "$OUT/caller_stat.csv" -fd 1 \
        -trace_rtt -rtt_freq 1 \
        -trace_err -error_file "$OUT/caller_errors.log" \
        -trace_screen -screen_file "$OUT/caller_screen.log"
) > "$OUT/caller.out" 2>&1 < /dev/null &
CALLER_PID=$!
CHILD_PIDS+=("$CALLER_PID")

SAMPLES=$OUT/switch_samples.csv
echo "t_s;cpu_ticks;rss_kb;calls_active" > "$SAMPLES"
HARD_TIMEOUT_S=$(( DURATION + CALLER_MS / 1000 + 90 ))
watch_caller "$CALLER_PID"
# Both phones keep each call 2 s after its last message (retransmissions).
sleep 3
sipp_stop "$XFR_PID"
sipp_stop "$TGT_PID"

SW_CPU_S=NA SW_HWM_KB=NA SW_RSS_KB=NA
if kill -0 "$SW" 2>/dev/null; then
    CPU_AFTER=$(cpu_ticks "$SW")
    SW_CPU_S=$(ticks_s $((CPU_AFTER - CPU_BEFORE)))
    SW_HWM_KB=$(status_kb "$SW" VmHWM)
    SW_RSS_KB=$(status_kb "$SW" VmRSS)
    scrape "$OUT/metrics_after.txt" || true
    # SIGTERM: a clean stop, so every CDR is in the database before it is read.
    kill -TERM "$SW" 2>/dev/null || true
    for _ in $(seq 1 150); do kill -0 "$SW" 2>/dev/null || break; sleep 0.2; done
    if kill -0 "$SW" 2>/dev/null; then
        echo "transfer.sh: WARNING: switch still running 30 s after SIGTERM, killing it" >&2
        kill -KILL "$SW" 2>/dev/null || true
    fi
    wait "$SW" 2>/dev/null || true
fi

# ---------------------------------------------------------------- CDR check
# Every call: one CDR to 1002, answered, hung up by the caller, and its chain shows the
# transfer to 1003. The chain is read from the best place this build's store has: the
# `transfers` column (`blind:phone>user:1003`), the `cdr_legs` table (callee 1002 left
# "transferred", a `transfer` leg joined), and always the CDR's target (`user:1003`).
DB=$OUT/data/switchyard.db
CDR_TOTAL=NA CDR_OK=NA CDR_BAD=NA CHAIN_SRC="" CDR_NOTE=""
sq() { sqlite3 -batch -noheader "$DB" "$1" 2>>"$OUT/sqlite.err"; }
if [ -s "$DB" ]; then
    cols=" $(sq "SELECT name FROM pragma_table_info('cdrs')" | tr '\n' ' ')"
    has() { case "$cols" in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
    cond="c.callee = '$TRANSFEROR' AND c.answer_at IS NOT NULL AND c.final_status = 200
          AND c.hangup_by = 'caller' AND c.target = 'user:$TARGET'"
    CHAIN_SRC="target user:$TARGET"
    if has transfers; then
        cond="$cond AND c.transfers = 'blind:phone>user:$TARGET'"
        CHAIN_SRC="$CHAIN_SRC, transfers blind:phone>user:$TARGET"
    else
        CDR_NOTE="no cdrs.transfers column in this build"
    fi
    if [ "$(sq "SELECT COUNT(*) FROM sqlite_master WHERE type='table' AND name='cdr_legs'")" = 1 ]; then
        lcols=" $(sq "SELECT name FROM pragma_table_info('cdr_legs')" | tr '\n' ' ')"
        fk=""
        for k in cdr_id cdr; do case "$lcols" in *" $k "*) fk=$k; break ;; esac; done
        if [ -n "$fk" ]; then
            cond="$cond AND EXISTS (SELECT 1 FROM cdr_legs l WHERE l.$fk = c.id AND l.role = 'callee' AND l.end_reason = 'transferred')
                  AND EXISTS (SELECT 1 FROM cdr_legs l WHERE l.$fk = c.id AND l.role = 'transfer' AND l.answer_at IS NOT NULL)"
            CHAIN_SRC="$CHAIN_SRC, cdr_legs callee transferred + transfer leg answered"
        else
            CDR_NOTE="${CDR_NOTE:+$CDR_NOTE; }cdr_legs has no cdr_id column:$lcols"
        fi
    else
        CDR_NOTE="${CDR_NOTE:+$CDR_NOTE; }no cdr_legs table in this build"
    fi
    CDR_TOTAL=$(sq "SELECT COUNT(*) FROM cdrs")
    CDR_OK=$(sq "SELECT COUNT(*) FROM cdrs c WHERE $cond")
    CDR_BAD=$(sq "SELECT COUNT(*) FROM cdrs c WHERE NOT ($cond)")
    [ -n "$CDR_OK" ] || CDR_OK=NA
    [ -n "$CDR_BAD" ] || CDR_BAD=NA
    # A sample row and the rows that do not show the chain, for the reader.
    sq "SELECT * FROM cdrs LIMIT 1" > "$OUT/cdr_sample.txt" || true
    [ "$CDR_BAD" = 0 ] || sq "SELECT id, a_call_id, callee, target, final_status, hangup_by, disconnect_reason FROM cdrs c WHERE NOT ($cond) LIMIT 20" > "$OUT/cdr_bad.txt"
    REASONS_SQL=$(sq "SELECT disconnect_reason || ' x' || COUNT(*) FROM cdrs GROUP BY disconnect_reason" | paste -sd, -)
else
    CDR_NOTE="no database at $DB"
    REASONS_SQL=NA
fi

# ---------------------------------------------------------------- report
CS=$OUT/caller_stat.csv XS=$OUT/transferor_stat.csv TS=$OUT/target_stat.csv
CREATED=$(stat_col "$CS" "OutgoingCall(C)")
SUCCESS=$(stat_col "$CS" "SuccessfulCall(C)")
FAILED=$(stat_col "$CS" "FailedCall(C)")
C_UNEXP=$(stat_col "$CS" "FailedUnexpectedMessage(C)")
C_TIMEOUT=$(stat_col "$CS" "FailedTimeoutOnRecv(C)")
C_RETRANS=$(stat_col "$CS" "FailedMaxUDPRetrans(C)")
C_PEAK=$(stat_col "$CS" CurrentCall max)
X_IN=$(stat_col "$XS" "IncomingCall(C)")
X_OK=$(stat_col "$XS" "SuccessfulCall(C)")
X_FAILED=$(stat_col "$XS" "FailedCall(C)")
X_RETR=$(stat_col "$XS" "Retransmissions(C)")
T_IN=$(stat_col "$TS" "IncomingCall(C)")
T_OK=$(stat_col "$TS" "SuccessfulCall(C)")
T_FAILED=$(stat_col "$TS" "FailedCall(C)")
C_RTT=$(ls -1 "$OUT"/xfer_caller_*_rtt.csv 2>/dev/null | head -1 || true)
X_RTT=$(ls -1 "$OUT"/xfer_transferor_*_rtt.csv 2>/dev/null | head -1 || true)
read -r ANS_N ANS_P50 ANS_P99 ANS_MAX <<< "$(rtd_stats "$C_RTT" answer)"
read -r BYE_N BYE_P50 BYE_P99 BYE_MAX <<< "$(rtd_stats "$C_RTT" bye)"
read -r REF_N REF_P50 REF_P99 REF_MAX <<< "$(rtd_stats "$X_RTT" refer)"
read -r XF_N XF_P50 XF_P99 XF_MAX <<< "$(rtd_stats "$X_RTT" transfer)"
PEAK_SW=$(awk -F';' 'NR>1 && $4!="NA" && $4!="" { if (!s || $4+0>m) m=$4+0; s=1 } END { print s ? m : "NA" }' "$SAMPLES")
MB=$OUT/metrics_before.txt MA=$OUT/metrics_after.txt
XFER_DONE=NA XFER_FAILED=NA XFER_REFUSED=NA
if [ -s "$MA" ]; then
    XFER_DONE=$(delta switchyard_transfers_total "$MB" "$MA" 'outcome="completed"')
    XFER_FAILED=$(delta switchyard_transfers_total "$MB" "$MA" 'outcome="failed"')
    XFER_REFUSED=$(delta switchyard_transfers_refused_total "$MB" "$MA")
    # Counters never incremented have no series: 0, not NA.
    [ "$XFER_FAILED" != NA ] || XFER_FAILED=0
    [ "$XFER_REFUSED" != NA ] || XFER_REFUSED=0
fi

[ "$FAILED" = 0 ] || fail "caller failed calls: $FAILED"
[ "$X_FAILED" = 0 ] || fail "transferor (1002) failed calls: $X_FAILED"
[ "$T_FAILED" = 0 ] || fail "target (1003) failed calls: $T_FAILED"
[ "$SUCCESS" = "$CREATED" ] && [ "$CREATED" = "$CALLS" ] || fail "caller successful $SUCCESS of $CREATED created ($CALLS offered)"
[ "$X_OK" = "$CALLS" ] || fail "transferor completed $X_OK transfers of $CALLS"
[ "$T_OK" = "$CALLS" ] || fail "target answered and finished $T_OK calls of $CALLS"
[ "$XFER_DONE" = "$CALLS" ] || fail "switchyard_transfers_total{outcome=\"completed\"} +$XFER_DONE, not $CALLS"
[ "$XFER_REFUSED" = 0 ] || fail "transfers refused: $XFER_REFUSED"
[ "$CDR_TOTAL" = "$CALLS" ] || fail "CDRs: $CDR_TOTAL rows for $CALLS calls"
[ "$CDR_OK" = "$CALLS" ] && [ "$CDR_BAD" = 0 ] || fail "CDRs showing the transfer chain: $CDR_OK of $CALLS ($CDR_BAD do not; $OUT/cdr_bad.txt)"
[ -z "$TIMED_OUT" ] || fail "hard timeout (${HARD_TIMEOUT_S} s) reached"
[ -z "$SW_DIED" ] || fail "switch died during the run (log: $OUT/switch.log)"
[ "$CA_AFTER" = 0 ] || fail "switchyard_calls_active $CA_AFTER after the run, not 0"

{
    echo "caller (SIPp)          created $CREATED, successful $SUCCESS, failed $FAILED (unexpected msg $C_UNEXP, recv timeout $C_TIMEOUT, max retrans $C_RETRANS); peak concurrent $C_PEAK; wall $(elapsed "$T_START" "$T_END") s"
    echo "transferor $TRANSFEROR (SIPp)   incoming $X_IN, transferred and let go $X_OK, failed $X_FAILED; retransmissions $X_RETR"
    echo "target $TARGET (SIPp)       incoming $T_IN, answered and hung up by the caller $T_OK, failed $T_FAILED"
    echo "INVITE->200 ms         p50 $ANS_P50  p99 $ANS_P99  max $ANS_MAX  (caller, n=$ANS_N)"
    echo "REFER->202 ms          p50 $REF_P50  p99 $REF_P99  max $REF_MAX  (transferor, n=$REF_N)"
    echo "202->NOTIFY 200 ms     p50 $XF_P50  p99 $XF_P99  max $XF_MAX  (transferor: the target rang and answered, n=$XF_N)"
    echo "BYE->200 ms            p50 $BYE_P50  p99 $BYE_P99  max $BYE_MAX  (caller's BYE answered by the target through the switch, n=$BYE_N)"
    echo "(SIPp times are multiples of the kernel tick, 4 ms at HZ=250: see README \"The report\")"
    echo "switch transfers       completed +$XFER_DONE, failed +$XFER_FAILED, refused +$XFER_REFUSED (switchyard_transfers_total, switchyard_transfers_refused_total)"
    echo "switch calls_active    peak $PEAK_SW (1 s samples), after the run $CA_AFTER"
    echo "switch CPU             $SW_CPU_S s during the calls ($(awk -v s="$SW_CPU_S" -v n="$CREATED" 'BEGIN { if (s=="NA" || n=="NA" || n+0==0) print "NA"; else printf "%.0f", s*1e6/n }') us per transferred call: 3 dialogs, REFER, 2 NOTIFYs, anchored media)"
    echo "switch memory          VmHWM $(kib_mib "$SW_HWM_KB"), VmRSS before calls $(kib_mib "$RSS_BEFORE_KB"), after $(kib_mib "$SW_RSS_KB")"
    echo "CDRs                   $CDR_TOTAL rows; showing the chain ($CHAIN_SRC): $CDR_OK, not: $CDR_BAD; end reasons: $REASONS_SQL${CDR_NOTE:+ ($CDR_NOTE)}"
    echo "switch log             $(log_counts)"
    [ "$BUILD_SEEN" = 0 ] || echo "WARNING                rustc/cargo ran during the run: CPU and latency figures are disturbed"
    verdict_line
    echo "files                  $OUT"
} | tee -a "$OUT/report.txt"

if [ "$VERDICT" != PASS ]; then
    for f in "$OUT/caller_errors.log" "$OUT/transferor_errors.log" "$OUT/target_errors.log"; do
        [ -s "$f" ] || continue
        echo "--- first errors in $f ---" >&2
        head -c 3000 "$f" >&2
        echo >&2
    done
    [ -s "$OUT/cdr_bad.txt" ] && { echo "--- CDRs without the chain ---" >&2; head -20 "$OUT/cdr_bad.txt" >&2; }
    grep -E ' (WARN|ERROR) ' "$OUT/switch.log" | head -20 | sed 's/^/switch.log: /' >&2 || true
    exit 1
fi
exit 0
