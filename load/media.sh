#!/usr/bin/env bash
# Media anchoring load (issue 9): SIPp callers send G.711 A-law RTP through calls the
# switch anchors, a SIPp callee echoes it back; the switch relays both directions.
# Prints a report; exits non-zero when the steady-window loss is >= 0.1 %, a call failed,
# or the switch still holds sessions or ports after the calls.
#
#   load/media.sh [--calls 2000] [--hold 30] [--rate 100] [--relay-threads 1]
#                 [--rtp-ports 20000-39999] [--sample-secs 2] [--switch-bin PATH]
#                 [--out DIR] [--quick] [--baseline] [--capture] [--no-udp-buffers]
#                 [--inband-dtmf | --no-inband-dtmf] [--nice N] [--rtp-tasks N]
#
#   --calls N          concurrent calls to reach and hold (SIPp -l N -m N)
#   --hold S           seconds every call is up together (the steady window); each call
#                      lasts ramp (N / rate, + 3 s margin) + 2 s settle + S + 1 s
#   --rate R           call attempts per second while ramping up
#   --relay-threads T  the switch's [media] relay_threads
#   --rtp-ports A-B    the switch's [media] rtp_ports (4 ports per call: 2 legs x RTP+RTCP)
#   --sample-secs S    seconds between samples of /metrics and the processes' CPU
#   --quick            CI size: 100 calls, 10 s hold (options after it win)
#   --baseline         no switch: the caller sends straight to the callee with the same
#                      RTP (the machine's limit); loss is then the echo socket's drops
#   --capture          tshark on lo for 2 s in the window: packets per direction and leg
#   --no-udp-buffers   leave the callee's echo socket at the kernel's default buffer
#   --inband-dtmf      [media] inband_dtmf = true: the Goertzel DTMF detector decodes
#                      every packet of every anchored G.711 leg (--no-inband-dtmf: false;
#                      neither: the switch's default)
#   --nice N           run the switch and both SIPps at this niceness (negative needs root):
#                      on a shared machine, other work (builds) then gets what they leave
#   --rtp-tasks N      the caller's -rtp_threadtasks (calls streamed per SIPp thread;
#                      SIPp's default 20 means 100 threads for 2,000 calls)
#
# Media: rtp_stream (scenarios/media_uac.xml) plays raw A-law extracted from SIPp's
# g711a.pcap in a loop: 20 ms packets, 50/s per call, one SSRC per call, continuous
# sequence numbers (why not play_pcap_audio: see the scenario's header). The callee
# (scenarios/media_uas.xml) runs -rtp_echo: one SIPp thread echoes every call's packets
# from one port. That socket takes the whole load (100 packets/s per call through the
# switch... 50 in and 50 out), and SIPp sets no buffer size on it, so with the kernel's
# default (208 KiB, about 200 packets) a scheduling hiccup drops packets that the switch
# then counts as lost on the B leg. An LD_PRELOAD shim (compiled here with cc) gives
# SIPp's UDP sockets 4 MiB buffers (net.core.rmem_max caps it); the echo socket's drops
# are reported on their own either way, so a loss can be told apart from the switch's.
#
# Flow: media_audio.al (python3, from /usr/share/sip-tester/g711a.pcap), switchyard.toml
# (route "" -> the callee, media = "anchor"), `switchyard check-config`, the callee, the
# switch, the caller (-m N -l N -r R -d call length). Every --sample-secs: the switch's
# switchyard_media_* series, CPU ticks of the switch and both SIPps, the switch's VmRSS,
# the machine's busy jiffies, whether rustc/cargo runs (someone building disturbs the
# figures). The steady window starts 2 s after switchyard_media_sessions_active reaches N
# (baseline: the caller's CurrentCall) and ends 1 s before the first call's BYE; its
# figures are deltas between snapshots at its ends. After the caller exits, the switch
# must be back to 0 sessions and 0 ports within 30 s.
# Loss = switchyard_media_lost_packets_total / switchyard_media_expected_packets_total:
# sequence gaps on packets reaching the switch, i.e. the A legs (caller -> switch) and
# the B legs (switch -> callee echo -> switch); the last hop (switch -> caller) is seen
# in packets out vs in. CPU per stream: a stream is one direction of one call (50
# packets/s arrive and 50 leave the switch per stream); on loopback the sender's CPU
# also pays the receiver's kernel path, so the switch's figure includes delivering its
# packets to the SIPps and the SIPps' includes delivering theirs to the switch.
# Exit status: 0 PASS, 1 FAIL, 2 bad usage or a setup failure.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
# shellcheck source=lib/common.sh
. "$here/lib/common.sh"
scen=$here/scenarios

