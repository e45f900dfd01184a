#!/usr/bin/env bash
# Drive switchyard (or SIPp alone) with SIPp and print a load report.
#
#   load/run.sh [--rate CAPS] [--duration-ms CALL_MS] [--calls TOTAL]
#               [--target switch|direct|peer] [--switch-bin PATH] [--out DIR]
#               [--latency-trace] [--overload] [--admission-cps N]
#               [--admission-max-calls N] [--no-tx-drain] [--peer-shm-mb MB]
#               [--no-defence] [--pre-edge]
#
# One SIPp callee (load/scenarios/uas.xml) and one SIPp caller
# (load/scenarios/uac.xml) run on 127.0.0.1. With --target switch (default)
# the caller sends to a switchyard started here on free ports, routing every
# call to the callee; with --target direct the caller talks to the callee
# straight, which measures the machine's own limit; with --target peer it
# sends to Kamailio (load/peers/kamailio.cfg: stateful record-routing proxy
# with dialogs), the yardstick. --overload uses uac_overload.xml, which
# counts a 503 as a refused (not failed) call. --admission-cps and
# --admission-max-calls set the switch's [admission] limits (default: far
# above the offered load). --no-tx-drain waits only for calls_active (not
# transactions_active) to reach 0 after the run. --peer-shm-mb [1024] is
# Kamailio's shared memory (-m): tm keeps each transaction ~5 s after it
# ends, about 16 KiB each, so 256 MB runs out near 2,000 CAPS (the pool, not
# the CPU, would then be the limit). --no-defence turns the switch's edge
# defence off ([security.flood] and [security.scanners] enabled = false): with
# it on (default) every packet pays the ban check and its source's density
# count, as on the internet (the SIPp addresses are exempt from bans, never
# from the counting); load/bench.sh compares the two. --pre-edge writes no
# [security] section, for a switch built before issue 16 (which refuses the
# unknown section; it trusted everyone). Besides report.txt, every
# figure goes to summary.env (KEY=VALUE lines) for load/bench.sh.
#
# Exit status: 0 when every call succeeded (and, through the switch, the
# switch's calls_active returned to 0); 1 otherwise; 2 on bad usage or a
# setup failure. --latency-trace also logs every caller message (SIPp
# -trace_msg) to get per-call latencies on a microsecond clock; it costs the
# caller CPU and disk. See load/README.md for what each report line means.
set -euo pipefail

usage() {
    awk 'NR == 1 { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "$0"
}

RATE=100
DURATION_MS=1000
CALLS=1000
TARGET=switch
SWITCH_BIN=""
OUT=""
LATENCY_TRACE=""
OVERLOAD=""
ADM_CPS=""
ADM_MAX_CALLS=""
DEFENCE=true
PRE_EDGE=""
TX_DRAIN=1
PEER_SHM_MB=1024

while [ $# -gt 0 ]; do
    case "$1" in
        --rate) RATE=${2:?--rate needs a value}; shift 2 ;;
        --duration-ms) DURATION_MS=${2:?--duration-ms needs a value}; shift 2 ;;
        --calls) CALLS=${2:?--calls needs a value}; shift 2 ;;
        --target) TARGET=${2:?--target needs a value}; shift 2 ;;
        --switch-bin) SWITCH_BIN=${2:?--switch-bin needs a value}; shift 2 ;;
        --out) OUT=${2:?--out needs a value}; shift 2 ;;
        --latency-trace) LATENCY_TRACE=1; shift ;;
        --overload) OVERLOAD=1; shift ;;
        --admission-cps) ADM_CPS=${2:?--admission-cps needs a value}; shift 2 ;;
        --admission-max-calls) ADM_MAX_CALLS=${2:?--admission-max-calls needs a value}; shift 2 ;;
        --no-defence) DEFENCE=false; shift ;;
        --pre-edge) PRE_EDGE=1; shift ;;
        --no-tx-drain) TX_DRAIN=""; shift ;;
        --peer-shm-mb) PEER_SHM_MB=${2:?--peer-shm-mb needs a value}; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "run.sh: unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
done

die() { echo "run.sh: $*" >&2; exit 2; }

[[ "$RATE" =~ ^[0-9]+(\.[0-9]+)?$ ]] && awk -v r="$RATE" 'BEGIN{exit !(r>0)}' \
    || die "--rate must be a positive number"
[[ "$DURATION_MS" =~ ^[0-9]+$ ]] || die "--duration-ms must be a whole number of ms"
[[ "$CALLS" =~ ^[1-9][0-9]*$ ]] || die "--calls must be a positive whole number"
case "$TARGET" in switch|direct|peer) ;; *) die "--target must be switch, direct or peer" ;; esac
[ -z "$ADM_CPS" ] || [[ "$ADM_CPS" =~ ^[0-9]+$ ]] || die "--admission-cps must be a whole number"
[[ "$PEER_SHM_MB" =~ ^[1-9][0-9]*$ ]] || die "--peer-shm-mb must be a positive whole number"
[ -z "$ADM_MAX_CALLS" ] || [[ "$ADM_MAX_CALLS" =~ ^[0-9]+$ ]] || die "--admission-max-calls must be a whole number"
if [ "$TARGET" = peer ]; then
    command -v kamailio >/dev/null || die "kamailio not found (Debian/Ubuntu: apt-get install kamailio)"
fi
command -v sipp >/dev/null || die "sipp not found (Debian/Ubuntu: apt-get install sip-tester)"
command -v ss >/dev/null || die "ss not found (iproute2)"
if [ "$TARGET" = switch ]; then
    command -v curl >/dev/null || die "curl not found"
fi

LOAD_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(dirname "$LOAD_DIR")
SCEN_DIR=$LOAD_DIR/scenarios
HOST=127.0.0.1

if [ -z "$OUT" ]; then
    OUT=$LOAD_DIR/out/$(date -u +%Y%m%dT%H%M%SZ)-$TARGET-$$
fi
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

