#!/usr/bin/env bash
# Trunk failover load (issue 7): three SIPp carriers behind one route, two of them bad;
# the callers must not notice. Prints a report; exits non-zero when a caller call failed.
#
#   load/trunks.sh [--caps 200] [--phase-secs 30] [--call-ms 2000]
#                  [--invite-timeout-ms 2000] [--switch-bin PATH] [--out DIR] [--quick]
#                  [--trace-carriers]
#
#   --caps R               caller attempts per second in each phase
#   --phase-secs S         seconds of calling per phase (caps x secs calls per phase)
#   --call-ms MS           how long an answered call stays up before the caller's BYE
#   --invite-timeout-ms MS the trunks' invite_timeout_ms (no answer at all: fail over)
#   --quick                CI size: 20 CAPS, 10 s phases (options after it win)
#   --trace-carriers       log every message the carriers get (SIPp -trace_msg) and count
#                          INVITEs (new and repeated Call-IDs), CANCELs and OPTIONS per
#                          carrier: shows INVITEs of abandoned attempts and the probes
#
# Route "9" (strip 1) has trunks a, b, c, policy priority (a first), each trunk one SIPp
# UAS on its own port, run with -aa so the switch's OPTIONS probes get 200:
#   phase 1: a = 503 (scenarios/carrier_503.xml), b = silent (carrier_silent.xml),
#            c = ok (carrier_ok.xml)
#   phase 2: the carriers are restarted on the same ports as a = ok, b = 503, c = silent,
#            and the callers start again at once.
# The caller is scenarios/uac.xml dialling 95550100. /metrics is polled every 100 ms
# throughout; every flip of switchyard_trunk_up{trunk} is timed from its phase's start
# (the caller's start). Report per phase: caller created/successful/failed, time until
# each bad trunk is marked down (and every later flip), time until the healthy trunk
# carries its first call (switchyard_trunk_channels > 0) and its answer counter first
# rises (the switch counts an attempt when it ends, so an answered one after the call),
# attempts/answers/failovers per trunk (metric deltas, failovers by cause), caller setup
# times (INVITE->180, INVITE->200 p50/p99/max, and how many waited out an invite
# timeout), switch CPU, the carriers' own counts (SIPp -aa counts each OPTIONS probe as
# an incoming call that never ends, so "incoming" and "open" include the probes).
# PASS when in every phase every call the caller created succeeded (0 failed), the caller
# exited normally within its time limit and the switch stayed up. The carriers' counts are
# information only (a carrier stopped at the swap still holds its silent calls).
# Exit status: 0 PASS, 1 FAIL, 2 bad usage or a setup failure.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
# shellcheck source=lib/common.sh
. "$here/lib/common.sh"
scen=$here/scenarios


CAPS=200 PHASE_SECS=30 CALL_MS=2000 INVITE_TIMEOUT_MS=2000
BIN="" OUT="" TRACE_CARRIERS=""
while [ $# -gt 0 ]; do
    case "$1" in
        --caps) CAPS=${2:?--caps needs a value}; shift 2 ;;
        --phase-secs) PHASE_SECS=${2:?--phase-secs needs a value}; shift 2 ;;
        --call-ms) CALL_MS=${2:?--call-ms needs a value}; shift 2 ;;
        --invite-timeout-ms) INVITE_TIMEOUT_MS=${2:?--invite-timeout-ms needs a value}; shift 2 ;;
        --switch-bin) BIN=${2:?--switch-bin needs a value}; shift 2 ;;
        --out) OUT=${2:?--out needs a value}; shift 2 ;;
        --quick) CAPS=20 PHASE_SECS=10; shift ;;
        --trace-carriers) TRACE_CARRIERS=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "trunks.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
    esac
done
for v in CAPS PHASE_SECS CALL_MS INVITE_TIMEOUT_MS; do
    [[ "${!v}" =~ ^[0-9]+$ ]] || die "--$(echo "$v" | tr 'A-Z_' 'a-z-') must be a whole number"
done
[ "$CAPS" -gt 0 ] && [ "$PHASE_SECS" -gt 0 ] && [ "$INVITE_TIMEOUT_MS" -gt 0 ] \
    || die "--caps, --phase-secs and --invite-timeout-ms must be > 0"