CALLS=2000 HOLD=30 RATE=100 RELAY_THREADS=1 RTP_PORTS=20000-39999 SAMPLE_S=2
BIN="" OUT="" BASELINE="" CAPTURE="" UDP_BUFFERS=1 INBAND_DTMF="" NICE=0 RTP_TASKS=""
while [ $# -gt 0 ]; do
    case "$1" in
        --calls) CALLS=${2:?--calls needs a value}; shift 2 ;;
        --hold) HOLD=${2:?--hold needs a value}; shift 2 ;;
        --rate) RATE=${2:?--rate needs a value}; shift 2 ;;
        --relay-threads) RELAY_THREADS=${2:?--relay-threads needs a value}; shift 2 ;;
        --rtp-ports) RTP_PORTS=${2:?--rtp-ports needs a value}; shift 2 ;;
        --sample-secs) SAMPLE_S=${2:?--sample-secs needs a value}; shift 2 ;;
        --switch-bin) BIN=${2:?--switch-bin needs a value}; shift 2 ;;
        --out) OUT=${2:?--out needs a value}; shift 2 ;;
        --quick) CALLS=100 HOLD=10; shift ;;
        --baseline) BASELINE=1; shift ;;
        --capture) CAPTURE=1; shift ;;
        --no-udp-buffers) UDP_BUFFERS=""; shift ;;
        --inband-dtmf) INBAND_DTMF=true; shift ;;
        --no-inband-dtmf) INBAND_DTMF=false; shift ;;
        --nice) NICE=${2:?--nice needs a value}; shift 2 ;;
        --rtp-tasks) RTP_TASKS=${2:?--rtp-tasks needs a value}; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "media.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
    esac
done
for v in CALLS HOLD RATE RELAY_THREADS SAMPLE_S; do
    is_num "${!v}" && [ "${!v}" -gt 0 ] || die "--$(echo "$v" | tr 'A-Z_' 'a-z-') must be a whole number > 0"
done
[[ "$NICE" =~ ^-?[0-9]+$ ]] || die "--nice must be a whole number"
[ -z "$RTP_TASKS" ] || { is_num "$RTP_TASKS" && [ "$RTP_TASKS" -gt 0 ]; } || die "--rtp-tasks must be a whole number > 0"
[[ "$RTP_PORTS" =~ ^([0-9]+)-([0-9]+)$ ]] || die "--rtp-ports must be FIRST-LAST"
RTP_FIRST=${BASH_REMATCH[1]} RTP_LAST=${BASH_REMATCH[2]}
[ $(( (RTP_LAST - RTP_FIRST + 1) / 4 )) -ge "$CALLS" ] \
    || die "--rtp-ports $RTP_PORTS holds $(( (RTP_LAST - RTP_FIRST + 1) / 4 )) calls (4 ports each), fewer than --calls $CALLS"
for tool in sipp curl ss awk python3; do
    command -v "$tool" >/dev/null || die "$tool not found (Debian/Ubuntu: sip-tester, curl, iproute2, gawk, python3)"
done
[ -n "${EPOCHREALTIME:-}" ] || die "bash 5 or later is needed (EPOCHREALTIME)"
[ -z "$CAPTURE" ] || command -v tshark >/dev/null || die "--capture needs tshark"
PCAP=/usr/share/sip-tester/g711a.pcap
[ -r "$PCAP" ] || die "$PCAP missing (it ships with sip-tester)"
case "$(sipp -v 2>&1 || true)" in *RTPSTREAM*) ;; *) die "this sipp has no RTPSTREAM support (sipp -v)" ;; esac

if [ -z "$BASELINE" ]; then
    ensure_switch_bin
fi
MODE=switch; [ -z "$BASELINE" ] || MODE=baseline
[ -n "$OUT" ] || OUT=$here/out/$(date -u +%Y%m%dT%H%M%SZ)-media-$MODE-$$
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

HOST=127.0.0.1
DIALLED=5550100
BUFF=4194304
PPS=50                      # 20 ms packets
SETTLE_S=2                  # after the last call is up: its first packets, latching
RAMP_S=$(( (CALLS + RATE - 1) / RATE + 3 ))
CALL_S=$(( RAMP_S + SETTLE_S + HOLD + 1 ))
UAC_LIMIT_S=$(( CALL_S + RAMP_S + 90 ))

# ---------------------------------------------------------------- ports
# SIPp's ports stay below the switch's RTP range (common.sh's pick_port draws from
# 20000-31999, inside the default range); media ports are even with 3 free above
# (SIPp binds PORT and PORT+2 for its echo, RTCP would be PORT+1).
pick_media_port() { # var lo hi
    local var=$1 lo=$2 hi=$3 p k ok
    for _ in $(seq 1 500); do
        p=$(( (lo + RANDOM % (hi - lo)) & ~1 ))
        ok=1
        for k in 0 1 2 3; do
            case "$TAKEN_PORTS" in *" $((p + k)) "*) ok=""; break ;; esac
            [ -z "$(ss -Htuan "( sport = :$((p + k)) )" 2>/dev/null)" ] || { ok=""; break; }
        done
        if [ -n "$ok" ]; then
            TAKEN_PORTS="$TAKEN_PORTS$p $((p + 1)) $((p + 2)) $((p + 3)) "
            printf -v "$var" '%s' "$p"
            return 0
        fi
    done
    die "no free port found in $lo-$hi"
}
LOW=11000 HIGH=19990
[ "$RTP_FIRST" -gt "$HIGH" ] || [ "$RTP_LAST" -lt "$LOW" ] || { LOW=$((RTP_LAST + 1)); HIGH=$((LOW + 8000)); }
[ "$HIGH" -lt 65500 ] || die "--rtp-ports leaves no room for SIPp's ports"
for v in SIP_PORT HTTP_PORT UAC_PORT UAS_PORT UAC_MP UAS_MP; do pick_media_port "$v" "$LOW" "$HIGH"; done