# ---------------------------------------------------------------- cleanup
CHILD_PIDS=()
cleanup() {
    local pid
    for pid in "${CHILD_PIDS[@]:-}"; do
        [ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${CHILD_PIDS[@]:-}"; do
        [ -n "$pid" ] || continue
        for _ in 1 2 3 4 5 6 7 8 9 10; do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.2
        done
        kill -KILL "$pid" 2>/dev/null || true
    done
}
trap cleanup EXIT
trap 'echo "run.sh: interrupted" >&2; exit 130' INT TERM

# ---------------------------------------------------------------- helpers
# Picks a port that no socket (UDP or TCP) uses now, below the usual ephemeral
# range so a client socket is unlikely to take it before we bind it.
TAKEN_PORTS=" "
pick_port() {
    local var=$1 p i
    for i in $(seq 1 500); do
        p=$((20000 + RANDOM % 12000))
        case "$TAKEN_PORTS" in *" $p "*) continue ;; esac
        if [ -z "$(ss -Htuan "( sport = :$p )" 2>/dev/null)" ]; then
            TAKEN_PORTS="$TAKEN_PORTS$p "
            printf -v "$var" '%s' "$p"
            return 0
        fi
    done
    die "no free port found"
}

udp_bound() { [ -n "$(ss -Hlun "( sport = :$1 )" 2>/dev/null)" ]; }

# Waits (bounded) until pid $2 has bound UDP port $1; fails if it exits.
wait_udp_bound() {
    local port=$1 pid=$2 what=$3 i
    for i in $(seq 1 100); do
        udp_bound "$port" && return 0
        kill -0 "$pid" 2>/dev/null || die "$what exited during start-up (see $OUT)"
        sleep 0.1
    done
    die "$what did not bind udp:$HOST:$port within 10 s"
}

rcvbuf_errors() { awk '$1=="Udp:" { if (!h) { for (i=2;i<=NF;i++) if ($i=="RcvbufErrors") c=i; h=1 } else print $c }' /proc/net/snmp; }

# Sum of a metric over all its label sets; "NA" when absent.
metric_value() {
    awk -v m="$1" '
        $0 !~ /^#/ { n=$1; sub(/\{.*/, "", n); if (n==m) { s+=$NF; f=1 } }
        END { if (f) printf "%.0f\n", s; else print "NA" }' "$2"
}

scrape() { curl -sf --max-time 2 "http://$HTTP_ADDR/metrics" -o "$1" 2>/dev/null; }