for tool in sipp curl ss awk; do
    command -v "$tool" >/dev/null || die "$tool not found (Debian/Ubuntu: sip-tester, curl, iproute2, gawk)"
done
# EPOCHREALTIME (bash 5) times the 100 ms samples without a process per timestamp.
[ -n "${EPOCHREALTIME:-}" ] || die "bash 5 or later is needed (EPOCHREALTIME)"

ensure_switch_bin
[ -n "$OUT" ] || OUT=$here/out/$(date -u +%Y%m%dT%H%M%SZ)-trunks-$$
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

HOST=127.0.0.1
DIALLED=95550100
TRUNKS=(a b c)
BUFF=4194304
CALLS=$((CAPS * PHASE_SECS))
CALL_S=$(( (CALL_MS + 999) / 1000 ))
# A call may wait out one silent trunk (invite timeout) before it is answered, then talks.
RECV_TIMEOUT_MS=20000
PHASE_LIMIT_S=$(( PHASE_SECS + CALL_S + 2 * INVITE_TIMEOUT_MS / 1000 + 60 ))

# ---------------------------------------------------------------- children

# ---------------------------------------------------------------- helpers
# A port no socket uses now, below the usual ephemeral range (as run.sh picks them).
wait_udp_bound() { # port pid what (bounded, 10 s)
    for _ in $(seq 1 500); do
        udp_bound "$1" && return 0
        kill -0 "$2" 2>/dev/null || die "$3 exited during start-up (see $OUT)"
        sleep 0.02
    done
    die "$3 did not bind udp:$HOST:$1 within 10 s"
}
wait_udp_free() { # port: a stopped SIPp's socket is gone (bounded, 5 s)
    for _ in $(seq 1 250); do udp_bound "$1" || return 0; sleep 0.02; done
    return 1
}
# Sum of metric $1 over the series whose labels contain every one of $3...; "NA" if none.
metric_sum() {
    local name=$1 file=$2; shift 2
    [ -s "$file" ] || { echo NA; return; }
    awk -v m="$name" -v want="$*" '
        $0 ~ /^#/ || NF < 2 { next }
        { n=$1; sub(/\{.*/, "", n); if (n != m) next
          k=split(want, w, " "); for (i=1;i<=k;i++) if (index($0, w[i]) == 0) next
          s+=$NF; f=1 }
        END { if (f) printf "%.0f\n", s; else print "NA" }' "$file"
}
# Delta of metric $1 (labels $4...) between scrapes $2 and $3; a series absent before
# counts 0 (counters appear at their first increment), absent after too gives "NA".
metric_delta() {
    local name=$1 before=$2 after=$3; shift 3
    local a b
    [ -s "$after" ] || { echo NA; return; }
    a=$(metric_sum "$name" "$after" "$@")
    b=$(metric_sum "$name" "$before" "$@")
    [ "$a" != NA ] || { [ "$b" = NA ] && echo 0 || echo "NA(gone)"; return; }
    [ "$b" != NA ] || b=0
    echo $((a - b))
}
# "n p50 p99 max" (nearest rank) of the rtd named $2 in SIPp rtt file $1.
rtd_stats() {
    if [ -z "$1" ] || [ ! -s "$1" ]; then echo "0 NA NA NA"; return; fi
    awk -F';' -v name="$2" 'NR>1 && $3==name { print $2+0 }' "$1" | sort -g | awk '{ v[NR]=$1 }
        function rank(p,  r) { r=int(p*NR); if (r<p*NR) r++; if (r<1) r=1; return v[r] }
        END { if (NR==0) print "0 NA NA NA"; else printf "%d %s %s %s\n", NR, rank(0.50), rank(0.99), v[NR] }'
}
# How many values of rtd $2 in rtt file $1 are at least $3 ms.
rtd_at_least() {
    if [ -z "$1" ] || [ ! -s "$1" ]; then echo NA; return; fi
    awk -F';' -v name="$2" -v lim="$3" 'NR>1 && $3==name && $2+0 >= lim { n++ } END { print n+0 }' "$1"
}
rel() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b-a }'; }
sipp_stop() { # pid: SIGUSR1 makes SIPp stop, write its final statistics and quit
    kill -0 "$1" 2>/dev/null || { wait "$1" 2>/dev/null || true; return 0; }
    kill -USR1 "$1" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$1" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}

pick_port SIP_PORT; pick_port HTTP_PORT
pick_port CALLER_PORT; pick_port CALLER_CP
declare -A GW_PORT GW_CP CARRIER_PID
for t in "${TRUNKS[@]}"; do
    pick_port "GW_PORT[$t]"; pick_port "GW_CP[$t]"
done

# ---------------------------------------------------------------- config
cat > "$OUT/switchyard.toml" <<CFG
# Written by load/trunks.sh: route 9 (strip 1) over trunks a, b, c by priority.
data_dir = "$OUT/data"
[sip]
listen = ["udp:$HOST:$SIP_PORT"]
[http]
listen = "$HOST:$HTTP_PORT"
# SIPp runs on loopback: its addresses are trusted peers (nothing is by default;
# untrusted callers reach only tenants' numbers and users, never a route).
[security]
trusted = ["127.0.0.0/8"]
# Far above the offered load, so admission control refuses nothing (as run.sh sets it).
[admission]
max_calls = 20000
cps = $(( CAPS * 4 > 5000 ? CAPS * 4 : 5000 ))
per_source_cps = 0
# SIPp sends far above a phone's rate from loopback: never banned (README "The edge").
[security.flood]
exempt = ["127.0.0.0/8"]
CFG
prio=1
for t in "${TRUNKS[@]}"; do
    cat >> "$OUT/switchyard.toml" <<CFG
[[trunks]]
id = "$t"
gateways = ["sip:$HOST:${GW_PORT[$t]}"]
max_channels = 0
max_cps = 0
priority = $prio
weight = 1
invite_timeout_ms = $INVITE_TIMEOUT_MS
probe_interval_secs = 1
down_after_failed_probes = 3
down_after_failed_calls = 3
up_after_good_probes = 3
CFG
    prio=$((prio + 1))
done
cat >> "$OUT/switchyard.toml" <<CFG
[[routes]]
prefix = "9"
trunks = ["a", "b", "c"]
policy = "priority"
strip = 1
CFG
"$BIN" check-config "$OUT/switchyard.toml" > "$OUT/check-config.out" 2>&1 \
    || { cat "$OUT/check-config.out" >&2; die "switchyard check-config refused $OUT/switchyard.toml"; }

# Report lines go to the terminal and to report.txt.
: > "$OUT/report.txt"
say "== switchyard trunk failover load ($(date -u +%FT%TZ), $(nproc) cores)"
say "offered                2 phases x $CALLS calls ($CAPS CAPS x $PHASE_SECS s) to $DIALLED, ${CALL_MS} ms calls; invite_timeout ${INVITE_TIMEOUT_MS} ms, probes 1 s, down after 3 failed probes / 3 failed calls, up after 3 good probes"
say "switch                 udp:$HOST:$SIP_PORT http:$HOST:$HTTP_PORT ($BIN)"
say "trunks (priority)      a udp:$HOST:${GW_PORT[a]}, b udp:$HOST:${GW_PORT[b]}, c udp:$HOST:${GW_PORT[c]}"

# ---------------------------------------------------------------- carriers
# start_carrier TRUNK ROLE PHASE: one SIPp UAS on the trunk's port playing ROLE (ok, 503,
# silent). -aa answers OPTIONS probes 200 (checked with SIPp 3.6.1). The silent carrier's
# calls wait up to 34 s for a CANCEL, so -recv_timeout stays above that.
start_carrier() {
    local t=$1 role=$2 phase=$3 dir=$OUT/p$3
    local trace=()
    mkdir -p "$dir"
    [ -z "$TRACE_CARRIERS" ] || trace=(-trace_msg -message_file "$dir/carrier_${t}_msgs.log")
    (
        cd "$dir"
        exec sipp -sf "$scen/carrier_$role.xml" -i "$HOST" -p "${GW_PORT[$t]}" -cp "${GW_CP[$t]}" \
            -aa -nostdin -buff_size "$BUFF" -recv_timeout $(( CALL_MS + 60000 )) "${trace[@]}" \
            -trace_stat -stf "$dir/carrier_${t}_stat.csv" -fd 1 \
            -trace_err -error_file "$dir/carrier_${t}_errors.log" \
            -trace_screen -screen_file "$dir/carrier_${t}_screen.log"
    ) > "$dir/carrier_$t.out" 2>&1 < /dev/null &
    CARRIER_PID[$t]=$!
    CHILD_PIDS+=("${CARRIER_PID[$t]}")
    echo "$t $role" >> "$dir/roles.txt"
}
start_carriers() { # phase role_a role_b role_c
    local phase=$1; shift
    local i=0 t
    for t in "${TRUNKS[@]}"; do start_carrier "$t" "${@:$((i + 1)):1}" "$phase"; i=$((i + 1)); done
    for t in "${TRUNKS[@]}"; do wait_udp_bound "${GW_PORT[$t]}" "${CARRIER_PID[$t]}" "SIPp carrier $t"; done
}
# SIGTERM, not SIGUSR1: SIPp 3.6 quits at once on it and still writes a last row of
# statistics, while after SIGUSR1 it waits for its open calls (a silent carrier's wait
# 34 s for a CANCEL that never comes, and a second SIGUSR1 has been seen to hang it).
stop_carriers() { # fails when a port is still bound 5 s after its carrier stopped
    local t pid
    for t in "${TRUNKS[@]}"; do kill -TERM "${CARRIER_PID[$t]}" 2>/dev/null || true; done
    for t in "${TRUNKS[@]}"; do
        pid=${CARRIER_PID[$t]}
        for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.02; done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    for t in "${TRUNKS[@]}"; do wait_udp_free "${GW_PORT[$t]}" || return 1; done
}

ROLES_1=(503 silent ok)
ROLES_2=(ok 503 silent)
start_carriers 1 "${ROLES_1[@]}"

# ---------------------------------------------------------------- switch
start_switch

# ---------------------------------------------------------------- metrics poller
# Every 100 ms: "epoch_s;trunk;up;channels;attempts;answers;failovers" for each trunk
# (NA when a series is absent; attempts/answers/failovers summed over other labels).
SAMPLES=$OUT/trunk_samples.csv
echo "t;trunk;up;channels;attempts;answers;failovers" > "$SAMPLES"
(
    while :; do
        ts=$EPOCHREALTIME
        if body=$(curl -sf --max-time 1 "http://$HOST:$HTTP_PORT/metrics" 2>/dev/null); then
            printf '%s\n' "$body" | awk -v ts="$ts" -v ids="${TRUNKS[*]}" '
                /^switchyard_trunk_/ && match($0, /trunk="[^"]*"/) {
                    t=substr($0, RSTART+7, RLENGTH-8); n=$1; sub(/\{.*/, "", n)
                    v[n, t]+=$NF; seen[n, t]=1 }
                function g(n, t) { return ((n, t) in seen) ? sprintf("%.0f", v[n, t]) : "NA" }
                END { k=split(ids, id, " ")
                      for (i=1;i<=k;i++) printf "%s;%s;%s;%s;%s;%s;%s\n", ts, id[i],
                          g("switchyard_trunk_up", id[i]), g("switchyard_trunk_channels", id[i]),
                          g("switchyard_trunk_attempts_total", id[i]), g("switchyard_trunk_answers_total", id[i]),
                          g("switchyard_trunk_failovers_total", id[i]) }'
        else
            echo "$ts;-;scrape-failed;;;;"
        fi
        sleep 0.1
    done
) >> "$SAMPLES" 2>/dev/null < /dev/null &
POLLER=$!
CHILD_PIDS+=("$POLLER")

# Every trunk up before phase 1 (bounded): the probes need up_after_good_probes rounds.
UP_WAIT_START=$EPOCHREALTIME
UPS=NA
for _ in $(seq 1 150); do
    kill -0 "$SW" 2>/dev/null || die "switch exited before the calls (log: $OUT/switch.log)"
    if scrape "$OUT/metrics_start.txt"; then
        UPS=""
        for t in "${TRUNKS[@]}"; do UPS="$UPS $t=$(metric_sum switchyard_trunk_up "$OUT/metrics_start.txt" "trunk=\"$t\"")"; done
        UPS=${UPS# }
        case " $UPS" in *"=0"*|*"=NA"*) ;; *) break ;; esac
        # No trunk gauge at all after 5 s: this switch does not export it; waiting is moot.
        case " $UPS" in *"=0"*|*"=1"*) ;; *) awk -v a="$UP_WAIT_START" -v b="$EPOCHREALTIME" 'BEGIN { exit !(b-a > 5) }' && break ;; esac
    fi
    sleep 0.2
