#!/usr/bin/env bash
# Three-way conference load (issue 18): SIPp callers dial tenant user 1002; 1002's phone (a
# SIPp UAS registered with digest) answers; the script adds 1003 to each call through the
# API (`POST /calls/{id}/conference`); 1003's phone (another registered SIPp UAS) answers;
# all three send G.711 A-law RTP (rtp_stream) and the switch mixes each call's three legs on
# its relay threads. After the hold every call is released through the API (BYE to all
# three). Prints a report; exits non-zero when a call failed, when not every call became a
# three-way, or when the mixer lost 0.1 % or more of its input frames in the steady window.
#
#   load/conference.sh [--conferences 300] [--rate 20] [--hold 30] [--relay-threads 2]
#                      [--switch-bin PATH] [--out DIR] [--quick]
#
#   --conferences N   three-way calls to reach and hold together (3 N mixed streams)
#   --rate R          caller attempts per second while ramping up
#   --hold S          seconds all conferences are up together (the steady window)
#   --quick           CI size: 5 conferences at 5/s, 5 s hold (options after it win)
#
# Figures: the steady window's deltas of switchyard_mixer_frames_total (mixed: frames made
# for a participant, 50/s per stream; lost: input frames missing at their turn; late:
# packets after their frame was played), switchyard_mixer_cpu_microseconds_total (time the
# relay threads spent mixing) and the switch's CPU, per mixed stream-second. Loss = lost /
# mixed (each participant's input is one frame per tick, as its output is).
# Exit status: 0 PASS, 1 FAIL, 2 bad usage or a setup failure.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
# shellcheck source=lib/common.sh
. "$here/lib/common.sh"
scen=$here/scenarios

CONFS=300 RATE=20 HOLD=30 RELAY_THREADS=2
BIN="" OUT=""
while [ $# -gt 0 ]; do
    case "$1" in
        --conferences) CONFS=${2:?--conferences needs a value}; shift 2 ;;
        --rate) RATE=${2:?--rate needs a value}; shift 2 ;;
        --hold) HOLD=${2:?--hold needs a value}; shift 2 ;;
        --relay-threads) RELAY_THREADS=${2:?--relay-threads needs a value}; shift 2 ;;
        --switch-bin) BIN=${2:?--switch-bin needs a value}; shift 2 ;;
        --out) OUT=${2:?--out needs a value}; shift 2 ;;
        --quick) CONFS=5 RATE=5 HOLD=5; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "conference.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
    esac
done
for v in CONFS RATE HOLD RELAY_THREADS; do
    [[ "${!v}" =~ ^[0-9]+$ ]] && [ "${!v}" -gt 0 ] || die "--$(echo "$v" | tr 'A-Z_' 'a-z-') must be a whole number > 0"
done
[ "$CONFS" -le 2000 ] || die "--conferences above 2000 is not what this script is for"
for tool in sipp python3 curl sqlite3 ss awk; do
    command -v "$tool" >/dev/null || die "$tool not found (Debian/Ubuntu: sip-tester, python3, curl, sqlite3, iproute2)"
done
PCAP=/usr/share/sip-tester/g711a.pcap
[ -r "$PCAP" ] || die "$PCAP missing (it ships with sip-tester)"
case "$(sipp -v 2>&1 || true)" in *RTPSTREAM*) ;; *) die "this sipp has no RTPSTREAM support (sipp -v)" ;; esac

ensure_switch_bin
[ -n "$OUT" ] || OUT=$here/out/$(date -u +%Y%m%dT%H%M%SZ)-conference-$$
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

HOST=127.0.0.1
DOMAIN=conf.example.com
AGENT=1002
THIRD=1003
TOKEN=$(random_token)
BUFF=4194304
RAMP_S=$(( (CONFS + RATE - 1) / RATE ))

# SIPp's SIP and media ports below the switch's RTP range (40000-59999 here).
pick_port SIP_PORT; pick_port HTTP_PORT
pick_port AG_PORT; pick_port AG_CP; pick_port AG_MP
pick_port TH_PORT; pick_port TH_CP; pick_port TH_MP
pick_port REG_PORT; pick_port REG_CP
pick_port CALLER_PORT; pick_port CALLER_CP; pick_port CALLER_MP

# ---------------------------------------------------------------- data and config
# The RTP payloads of g711a.pcap (A-law), raw, where the scenarios' rtp_stream finds them.
python3 "$here/lib/alaw_from_pcap.py" "$PCAP" "$OUT/media_audio.al" \
    || die "could not extract the A-law audio from $PCAP"