# ---------------------------------------------------------------- media file, buffer shim
# The RTP payloads of g711a.pcap (A-law, 236 packets of 240 bytes: 7.08 s), raw, in
# SIPp's working directory where media_uac.xml's rtp_stream finds it.
python3 "$here/lib/alaw_from_pcap.py" "$PCAP" "$OUT/media_audio.al" \
    || die "could not extract the A-law audio from $PCAP"

SHIM=""
if [ -n "$UDP_BUFFERS" ]; then
    if command -v cc >/dev/null; then
        cat > "$OUT/udpbuf.c" <<'C'
/* LD_PRELOAD for SIPp: every UDP socket gets UDPBUF_BYTES of receive and send buffer
 * when it is bound (SIPp's -rtp_echo socket has no option for it). */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
#include <sys/socket.h>
int bind(int fd, const struct sockaddr *addr, socklen_t len) {
    static int (*real_bind)(int, const struct sockaddr *, socklen_t);
    int type = 0, want;
    socklen_t tl = sizeof type;
    const char *e = getenv("UDPBUF_BYTES");
    if (!real_bind)
        real_bind = (int (*)(int, const struct sockaddr *, socklen_t))dlsym(RTLD_NEXT, "bind");
    want = e ? atoi(e) : 0;
    if (want > 0 && getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &tl) == 0 && type == SOCK_DGRAM) {
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &want, sizeof want);
        setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &want, sizeof want);
    }
    return real_bind(fd, addr, len);
}
C
        if cc -O2 -shared -fPIC -o "$OUT/udpbuf.so" "$OUT/udpbuf.c" -ldl > "$OUT/udpbuf.cc.out" 2>&1; then
            SHIM=$OUT/udpbuf.so
        else
            echo "media.sh: WARNING: could not compile the UDP buffer shim (see $OUT/udpbuf.cc.out); the echo socket keeps the default buffer" >&2
        fi
    else
        echo "media.sh: WARNING: no cc: the echo socket keeps the default buffer (drops reported apart)" >&2
    fi
fi

# ---------------------------------------------------------------- config
if [ -z "$BASELINE" ]; then
    cat > "$OUT/switchyard.toml" <<CFG
# Written by load/media.sh: every call to the SIPp callee, media anchored.
data_dir = "$OUT/data"
[sip]
listen = ["udp:$HOST:$SIP_PORT"]
[http]
listen = "$HOST:$HTTP_PORT"
# SIPp runs on loopback: its addresses are trusted peers (nothing is by default;
# untrusted callers reach only tenants' numbers and users, never a route).
[security]
trusted = ["127.0.0.0/8"]
# Far above the offered load, so admission control refuses nothing.
[admission]
max_calls = $(( CALLS * 2 + 1000 ))
cps = $(( RATE * 4 > 5000 ? RATE * 4 : 5000 ))
per_source_cps = 0
# SIPp sends far above a phone's rate from loopback: never banned (README "The edge").
[security.flood]
exempt = ["127.0.0.0/8"]
[media]
rtp_ports = "$RTP_PORTS"
bind = "$HOST"
relay_threads = $RELAY_THREADS
$([ -z "$INBAND_DTMF" ] || echo "inband_dtmf = $INBAND_DTMF")
[[routes]]
prefix = ""
target = "sip:$HOST:$UAS_PORT"
media = "anchor"
CFG
    "$BIN" check-config "$OUT/switchyard.toml" > "$OUT/check-config.out" 2>&1 \
        || { cat "$OUT/check-config.out" >&2; die "switchyard check-config refused $OUT/switchyard.toml"; }
fi

: > "$OUT/report.txt"
say "== switchyard media anchoring load ($(date -u +%FT%TZ), $(nproc) cores, $MODE)"
say "offered                $CALLS concurrent calls, ramp at $RATE CAPS, each call ${CALL_S} s (ramp ${RAMP_S} + settle ${SETTLE_S} + hold ${HOLD} + 1); G.711 A-law 20 ms, $PPS packets/s each way per call"
if [ -z "$BASELINE" ]; then
    say "switch                 udp:$HOST:$SIP_PORT http:$HOST:$HTTP_PORT rtp_ports $RTP_PORTS relay_threads $RELAY_THREADS inband_dtmf ${INBAND_DTMF:-default} ($BIN)"
else
    say "switch                 none: the caller sends to the callee directly (the machine's limit)"
fi
say "SIPp                   caller udp:$HOST:$UAC_PORT rtp $UAC_MP (rtp_stream), callee udp:$HOST:$UAS_PORT rtp echo $UAS_MP; UDP buffers $([ -n "$SHIM" ] && echo "$BUFF bytes (LD_PRELOAD)" || echo "kernel default"); nice $NICE${RTP_TASKS:+; caller -rtp_threadtasks $RTP_TASKS}"