done
say "trunks before phase 1  $UPS after $(rel "$UP_WAIT_START" "$EPOCHREALTIME") s (switchyard_trunk_up; waited up to 30 s)"
case " $UPS" in *"=NA"*) echo "trunks.sh: WARNING: switchyard_trunk_up missing for some trunk; trunk timings will be NA" >&2 ;; esac

VERDICT=PASS
REASONS=()
BUILD_SEEN=0

# ---------------------------------------------------------------- one phase
# run_phase N: the caller at CAPS for PHASE_SECS against the carriers now running.
declare -A T0 T1 SWAP_AT CPU_S
run_phase() {
    local p=$1 dir=$OUT/p$1 pid deadline next_note ca
    mkdir -p "$dir"
    scrape "$dir/metrics_before.txt" || die "GET /metrics failed before phase $p"
    local cpu0; cpu0=$(cpu_ticks "$SW")
    T0[$p]=$EPOCHREALTIME
    echo "${T0[$p]}" > "$dir/t0"
    (
        cd "$dir"
        exec sipp "$HOST:$SIP_PORT" -sf "$scen/uac.xml" -s "$DIALLED" -i "$HOST" \
            -p "$CALLER_PORT" -cp "$CALLER_CP" \
            -m "$CALLS" -l "$CALLS" -r "$CAPS" -rp 1000 -d "$CALL_MS" -nostdin -buff_size "$BUFF" \
            -recv_timeout "$RECV_TIMEOUT_MS" \
            -trace_stat -stf "$dir/caller_stat.csv" -fd 1 \
            -trace_rtt -rtt_freq 1 \
            -trace_err -error_file "$dir/caller_errors.log" \
            -trace_screen -screen_file "$dir/caller_screen.log"
    ) > "$dir/caller.out" 2>&1 < /dev/null &
    pid=$!
    CHILD_PIDS+=("$pid")
    echo "trunks.sh: phase $p: $CALLS calls at $CAPS CAPS; carriers $(tr '\n' ' ' < "$dir/roles.txt")" >&2
    deadline=$(( $(date +%s) + PHASE_LIMIT_S ))
    next_note=$(( $(date +%s) + 10 ))
    TIMED_OUT[$p]=""
    while kill -0 "$pid" 2>/dev/null; do
        if pgrep -x rustc >/dev/null || pgrep -x cargo >/dev/null; then BUILD_SEEN=1; fi
        kill -0 "$SW" 2>/dev/null || { SW_DIED=1; break; }
        if [ "$(date +%s)" -ge "$deadline" ]; then
            TIMED_OUT[$p]=1
            echo "trunks.sh: phase $p caller still running after ${PHASE_LIMIT_S} s, stopping it" >&2
            break
        fi
        if [ "$(date +%s)" -ge "$next_note" ]; then
            next_note=$(( next_note + 10 ))
            echo "trunks.sh: phase $p t=$(rel "${T0[$p]}" "$EPOCHREALTIME") s: caller created $(stat_col "$dir/caller_stat.csv" "OutgoingCall(C)"), ok $(stat_col "$dir/caller_stat.csv" "SuccessfulCall(C)"), failed $(stat_col "$dir/caller_stat.csv" "FailedCall(C)")" >&2
        fi
        sleep 0.5
    done
    CALLER_RC[$p]=0
    if kill -0 "$pid" 2>/dev/null; then
        sipp_stop "$pid"; CALLER_RC[$p]=stopped
    else
        wait "$pid" 2>/dev/null || CALLER_RC[$p]=$?
    fi
    T1[$p]=$EPOCHREALTIME
    if kill -0 "$SW" 2>/dev/null; then
        CPU_S[$p]=$(ticks_s $(( $(cpu_ticks "$SW") - cpu0 )))
        scrape "$dir/metrics_after.txt" || true
    else
        SW_DIED=1; CPU_S[$p]=NA
    fi
}