python3 - "$DOMAIN" "$OUT" "$AGENT" "$THIRD" <<'PY'
import hashlib, sys
domain, out, users = sys.argv[1], sys.argv[2], sys.argv[3:]
with open(f"{out}/users.csv", "w") as u:
    u.write("# username,ha1_md5,ha1_sha256\n")
    for user in users:
        pw = f"pw-{user}-secret"
        a1 = f"{user}:{domain}:{pw}".encode()
        u.write(f"{user},{hashlib.md5(a1).hexdigest()},{hashlib.sha256(a1).hexdigest()}\n")
        with open(f"{out}/sipp_{user}.csv", "w") as s:
            s.write("SEQUENTIAL\n")
            s.write(f"{user};[authentication username={user} password={pw}];{domain}\n")
PY
cat > "$OUT/switchyard.toml" <<CFG
# Written by load/conference.sh.
data_dir = "$OUT/data"
[sip]
listen = ["udp:$HOST:$SIP_PORT"]
[http]
listen = "$HOST:$HTTP_PORT"
token = "$TOKEN"
[admission]
max_calls = 20000
cps = 5000
per_source_cps = 0
[media]
anchor_all = true
bind = "$HOST"
rtp_ports = "40000-59999"
relay_threads = $RELAY_THREADS
[security]
trusted = ["127.0.0.0/8"]
[security.flood]
exempt = ["127.0.0.0/8"]
[registrar]
max_auth_failures = 1000000
algorithms = ["MD5"]
max_expires_secs = 7200
[[tenants]]
id = "conf"
domain = "$DOMAIN"
users_csv = "$OUT/users.csv"
CFG
"$BIN" check-config "$OUT/switchyard.toml" > "$OUT/check-config.out" 2>&1 \
    || { cat "$OUT/check-config.out" >&2; die "switchyard check-config refused $OUT/switchyard.toml"; }

: > "$OUT/report.txt"
say "== switchyard three-way conference load ($(date -u +%FT%TZ), $(nproc) cores)"
say "offered                $CONFS calls to $AGENT@$DOMAIN at $RATE/s, each made a three-way with $THIRD through the API, held ${HOLD} s together"
say "switch                 udp:$HOST:$SIP_PORT http:$HOST:$HTTP_PORT ($BIN); media anchored; relay_threads $RELAY_THREADS"

start_switch

# ---------------------------------------------------------------- phones and registrations
start_phone() { # name port cp mp
    local name=$1 port=$2 cp=$3 mp=$4
    (
        cd "$OUT"
        exec sipp -sf "$scen/conf_phone.xml" -i "$HOST" -p "$port" -cp "$cp" -mp "$mp" \
            -nostdin -buff_size "$BUFF" -max_socket 50000 \
            -trace_stat -stf "$OUT/${name}_stat.csv" -fd 1 \
            -trace_err -error_file "$OUT/${name}_errors.log"
    ) > "$OUT/$name.out" 2>&1 < /dev/null &
    PHONE_PID=$!
    CHILD_PIDS+=("$PHONE_PID")
    wait_udp_bound "$port" "$PHONE_PID" "SIPp phone $name"
}
start_phone agent "$AG_PORT" "$AG_CP" "$AG_MP"; AG_PID=$PHONE_PID
start_phone third "$TH_PORT" "$TH_CP" "$TH_MP"; TH_PID=$PHONE_PID

VERDICT=PASS
REASONS=()
register() { # user contact_port
    (cd "$OUT" && timeout 30 sipp "$HOST:$SIP_PORT" -sf "$scen/cc_register.xml" \
        -inf "$OUT/sipp_$1.csv" -key agent_port "$2" -m 1 -r 1 -auth_uri "$DOMAIN" \
        -i "$HOST" -p "$REG_PORT" -cp "$REG_CP" -nostdin \
        -trace_stat -stf "$OUT/register_$1_stat.csv" -fd 1 \
        -trace_err -error_file "$OUT/register_$1_errors.log" \
        > "$OUT/register_$1.out" 2>&1 < /dev/null) || true
    [ "$(stat_col "$OUT/register_$1_stat.csv" "SuccessfulCall(C)")" = 1 ]
}
register "$AGENT" "$AG_PORT" || { say "result                 FAIL: $AGENT did not register"; exit 1; }
register "$THIRD" "$TH_PORT" || { say "result                 FAIL: $THIRD did not register"; exit 1; }