# Counter series (name ends in _total, labels kept) that changed between two
# scrapes: "series delta" lines.
counter_deltas() {
    awk '$0 ~ /^#/ || NF < 2 { next }
         { n=$1; sub(/\{.*/, "", n); if (n !~ /_total$/) next
           k=$0; sub(/[ \t]+[^ \t]+$/, "", k) }   # label values may hold spaces
         FNR==NR { before[k]=$NF; next }
         { d=$NF-before[k]; if (d != 0) printf "%s %.0f\n", k, d }' "$1" "$2"
}

# utime+stime in clock ticks of pid $1.
cpu_ticks() {
    local s rest
    s=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    rest=${s##*) }
    # shellcheck disable=SC2086
    set -- $rest
    echo $(( ${12} + ${13} ))
}

status_kb() { awk -v k="$2:" '$1==k {print $2}' "/proc/$1/status" 2>/dev/null; }

# Column $2 of the SIPp stat file $1: last row ("last") or maximum ("max").
stat_col() {
    local file=$1 col=$2 mode=${3:-last}
    [ -s "$file" ] || { echo NA; return; }
    awk -F';' -v col="$col" -v mode="$mode" '
        NR==1 { for (i=1;i<=NF;i++) if ($i==col) c=i; next }
        c && $c != "" { v=$c+0; if (mode=="max") { if (!seen || v>m) m=v } else m=v; seen=1 }
        END { if (seen) print m; else print "NA" }' "$file"
}

# Percentiles (nearest rank) of numbers on stdin, one a line:
# "n p50 p99 p99.9 max".
percentiles() {
    sort -g | awk '{ v[NR]=$1 }
        function rank(p,  r) { r=int(p*NR); if (r<p*NR) r++; if (r<1) r=1; return v[r] }
        END { if (NR==0) print "0 NA NA NA NA"; else printf "%d %s %s %s %s\n", NR, rank(0.50), rank(0.99), rank(0.999), v[NR] }'
}

# Quantiles in ms of the histogram $1 with label stage="$2", from the bucket
# counts of scrape $4 minus scrape $3 (so only this run's calls count),
# interpolated linearly within a bucket as Prometheus' histogram_quantile()
# does: "n p50 p99 p99.9" ("0 NA NA NA" when absent).
hist_quantiles() {
    awk -v m="$1_bucket" -v stage="$2" '
        $0 ~ /^#/ { next }
        { n=$1; sub(/\{.*/, "", n); if (n != m || index($1, "stage=\"" stage "\"") == 0) next
          le=$1; sub(/.*le="/, "", le); sub(/".*/, "", le)
          if (FNR==NR) { before[le]=$NF; next }
          cnt[le]=$NF-before[le]; les[++k]=le }
        function q(p,  target, i, prev_le, prev_c, le, c) {
            target=p*total; prev_le=0; prev_c=0
            for (i=1;i<=k;i++) { le=les[i]; c=cnt[le]
                if (c >= target) {
                    if (le=="+Inf") return prev_le*1000
                    if (c==prev_c) return le*1000
                    return (prev_le + (le-prev_le)*(target-prev_c)/(c-prev_c))*1000 }
                prev_le=le; prev_c=c }
            return "NA" }
        END { total=(k ? cnt["+Inf"] : 0)
              if (total+0 <= 0) { print "0 NA NA NA"; exit }
              printf "%d %.2f %.2f %.2f\n", total, q(0.5), q(0.99), q(0.999) }' "$3" "$4"
}

# Percentiles of the rtd named $2 in the SIPp rtt file $1.
rtd_percentiles() {
    local file=$1 name=$2
    if [ -z "$file" ] || [ ! -s "$file" ]; then echo "0 NA NA NA"; return; fi
    awk -F';' -v name="$name" 'NR>1 && $3==name { print $2+0 }' "$file" | percentiles
}

# Percentiles of column $2 (2: INVITE->180, 3: INVITE->200) of call_latency.csv.
msg_percentiles() {
    awk -F';' -v c="$2" '$c != "NA" { print $c }' "$1" | percentiles
}

# Achieved call attempt rate from INVITE send times (180 arrival - INVITE->180 time).
achieved_caps() {
    local file=$1
    if [ -z "$file" ] || [ ! -s "$file" ]; then echo NA; return; fi
    awk -F';' 'NR>1 && $3=="ring" { t=$1-$2; if (!n || t<lo) lo=t; if (!n || t>hi) hi=t; n++ }
               END { if (n>1 && hi>lo) printf "%.1f\n", (n-1)*1000/(hi-lo); else print "NA" }' "$file"
}

now_s() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b-a }'; }

# ---------------------------------------------------------------- switch binary
if [ "$TARGET" = switch ]; then
    if [ -z "$SWITCH_BIN" ]; then
        SWITCH_BIN=$REPO_DIR/target/release/switchyard
        if [ ! -x "$SWITCH_BIN" ]; then
            echo "run.sh: $SWITCH_BIN missing, building (cargo build --release)" >&2
            (cd "$REPO_DIR" && cargo build --release --bin switchyard) >&2 || die "cargo build --release failed"
        elif [ -n "$(find "$REPO_DIR/src" "$REPO_DIR/Cargo.toml" -newer "$SWITCH_BIN" -print -quit 2>/dev/null)" ]; then
            echo "run.sh: WARNING: $SWITCH_BIN is older than the sources; run cargo build --release" >&2
        fi
    fi
    [ -x "$SWITCH_BIN" ] || die "switch binary not executable: $SWITCH_BIN"
fi

# ---------------------------------------------------------------- callee
pick_port CALLEE_PORT
pick_port CALLEE_CP
pick_port CALLER_PORT
pick_port CALLER_CP

BUFF=4194304
CALL_S=$(( (DURATION_MS + 999) / 1000 ))
RECV_TIMEOUT_MS=20000

(
    cd "$OUT"
    exec sipp -sf "$SCEN_DIR/uas.xml" -i "$HOST" -p "$CALLEE_PORT" -cp "$CALLEE_CP" \
        -m "$CALLS" -nostdin -buff_size "$BUFF" \
        -recv_timeout $((DURATION_MS + RECV_TIMEOUT_MS)) \
        -trace_stat -stf "$OUT/callee_stat.csv" -fd 1 \
        -trace_err -error_file "$OUT/callee_errors.log" \
        -trace_screen -screen_file "$OUT/callee_screen.log"
) >"$OUT/callee.out" 2>&1 </dev/null &
CALLEE_PID=$!
CHILD_PIDS+=("$CALLEE_PID")
wait_udp_bound "$CALLEE_PORT" "$CALLEE_PID" "SIPp callee"

# ---------------------------------------------------------------- switch
SW_PID=""
HTTP_ADDR=""
if [ "$TARGET" = switch ]; then
    pick_port SWITCH_SIP_PORT
    pick_port SWITCH_HTTP_PORT
    HTTP_ADDR=$HOST:$SWITCH_HTTP_PORT
    DATA_DIR=$OUT/switch-data
    rm -rf "$DATA_DIR"
    mkdir -p "$DATA_DIR"

    # Admission limits well above what this run offers, so nothing is refused.
    MAX_CALLS=$(awk -v r="$RATE" -v d="$DURATION_MS" 'BEGIN { m=int(r*(d/1000+40)*2); print (m>20000)?m:20000 }')
    CPS=$(awk -v r="$RATE" 'BEGIN { c=int(r*4); print (c>5000)?c:5000 }')
    [ -z "$ADM_MAX_CALLS" ] || MAX_CALLS=$ADM_MAX_CALLS
    [ -z "$ADM_CPS" ] || CPS=$ADM_CPS
    cat >"$OUT/switch.toml" <<EOF
# Written by load/run.sh: everything goes to the SIPp callee.
# SIPp runs on loopback: its addresses are trusted peers (nothing is by default;
# untrusted callers reach only tenants' numbers and users, never a route).
[security]
trusted = ["127.0.0.0/8"]
[admission]
max_calls = $MAX_CALLS
cps = $CPS
per_source_cps = 0
# SIPp sends far above a phone's rate from loopback: never banned (README "The edge").
[security.flood]
enabled = $DEFENCE
exempt = ["127.0.0.0/8"]
[security.scanners]
enabled = $DEFENCE

[[routes]]
prefix = ""
target = "sip:$HOST:$CALLEE_PORT"
EOF
    if [ -n "$PRE_EDGE" ]; then
        # Only [admission] and the route: a pre-issue-16 switch knows no [security].
        awk '/^\[security/ { skip = 1; next } /^\[/ { skip = 0 } !skip' "$OUT/switch.toml" >"$OUT/switch.toml.new"
        mv "$OUT/switch.toml.new" "$OUT/switch.toml"
    fi

    NO_COLOR=1 "$SWITCH_BIN" --config "$OUT/switch.toml" --sip-listen "udp:$HOST:$SWITCH_SIP_PORT" \
        --http-listen "$HTTP_ADDR" --data-dir "$DATA_DIR" >"$OUT/switch.log" 2>&1 </dev/null &
    SW_PID=$!
    CHILD_PIDS+=("$SW_PID")

    healthy=""
    for _ in $(seq 1 150); do
        kill -0 "$SW_PID" 2>/dev/null || { tail -20 "$OUT/switch.log" >&2; die "switch exited during start-up (log: $OUT/switch.log)"; }
        if curl -sf --max-time 1 "http://$HTTP_ADDR/health" >/dev/null 2>&1 && udp_bound "$SWITCH_SIP_PORT"; then
            healthy=1
            break
        fi
        sleep 0.2
    done
    [ -n "$healthy" ] || die "switch not healthy within 30 s (log: $OUT/switch.log)"
    DEST_PORT=$SWITCH_SIP_PORT
else
    DEST_PORT=$CALLEE_PORT
fi

# ---------------------------------------------------------------- peer (Kamailio)
# Kamailio forks its workers; SUT_PID is the main process and the whole
# family (main + children) is what CPU and memory are summed over.
PEER_PID=""
KAM_CTL=""
if [ "$TARGET" = peer ]; then
    pick_port PEER_SIP_PORT
    KAM_RUN=$OUT/kamailio-run
    mkdir -p "$KAM_RUN"
    KAM_CTL=unix:$KAM_RUN/kamailio.ctl
    # -b: the same 4 MiB UDP receive buffer SIPp gets (Kamailio's default
    # probe stops at 256 KiB).
    kamailio -f "$LOAD_DIR/peers/kamailio.cfg" -DD -E -Y "$KAM_RUN" -m "$PEER_SHM_MB" -M 32 -b "$BUFF" \
        -l "udp:$HOST:$PEER_SIP_PORT" \
        -A "CALLEE=\"sip:$HOST:$CALLEE_PORT\"" -A "CTL=\"$KAM_CTL\"" \
        >"$OUT/kamailio.log" 2>&1 </dev/null &
    PEER_PID=$!
    CHILD_PIDS+=("$PEER_PID")
    wait_udp_bound "$PEER_SIP_PORT" "$PEER_PID" "kamailio"
    # The ctl socket appears once the workers are up.
    for _ in $(seq 1 50); do
        kamcmd -s "$KAM_CTL" core.version >/dev/null 2>&1 && break
        sleep 0.1
    done
    DEST_PORT=$PEER_SIP_PORT
fi
SUT_PID=${SW_PID:-$PEER_PID}

# Pids of the system under test: the switch, or Kamailio and its children.
sut_pids() {
    [ -n "$SUT_PID" ] || return 0
    echo "$SUT_PID"
    [ -z "$PEER_PID" ] || pgrep -P "$PEER_PID" || true
}

# CPU ticks summed over the system under test.
sut_ticks() {
    local pid t sum=0 any=""
    for pid in $(sut_pids); do
        t=$(cpu_ticks "$pid") || continue
        sum=$((sum + t)); any=1
    done
    [ -n "$any" ] && echo "$sum" || return 1
}

# Memory of the system under test in kB: the switch's VmRSS; for Kamailio
# the sum of its processes' Pss (proportional set size), because its
# workers share one shared-memory pool that VmRSS would count once per
# process.
sut_mem_kb() {
    if [ -n "$PEER_PID" ]; then
        local pid sum=0 v
        for pid in $(sut_pids); do
            v=$(awk '$1=="Pss:" { print $2 }' "/proc/$pid/smaps_rollup" 2>/dev/null) || continue
            sum=$((sum + ${v:-0}))
        done
        echo "$sum"
    else
        status_kb "$SUT_PID" VmRSS
    fi
}

# Concurrent calls the system under test holds: the switch's calls_active,
# Kamailio's active dialogs (dialog module statistic, via kamcmd).
kam_active_dialogs() {
    kamcmd -s "$KAM_CTL" stats.get_statistics active_dialogs 2>/dev/null \
        | awk -F'= *' '/active_dialogs/ { print $2+0; f=1 } END { if (!f) print "NA" }'
}

# ---------------------------------------------------------------- caller
RCVBUF_BEFORE=$(rcvbuf_errors)
CPU_BEFORE=""
RSS_BEFORE_KB=NA
if [ -n "$SW_PID" ]; then
    scrape "$OUT/metrics_before.txt" || die "GET /metrics failed before the run"
fi
if [ -n "$SUT_PID" ]; then
    CPU_BEFORE=$(sut_ticks)
    RSS_BEFORE_KB=$(sut_mem_kb)
fi

# SIPp writes the rtt file every -rtt_freq values and drops the remainder at
# exit, so every value is written at once (two small writes per call).
RTT_FREQ=1
HARD_TIMEOUT_S=$(awk -v c="$CALLS" -v r="$RATE" -v d="$CALL_S" 'BEGIN { t=c/r; if (t>int(t)) t=int(t)+1; print t+d+30 }')

MSG_TRACE_ARGS=()
if [ -n "$LATENCY_TRACE" ]; then
    MSG_TRACE_ARGS=(-trace_msg -message_file "$OUT/caller_msgs.log")
fi
UAC=$SCEN_DIR/uac.xml
UAC_ARGS=()
if [ -n "$OVERLOAD" ]; then
    UAC=$SCEN_DIR/uac_overload.xml
elif [ "$TARGET" = peer ]; then
    # Kamailio's two workers may forward the 200 before the 180.
    UAC=$SCEN_DIR/uac_peer.xml
fi
if [ "$TARGET" = peer ]; then
    UAC_ARGS=(-default_behaviors all,-abortunexp)
fi

T_START=$(now_s)
(
    cd "$OUT"
    exec sipp "$HOST:$DEST_PORT" -sf "$UAC" -s 1000 -i "$HOST" "${UAC_ARGS[@]}" \
        -p "$CALLER_PORT" -cp "$CALLER_CP" \
        -m "$CALLS" -l "$CALLS" -r "$RATE" -rp 1000 -d "$DURATION_MS" -nostdin -buff_size "$BUFF" \
        -recv_timeout "$RECV_TIMEOUT_MS" \
        -trace_stat -stf "$OUT/caller_stat.csv" -fd 1 \
        -trace_rtt -rtt_freq "$RTT_FREQ" \
        -trace_err -error_file "$OUT/caller_errors.log" \
        -trace_screen -screen_file "$OUT/caller_screen.log" "${MSG_TRACE_ARGS[@]}"
) >"$OUT/caller.out" 2>&1 </dev/null &
CALLER_PID=$!
CHILD_PIDS+=("$CALLER_PID")

echo "run.sh: $TARGET run: $CALLS calls at $RATE CAPS, ${DURATION_MS} ms each; output in $OUT" >&2

# Sample the system under test once a second while the caller runs.
SAMPLES=$OUT/${TARGET}_samples.csv
[ -z "$SUT_PID" ] || echo "t_s;cpu_ticks;rss_kb;calls_active;transactions_active" >"$SAMPLES"
TIMED_OUT=""
SW_DIED=""
deadline=$(( $(date +%s) + HARD_TIMEOUT_S ))
CALLER_TICKS=NA
CALLEE_TICKS=NA
BUILD_SEEN=0
while kill -0 "$CALLER_PID" 2>/dev/null; do
    # A compile during the run steals CPU from the measurement: flag it.
    if pgrep -x rustc >/dev/null || pgrep -x cargo >/dev/null; then BUILD_SEEN=1; fi
    CALLER_TICKS=$(cpu_ticks "$CALLER_PID" || echo "$CALLER_TICKS")
    CALLEE_TICKS=$(cpu_ticks "$CALLEE_PID" || echo "$CALLEE_TICKS")
    if [ "$(date +%s)" -ge "$deadline" ]; then
        TIMED_OUT=1
        echo "run.sh: caller still running after ${HARD_TIMEOUT_S} s, stopping it" >&2
        kill -USR1 "$CALLER_PID" 2>/dev/null || true   # SIPp: stop calling, dump stats, quit
        for _ in $(seq 1 25); do kill -0 "$CALLER_PID" 2>/dev/null || break; sleep 0.2; done
        kill -KILL "$CALLER_PID" 2>/dev/null || true
        break
    fi
    if [ -n "$SUT_PID" ]; then
        if ! kill -0 "$SUT_PID" 2>/dev/null; then
            SW_DIED=1
        else
            t=$(elapsed "$T_START" "$(now_s)")
            ticks=$(sut_ticks || echo NA)
            rss=$(sut_mem_kb || echo NA)
            if [ -n "$PEER_PID" ]; then
                ca=$(kam_active_dialogs); ta=NA
            elif scrape "$OUT/metrics_now.txt"; then
                ca=$(metric_value switchyard_calls_active "$OUT/metrics_now.txt")
                ta=$(metric_value switchyard_transactions_active "$OUT/metrics_now.txt")
            else
                ca=NA; ta=NA
            fi
            echo "$t;$ticks;$rss;$ca;$ta" >>"$SAMPLES"
        fi
    fi
    sleep 1
done
CALLER_RC=0
wait "$CALLER_PID" 2>/dev/null || CALLER_RC=$?
T_END=$(now_s)
WALL_S=$(elapsed "$T_START" "$T_END")

# ---------------------------------------------------------------- after the run
SW_CPU_S=NA; SW_PEAK_RSS_KB=NA; SW_HWM_KB=NA; CA_AFTER=NA; TA_AFTER=NA; DRAIN_S=NA
if [ -n "$PEER_PID" ]; then
    if kill -0 "$PEER_PID" 2>/dev/null; then
        CPU_AFTER=$(sut_ticks)
        SW_CPU_S=$(awk -v a="$CPU_BEFORE" -v b="$CPU_AFTER" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.2f", (b-a)/hz }')
        SW_PEAK_RSS_KB=$(awk -F';' 'NR>1 && $3+0>m { m=$3+0 } END { print m+0 }' "$SAMPLES")
        CA_AFTER=$(kam_active_dialogs)
    else
        SW_DIED=1
    fi
fi
if [ -n "$SW_PID" ]; then
    if kill -0 "$SW_PID" 2>/dev/null; then
        CPU_AFTER=$(cpu_ticks "$SW_PID")
        SW_HWM_KB=$(status_kb "$SW_PID" VmHWM)
        SW_CPU_S=$(awk -v a="$CPU_BEFORE" -v b="$CPU_AFTER" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.2f", (b-a)/hz }')
        SW_PEAK_RSS_KB=$(awk -F';' 'NR>1 && $3+0>m { m=$3+0 } END { print m+0 }' "$SAMPLES")
        # calls_active and transactions_active must fall back to 0 (transactions
        # linger up to Timer J/K, 32 s on UDP).
        T_DRAIN=$(now_s)
        for _ in $(seq 1 80); do
            if scrape "$OUT/metrics_after.txt"; then
                CA_AFTER=$(metric_value switchyard_calls_active "$OUT/metrics_after.txt")
                TA_AFTER=$(metric_value switchyard_transactions_active "$OUT/metrics_after.txt")
                if [ "$CA_AFTER" = 0 ] && { [ -z "$TX_DRAIN" ] || [ "$TA_AFTER" = 0 ] || [ "$TA_AFTER" = NA ]; }; then
                    break
                fi
                [ "$CA_AFTER" = NA ] && break
            fi
            kill -0 "$SW_PID" 2>/dev/null || { SW_DIED=1; break; }
            sleep 0.5
        done
        DRAIN_S=$(elapsed "$T_DRAIN" "$(now_s)")
    else
        SW_DIED=1
    fi
fi

# The callee stops by itself after -m calls; a callee that got fewer calls
# (e.g. some were refused by the switch) is told to quit.
for _ in $(seq 1 75); do
    CALLEE_TICKS=$(cpu_ticks "$CALLEE_PID" || echo "$CALLEE_TICKS")
    kill -0 "$CALLEE_PID" 2>/dev/null || break
    sleep 0.2
done
if kill -0 "$CALLEE_PID" 2>/dev/null; then
    kill -USR1 "$CALLEE_PID" 2>/dev/null || true
    for _ in $(seq 1 25); do kill -0 "$CALLEE_PID" 2>/dev/null || break; sleep 0.2; done
fi
kill -KILL "$CALLEE_PID" 2>/dev/null || true
wait "$CALLEE_PID" 2>/dev/null || true

RCVBUF_AFTER=$(rcvbuf_errors)

# ---------------------------------------------------------------- report
CS=$OUT/caller_stat.csv
ES=$OUT/callee_stat.csv
RTT_FILE=$(ls -1 "$OUT"/uac_*_rtt.csv 2>/dev/null | head -1 || true)

ATTEMPTED=$(stat_col "$CS" "OutgoingCall(C)")
SUCCESS=$(stat_col "$CS" "SuccessfulCall(C)")
FAILED=$(stat_col "$CS" "FailedCall(C)")
RETRANS_CALLER=$(stat_col "$CS" "Retransmissions(C)")
PEAK_CALLER=$(stat_col "$CS" CurrentCall max)
CALLEE_IN=$(stat_col "$ES" "IncomingCall(C)")
CALLEE_OK=$(stat_col "$ES" "SuccessfulCall(C)")
CALLEE_FAILED=$(stat_col "$ES" "FailedCall(C)")
RETRANS_CALLEE=$(stat_col "$ES" "Retransmissions(C)")
CALLER_UNEXPECTED=$(stat_col "$CS" "FailedUnexpectedMessage(C)")
CALLER_RECV_TIMEOUT=$(stat_col "$CS" "FailedTimeoutOnRecv(C)")
CALLER_MAX_RETRANS=$(stat_col "$CS" "FailedMaxUDPRetrans(C)")
CAPS=$(achieved_caps "$RTT_FILE")
read -r RING_N RING_P50 RING_P99 RING_P999 RING_MAX <<<"$(rtd_percentiles "$RTT_FILE" ring)"
read -r ANS_N ANS_P50 ANS_P99 ANS_P999 ANS_MAX <<<"$(rtd_percentiles "$RTT_FILE" answer)"
if [ -n "$LATENCY_TRACE" ] && [ -s "$OUT/caller_msgs.log" ]; then
    awk -f "$LOAD_DIR/lib/msg_latency.awk" "$OUT/caller_msgs.log" >"$OUT/call_latency.csv"
    read -r MRING_N MRING_P50 MRING_P99 MRING_P999 MRING_MAX <<<"$(msg_percentiles "$OUT/call_latency.csv" 2)"
    read -r MANS_N MANS_P50 MANS_P99 MANS_P999 MANS_MAX <<<"$(msg_percentiles "$OUT/call_latency.csv" 3)"
fi
INCOMPLETE=NA
if [ "$ATTEMPTED" != NA ] && [ "$SUCCESS" != NA ] && [ "$FAILED" != NA ]; then
    INCOMPLETE=$((ATTEMPTED - SUCCESS - FAILED))
fi
# Overload runs: a call the switch refused got a 503 (its "refuse" time is
# in the rtt file) and counts as successful in SIPp's stats; every other
# attempt was accepted.
REF_N=0; REF_P50=NA; REF_P99=NA; REF_P999=NA; REF_MAX=NA
REFUSED=0; ACCEPTED=$ATTEMPTED
if [ -n "$OVERLOAD" ]; then
    read -r REF_N REF_P50 REF_P99 REF_P999 REF_MAX <<<"$(rtd_percentiles "$RTT_FILE" refuse)"
    REFUSED=$REF_N
    [ "$ATTEMPTED" = NA ] || ACCEPTED=$((ATTEMPTED - REFUSED))
fi
HRING_N=0; HRING_P50=NA; HRING_P99=NA; HRING_P999=NA
HANS_N=0; HANS_P50=NA; HANS_P99=NA; HANS_P999=NA
ADM_REFUSED=NA
if [ "$TARGET" = switch ] && [ -s "$OUT/metrics_after.txt" ]; then
    read -r HRING_N HRING_P50 HRING_P99 HRING_P999 <<<"$(hist_quantiles switchyard_call_setup_seconds ringing "$OUT/metrics_before.txt" "$OUT/metrics_after.txt")"
    read -r HANS_N HANS_P50 HANS_P99 HANS_P999 <<<"$(hist_quantiles switchyard_call_setup_seconds answer "$OUT/metrics_before.txt" "$OUT/metrics_after.txt")"
    a=$(metric_value switchyard_admission_refused_total "$OUT/metrics_after.txt")
    b=$(metric_value switchyard_admission_refused_total "$OUT/metrics_before.txt")
    if [ "$a" != NA ]; then
        [ "$b" = NA ] && b=0
        ADM_REFUSED=$((a - b))
    elif [ "$b" = NA ]; then
        ADM_REFUSED=0   # the counter appears at the first refusal
    fi
fi

VERDICT=PASS
REASONS=()
fail() { VERDICT=FAIL; REASONS+=("$1"); }
[ "$SUCCESS" = "$CALLS" ] || fail "successful calls $SUCCESS of $CALLS"
[ "$TARGET" != peer ] || [ -z "$SW_DIED" ] || fail "kamailio died during the run (log: $OUT/kamailio.log)"
[ "$FAILED" = 0 ] || fail "caller failed calls: $FAILED"
[ "$CALLEE_FAILED" = 0 ] || [ "$CALLEE_FAILED" = NA ] || fail "callee failed calls: $CALLEE_FAILED"
[ -z "$TIMED_OUT" ] || fail "hard timeout (${HARD_TIMEOUT_S} s) reached"
[ "$CALLER_RC" = 0 ] || fail "SIPp caller exit status $CALLER_RC"
DRAINED=n/a
if [ "$TARGET" = switch ]; then
    [ -z "$SW_DIED" ] || fail "switch process died during the run (log: $OUT/switch.log)"
    if [ "$CA_AFTER" = 0 ]; then
        DRAINED="calls_active=0"
    else
        DRAINED="calls_active=$CA_AFTER"
        fail "switchyard_calls_active is $CA_AFTER after the run, not 0"
    fi
    if [ "$TA_AFTER" = 0 ]; then
        DRAINED="$DRAINED transactions_active=0"
    else
        DRAINED="$DRAINED transactions_active=$TA_AFTER (WARNING: not 0)"
    fi
    DRAINED="$DRAINED after ${DRAIN_S} s"
fi

kib_mib() { [ "$1" = NA ] || [ -z "$1" ] && echo NA || awk -v k="$1" 'BEGIN { printf "%.1f MiB", k/1024 }'; }
per_call_us() {
    awk -v s="$1" -v n="$2" 'BEGIN { if (s=="NA" || n=="NA" || n+0==0) print "NA"; else printf "%.0f", s*1e6/n }'
}
# (peak - before) / peak concurrent calls; the peak is the switch's VmHWM,
# or the sampled peak for Kamailio (summed Pss).
mem_per_call() {
    local peak=$SW_HWM_KB
    [ "$peak" != NA ] || peak=$SW_PEAK_RSS_KB
    awk -v p="$peak" -v b="${RSS_BEFORE_KB:-NA}" -v n="$PEAK_SW_CALLS" 'BEGIN {
        if (p=="NA" || p=="" || b=="NA" || n=="NA" || n+0==0) print "NA"
        else printf "%.1f KiB", (p-b)/n }'
}
# WARN and ERROR lines in a tracing log (colour codes stripped).
log_levels() {
    sed 's/\x1b\[[0-9;]*m//g' "$1" 2>/dev/null |
        awk '$2=="WARN" { w++ } $2=="ERROR" { e++ } END { printf "%d WARN, %d ERROR lines\n", w, e }'
}
ticks_s() { awk -v t="$1" -v hz="$(getconf CLK_TCK)" 'BEGIN { if (t=="NA") print "NA"; else printf "%.2f", t/hz }'; }
PEAK_SW_CALLS=NA
if [ -n "$SUT_PID" ]; then
    PEAK_SW_CALLS=$(awk -F';' 'NR>1 && $4!="NA" { if (!s || $4+0>m) m=$4+0; s=1 } END { print s ? m : "NA" }' "$SAMPLES")
fi

{
    echo "== switchyard load report ($(date -u +%Y-%m-%dT%H:%M:%SZ)) =="
    if [ "$TARGET" = switch ]; then
        echo "target                  switch udp:$HOST:$SWITCH_SIP_PORT -> callee udp:$HOST:$CALLEE_PORT ($SWITCH_BIN)"
    elif [ "$TARGET" = peer ]; then
        echo "target                  peer: kamailio udp:$HOST:$PEER_SIP_PORT (load/peers/kamailio.cfg) -> callee udp:$HOST:$CALLEE_PORT"
    else
        echo "target                  direct: caller -> callee udp:$HOST:$CALLEE_PORT (no switch)"
    fi
    echo "offered                 $CALLS calls at $RATE CAPS, call duration $DURATION_MS ms"
    echo "calls attempted         $ATTEMPTED"
    echo "calls successful        $SUCCESS"
    echo "calls failed            $FAILED (unexpected msg $CALLER_UNEXPECTED, recv timeout $CALLER_RECV_TIMEOUT, max retrans $CALLER_MAX_RETRANS; unfinished $INCOMPLETE)"
    echo "callee                  received $CALLEE_IN, successful $CALLEE_OK, failed $CALLEE_FAILED"
    echo "retransmissions         caller $RETRANS_CALLER, callee $RETRANS_CALLEE"
    if [ -n "$OVERLOAD" ]; then
        echo "overload                accepted $ACCEPTED, refused $REFUSED (503 seen by SIPp), switchyard_admission_refused_total +$ADM_REFUSED"
    fi
    echo "achieved CAPS           $CAPS (wall time ${WALL_S} s)"
    if [ "$TARGET" = switch ]; then
        echo "peak concurrent calls   caller $PEAK_CALLER (SIPp), switch $PEAK_SW_CALLS (calls_active); 1 s samples"
    elif [ "$TARGET" = peer ]; then
        echo "peak concurrent calls   caller $PEAK_CALLER (SIPp), kamailio $PEAK_SW_CALLS (active_dialogs); 1 s samples"
    else
        echo "peak concurrent calls   caller $PEAK_CALLER (SIPp, 1 s samples)"
    fi
    echo "INVITE->180 ms          p50 $RING_P50  p99 $RING_P99  p99.9 $RING_P999  max $RING_MAX  (n=$RING_N)"
    echo "INVITE->200 ms          p50 $ANS_P50  p99 $ANS_P99  p99.9 $ANS_P999  max $ANS_MAX  (n=$ANS_N)"
    if [ -n "$OVERLOAD" ]; then
        echo "INVITE->503 ms          p50 $REF_P50  p99 $REF_P99  p99.9 $REF_P999  max $REF_MAX  (n=$REF_N)"
    fi
    if [ -n "${MRING_N:-}" ]; then
        echo "INVITE->180 ms (msg)    p50 $MRING_P50  p99 $MRING_P99  p99.9 $MRING_P999  max $MRING_MAX  (n=$MRING_N, us clock)"
        echo "INVITE->200 ms (msg)    p50 $MANS_P50  p99 $MANS_P99  p99.9 $MANS_P999  max $MANS_MAX  (n=$MANS_N, us clock)"
    fi
    if [ "$TARGET" = switch ]; then
        echo "switch setup ms         ringing p50 $HRING_P50 p99 $HRING_P99 p99.9 $HRING_P999 (n=$HRING_N); answer p50 $HANS_P50 p99 $HANS_P99 p99.9 $HANS_P999 (n=$HANS_N) (switchyard_call_setup_seconds buckets)"
    fi
    if [ "$TARGET" = switch ]; then
        echo "switch CPU              $SW_CPU_S s ($(per_call_us "$SW_CPU_S" "$ATTEMPTED") us per call attempt)"
        echo "switch RSS              peak $(kib_mib "$SW_PEAK_RSS_KB") (sampled), VmHWM $(kib_mib "$SW_HWM_KB"), before $(kib_mib "$RSS_BEFORE_KB")"
        echo "switch memory per call  $(mem_per_call) (peak RSS - RSS before) / peak calls_active"
        echo "switch drained          $DRAINED"
        echo "switch log              $(log_levels "$OUT/switch.log")"
    fi
    if [ "$TARGET" = peer ]; then
        echo "kamailio CPU            $SW_CPU_S s, all processes ($(per_call_us "$SW_CPU_S" "$ATTEMPTED") us per call attempt)"
        echo "kamailio memory         peak $(kib_mib "$SW_PEAK_RSS_KB") (sampled sum of Pss), before $(kib_mib "$RSS_BEFORE_KB")"
        echo "kamailio mem per call   $(mem_per_call) (peak - before) / peak active_dialogs"
        echo "kamailio active dialogs $CA_AFTER after the run"
    fi
    if [ "$TARGET" = switch ] && [ -s "$OUT/metrics_after.txt" ]; then
        counter_deltas "$OUT/metrics_before.txt" "$OUT/metrics_after.txt" >"$OUT/metrics_delta.txt" || true
        echo "switch counters         $(wc -l <"$OUT/metrics_delta.txt") changed (all in metrics_delta.txt):"
        head -25 "$OUT/metrics_delta.txt" | sed 's/^/    /'
    fi
    echo "SIPp CPU                caller $(ticks_s "$CALLER_TICKS") s, callee $(ticks_s "$CALLEE_TICKS") s (last samples, up to 1 s short)"
    echo "UDP RcvbufErrors        +$((RCVBUF_AFTER - RCVBUF_BEFORE)) (host-wide, /proc/net/snmp)"
    [ "$BUILD_SEEN" = 0 ] || echo "WARNING                 rustc/cargo ran during the run: CPU and latency figures are disturbed"
    if [ "$VERDICT" = PASS ]; then
        echo "result                  PASS"
    else
        joined=$(printf '%s; ' "${REASONS[@]}")
        echo "result                  FAIL: ${joined%; }"
    fi
    echo "files                   $OUT"
} | tee "$OUT/report.txt"

# Every figure, machine-readable, for load/bench.sh.
{
    kv() { printf '%s=%s\n' "$1" "${2:-NA}"; }
    kv TARGET "$TARGET"; kv RATE "$RATE"; kv DURATION_MS "$DURATION_MS"; kv CALLS "$CALLS"
    [ "$TARGET" != peer ] || kv PEER_SHM_MB "$PEER_SHM_MB"
    kv OVERLOAD "${OVERLOAD:-0}"; kv ADMISSION_CPS "${CPS:-NA}"
    kv ATTEMPTED "$ATTEMPTED"; kv SUCCESS "$SUCCESS"; kv FAILED "$FAILED"; kv UNFINISHED "$INCOMPLETE"
    kv FAILED_UNEXPECTED "$CALLER_UNEXPECTED"; kv FAILED_RECV_TIMEOUT "$CALLER_RECV_TIMEOUT"
    kv FAILED_MAX_RETRANS "$CALLER_MAX_RETRANS"
    kv CALLEE_IN "$CALLEE_IN"; kv CALLEE_FAILED "$CALLEE_FAILED"
    kv RETRANS_CALLER "$RETRANS_CALLER"; kv RETRANS_CALLEE "$RETRANS_CALLEE"
    kv ACCEPTED "$ACCEPTED"; kv REFUSED "$REFUSED"; kv ADM_REFUSED "$ADM_REFUSED"
    kv ACHIEVED_CAPS "$CAPS"; kv WALL_S "$WALL_S"
    kv PEAK_CALLER "$PEAK_CALLER"; kv PEAK_SUT "$PEAK_SW_CALLS"
    kv RING_N "$RING_N"; kv RING_P50 "$RING_P50"; kv RING_P99 "$RING_P99"; kv RING_P999 "$RING_P999"; kv RING_MAX "$RING_MAX"
    kv ANS_N "$ANS_N"; kv ANS_P50 "$ANS_P50"; kv ANS_P99 "$ANS_P99"; kv ANS_P999 "$ANS_P999"; kv ANS_MAX "$ANS_MAX"
    kv REF_N "$REF_N"; kv REF_P50 "$REF_P50"; kv REF_P99 "$REF_P99"; kv REF_P999 "$REF_P999"; kv REF_MAX "$REF_MAX"
    kv HRING_P50 "$HRING_P50"; kv HRING_P99 "$HRING_P99"; kv HRING_P999 "$HRING_P999"
    kv HANS_P50 "$HANS_P50"; kv HANS_P99 "$HANS_P99"; kv HANS_P999 "$HANS_P999"
    kv SUT_CPU_S "$SW_CPU_S"
    kv SUT_MEM_BEFORE_KB "$RSS_BEFORE_KB"; kv SUT_MEM_PEAK_KB "$SW_PEAK_RSS_KB"; kv SUT_HWM_KB "$SW_HWM_KB"
    kv CALLER_CPU_S "$(ticks_s "$CALLER_TICKS")"; kv CALLEE_CPU_S "$(ticks_s "$CALLEE_TICKS")"
    kv RCVBUF_ERRORS "$((RCVBUF_AFTER - RCVBUF_BEFORE))"
    kv BUILD_SEEN "$BUILD_SEEN"
    kv VERDICT "$VERDICT"
} >"$OUT/summary.env"

if [ "$VERDICT" != PASS ]; then
    for f in "$OUT/caller_errors.log" "$OUT/callee_errors.log"; do
        if [ -s "$f" ]; then
            echo "--- first lines of $f ---" >&2
            head -c 2000 "$f" | sed "s/aborting call/aborting call\n/g" >&2; echo >&2
        fi
    done
    exit 1
fi
exit 0