SW_DIED=""
declare -A TIMED_OUT CALLER_RC
run_phase 1
if [ -z "$SW_DIED" ]; then
    # The swap: the same ports, new roles. The gap (no carrier bound) is timed: probes sent
    # into it fail, which the switch may count against the trunks.
    SWAP_BEGIN=$EPOCHREALTIME
    stop_carriers || die "a carrier port was still bound 5 s after its carrier stopped"
    start_carriers 2 "${ROLES_2[@]}"
    SWAP_END=$EPOCHREALTIME
    say "swap                   carriers restarted in $(rel "$SWAP_BEGIN" "$SWAP_END") s (no carrier on the ports for part of it)"
    run_phase 2
fi
sleep 1   # a last few 100 ms samples after phase 2
kill "$POLLER" 2>/dev/null || true
wait "$POLLER" 2>/dev/null || true

# ---------------------------------------------------------------- drain and stop
CA_AFTER=NA SW_CPU_TOTAL_S=NA SW_HWM_KB=NA
if kill -0 "$SW" 2>/dev/null; then
    # The switch's calls end with the caller's; the carriers are still up for their BYEs.
    for _ in $(seq 1 60); do
        scrape "$OUT/metrics_end.txt" && CA_AFTER=$(metric_sum switchyard_calls_active "$OUT/metrics_end.txt")
        [ "$CA_AFTER" = 0 ] || [ "$CA_AFTER" = NA ] && break
        sleep 0.5
    done
    SW_CPU_TOTAL_S=$(ticks_s "$(cpu_ticks "$SW")")
    SW_HWM_KB=$(status_kb "$SW" VmHWM)