# ---------------------------------------------------------------- callers
T_START=$(now_s)
(
    cd "$OUT"
    exec sipp "$HOST:$SIP_PORT" -sf "$scen/conf_caller.xml" -s "$AGENT" -key domain "$DOMAIN" \
        -i "$HOST" -p "$CALLER_PORT" -cp "$CALLER_CP" -mp "$CALLER_MP" \
        -m "$CONFS" -l "$CONFS" -r "$RATE" -rp 1000 -nostdin -buff_size "$BUFF" -max_socket 50000 \
        -trace_stat -stf "$OUT/caller_stat.csv" -fd 1 \
        -trace_err -error_file "$OUT/caller_errors.log"
) > "$OUT/caller.out" 2>&1 < /dev/null &
CALLER_PID=$!
CHILD_PIDS+=("$CALLER_PID")

# The calls of the tenant in progress: "call_id phase kind up" per line.
calls_now() {
    api_get "/calls?tenant=conf&limit=10000" | python3 -c '
import json, sys
for c in json.load(sys.stdin)["calls"]:
    k = c.get("consult") or {}
    print(c["call_id"], c["phase"], k.get("kind", "-"), "up" if k.get("up") else "-")' 2>/dev/null || true
}
# Every connected call without a third party gets one, until all are three-ways.
DEADLINE=$(( $(date +%s) + RAMP_S + 60 ))
UP=0
declare -A ASKED=()
while [ "$(date +%s)" -lt "$DEADLINE" ]; do
    UP=0
    while read -r cid phase kind up; do
        [ -n "$cid" ] || continue
        if [ "$kind" = conference ] && [ "$up" = up ]; then UP=$((UP + 1)); continue; fi
        if [ "$phase" = confirmed ] && [ "$kind" = - ] && [ -z "${ASKED[$cid]:-}" ]; then
            ASKED[$cid]=1
            enc=$(python3 -c 'import sys, urllib.parse; print(urllib.parse.quote(sys.argv[1], safe=""))' "$cid")
            curl -s --max-time 5 -o /dev/null -H "Authorization: Bearer $TOKEN" \
                -X POST "http://$HOST:$HTTP_PORT/calls/$enc/conference" \
                --data '{"target":"1003"}' || true
        fi
    done < <(calls_now)
    [ "$UP" -ge "$CONFS" ] && break
    sleep 0.5
done
say "conferences up         $UP of $CONFS ($(elapsed "$T_START" "$(now_s)") s after the first call)"
[ "$UP" = "$CONFS" ] || fail "only $UP of $CONFS calls became three-ways"

# ---------------------------------------------------------------- steady window
sleep 2
scrape "$OUT/metrics_w0.txt" || die "GET /metrics failed"
CPU0=$(cpu_ticks "$SW"); W0=$(now_s)
BUILD_SEEN=0
for _ in $(seq 1 "$HOLD"); do
    if pgrep -x rustc >/dev/null || pgrep -x cargo >/dev/null; then BUILD_SEEN=1; fi
    sleep 1
done
scrape "$OUT/metrics_w1.txt" || die "GET /metrics failed"
CPU1=$(cpu_ticks "$SW"); W1=$(now_s)
RSS_KB=$(status_kb "$SW" VmRSS)
m() { # metric labels...: the window's delta (0 when never seen)
    local x y; x=$(metric_sum "$1" "$OUT/metrics_w0.txt" "${@:2}"); y=$(metric_sum "$1" "$OUT/metrics_w1.txt" "${@:2}")
    [ "$x" = NA ] && x=0; [ "$y" = NA ] && y=0
    echo $((y - x))
}
MIXED=$(m switchyard_mixer_frames_total 'kind="mixed"')
LOST=$(m switchyard_mixer_frames_total 'kind="lost"')
LATE=$(m switchyard_mixer_frames_total 'kind="late"')
OVERRUN=$(m switchyard_mixer_frames_total 'kind="overrun"')
MIX_US=$(m switchyard_mixer_cpu_microseconds_total)
PARTS=$(metric_sum switchyard_mixer_participants_active "$OUT/metrics_w1.txt")
MIXES=$(metric_sum switchyard_mixer_mixes_active "$OUT/metrics_w1.txt")
WIN_S=$(elapsed "$W0" "$W1")
SW_CPU_S=$(ticks_s $((CPU1 - CPU0)))

# ---------------------------------------------------------------- release
while read -r cid _ _ _; do
    [ -n "$cid" ] || continue
    enc=$(python3 -c 'import sys, urllib.parse; print(urllib.parse.quote(sys.argv[1], safe=""))' "$cid")
    curl -s --max-time 5 -o /dev/null -H "Authorization: Bearer $TOKEN" -X DELETE \
        "http://$HOST:$HTTP_PORT/calls/$enc" || true