# ---------------------------------------------------------------- callee
(
    cd "$OUT"
    if [ -n "$SHIM" ]; then export LD_PRELOAD=$SHIM UDPBUF_BYTES=$BUFF; fi
    exec nice -n "$NICE" sipp -sf "$scen/media_uas.xml" -i "$HOST" -p "$UAS_PORT" -mi "$HOST" -mp "$UAS_MP" \
        -rtp_echo -nostdin -buff_size "$BUFF" -recv_timeout $(( CALL_S * 1000 + 60000 )) \
        -trace_stat -stf "$OUT/uas_stat.csv" -fd 1 \
        -trace_err -error_file "$OUT/uas_errors.log" \
        -trace_screen -screen_file "$OUT/uas_screen.log"
) > "$OUT/uas.out" 2>&1 < /dev/null &
UAS=$!
CHILD_PIDS+=("$UAS")
wait_udp_bound "$UAS_PORT" "$UAS" "SIPp callee"
wait_udp_bound "$UAS_MP" "$UAS" "SIPp callee's echo"

# ---------------------------------------------------------------- switch
SW=""
if [ -z "$BASELINE" ]; then
    start_switch "$NICE"
    scrape "$OUT/metrics_start.txt" || die "GET /metrics failed"
        TARGET=$HOST:$SIP_PORT
else
    TARGET=$HOST:$UAS_PORT
fi