else
    SW_DIED=1
fi
stop_carriers || true

# ---------------------------------------------------------------- report
# trunk_flips T0 T_END TRUNK: the trunk's switchyard_trunk_up at T0 (the last sample
# before it) and every change up to T_END, as "state@start state@+seconds ...".
trunk_flips() {
    awk -F';' -v t0="$1" -v t1="$2" -v id="$3" '
        function word(v) { return v == 1 ? "up" : "down" }
        NR==1 || $2 != id || $3 == "NA" { next }
        $1+0 < t0 { last=$3; next }
        $1+0 > t1 { next }
        !started { if (last == "") last=$3; printf "%s@start", word(last); started=1 }
        $3 != last { printf " %s@+%.2f", word($3), $1 - t0; last=$3 }
        END { if (!started) printf "NA (no samples)" }' "$SAMPLES"
}
# first_rise T0 T_END TRUNK COLUMN: seconds from T0 to the first sample whose COLUMN (4
# channels, 5 attempts, 6 answers) is above its value at T0 (the last sample before, else
# the first).
first_rise() {
    awk -F';' -v t0="$1" -v t1="$2" -v id="$3" -v c="$4" '
        NR==1 || $2 != id { next }
        $1+0 < t0 { if ($c != "NA") base=$c+0; next }
        $1+0 > t1 || done { next }
        { if (base == "") base = ($c == "NA" ? 0 : $c+0)
          if ($c != "NA" && $c+0 > base) { printf "+%.2f s", $1 - t0; done=1 } }
        END { if (!done) printf "never" }' "$SAMPLES"
}
first_down() { # T0 T_END TRUNK: seconds from T0 to the first sample saying down
    awk -F';' -v t0="$1" -v t1="$2" -v id="$3" '
        NR==1 || $2 != id || $3 == "NA" || $1+0 > t1 || done { next }
        $1+0 < t0 { last=$3; next }
        last == "0" { printf "already down at the start"; done=1; next }
        $3 == 0 { printf "+%.2f s", $1 - t0; done=1 }
        { last=$3 }
        END { if (!done) printf (last != "" ? "never" : "NA (no samples)") }' "$SAMPLES"
}
failover_causes() { # before after TRUNK: "cause=n ..." deltas of switchyard_trunk_failovers_total
    awk -v id="$3" '
        $0 ~ /^#/ || NF < 2 || $1 !~ /^switchyard_trunk_failovers_total/ || index($1, "trunk=\"" id "\"") == 0 { next }
        { c="?"; if (match($1, /cause="[^"]*"/)) c=substr($1, RSTART+7, RLENGTH-8) }
        FNR==NR { b[c]=$NF; next }
        { d=$NF-b[c]; if (d != 0) { printf "%s%s=%.0f", sep, c, d; sep=" " } }
        END { }' "$1" "$2" 2>/dev/null
}

# msg_counts LOG: requests a carrier received, from its SIPp -trace_msg log.
msg_counts() {
    [ -s "$1" ] || { echo "(no message log)"; return; }
    awk '
        { sub(/\r$/, "") }
        /^UDP message received/ { want=1; next }
        want == 1 && NF { m=$1; want=2; next }
        want == 2 && tolower($1) == "call-id:" { if (m !~ /^SIP/) { n[m]++; if (m == "INVITE" && !(($2) in seen)) { seen[$2]=1; u++ } } want=0 }
        END { printf "INVITE %d (%d Call-IDs, so %d repeats), ACK %d, CANCEL %d, OPTIONS %d, BYE %d",
                  n["INVITE"], u, n["INVITE"]-u, n["ACK"], n["CANCEL"], n["OPTIONS"], n["BYE"] }' "$1"
}

for p in 1 2; do
    [ -n "${T0[$p]:-}" ] || continue
    dir=$OUT/p$p
    t0=${T0[$p]} t1=${T1[$p]}
    # Trunk timings look until the next phase starts (phase 1 includes the swap).
    tw=${T0[$((p + 1))]:-9e18}
    if [ "$p" = 1 ]; then roles=("${ROLES_1[@]}"); else roles=("${ROLES_2[@]}"); fi
    CS=$dir/caller_stat.csv
    CREATED=$(stat_col "$CS" "OutgoingCall(C)")
    SUCCESS=$(stat_col "$CS" "SuccessfulCall(C)")
    FAILED=$(stat_col "$CS" "FailedCall(C)")
    C_UNEXP=$(stat_col "$CS" "FailedUnexpectedMessage(C)")
    C_TIMEOUT=$(stat_col "$CS" "FailedTimeoutOnRecv(C)")
    C_RETRANS=$(stat_col "$CS" "FailedMaxUDPRetrans(C)")
    C_PEAK=$(stat_col "$CS" CurrentCall max)
    RTT=$(ls -1 "$dir"/uac_*_rtt.csv 2>/dev/null | head -1 || true)
    read -r RING_N RING_P50 RING_P99 RING_MAX <<< "$(rtd_stats "$RTT" ring)"
    read -r ANS_N ANS_P50 ANS_P99 ANS_MAX <<< "$(rtd_stats "$RTT" answer)"
    SLOW=$(rtd_at_least "$RTT" answer "$INVITE_TIMEOUT_MS")

    [ "$FAILED" = 0 ] || fail "phase $p: caller failed calls: $FAILED"
    [ "$SUCCESS" = "$CREATED" ] && [ "$CREATED" = "$CALLS" ] || fail "phase $p: caller successful $SUCCESS of $CREATED created ($CALLS offered)"
    [ -z "${TIMED_OUT[$p]}" ] || fail "phase $p: caller still running after ${PHASE_LIMIT_S} s"
    [ "${CALLER_RC[$p]}" = 0 ] || fail "phase $p: SIPp caller exit status ${CALLER_RC[$p]}"

    say "-- phase $p: a=${roles[0]} b=${roles[1]} c=${roles[2]}"
    say "caller (SIPp)          created $CREATED, successful $SUCCESS, failed $FAILED (unexpected msg $C_UNEXP, recv timeout $C_TIMEOUT, max retrans $C_RETRANS); peak concurrent $C_PEAK; wall $(rel "$t0" "$t1") s"
    say "setup INVITE->180 ms   p50 $RING_P50  p99 $RING_P99  max $RING_MAX  (n=$RING_N)"
    say "setup INVITE->200 ms   p50 $ANS_P50  p99 $ANS_P99  max $ANS_MAX  (n=$ANS_N); $SLOW calls took >= invite_timeout ${INVITE_TIMEOUT_MS} ms"
    [ "$p" != 2 ] || say "swap before the phase  the carriers were restarted $(rel "$SWAP_END" "$t0") s before this phase's start (restart took $(rel "$SWAP_BEGIN" "$SWAP_END") s)"
    i=0
    for t in "${TRUNKS[@]}"; do
        role=${roles[$i]}; i=$((i + 1))
        b=$dir/metrics_before.txt a=$dir/metrics_after.txt
        att=$(metric_delta switchyard_trunk_attempts_total "$b" "$a" "trunk=\"$t\"")
        ans=$(metric_delta switchyard_trunk_answers_total "$b" "$a" "trunk=\"$t\"")
        fo=$(metric_delta switchyard_trunk_failovers_total "$b" "$a" "trunk=\"$t\"")
        causes=$(failover_causes "$b" "$a" "$t")
        case "$role" in
            ok) timing="first call on it $(first_rise "$t0" "$tw" "$t" 4), answers counter first up $(first_rise "$t0" "$tw" "$t" 6)" ;;
            *) timing="marked down $(first_down "$t0" "$tw" "$t")"
               [ "$att" != 0 ] || timing="$timing (no call reached it)" ;;
        esac
        say "trunk $t ($role)$(printf '%*s' $((9 - ${#role})) '')$timing; attempts +$att, answers +$ans, failovers +$fo${causes:+ ($causes)}"
        downs=$(metric_delta switchyard_trunk_state_changes_total "$b" "$a" "trunk=\"$t\"" 'state="down"')
        ups=$(metric_delta switchyard_trunk_state_changes_total "$b" "$a" "trunk=\"$t\"" 'state="up"')
        say "    up/down            $(trunk_flips "$t0" "$tw" "$t")"
        say "    state changes      down +$downs, up +$ups in the phase (switchyard_trunk_state_changes_total; 100 ms samples miss shorter spells)"
        cs=$dir/carrier_${t}_stat.csv
        say "    carrier (SIPp)     incoming $(stat_col "$cs" "IncomingCall(C)"), successful $(stat_col "$cs" "SuccessfulCall(C)"), failed $(stat_col "$cs" "FailedCall(C)"), open when stopped $(stat_col "$cs" CurrentCall) (incoming and open include OPTIONS probes)"
        [ -z "$TRACE_CARRIERS" ] || say "    carrier got        $(msg_counts "$dir/carrier_${t}_msgs.log")"
    done
    say "switch CPU             ${CPU_S[$p]} s in the phase ($(awk -v s="${CPU_S[$p]}" -v n="$CREATED" 'BEGIN { if (s=="NA" || n=="NA" || n+0==0) print "NA"; else printf "%.0f", s*1e6/n }') us per caller attempt, /metrics polled every 100 ms included)"