done < <(calls_now)
for _ in $(seq 1 150); do kill -0 "$CALLER_PID" 2>/dev/null || break; sleep 0.2; done
sipp_stop "$CALLER_PID"
sleep 3
sipp_stop "$AG_PID"
sipp_stop "$TH_PID"
CA_AFTER=NA
for _ in $(seq 1 60); do
    scrape "$OUT/metrics_after.txt" && CA_AFTER=$(metric_sum switchyard_calls_active "$OUT/metrics_after.txt")
    [ "$CA_AFTER" = 0 ] && break
    sleep 0.5
done
MIXES_AFTER=$(metric_sum switchyard_mixer_mixes_active "$OUT/metrics_after.txt")
# Every CDR shows its three-way (the chain) and the third party's leg.
DB=$OUT/data/switchyard.db
CDR_TOTAL=NA CDR_OK=NA
if [ -s "$DB" ]; then
    sq() { sqlite3 -batch -noheader "$DB" "$1" 2>>"$OUT/sqlite.err"; }
    CDR_TOTAL=$(sq "SELECT COUNT(*) FROM cdrs")
    CDR_OK=$(sq "SELECT COUNT(*) FROM cdrs c WHERE c.transfers = 'conference:api>user:$THIRD'
        AND EXISTS (SELECT 1 FROM cdr_legs l WHERE l.cdr_id = c.id AND l.role = 'conference')")
fi

CS=$OUT/caller_stat.csv
CREATED=$(stat_col "$CS" "OutgoingCall(C)")
SUCCESS=$(stat_col "$CS" "SuccessfulCall(C)")
FAILED=$(stat_col "$CS" "FailedCall(C)")
A_FAILED=$(stat_col "$OUT/agent_stat.csv" "FailedCall(C)")
T_FAILED=$(stat_col "$OUT/third_stat.csv" "FailedCall(C)")
LOSS=$(awk -v l="$LOST" -v m="$MIXED" 'BEGIN { if (m+0 == 0) print "NA"; else printf "%.4f", 100*l/m }')
STREAM_S=$(awk -v m="$MIXED" 'BEGIN { printf "%.1f", m/50 }')
US_STREAM=$(awk -v s="$SW_CPU_S" -v ss="$STREAM_S" 'BEGIN { if (s=="NA" || ss+0==0) print "NA"; else printf "%.0f", s*1e6/ss }')
MIX_US_STREAM=$(awk -v u="$MIX_US" -v ss="$STREAM_S" 'BEGIN { if (ss+0==0) print "NA"; else printf "%.1f", u/ss }')

[ "$FAILED" = 0 ] || fail "caller failed calls: $FAILED"
[ "$A_FAILED" = 0 ] || fail "agent phone failed calls: $A_FAILED"
[ "$T_FAILED" = 0 ] || fail "third phone failed calls: $T_FAILED"
[ "$SUCCESS" = "$CONFS" ] || fail "caller successful $SUCCESS of $CONFS"
[ "$MIXED" -gt 0 ] || fail "no mixed frames in the window"
[ "$LOSS" != NA ] && awk -v l="$LOSS" 'BEGIN { exit !(l < 0.1) }' || fail "mixer loss $LOSS % (>= 0.1 %)"
[ "$CA_AFTER" = 0 ] || fail "switchyard_calls_active $CA_AFTER after the run, not 0"
[ "$MIXES_AFTER" = 0 ] || [ "$MIXES_AFTER" = NA ] || fail "switchyard_mixer_mixes_active $MIXES_AFTER after the run"
[ "$CDR_OK" = "$CONFS" ] && [ "$CDR_TOTAL" = "$CONFS" ] || fail "CDRs showing the three-way: $CDR_OK of $CDR_TOTAL rows ($CONFS calls)"

{
    echo "caller (SIPp)          created $CREATED, successful $SUCCESS, failed $FAILED; phones failed: agent $A_FAILED, third $T_FAILED"
    echo "window                 ${WIN_S} s with $MIXES mixes and $PARTS participants"
    echo "mixer frames           mixed $MIXED ($STREAM_S stream-seconds), lost $LOST, late $LATE, overrun $OVERRUN; loss $LOSS %"
    echo "switch CPU             $SW_CPU_S s in the window: $US_STREAM us per mixed stream-second (all of it: relay, mixing, signalling); mixing alone $MIX_US_STREAM us"
    echo "switch memory          VmRSS $(kib_mib "$RSS_KB")"
    echo "CDRs                   $CDR_TOTAL rows; with conference:api>user:$THIRD and a conference leg: $CDR_OK"
    echo "switch log             $(log_counts)"
    [ "$BUILD_SEEN" = 0 ] || echo "WARNING                rustc/cargo ran during the window: CPU figures are disturbed"
    verdict_line
    echo "files                  $OUT"
} | tee -a "$OUT/report.txt"
[ "$VERDICT" = PASS ] || exit 1
exit 0