# ---------------------------------------------------------------- sampling
# One row per sample: tag (s = periodic, w0/w1 = the window's ends, end = after the
# calls), time, switch series, CPU ticks, RSS, the caller's CurrentCall, the echo
# socket's drops, the machine's busy and total jiffies, whether a build ran.
SAMPLES=$OUT/samples.csv
echo "tag;t;sessions;ports;rtp_in;rtp_out;rtcp_in;rtcp_out;lost;expected;late;dropped;sw_ticks;uac_ticks;uas_ticks;sw_rss_kb;uac_calls;echo_drops;busy;total;build;udp_out" > "$SAMPLES"
sock_drops() { # sum of the kernel's drop counters of UDP sockets on ports $1..$2 (owned by pid $3 if given)
    ss -Huanmp "( sport >= :$1 and sport <= :$2 )" 2>/dev/null | awk -v pid="${3:-}" '
        /skmem:/ { if (keep && match($0, /,d[0-9]+\)/)) s += substr($0, RSTART+2, RLENGTH-3); keep=0; next }
        { keep = (pid == "" || index($0, "pid=" pid ",") > 0) }
        END { print s+0 }'
}
thread_ticks() { # pid: "name ticks" per thread of the process (utime+stime)
    local t s
    for t in /proc/"$1"/task/*; do
        s=$(cat "$t/stat" 2>/dev/null) || continue
        # shellcheck disable=SC2086
        set -- ${s##*) }
        echo "$(cat "$t/comm" 2>/dev/null) $(( ${12} + ${13} ))"
    done
}
sample() { # tag
    local tag=$1 m=$OUT/m_cur.txt ts row
    ts=$EPOCHREALTIME
    local s=NA p=NA ri=NA ro=NA ci=NA co=NA lo=NA ex=NA la=NA dr=NA swt=NA rss=NA
    if [ -n "$SW" ] && scrape "$m"; then
        s=$(metric_sum switchyard_media_sessions_active "$m")
        p=$(metric_sum switchyard_media_ports_in_use "$m")
        ri=$(metric_sum switchyard_media_packets_total "$m" 'dir="in"' 'kind="rtp"')
        ro=$(metric_sum switchyard_media_packets_total "$m" 'dir="out"' 'kind="rtp"')
        ci=$(metric_sum switchyard_media_packets_total "$m" 'dir="in"' 'kind="rtcp"')
        co=$(metric_sum switchyard_media_packets_total "$m" 'dir="out"' 'kind="rtcp"')
        lo=$(metric_sum switchyard_media_lost_packets_total "$m")
        ex=$(metric_sum switchyard_media_expected_packets_total "$m")
        la=$(metric_sum switchyard_media_late_packets_total "$m")
        dr=$(metric_sum switchyard_media_dropped_total "$m")
        # Counters appear at their first increment: absent from a good scrape means 0.
        for c in ri ro ci co lo ex la dr; do [ "${!c}" != NA ] || printf -v "$c" 0; done
        case "$tag" in w0|w1|end) cp "$m" "$OUT/metrics_$tag.txt" ;; esac
    fi
    [ -z "$SW" ] || { swt=$(cpu_ticks "$SW" || echo NA); rss=$(status_kb "$SW" VmRSS); }
    local uact uast calls ed b
    uact=$(cpu_ticks "$UAC" 2>/dev/null || echo NA)
    uast=$(cpu_ticks "$UAS" 2>/dev/null || echo NA)
    calls=$(stat_col "$OUT/uac_stat.csv" CurrentCall)
    ed=$(sock_drops "$UAS_MP" "$UAS_MP")
    b=0; if pgrep -x rustc >/dev/null || pgrep -x cargo >/dev/null; then b=1; BUILD_SEEN=1; fi
    row="$tag;$ts;$s;$p;$ri;$ro;$ci;$co;$lo;$ex;$la;$dr;$swt;$uact;$uast;${rss:-NA};$calls;$ed"
    row="$row;$(awk '/^cpu / { t=0; for (i=2;i<=NF;i++) t+=$i; printf "%d;%d", t-$5-$6, t }' /proc/stat);$b"
    row="$row;$(awk '/^Udp:/ && $2 ~ /^[0-9]+$/ { print $5 }' /proc/net/snmp)"
    echo "$row" >> "$SAMPLES"
    LAST_SESSIONS=$s LAST_CALLS=$calls
}

# ---------------------------------------------------------------- caller
BUILD_SEEN=0
: > "$OUT/uac_stat.csv"
T0=$EPOCHREALTIME
(
    cd "$OUT"
    exec nice -n "$NICE" sipp "$TARGET" -sf "$scen/media_uac.xml" -s "$DIALLED" -i "$HOST" -p "$UAC_PORT" \
        -mi "$HOST" -mp "$UAC_MP" ${RTP_TASKS:+-rtp_threadtasks "$RTP_TASKS"} \
        -m "$CALLS" -l "$CALLS" -r "$RATE" -rp 1000 -d $(( CALL_S * 1000 )) -nostdin \
        -buff_size "$BUFF" -recv_timeout 30000 \
        -trace_stat -stf "$OUT/uac_stat.csv" -fd 1 \
        -trace_rtt -rtt_freq 1 \
        -trace_err -error_file "$OUT/uac_errors.log" \
        -trace_screen -screen_file "$OUT/uac_screen.log"
) > "$OUT/uac.out" 2>&1 < /dev/null &
UAC=$!
CHILD_PIDS+=("$UAC")
echo "media.sh: $CALLS calls at $RATE CAPS, ${CALL_S} s each; window of about ${HOLD} s once all are up" >&2

W1=$(awk -v t="$T0" -v c="$CALL_S" 'BEGIN { printf "%.3f", t + c - 1 }')
DEADLINE=$(( ${T0%.*} + UAC_LIMIT_S ))
T_FULL="" W0="" W0_DONE="" W1_DONE="" SW_DIED="" TIMED_OUT="" CAPTURE_PID=""
next_note=$(( ${T0%.*} + 10 ))
past() { awk -v a="$EPOCHREALTIME" -v b="$1" 'BEGIN { exit !(a >= b) }'; }
while kill -0 "$UAC" 2>/dev/null; do
    if [ -n "$SW" ] && ! kill -0 "$SW" 2>/dev/null; then SW_DIED=1; break; fi
    if [ "${EPOCHREALTIME%.*}" -ge "$DEADLINE" ]; then
        TIMED_OUT=1; echo "media.sh: caller still running after ${UAC_LIMIT_S} s, stopping it" >&2; break
    fi
    sample s
    if [ -z "$T_FULL" ]; then
        full=$LAST_SESSIONS; [ -z "$BASELINE" ] || full=$LAST_CALLS
        if is_num "$full" && [ "$full" -ge "$CALLS" ]; then
            T_FULL=$EPOCHREALTIME
            W0=$(awk -v t="$T_FULL" -v s="$SETTLE_S" 'BEGIN { printf "%.3f", t + s }')
            echo "media.sh: $CALLS concurrent after $(elapsed "$T0" "$T_FULL") s" >&2
        fi
    fi
    if [ -n "$W0" ] && [ -z "$W0_DONE" ] && past "$W0"; then
        if past "$W1"; then
            W0_DONE=late
        else
            sample w0; W0_DONE=1
            [ -z "$SW" ] || { sock_drops "$RTP_FIRST" "$RTP_LAST" "$SW" > "$OUT/sw_drops_w0"; thread_ticks "$SW" > "$OUT/sw_threads_w0"; }
            if [ -n "$CAPTURE" ]; then
                timeout 10 tshark -i lo -n -q -a duration:2 -c 200000 -w "$OUT/capture.pcapng" \
                    -f "udp and (port $UAC_MP or port $UAS_MP)" > "$OUT/capture.out" 2>&1 &
                CAPTURE_PID=$!
            fi
        fi
    fi
    if [ "$W0_DONE" = 1 ] && [ -z "$W1_DONE" ] && past "$W1"; then
        sample w1; W1_DONE=1
        [ -z "$SW" ] || { sock_drops "$RTP_FIRST" "$RTP_LAST" "$SW" > "$OUT/sw_drops_w1"; thread_ticks "$SW" > "$OUT/sw_threads_w1"; }
    fi
    if [ "${EPOCHREALTIME%.*}" -ge "$next_note" ]; then
        next_note=$(( next_note + 10 ))
        echo "media.sh: t=$(elapsed "$T0" "$EPOCHREALTIME") s: caller calls $LAST_CALLS, anchored sessions $LAST_SESSIONS" >&2
    fi
    # Sleep to the next sample, or to a window end that comes sooner.
    nap=$SAMPLE_S
    for w in "$W0" "$W1"; do
        [ -n "$w" ] || continue
        nap=$(awk -v n="$nap" -v w="$w" -v now="$EPOCHREALTIME" 'BEGIN { d=w-now; if (d > 0.05 && d < n) n=d; printf "%.3f", n }')
    done
    sleep "$nap"
done
UAC_RC=0
if kill -0 "$UAC" 2>/dev/null; then
    sipp_stop "$UAC"; UAC_RC=stopped
else
    wait "$UAC" 2>/dev/null || UAC_RC=$?
fi
T_UAC_END=$EPOCHREALTIME
[ -z "$CAPTURE_PID" ] || wait "$CAPTURE_PID" 2>/dev/null || true

# ---------------------------------------------------------------- drain
# The switch must give every session and port back once the BYEs are through.
DRAIN_S=NA
if [ -n "$SW" ] && [ -z "$SW_DIED" ]; then
    for _ in $(seq 1 150); do
        kill -0 "$SW" 2>/dev/null || { SW_DIED=1; break; }
        sample end
        if [ "$LAST_SESSIONS" = 0 ] && [ "$(awk -F';' 'END { print $4 }' "$SAMPLES")" = 0 ]; then
            DRAIN_S=$(elapsed "$T_UAC_END" "$EPOCHREALTIME"); break
        fi
        sleep 0.2
    done
    SW_CPU_TOTAL_S=$(ticks_s "$(cpu_ticks "$SW" || echo NA)")
    SW_HWM_KB=$(status_kb "$SW" VmHWM)
else
    sample end
fi
UAS_TOTAL_TICKS=$(cpu_ticks "$UAS" || echo NA)
sipp_stop "$UAS"

# ---------------------------------------------------------------- report
VERDICT=PASS
REASONS=()
col() { # tag column: the value in the last row with that tag
    awk -F';' -v tag="$1" -v c="$2" 'NR==1 { for (i=1;i<=NF;i++) if ($i==c) k=i; next } $1==tag { v=$k } END { print (v=="" ? "NA" : v) }' "$SAMPLES"
}
d() { # column: w1 - w0, NA if either is missing
    local a b; a=$(col w0 "$1"); b=$(col w1 "$1")
    is_num "$a" && is_num "$b" && echo $((b - a)) || echo NA
}
calc() { # an awk program printing one number; NA when an operand is NA or awk fails
    case "$1" in *NA*) echo NA; return ;; esac
    awk "BEGIN { $1 }" 2>/dev/null || echo NA
}
# label_deltas NAME LABEL BEFORE AFTER: "value=delta ..." of a counter per label value.
label_deltas() {
    [ -s "$4" ] || { echo "NA"; return; }
    awk -v m="$1" -v l="$2" '
        $0 ~ /^#/ || NF < 2 { next }
        { n=$1; sub(/\{.*/, "", n); if (n != m) next
          v="?"; if (match($1, l "=\"[^\"]*\"")) v=substr($1, RSTART+length(l)+2, RLENGTH-length(l)-3) }
        FNR==NR { b[v]+=$NF; next }
        { a[v]+=$NF; seen[v]=1 }
        END { for (v in seen) if (a[v]-b[v] != 0) { printf "%s%s=%.0f", sep, v, a[v]-b[v]; sep=" " }
              if (!sep) printf "none" }' "$3" "$4" 2>/dev/null
}