done

[ -z "$SW_DIED" ] || fail "switch died during the run (log: $OUT/switch.log)"
{
    echo "-- overall"
    echo "switch                 CPU $SW_CPU_TOTAL_S s since start, VmHWM $(kib_mib "$SW_HWM_KB"), calls_active $CA_AFTER after the run"
    echo "metrics samples        $(awk -F';' -v k="${TRUNKS[0]}" 'NR>1 && $2==k { if (n) gap+=$1-prev; prev=$1; n++ } $2=="-" { f++ } END { printf "%d, mean interval %.0f ms, %d failed scrapes", n, (n>1 ? gap*1000/(n-1) : 0), f }' "$SAMPLES")"
    echo "switch log             $(sed 's/\x1b\[[0-9;]*m//g' "$OUT/switch.log" | awk '$2=="WARN" { w++ } $2=="ERROR" { e++ } END { printf "%d WARN, %d ERROR lines", w, e }'), $(grep -ci trunk "$OUT/switch.log" || true) mentioning trunks"
    [ "$CA_AFTER" = 0 ] || [ "$CA_AFTER" = NA ] || echo "WARNING                switchyard_calls_active is $CA_AFTER 30 s after the calls, not 0"
    [ "$BUILD_SEEN" = 0 ] || echo "WARNING                rustc/cargo ran during the run: CPU and latency figures are disturbed"
    echo "switchyard_trunk_* at the end:"
    if [ -s "$OUT/metrics_end.txt" ]; then
        grep '^switchyard_trunk_' "$OUT/metrics_end.txt" | sed 's/^/    /' || echo "    (none)"
    else
        echo "    (no scrape at the end)"
    fi
    verdict_line
    echo "files                  $OUT (trunk_samples.csv: every 100 ms sample)"
} | tee -a "$OUT/report.txt"

if [ "$VERDICT" != PASS ]; then
    for p in 1 2; do
        f=$OUT/p$p/caller_errors.log
        [ -s "$f" ] || continue
        echo "--- first errors in $f ---" >&2
        sed 's/\(2[0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]\t\)/\n\1/g' "$f" | grep -v -e "^The following events occurred" | grep -v '^$' | head -10 >&2 || true
    done
    grep -E ' (WARN|ERROR) ' "$OUT/switch.log" | head -20 | sed 's/^/switch.log: /' >&2 || true
    exit 1
fi
exit 0
