#!/usr/bin/env bash
# Benchmark (issue 4): the machine's limit, switchyard and Kamailio, back to
# back, on loopback only, with bounded durations; one markdown table at the end.
#
#   load/bench.sh [--only limit|switch|open|peer[,...]] [--sustained-secs N]
#                 [--sweep "1000 2000 3000 4000"] [--sweep-secs N]
#                 [--overload-cps N] [--no-overload] [--quick]
#                 [--switch-bin PATH] [--before-bin PATH [--before-has-edge]]
#                 [--peer-shm-mb MB]
#                 [--out DIR]
#
# Targets (all: caller SIPp -> ... -> callee SIPp, load/run.sh does each run):
#   limit   SIPp caller -> SIPp callee directly: the machine's ceiling.
#   switch  SIPp caller -> switchyard (release build) -> SIPp callee, with
#           admission limits that never throttle ([admission] cps = 100000,
#           max_calls = 100000, per_source_cps = 0).
#   open    the switch with its edge defence off (run.sh --no-defence), the
#           sustained scenario only: the cost of the defence is switch / open
#           (issue 16: within 5 %).
#   before  with --before-bin PATH: an older build of the switch (before issue
#           16's [security], run.sh --pre-edge; with --before-has-edge a build
#           that has it, configured like the switch), sustained scenario only:
#           CPU and memory per call before and after a change, in one run.
#   peer    SIPp caller -> Kamailio (load/peers/kamailio.cfg: tm, rr, dialog)
#           -> SIPp callee.
# Scenarios per target:
#   sustained  500 CAPS, 20 s calls (10,000 concurrent), --sustained-secs of
#              arrivals [120].
#   sweep      2 s calls, each rate of --sweep for --sweep-secs of arrivals
#              [30], ascending, stopping after the first rate with a failed
#              call or a retransmission; the capacity is the highest clean rate.
#   overload   switch only: admission cps = the capacity found (or
#              --overload-cps), offered 2x that with 2 s calls for
#              --sweep-secs; 503s count as refused, not failed.
# --peer-shm-mb: Kamailio's shared memory, -m [1024] (see run.sh).
# --quick: 30 s sustained, sweep "1000 2000" of 10 s each (a try-out).
# Before each run it waits (up to 20 min) while rustc or cargo runs, so a
# build never shares the CPU with a measurement.
# Output: DIR [load/out/bench-<UTC time>] holds one run.sh directory per run
# and bench.md (the table, also printed). Exit status: 0 when it ran to the
# end (failed calls in a sweep are results, not errors); 2 on bad usage.
set -euo pipefail

usage() {
    awk 'NR == 1 { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "$0"
}

CMDLINE="$0 $*"
ONLY=""
SUSTAINED_SECS=120
SWEEP="1000 2000 3000 4000"
SWEEP_SECS=30
OVERLOAD_CPS=""
OVERLOAD=1
SWITCH_BIN=""
BEFORE_BIN=""
OUT=""
PEER_SHM_MB=1024
SUSTAINED_SET=""; SWEEP_SET=""; SWEEP_SECS_SET=""

while [ $# -gt 0 ]; do
    case "$1" in
        --only) ONLY=${2:?--only needs a value}; shift 2 ;;
        --sustained-secs) SUSTAINED_SECS=${2:?--sustained-secs needs a value}; SUSTAINED_SET=1; shift 2 ;;
        --sweep) SWEEP=${2:?--sweep needs a value}; SWEEP_SET=1; shift 2 ;;
        --sweep-secs) SWEEP_SECS=${2:?--sweep-secs needs a value}; SWEEP_SECS_SET=1; shift 2 ;;
        --overload-cps) OVERLOAD_CPS=${2:?--overload-cps needs a value}; shift 2 ;;
        --no-overload) OVERLOAD=""; shift ;;
        --quick) QUICK=1; shift ;;
        --switch-bin) SWITCH_BIN=${2:?--switch-bin needs a value}; shift 2 ;;
        --before-bin) BEFORE_BIN=${2:?--before-bin needs a value}; shift 2 ;;
        --before-has-edge) BEFORE_EDGE=1; shift ;;
        --out) OUT=${2:?--out needs a value}; shift 2 ;;
        --peer-shm-mb) PEER_SHM_MB=${2:?--peer-shm-mb needs a value}; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "bench.sh: unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
