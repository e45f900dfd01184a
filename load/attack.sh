#!/usr/bin/env bash
# Legitimate calls under attack (issue 16): a SIPp caller on 127.0.0.1 (declared in
# `[security] trusted`) places calls at --caps through the switch to a SIPp callee while,
# from other loopback addresses standing in for internet hosts:
#   127.0.0.2  a second SIPp floods INVITEs (to 9..., a trunk prefix) at --flood-rate a second;
#   127.0.0.3  a scanner sends OPTIONS with User-Agent friendly-scanner;
#   127.0.0.4  a guesser sends REGISTERs for user 1001 with password guesses (a phone's UA).
# The switch runs with the shipped defences ([security.flood], [security.scanners]).
# Reported: failed legitimate calls (must be 0); when the flooder was banned after its first
# packet (must be within 2 s); whether the scanner and the guesser were answered or banned;
# the switch's CPU per banned packet: utime+stime from /proc/PID/stat divided by
# switchyard_security_dropped_total{reason="banned"} over the same window, (a) over the flood
# during the calls, less the calls' own CPU measured just before (noisy: the flood's share is
# a few per cent of the calls'), and (b) once the calls are over, over a second flood from the
# still-banned address, less the idle switch's CPU (the clean figure).
#
#   load/attack.sh [--quick] [--caps 200] [--flood-rate 5000] [--flood-secs 15]
#                  [--switch-bin PATH] [--out DIR]
#
# --quick: 12 s of calls with a 4 s flood (CI). Exits non-zero if a check fails.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
CAPS=200 FLOOD_RATE=5000 FLOOD_SECS=15 WARM_SECS=5 BASE_SECS=5 TAIL_SECS=5 ALONE_SECS=10 BIN=""
OUT="$here/out/$(date -u +%Y%m%dT%H%M%SZ)-attack-$$"
ARGS="$*"
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) FLOOD_SECS=4 WARM_SECS=3 BASE_SECS=3 TAIL_SECS=2 ALONE_SECS=3; shift ;;
        --caps) CAPS=$2; shift 2 ;;
        --flood-rate) FLOOD_RATE=$2; shift 2 ;;
        --flood-secs) FLOOD_SECS=$2; shift 2 ;;
        --switch-bin) BIN=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        -h|--help) sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "attack.sh: unknown option $1" >&2; exit 2 ;;
    esac
done
# shellcheck source=lib/common.sh
. "$here/lib/common.sh"
for t in sipp curl python3 ss; do command -v "$t" >/dev/null || die "$t not installed"; done
for n in "$CAPS" "$FLOOD_RATE" "$FLOOD_SECS"; do is_num "$n" && [ "$n" -gt 0 ] || die "rates and times must be positive whole numbers"; done
ensure_switch_bin
mkdir -p "$OUT"; OUT=$(cd "$OUT" && pwd)
HOST=127.0.0.1 FLOOD_IP=127.0.0.2 SCAN_IP=127.0.0.3 GUESS_IP=127.0.0.4
DOMAIN=acme.example.com
LEGIT_SECS=$((WARM_SECS + BASE_SECS + FLOOD_SECS + TAIL_SECS))
CALLS=$((CAPS * LEGIT_SECS))
VERDICT=PASS REASONS=()
pick_port SIP_PORT; pick_port HTTP_PORT; pick_port CALLEE_PORT; pick_port CALLEE_CP
pick_port CALLER_PORT; pick_port CALLER_CP; pick_port FLOOD_PORT; pick_port FLOOD_CP
pick_port FLOOD2_PORT; pick_port FLOOD2_CP
TOKEN=$(random_token)
BUFF=4194304