US=$OUT/uac_stat.csv SS=$OUT/uas_stat.csv
CREATED=$(stat_col "$US" "OutgoingCall(C)")
SUCCESS=$(stat_col "$US" "SuccessfulCall(C)")
FAILED=$(stat_col "$US" "FailedCall(C)")
C_PEAK=$(stat_col "$US" CurrentCall max)
S_IN=$(stat_col "$SS" "IncomingCall(C)")
S_OK=$(stat_col "$SS" "SuccessfulCall(C)")
S_FAILED=$(stat_col "$SS" "FailedCall(C)")
ANS=$(ls -1 "$OUT"/media_uac_*_rtt.csv 2>/dev/null | head -1 || true)
ANS_P99=NA
if [ -n "$ANS" ] && [ -s "$ANS" ]; then
    ANS_P99=$(awk -F';' 'NR>1 && $3=="answer" { print $2+0 }' "$ANS" | sort -g | awk '{ v[NR]=$1 } END { if (NR) { r=int(0.99*NR); if (r<0.99*NR) r++; print v[r] } else print "NA" }')
fi
PEAK_SESSIONS=$(awk -F';' 'NR>1 && $3 ~ /^[0-9]+$/ && $3+0 > m { m=$3+0 } END { print m+0 }' "$SAMPLES")

[ "$FAILED" = 0 ] || fail "caller failed calls: $FAILED"
[ "$SUCCESS" = "$CALLS" ] || fail "caller successful $SUCCESS of $CALLS"
[ "$S_FAILED" = 0 ] || [ "$S_FAILED" = NA ] || fail "callee failed calls: $S_FAILED"
[ "$UAC_RC" = 0 ] || fail "SIPp caller exit status $UAC_RC"
[ -z "$TIMED_OUT" ] || fail "caller still running after ${UAC_LIMIT_S} s"
[ -z "$SW_DIED" ] || fail "switch died during the run (log: $OUT/switch.log)"

say "caller (SIPp)          created $CREATED, successful $SUCCESS, failed $FAILED, peak concurrent $C_PEAK; INVITE->200 p99 $ANS_P99 ms; exit $UAC_RC; wall $(elapsed "$T0" "$T_UAC_END") s"
say "callee (SIPp)          incoming $S_IN, successful $S_OK, failed $S_FAILED; echo socket drops $(col end echo_drops) in the run"
if [ -z "$BASELINE" ]; then
    say "anchored sessions      peak $PEAK_SESSIONS (switchyard_media_sessions_active), $CALLS reached after $([ -n "$T_FULL" ] && elapsed "$T0" "$T_FULL" || echo never) s"
fi