done
# --quick changes only what was not given explicitly.
if [ -n "${QUICK:-}" ]; then
    [ -n "$SUSTAINED_SET" ] || SUSTAINED_SECS=30
    [ -n "$SWEEP_SET" ] || SWEEP="1000 2000"
    [ -n "$SWEEP_SECS_SET" ] || SWEEP_SECS=10
fi

die() { echo "bench.sh: $*" >&2; exit 2; }
ONLY=${ONLY//,/ }
for t in $ONLY; do
    case "$t" in limit|switch|open|before|peer) ;; *) die "--only takes limit, switch, open, before and/or peer" ;; esac
done
[[ "$SUSTAINED_SECS" =~ ^[1-9][0-9]*$ ]] || die "--sustained-secs must be a positive whole number"
[[ "$SWEEP_SECS" =~ ^[1-9][0-9]*$ ]] || die "--sweep-secs must be a positive whole number"
for r in $SWEEP; do [[ "$r" =~ ^[1-9][0-9]*$ ]] || die "--sweep rates must be positive whole numbers"; done
[ -n "$SWEEP" ] || die "--sweep needs at least one rate"
[ -z "$OVERLOAD_CPS" ] || [[ "$OVERLOAD_CPS" =~ ^[1-9][0-9]*$ ]] || die "--overload-cps must be a positive whole number"

LOAD_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(dirname "$LOAD_DIR")
[ -n "$OUT" ] || OUT=$LOAD_DIR/out/bench-$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
# Always in this order, so the limit is measured first.
TARGETS=""
for t in limit switch open before peer; do
    [ -n "$ONLY" ] && [[ " $ONLY " != *" $t "* ]] && continue
    [ "$t" != before ] || [ -n "$BEFORE_BIN" ] || continue
    TARGETS="$TARGETS $t"