# CPU time of all of pid $1's threads in ns (/proc/PID/task/*/schedstat: exact, where
# /proc/PID/stat counts 10 ms ticks).
cpu_ns() { cat /proc/"$1"/task/*/schedstat 2>/dev/null | awk '{ s += $1 } END { printf "%.0f\n", s }'; }
ha1() { printf '%s' "$1:$DOMAIN:$2" | "$3" | cut -d' ' -f1; }
cat > "$OUT/switchyard.toml" <<CFG
# Written by load/attack.sh.
data_dir = "$OUT/data"
[sip]
listen = ["udp:$HOST:$SIP_PORT"]
[http]
listen = "$HOST:$HTTP_PORT"
token = "$TOKEN"
# The legitimate caller is a trusted peer; nothing else is. The flood and scanner defence
# runs with its shipped defaults.
[security]
trusted = ["$HOST"]
[admission]
max_calls = 20000
cps = $((CAPS * 4 > 1000 ? CAPS * 4 : 1000))
[registrar]
algorithms = ["MD5"]
[[tenants]]
id = "acme"
domain = "$DOMAIN"
[[tenants.users]]
username = "1001"
ha1_md5 = "$(ha1 1001 'not-four-digits-7' md5sum)"
ha1_sha256 = "$(ha1 1001 'not-four-digits-7' sha256sum)"
[[routes]]
prefix = ""
target = "sip:$HOST:$CALLEE_PORT"
CFG
"$BIN" check-config "$OUT/switchyard.toml" >/dev/null || die "config refused ($OUT/switchyard.toml)"

# The callee, then the switch.
(cd "$OUT" && exec sipp -sf "$here/scenarios/uas.xml" -i "$HOST" -p "$CALLEE_PORT" -cp "$CALLEE_CP" \
    -m "$CALLS" -nostdin -buff_size "$BUFF" -recv_timeout 30000 \
    -trace_stat -stf "$OUT/callee_stat.csv" -fd 1 -trace_err -error_file "$OUT/callee_errors.log") \
    > "$OUT/callee.out" 2>&1 < /dev/null &
CALLEE=$!; CHILD_PIDS+=("$CALLEE")
wait_udp_bound "$CALLEE_PORT" "$CALLEE" "SIPp callee"
start_switch
scrape "$OUT/m0.txt" || die "no /metrics"

say "== switchyard under attack ($(date -u +%FT%TZ); $(nproc) cores, shared with other builds)"
say "command         load/attack.sh $ARGS"
say "legitimate      $CALLS calls at $CAPS CAPS, 1 s each, from $HOST (trusted) for ${LEGIT_SECS} s"
say "flood           SIPp INVITEs at $FLOOD_RATE/s from $FLOOD_IP for ${FLOOD_SECS} s, from t=$((WARM_SECS + BASE_SECS)) s"
say "scanner/guesser OPTIONS (friendly-scanner) from $SCAN_IP, REGISTER guesses for 1001 from $GUESS_IP, during the flood"

T0=$(now_s)
(cd "$OUT" && exec sipp "$HOST:$SIP_PORT" -sf "$here/scenarios/uac.xml" -s 1000 -i "$HOST" \
    -p "$CALLER_PORT" -cp "$CALLER_CP" -m "$CALLS" -l "$CALLS" -r "$CAPS" -rp 1000 -d 1000 \
    -nostdin -buff_size "$BUFF" -recv_timeout 20000 \
    -trace_stat -stf "$OUT/caller_stat.csv" -fd 1 -trace_err -error_file "$OUT/caller_errors.log") \
    > "$OUT/caller.out" 2>&1 < /dev/null &
CALLER=$!; CHILD_PIDS+=("$CALLER")

sleep "$WARM_SECS"
# Baseline: the legitimate calls alone.
c0=$(cpu_ticks "$SW"); t0=$(now_s)
sleep "$BASE_SECS"
c1=$(cpu_ticks "$SW"); t1=$(now_s)
scrape "$OUT/m1.txt" || die "no /metrics"

# The attack.
FLOOD_START_MS=$(date +%s%3N)
(cd "$OUT" && exec sipp "$HOST:$SIP_PORT" -sf "$here/scenarios/flood_invite.xml" -i "$FLOOD_IP" \
    -p "$FLOOD_PORT" -cp "$FLOOD_CP" -r "$FLOOD_RATE" -rp 1000 -m $((FLOOD_RATE * FLOOD_SECS)) \
    -nostdin -buff_size "$BUFF" -trace_stat -stf "$OUT/flood_stat.csv" -fd 1) \
    > "$OUT/flood.out" 2>&1 < /dev/null &
FLOOD=$!; CHILD_PIDS+=("$FLOOD")
python3 "$here/lib/attackers.py" "$HOST" "$SIP_PORT" "$SCAN_IP" "$GUESS_IP" "$DOMAIN" 1001 "$FLOOD_SECS" \
    > "$OUT/attackers.json" 2> "$OUT/attackers.err" &
ATTACKERS=$!; CHILD_PIDS+=("$ATTACKERS")
c2=$(cpu_ticks "$SW"); t2=$(now_s)
# When the flooder is banned (polled: a bound on the exact figure below).
SEEN_BANNED_MS=NA
for _ in $(seq 1 $((FLOOD_SECS * 20))); do
    if api_get /security/bans | grep -q "\"source\":\"$FLOOD_IP\""; then
        SEEN_BANNED_MS=$(( $(date +%s%3N) - FLOOD_START_MS )); break
    fi
    kill -0 "$FLOOD" 2>/dev/null || break
    sleep 0.05
done
wait "$FLOOD" 2>/dev/null || true
c3=$(cpu_ticks "$SW"); t3=$(now_s)
scrape "$OUT/m2.txt" || die "no /metrics"
api_get /security/bans > "$OUT/bans.json" || echo '{}' > "$OUT/bans.json"
wait "$ATTACKERS" 2>/dev/null || true

# The rest of the legitimate calls.
for _ in $(seq 1 $((LEGIT_SECS + 60))); do kill -0 "$CALLER" 2>/dev/null || break; sleep 1; done
kill -0 "$CALLER" 2>/dev/null && { sipp_stop "$CALLER"; fail "legitimate caller did not finish"; }
wait "$CALLER" 2>/dev/null || true

# The banned flood alone: the calls are over (their last transactions drain first), the
# flooder is still banned; the idle switch's CPU, then a second flood's.
for _ in $(seq 1 100); do
    scrape "$OUT/m3.txt" || break
    [ "$(metric_sum switchyard_calls_active "$OUT/m3.txt")" = 0 ] && \
        [ "$(metric_sum switchyard_transactions_active "$OUT/m3.txt")" = 0 ] && break
    sleep 0.2
done
c4=$(cpu_ticks "$SW"); t4=$(now_s); n4=$(cpu_ns "$SW")
sleep 3
c5=$(cpu_ticks "$SW"); t5=$(now_s); n5=$(cpu_ns "$SW")
scrape "$OUT/m4.txt" || die "no /metrics"
(cd "$OUT" && exec sipp "$HOST:$SIP_PORT" -sf "$here/scenarios/flood_invite.xml" -i "$FLOOD_IP" \
    -p "$FLOOD2_PORT" -cp "$FLOOD2_CP" -r "$FLOOD_RATE" -rp 1000 -m $((FLOOD_RATE * ALONE_SECS)) \
    -nostdin -buff_size "$BUFF" -trace_stat -stf "$OUT/flood2_stat.csv" -fd 1) \
    > "$OUT/flood2.out" 2>&1 < /dev/null &
FLOOD2=$!; CHILD_PIDS+=("$FLOOD2")
c6=$(cpu_ticks "$SW"); t6=$(now_s); n6=$(cpu_ns "$SW")
wait "$FLOOD2" 2>/dev/null || true
sleep 0.2   # the last datagrams read
c7=$(cpu_ticks "$SW"); t7=$(now_s); n7=$(cpu_ns "$SW")
scrape "$OUT/m5.txt" || die "no /metrics"

# ---- figures
ok=$(stat_col "$OUT/caller_stat.csv" "SuccessfulCall(C)")
failed=$(stat_col "$OUT/caller_stat.csv" "FailedCall(C)")
flood_sent=$(stat_col "$OUT/flood_stat.csv" "TotalCallCreated")
flood_secs=$(elapsed "$t2" "$t3")
flood_rate=$(awk -v n="$flood_sent" -v s="$flood_secs" 'BEGIN { if (n=="NA"||s<=0) print "NA"; else printf "%.0f", n/s }')
dropped=$(( $(metric_sum switchyard_security_dropped_total "$OUT/m2.txt" 'reason="banned"' | sed 's/NA/0/') \
    - $(metric_sum switchyard_security_dropped_total "$OUT/m1.txt" 'reason="banned"' | sed 's/NA/0/') ))
refused=$(( $(metric_sum switchyard_security_refused_total "$OUT/m2.txt" | sed 's/NA/0/') \
    - $(metric_sum switchyard_security_refused_total "$OUT/m1.txt" | sed 's/NA/0/') ))
read -r ban_ms ban_reason ban_dropped < <(python3 - "$OUT/bans.json" "$FLOOD_IP" "$FLOOD_START_MS" <<'PY'
import json, sys
bans = json.load(open(sys.argv[1])).get("bans", [])
b = next((b for b in bans if b.get("source") == sys.argv[2]), None)
if b is None:
    print("NA none 0")
else:
    # A first offence is banned for ban_secs (60 by default): it began at until_ms - 60 s.
    start = b["until_ms"] - 60_000 * 2 ** (b.get("offences", 1) - 1)
    print(start - int(sys.argv[3]), b.get("reason", "?"), b.get("dropped", 0))
PY
)
base_rate=$(awk -v c=$((c1 - c0)) -v a="$t0" -v b="$t1" 'BEGIN { printf "%.4f", c/(b-a) }')
flood_ticks=$((c3 - c2))
net_ticks=$(awk -v f="$flood_ticks" -v r="$base_rate" -v a="$t2" -v b="$t3" 'BEGIN { n=f-r*(b-a); printf "%.1f", (n>0?n:0) }')
per_pkt() { awk -v t="$1" -v d="${2:-$dropped}" -v hz="$HZ" 'BEGIN { if (d<=0) print "NA"; else printf "%.2f", t/hz/d*1e6 }'; }
dropped2=$(( $(metric_sum switchyard_security_dropped_total "$OUT/m5.txt" 'reason="banned"' | sed 's/NA/0/') \
    - $(metric_sum switchyard_security_dropped_total "$OUT/m4.txt" 'reason="banned"' | sed 's/NA/0/') ))
flood2_sent=$(stat_col "$OUT/flood2_stat.csv" "TotalCallCreated")
idle_rate=$(awk -v c=$((c5 - c4)) -v a="$t4" -v b="$t5" 'BEGIN { printf "%.4f", c/(b-a) }')
alone_ticks=$((c7 - c6))
alone_net=$(awk -v f="$alone_ticks" -v r="$idle_rate" -v a="$t6" -v b="$t7" 'BEGIN { n=f-r*(b-a); printf "%.1f", (n>0?n:0) }')
alone_secs=$(elapsed "$t6" "$t7")
alone_ns=$(awk -v f=$((n7 - n6)) -v i=$((n5 - n4)) -v a="$t4" -v b="$t5" -v c="$t6" -v d="$t7" -v n="$dropped2" \
    'BEGIN { x = f - i / (b - a) * (d - c); if (n <= 0) print "NA"; else printf "%.2f", (x > 0 ? x : 0) / n / 1000 }')
scan=$(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); s=d.get("scanner",{}); g=d.get("guesser",{}); print(s.get("sent",0), s.get("answered",0), g.get("sent",0), g.get("guesses",0), g.get("401",0), g.get("403",0), g.get("200",0), g.get("silent",0))' "$OUT/attackers.json" 2>/dev/null || echo "0 0 0 0 0 0 0 0")
read -r scan_sent scan_answered g_sent g_guesses g_401 g_403 g_200 g_silent <<< "$scan"
banned_of() { python3 -c 'import json,sys; print(next((b.get("reason","?") for b in json.load(open(sys.argv[1])).get("bans",[]) if b.get("source")==sys.argv[2]), "not banned"))' "$OUT/bans.json" "$1"; }

say "legitimate      $ok ok, $failed failed of $CALLS"
say "flood           $flood_sent INVITEs sent in ${flood_secs} s ($flood_rate/s achieved); refused 403 before the ban: $refused"
say "flooder banned  ${ban_ms} ms after the flood started (bans: $ban_reason; seen by polling the API at ${SEEN_BANNED_MS} ms)"
say "dropped         $dropped packets unanswered (switchyard_security_dropped_total{reason=\"banned\"}, all sources)"
say "switch CPU      $(ticks_s $((c1 - c0))) s over ${BASE_SECS} s of calls alone; $(ticks_s "$flood_ticks") s over the ${flood_secs} s flood"
say "CPU per banned packet, during the calls  $(per_pkt "$net_ticks") us net of the calls' own CPU ($(per_pkt "$flood_ticks") us counting everything the switch did meanwhile)"
say "CPU per banned packet, flood alone       $(per_pkt "$alone_net" "$dropped2") us from /proc/PID/stat ticks, $alone_ns us from schedstat (ns): $flood2_sent INVITEs from the banned $FLOOD_IP in ${alone_secs} s, $dropped2 dropped, switch CPU $(ticks_s "$alone_ticks") s (idle: $(ticks_s $((c5 - c4))) s over 3 s)"
say "scanner         $scan_sent OPTIONS sent, $scan_answered answered; $(banned_of "$SCAN_IP")"
say "guesser         $g_sent REGISTERs, $g_guesses password guesses: $g_401 challenged, $g_403 refused 403, $g_200 accepted, $g_silent unanswered; $(banned_of "$GUESS_IP")"
say "switch RSS      VmHWM $(kib_mib "$(status_kb "$SW" VmHWM)")"

is_num "$failed" && [ "$failed" = 0 ] && [ "$ok" = "$CALLS" ] || fail "legitimate calls failed ($ok ok, $failed failed of $CALLS)"
[ "$ban_ms" != NA ] && [ "$ban_ms" -le 2000 ] || fail "flooder not banned within 2 s ($ban_ms ms)"
[ "$scan_answered" = 0 ] || fail "the scanner was answered"
[ "$(banned_of "$SCAN_IP")" = scanner ] || fail "the scanner was not banned as one"
[ "$g_200" = 0 ] || fail "the guesser registered"
[ "$dropped2" -gt 0 ] || fail "the second flood was not dropped as banned"
if pgrep -x rustc >/dev/null || pgrep -x cargo >/dev/null; then say "note            a build ran on the machine during the run"; fi
say "result          $VERDICT${REASONS[*]:+ (${REASONS[*]})}"
say "files           $OUT"
[ "$VERDICT" = PASS ]