WIN_S=NA LOSS_PCT=NA SW_PCT=NA US_STREAM=NA IN_PPS=NA OUT_PPS=NA UAC_PCT=NA UAS_PCT=NA BUSY_PCT=NA
if [ "$W0_DONE" = 1 ] && [ "$W1_DONE" = 1 ]; then
    WIN_S=$(calc "printf \"%.1f\", $(col w1 t) - $(col w0 t)")
    pct_core() { local t; t=$(d "$1"); is_num "$t" && calc "printf \"%.1f\", $t / $HZ / $WIN_S * 100" || echo NA; }
    rate() { local n; n=$(d "$1"); is_num "$n" && calc "printf \"%.0f\", $n / $WIN_S" || echo NA; }
    UAC_PCT=$(pct_core uac_ticks) UAS_PCT=$(pct_core uas_ticks)
    BUSY_PCT=$(calc "printf \"%.0f\", $(d busy) / $(d total) * 100")
    ED=$(d echo_drops)
    BUILD_W=$(awk -F';' '$1=="w0" { on=1 } on && $21==1 { b=1 } $1=="w1" { on=0 } END { print b+0 }' "$SAMPLES")
    say "-- steady window       ${WIN_S} s, from +$(elapsed "$T0" "$(col w0 t)") s to +$(elapsed "$T0" "$(col w1 t)") s ($CALLS calls up throughout)"
    if [ -z "$BASELINE" ]; then
        IN_PPS=$(rate rtp_in) OUT_PPS=$(rate rtp_out)
        EXP_PPS=$(( CALLS * 2 * PPS ))
        LOST=$(d lost) EXPECTED=$(d expected)
        LOSS_PCT=$(is_num "$LOST" && is_num "$EXPECTED" && [ "$EXPECTED" -gt 0 ] && calc "printf \"%.4f\", $LOST / $EXPECTED * 100" || echo NA)
        SW_T=$(d sw_ticks)
        SW_PCT=$(pct_core sw_ticks)
        US_STREAM=$(is_num "$SW_T" && calc "printf \"%.1f\", $SW_T / $HZ * 1e6 / ($CALLS * 2) / $WIN_S" || echo NA)
        US_PKT=$(is_num "$SW_T" && is_num "$(d rtp_in)" && [ "$(d rtp_in)" -gt 0 ] && calc "printf \"%.2f\", $SW_T / $HZ * 1e6 / $(d rtp_in)" || echo NA)
        SWD=NA; [ -s "$OUT/sw_drops_w0" ] && [ -s "$OUT/sw_drops_w1" ] && SWD=$(( $(cat "$OUT/sw_drops_w1") - $(cat "$OUT/sw_drops_w0") ))
        say "packets/s              rtp in $IN_PPS (offered $EXP_PPS: $CALLS calls x 2 directions x $PPS), rtp out $OUT_PPS; rtcp in $(rate rtcp_in), out $(rate rtcp_out)"
        say "loss (window)          $LOSS_PCT % ($LOST lost of $EXPECTED expected, switchyard_media_lost/expected_packets_total); late $(d late); dropped $(d dropped) ($(label_deltas switchyard_media_dropped_total reason "$OUT/metrics_w0.txt" "$OUT/metrics_w1.txt"))"
        say "kernel drops (window)  switch's RTP sockets $SWD, callee's echo socket $ED (ss -m)"
        # A packet the echo socket dropped is a gap on a B leg: the switch counts it lost
        # although SIPp lost it. What remains is the switch's share (roughly: the switch
        # publishes its counters once a second, ss is read at the window's ends).
        if is_num "$LOST" && is_num "$ED" && is_num "$EXPECTED" && [ "$EXPECTED" -gt 0 ]; then
            say "loss beyond the echo   $(calc "printf \"%.4f\", ($LOST - $ED) / $EXPECTED * 100") % ((lost - echo socket drops) / expected: the switch's share, roughly)"
        fi
        say "switch CPU (window)    $SW_PCT % of a core; $US_STREAM us per stream-second (stream = one direction of one call, 50 packets/s in + 50 out); $US_PKT us per packet in"
        # Per thread name (relay threads by name, the rest summed as "other").
        THREADS=$(awk -v hz="$HZ" -v w="$WIN_S" '
            { n=($1 ~ /^media-relay/ ? $1 : "other") }
            FNR==NR { b[n]+=$2; next }
            { a[n]+=$2; seen[n]=1 }
            END { for (n in seen) printf "%s %.1f %%, ", n, (a[n]-b[n])/hz/w*100 }' "$OUT/sw_threads_w0" "$OUT/sw_threads_w1" 2>/dev/null | sed 's/, $//')
        say "switch threads         ${THREADS:-NA} of a core (window)"
        say "switch memory          VmRSS $(kib_mib "$(col w1 sw_rss_kb)") at the window's end ($(calc "printf \"%.1f\", $(col w1 sw_rss_kb) / $CALLS") KiB per call with the rest of the switch), VmHWM $(kib_mib "${SW_HWM_KB:-NA}")"
        is_num "$(d rtp_out)" && [ "$(d rtp_out)" -gt 0 ] || fail "no RTP relayed in the window (rtp out $(d rtp_out))"
        if [ "$LOSS_PCT" = NA ]; then
            fail "no loss figure (lost $LOST, expected $EXPECTED)"
        elif awk -v l="$LOSS_PCT" 'BEGIN { exit !(l >= 0.1) }'; then
            fail "loss $LOSS_PCT % >= 0.1 % in the steady window"
        fi
        [ "$PEAK_SESSIONS" -ge "$CALLS" ] || fail "anchored sessions peaked at $PEAK_SESSIONS, below $CALLS"
    else
        EXPECTED=$(calc "printf \"%.0f\", $CALLS * $PPS * $WIN_S")
        LOSS_PCT=$(is_num "$ED" && calc "printf \"%.4f\", $ED / $EXPECTED * 100" || echo NA)
        say "packets/s              caller -> callee offered $(( CALLS * PPS )), echoed back as many; all UDP datagrams sent on the machine $(rate udp_out)/s (/proc/net/snmp)"
        say "loss (window)          $LOSS_PCT % ($ED dropped at the callee's echo socket of about $EXPECTED sent; the caller never reads the echoes)"
        if is_num "$ED" && awk -v l="$LOSS_PCT" 'BEGIN { exit !(l >= 0.1) }'; then fail "echo socket dropped $LOSS_PCT % in the window"; fi
    fi
    say "SIPp CPU (window)      caller $UAC_PCT % of a core, callee (echo) $UAS_PCT %; machine busy $BUSY_PCT % of $(nproc) cores"
    [ "$BUILD_W" = 0 ] || say "WARNING                rustc/cargo ran during the window: CPU and loss figures are disturbed"