done
TARGETS=${TARGETS# }
SWITCH_ARGS=()
if [[ " $TARGETS " == *" switch "* || " $TARGETS " == *" open "* ]]; then
    [ -n "$SWITCH_BIN" ] || SWITCH_BIN=$REPO_DIR/target/release/switchyard
    [ -x "$SWITCH_BIN" ] || die "switch binary not found: $SWITCH_BIN (cargo build --release)"
    SWITCH_ARGS=(--switch-bin "$SWITCH_BIN")
fi

SUSTAINED_RATE=500
SUSTAINED_CALL_MS=20000
SWEEP_CALL_MS=2000
BIG=100000   # admission limits that never throttle

log() { echo "bench.sh: $(date -u +%H:%M:%S) $*" >&2; }

# Waits while a build runs (a compile steals the CPU the measurement needs).
wait_no_build() {
    local waited=0
    while pgrep -x rustc >/dev/null || pgrep -x cargo >/dev/null; do
        [ "$waited" -eq 0 ] && log "a build is running (rustc/cargo); waiting"
        [ "$waited" -ge 1200 ] && { log "WARNING: still building after 20 min; measuring anyway"; return 1; }
        sleep 5; waited=$((waited + 5))
    done
    return 0
}

# Value of KEY in a run's summary.env ("NA" when absent).
get() { awk -F= -v k="$1" '$1==k { sub(/^[^=]*=/, ""); print; f=1 } END { if (!f) print "NA" }' "$2" 2>/dev/null || echo NA; }

ROWS=()      # one "name|dir" per finished run, in order
# run NAME RUN.SH-ARGS...: one run.sh invocation into $OUT/NAME.
run() {
    local name=$1 rc=0 note=""
    shift
    wait_no_build || note="build running"
    log "run $name: run.sh $*"
    "$LOAD_DIR/run.sh" --out "$OUT/$name" --no-tx-drain "$@" >"$OUT/$name.log" 2>&1 || rc=$?
    mkdir -p "$OUT/$name"
    [ -f "$OUT/$name/summary.env" ] || { echo "VERDICT=SETUP-FAILED(rc=$rc)" >"$OUT/$name/summary.env"; }
    [ -z "$note" ] || echo "NOTE=$note" >>"$OUT/$name/summary.env"
    ROWS+=("$name")
    log "run $name: $(get VERDICT "$OUT/$name/summary.env"), failed $(get FAILED "$OUT/$name/summary.env"), retrans $(get RETRANS_CALLER "$OUT/$name/summary.env")/$(get RETRANS_CALLEE "$OUT/$name/summary.env")"
}

# True when the run in dir $1 had every call succeed and no retransmission.
clean() {
    local f=$1/summary.env
    [ "$(get FAILED "$f")" = 0 ] && [ "$(get UNFINISHED "$f")" = 0 ] &&
        [ "$(get RETRANS_CALLER "$f")" = 0 ] && [ "$(get RETRANS_CALLEE "$f")" = 0 ] &&
        [ "$(get ATTEMPTED "$f")" = "$(get CALLS "$f")" ]
}

declare -A CAPACITY SUSTAINED_DIR
for t in $TARGETS; do
    case "$t" in
        limit) targs=(--target direct) ;;
        switch) targs=(--target switch "${SWITCH_ARGS[@]}" --admission-cps $BIG --admission-max-calls $BIG) ;;
        before) targs=(--target switch --switch-bin "$BEFORE_BIN" --admission-cps $BIG --admission-max-calls $BIG)
                [ -n "${BEFORE_EDGE:-}" ] || targs+=(--pre-edge) ;;
        open) targs=(--target switch "${SWITCH_ARGS[@]}" --admission-cps $BIG --admission-max-calls $BIG --no-defence) ;;
        peer) targs=(--target peer --peer-shm-mb "$PEER_SHM_MB") ;;
    esac
    run "$t-sustained" "${targs[@]}" --rate $SUSTAINED_RATE --duration-ms $SUSTAINED_CALL_MS \
        --calls $((SUSTAINED_RATE * SUSTAINED_SECS))
    SUSTAINED_DIR[$t]=$OUT/$t-sustained
    CAPACITY[$t]=""
    [ "$t" != open ] && [ "$t" != before ] || continue   # compared at the sustained rate only
    for r in $SWEEP; do
        run "$t-sweep-$r" "${targs[@]}" --rate "$r" --duration-ms $SWEEP_CALL_MS --calls $((r * SWEEP_SECS))
        if clean "$OUT/$t-sweep-$r"; then
            CAPACITY[$t]=$r
        else
            break   # higher rates only get worse
        fi
    done
    if [ "$t" = switch ] && [ -n "$OVERLOAD" ]; then
        cap=${OVERLOAD_CPS:-${CAPACITY[switch]}}
        if [ -z "$cap" ]; then
            cap=$(( $(echo "$SWEEP" | tr ' ' '\n' | sort -n | head -1) / 2 ))
            log "no clean sweep rate; overload uses cps = $cap (half the lowest rate)"
        fi
        run "switch-overload-$cap" --target switch "${SWITCH_ARGS[@]}" --overload \
            --admission-cps "$cap" --admission-max-calls $BIG \
            --rate $((2 * cap)) --duration-ms $SWEEP_CALL_MS --calls $((2 * cap * SWEEP_SECS))
    fi
done

# ---------------------------------------------------------------- table
fmt3() { echo "$(get "${2}_P50" "$1")/$(get "${2}_P99" "$1")/$(get "${2}_P999" "$1")"; }
cpu_per_1k() {
    awk -v c="$(get SUT_CPU_S "$1")" -v n="$(get ATTEMPTED "$1")" \
        'BEGIN { if (c=="NA" || n=="NA" || n+0==0) print "NA"; else printf "%.2f", c*1000/n }'
}
sipp_cpu_per_1k() {
    awk -v a="$(get CALLER_CPU_S "$1")" -v b="$(get CALLEE_CPU_S "$1")" -v n="$(get ATTEMPTED "$1")" \
        'BEGIN { if (a=="NA" || b=="NA" || n+0==0) print "NA"; else printf "%.2f", (a+b)*1000/n }'
}
peak_mib() {
    local p
    p=$(get SUT_HWM_KB "$1"); [ "$p" != NA ] || p=$(get SUT_MEM_PEAK_KB "$1")
    awk -v p="$p" 'BEGIN { if (p=="NA" || p=="") print "NA"; else printf "%.1f", p/1024 }'
}
mem_per_call_kib() {
    local p
    p=$(get SUT_HWM_KB "$1"); [ "$p" != NA ] || p=$(get SUT_MEM_PEAK_KB "$1")
    awk -v p="$p" -v b="$(get SUT_MEM_BEFORE_KB "$1")" -v n="$(get PEAK_SUT "$1")" \
        'BEGIN { if (p=="NA" || b=="NA" || n=="NA" || n+0==0) print "NA"; else printf "%.1f", (p-b)/n }'
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a=="NA" || b=="NA" || a=="" || b=="" || b+0==0) print "n/a"; else printf "%.2f", a/b }'; }
peak_conc() { local s; s=$(get PEAK_SUT "$1"); [ "$s" = NA ] && get PEAK_CALLER "$1" || echo "$(get PEAK_CALLER "$1") / $s"; }

{
    echo "## load/bench.sh results"
    echo
    echo "- date: $(date -u +%Y-%m-%dT%H:%M:%SZ); command: \`$CMDLINE\`"
    echo "- machine: nproc $(nproc), $(uname -sr), net.core.rmem_max $(cat /proc/sys/net/core/rmem_max 2>/dev/null || echo NA)"
    [[ " $TARGETS " != *" peer "* ]] || echo "- Kamailio: load/peers/kamailio.cfg, 2 UDP workers, -m $PEER_SHM_MB -M 32"
    echo "- SIPp $(sipp -v 2>/dev/null | awk '/SIPp v/ { print $2; exit }'); $(kamailio -v 2>/dev/null | head -1)"
    if [ -n "$SWITCH_BIN" ]; then
        echo "- switch: $SWITCH_BIN built $(date -u -r "$SWITCH_BIN" +%Y-%m-%dT%H:%M:%SZ), repo HEAD $(git -C "$REPO_DIR" rev-parse --short HEAD 2>/dev/null || echo NA)"
    fi
    [ -z "$BEFORE_BIN" ] || echo "- before: $BEFORE_BIN built $(date -u -r "$BEFORE_BIN" +%Y-%m-%dT%H:%M:%SZ)"
    echo "- sustained: $SUSTAINED_RATE CAPS x ${SUSTAINED_SECS} s of arrivals, $((SUSTAINED_CALL_MS / 1000)) s calls; sweep: rates \"$SWEEP\", ${SWEEP_SECS} s each, $((SWEEP_CALL_MS / 1000)) s calls; runs in $OUT"
    echo
    echo "Latencies are SIPp's (4 ms clock steps) p50/p99/p99.9 in ms; \"switch 180/200\" are from the switch's own histogram"
    echo "switchyard_call_setup_seconds (p50/p99/p99.9, interpolated in buckets). CPU = user+system of the system under test"
    echo "(Kamailio: all its processes); memory: switch VmHWM, Kamailio sum of Pss; per call = (peak - before) / peak concurrent."
    echo "SIPp CPU = caller + callee CPU per 1,000 calls (the load itself). Peak concurrent = SIPp caller / system under test."
    echo
    echo "| run | offered / achieved CAPS | attempted | failed | retrans (caller/callee) | peak concurrent | INVITE→180 ms | INVITE→200 ms | switch 180 / 200 ms | CPU s / 1k calls | peak MiB | KiB / call | SIPp CPU s / 1k | RcvbufErrors | result |"
    echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    for name in "${ROWS[@]}"; do
        d=$OUT/$name; f=$d/summary.env
        sw="—"
        [[ "$name" == switch-* || "$name" == open-* || "$name" == before-* ]] && sw="$(fmt3 "$f" HRING) / $(fmt3 "$f" HANS)"
        res=$(get VERDICT "$f"); n=$(get NOTE "$f"); [ "$n" = NA ] || res="$res ($n)"
        [ "$(get BUILD_SEEN "$f")" != 1 ] || res="$res (a build ran during the run)"
        echo "| $name | $(get RATE "$f") / $(get ACHIEVED_CAPS "$f") | $(get ATTEMPTED "$f") | $(get FAILED "$f") | $(get RETRANS_CALLER "$f")/$(get RETRANS_CALLEE "$f") | $(peak_conc "$f") | $(fmt3 "$f" RING) | $(fmt3 "$f" ANS) | $sw | $(cpu_per_1k "$f") | $(peak_mib "$f") | $(mem_per_call_kib "$f") | $(sipp_cpu_per_1k "$f") | $(get RCVBUF_ERRORS "$f") | $res |"
    done
    echo
    for name in "${ROWS[@]}"; do
        [[ "$name" == switch-overload-* ]] || continue
        f=$OUT/$name/summary.env
        echo "Overload ($name): admission cps $(get ADMISSION_CPS "$f"), offered $(get RATE "$f") CAPS, $(get ATTEMPTED "$f") attempts:"
        echo "accepted $(get ACCEPTED "$f"), refused $(get REFUSED "$f") (503 seen by SIPp; switchyard_admission_refused_total +$(get ADM_REFUSED "$f")),"
        echo "failed $(get FAILED "$f") (accepted calls that did not complete), INVITE→503 ms p50/p99/p99.9 $(fmt3 "$f" REF),"
        echo "accepted INVITE→200 ms $(fmt3 "$f" ANS), CPU $(cpu_per_1k "$f") s per 1k attempts."
        echo
    done
    echo "| capacity (highest clean sweep rate, CAPS) | limit | switch | peer |"
    echo "|---|---|---|---|"
    capfmt() {
        local t=$1 top
        top=$(echo "$SWEEP" | tr ' ' '\n' | sort -n | tail -1)
        [[ " $TARGETS " == *" $t "* ]] || { echo "not run"; return; }
        if [ -z "${CAPACITY[$t]}" ]; then echo "< $(echo "$SWEEP" | tr ' ' '\n' | sort -n | head -1)"
        elif [ "${CAPACITY[$t]}" = "$top" ]; then echo "≥ ${CAPACITY[$t]}"
        else echo "${CAPACITY[$t]}"; fi
    }
    echo "| | $(capfmt limit) | $(capfmt switch) | $(capfmt peer) |"
    echo
    if [[ " $TARGETS " == *" switch "* ]]; then
        S=${SUSTAINED_DIR[switch]}/summary.env
        L=${SUSTAINED_DIR[limit]:-/nonexistent}/summary.env
        P=${SUSTAINED_DIR[peer]:-/nonexistent}/summary.env
        echo "| ratio (sustained run unless noted) | switchyard / limit | switchyard / peer |"
        echo "|---|---|---|"
        echo "| capacity (sweep) | $(ratio "${CAPACITY[switch]:-NA}" "${CAPACITY[limit]:-NA}") | $(ratio "${CAPACITY[switch]:-NA}" "${CAPACITY[peer]:-NA}") |"
        for k in RING_P50 RING_P99 RING_P999 ANS_P50 ANS_P99 ANS_P999; do
            echo "| $k ms | $(ratio "$(get $k "$S")" "$(get $k "$L")") | $(ratio "$(get $k "$S")" "$(get $k "$P")") |"
        done
        echo "| CPU s / 1k calls | — (limit has no system under test) | $(ratio "$(cpu_per_1k "$S")" "$(cpu_per_1k "$P")") |"
        echo "| peak memory | — | $(ratio "$(peak_mib "$S")" "$(peak_mib "$P")") |"
        echo "| memory / concurrent call | — | $(ratio "$(mem_per_call_kib "$S")" "$(mem_per_call_kib "$P")") |"
        echo
        if [ -n "${SUSTAINED_DIR[open]:-}" ]; then
            O=${SUSTAINED_DIR[open]}/summary.env
            echo "Cost of the edge defence (sustained runs): CPU s / 1k calls with it $(cpu_per_1k "$S"), without it $(cpu_per_1k "$O"): ratio $(ratio "$(cpu_per_1k "$S")" "$(cpu_per_1k "$O")")."
            echo
        fi
        if [ -n "${SUSTAINED_DIR[before]:-}" ]; then
            B=${SUSTAINED_DIR[before]}/summary.env
            echo "Before ($BEFORE_BIN) and now (sustained runs): CPU s / 1k calls $(cpu_per_1k "$B") → $(cpu_per_1k "$S") (ratio $(ratio "$(cpu_per_1k "$S")" "$(cpu_per_1k "$B")")); KiB / call $(mem_per_call_kib "$B") → $(mem_per_call_kib "$S") (ratio $(ratio "$(mem_per_call_kib "$S")" "$(mem_per_call_kib "$B")"))."
            echo
        fi
        echo "(n/a: a figure is missing or the denominator is 0, e.g. SIPp's 4 ms clock rounded it to 0.)"
    fi
} | tee "$OUT/bench.md"