else
    fail "no steady window: $CALLS concurrent $([ -n "$T_FULL" ] && echo "only after $(elapsed "$T0" "$T_FULL") s, too late" || echo "never reached") (window ends ${CALL_S} s after start; raise --hold or --rate)"
fi

if [ -n "$SW" ]; then
    END_S=$(col end sessions) END_P=$(col end ports)
    say "after the calls        sessions_active $END_S, ports_in_use $END_P $([ "$DRAIN_S" != NA ] && echo "(0 after $DRAIN_S s)" || echo "(not 0 within 30 s)")"
    [ "$END_S" = 0 ] && [ "$END_P" = 0 ] || fail "switch holds sessions $END_S, ports $END_P after the calls"
    say "whole run              loss $(calc "printf \"%.4f\", $(col end lost) / $(col end expected) * 100") % ($(col end lost) of $(col end expected); the echo socket dropped $(col end echo_drops)); rtp in $(col end rtp_in), out $(col end rtp_out); late $(col end late); dropped ($(label_deltas switchyard_media_dropped_total reason "$OUT/metrics_start.txt" "$OUT/metrics_end.txt")); switch CPU ${SW_CPU_TOTAL_S:-NA} s since start"
    say "switch log             $(sed 's/\x1b\[[0-9;]*m//g' "$OUT/switch.log" | awk '$2=="WARN" { w++ } $2=="ERROR" { e++ } END { printf "%d WARN, %d ERROR lines", w, e }')"
fi
if [ -n "$CAPTURE" ] && [ -s "$OUT/capture.pcapng" ]; then
    # Packets per (source port -> destination port) class in the 2 s capture.
    tshark -r "$OUT/capture.pcapng" -T fields -e udp.srcport -e udp.dstport 2>/dev/null | awk -v a="$UAC_MP" -v b="$UAS_MP" '
        { k = ($1==a ? "caller" : ($1==b ? "callee-echo" : "switch")) "->" ($2==a ? "caller" : ($2==b ? "callee-echo" : "switch")); n[k]++
          if ($1!=a && $1!=b) sp[$1]=1; if ($2!=a && $2!=b) sp[$2]=1 }
        END { for (k in n) printf "%s %d, ", k, n[k]; c=0; for (p in sp) c++; printf "%d switch ports seen\n", c }' > "$OUT/capture.txt"
    say "capture (2 s, lo)      $(cat "$OUT/capture.txt")"
fi
[ "$BUILD_SEEN" = 0 ] || say "WARNING                rustc/cargo ran during the run (shared machine)"
printf '%s\n' "mode;calls;relay_threads;inband_dtmf;rate;window_s;peak_sessions;rtp_in_pps;rtp_out_pps;loss_pct;switch_core_pct;us_per_stream_s;uac_core_pct;uas_core_pct;machine_busy_pct;failed;result" \
    "$MODE;$CALLS;$RELAY_THREADS;${INBAND_DTMF:-default};$RATE;$WIN_S;$PEAK_SESSIONS;$IN_PPS;$OUT_PPS;$LOSS_PCT;$SW_PCT;$US_STREAM;$UAC_PCT;$UAS_PCT;$BUSY_PCT;$FAILED;$VERDICT" > "$OUT/summary.csv"
say "$(verdict_line)"
say "files                  $OUT (samples.csv every ${SAMPLE_S} s, summary.csv)"
if [ "$VERDICT" != PASS ]; then
    [ ! -s "$OUT/uac_errors.log" ] || { echo "--- first caller errors ---" >&2; head -c 2000 "$OUT/uac_errors.log" >&2; echo >&2; }
    [ -z "$SW" ] || grep -E ' (WARN|ERROR) ' "$OUT/switch.log" | head -20 | sed 's/^/switch.log: /' >&2 || true
    exit 1
fi
exit 0
