#!/usr/bin/env bash
# Interop: a blind transfer between real phones (issue 17). Three baresip instances
# (Debian package baresip) on loopback register with digest as users 1001, 1002 and 1003
# of tenant acme.test; each sends a sine tone of its own as its microphone (1001: 440 Hz,
# 1002: 660 Hz, 1003: 880 Hz) and records what it hears (the sndfile module). Media is
# anchored on every call.
#   1. 1001 dials 1002 (ctrl_tcp "dial"); 1002 auto-answers; they talk.
#   2. 1002 blind-transfers the call to 1003 (baresip's "transfer" command: a REFER).
#      The switch answers 202, rings 1003 with its own SDP, NOTIFYs 1002 and lets it go.
#   3. 1003 auto-answers and talks with 1001; then 1001 hangs up.
# Passes when every step happened (the switch's counters), 1001 heard 880 Hz (1003's
# tone) after the transfer and 1003 heard 440 Hz (1001's): RTP went both ways through the
# anchored call. The report adds the relay's packet counters, each leg's packets from the
# CDR, and what each phone's log says of its call.
#
# --attended: an attended transfer (RFC 3891 Replaces). baresip 1.0 has only blind transfer,
# so 1002 is linphonec (Debian package linphone-cli, driven through its standard input,
# auto-answer, a 660 Hz WAV as its microphone):
#   1. 1001 dials 1002; they talk.
#   2. 1002 puts 1001 on hold ("pause 1", a re-INVITE) and calls 1003 ("call"); 1003
#      answers; they talk (the consultation, a second call through the switch).
#   3. 1002 runs "transfer 1 --to-call 2": a REFER on the first call whose Refer-To names
#      1003 with Replaces=<the consultation's dialog>. The switch hands the consultation's
#      far leg (1003) over to the first call and lets 1002 go from both.
#   4. 1001 and 1003 talk; 1001 hangs up.
# The same checks: 1001 hears 1003 and 1003 hears 1001 after the transfer.
#
#   load/baresip_transfer.sh [--attended] [--talk-secs 3] [--pcap] [--switch-bin PATH]
#                            [--out DIR]
#
#   --pcap   capture the phones' RTP on loopback (tshark, their ports 40000-40999) into
#            rtp.pcap and list each RTP flow (source -> destination, packets, first and
#            last time) in the report: where the relay sent each phone's audio, and when;
#            and checks the tones in the G.711 the switch sent 1001 and 1003 from the
#            transfer on (on with --attended)
#
# Exit status: 0 PASS, 1 FAIL, 2 bad usage or a setup failure.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
# shellcheck source=lib/common.sh
. "$here/lib/common.sh"
# shellcheck source=lib/baresip.sh
. "$here/lib/baresip.sh"

TALK=3 BIN="" OUT="" PCAP="" ATTENDED=""
while [ $# -gt 0 ]; do
    case "$1" in
        --talk-secs) TALK=${2:?--talk-secs needs a value}; shift 2 ;;
        --pcap) PCAP=1; shift ;;
        --attended) ATTENDED=1; shift ;;
        --switch-bin) BIN=${2:?--switch-bin needs a value}; shift 2 ;;
        --out) OUT=${2:?--out needs a value}; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "baresip_transfer.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
    esac
done
[[ "$TALK" =~ ^[0-9]+$ ]] && [ "$TALK" -ge 2 ] || die "--talk-secs must be a whole number >= 2"
for tool in baresip python3 curl sqlite3 ss; do
    command -v "$tool" >/dev/null || die "$tool not found (Debian/Ubuntu: baresip, python3, curl, sqlite3, iproute2)"
done
if [ -n "$ATTENDED" ]; then
    command -v linphonec >/dev/null || die "--attended needs linphonec (Debian/Ubuntu: linphone-cli)"
    # baresip 1.0 stops recording what it hears after a hold re-INVITE, so what reaches
    # 1001 is read from the capture.
    PCAP=1
fi
ensure_switch_bin
[ -n "$OUT" ] || OUT=$here/out/$(date -u +%Y%m%dT%H%M%SZ)-baresip-transfer${ATTENDED:+-attended}-$$
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

HOST=127.0.0.1
DOMAIN=acme.test
TOKEN=$(random_token)
PHONES=(1001 1002 1003)
declare -A FREQ=([1001]=440 [1002]=660 [1003]=880)
pick_port SIP_PORT; pick_port HTTP_PORT
declare -A SIPP CTRL
for u in "${PHONES[@]}"; do
    # baresip binds TLS on its SIP port + 1: keep that one free too.
    while :; do
        pick_port phone_port
        [ -z "$(ss -Htuan "( sport = :$((phone_port + 1)) )" 2>/dev/null)" ] && break
    done
    TAKEN_PORTS="$TAKEN_PORTS$((phone_port + 1)) "
    SIPP[$u]=$phone_port
    pick_port ctrl_port
    CTRL[$u]=$ctrl_port
done

# ---------------------------------------------------------------- the switch
{
    echo "# Written by load/baresip_transfer.sh."
    echo "data_dir = \"$OUT/data\""
    echo "[sip]"; echo "listen = [\"udp:$HOST:$SIP_PORT\"]"
    echo "[http]"; echo "listen = \"$HOST:$HTTP_PORT\""; echo "token = \"$TOKEN\""
    echo "[media]"
    echo "# A transfer needs the call's media anchored."
    echo "anchor_all = true"
    echo "bind = \"$HOST\""
    # baresip 1.0 answers only the first challenge and its digest has MD5 only.
    echo "[registrar]"; echo "algorithms = [\"MD5\"]"
    echo "[[tenants]]"; echo "id = \"acme\""; echo "domain = \"$DOMAIN\""
    for u in "${PHONES[@]}"; do
        echo "[[tenants.users]]"
        echo -n "secret-$u" | "$BIN" ha1 --username "$u" --realm "$DOMAIN"
    done
} > "$OUT/switchyard.toml"
"$BIN" check-config "$OUT/switchyard.toml" > "$OUT/check-config.out" 2>&1 \
    || { cat "$OUT/check-config.out" >&2; die "switchyard check-config refused $OUT/switchyard.toml"; }

: > "$OUT/report.txt"
MODE="blind transfer between baresip phones"
[ -z "$ATTENDED" ] || MODE="attended transfer between baresip phones and linphonec (1002)"
say "== switchyard $MODE ($(date -u +%FT%TZ), $(nproc) cores, $(baresip -h 2>&1 | head -1 | awk '{print $1, $2}'))"
say "switch                 udp:$HOST:$SIP_PORT http:$HOST:$HTTP_PORT, media anchored ($BIN)"
start_switch

# ---------------------------------------------------------------- the phones
metric() { scrape "$OUT/metrics_now.txt" && metric_sum "$1" "$OUT/metrics_now.txt" "${@:2}" || echo NA; }
# wait_metric NAME VALUE SECONDS LABEL...: polls /metrics until the sum reaches VALUE.
wait_metric() {
    local name=$1 want=$2 secs=$3 v; shift 3
    for _ in $(seq 1 $((secs * 5))); do
        v=$(metric "$name" "$@")
        is_num "$v" && [ "$v" -ge "$want" ] && return 0
        sleep 0.2
    done
    return 1
}
ctl() { python3 "$here/lib/baresip_ctrl.py" "$HOST:${CTRL[$1]}" "${@:2}"; }
# The baresip phones: all three, or 1001 and 1003 when linphonec plays 1002.
BARESIPS=(1001 1002 1003)
[ -z "$ATTENDED" ] || BARESIPS=(1001 1003)
for u in "${BARESIPS[@]}"; do
    d=$OUT/phone-$u
    mkdir -p "$d/dump"
    baresip_config "$HOST:${SIPP[$u]}" "${FREQ[$u]}" "$d/dump" "module			ctrl_tcp.so" \
        "ctrl_tcp_listen		$HOST:${CTRL[$u]}" "rtp_ports		40000-40999" > "$d/config"
    answer="answermode=auto"
    [ "$u" = 1001 ] && answer="answermode=manual"
    echo "<sip:$u@$DOMAIN;transport=udp>;auth_pass=secret-$u;outbound=\"sip:$HOST:$SIP_PORT;transport=udp\";$answer;regint=600" > "$d/accounts"
    baresip -s -f "$d" > "$d/baresip.log" 2>&1 < /dev/null &
    CHILD_PIDS+=("$!")
    eval "BS_$u=$!"
done
if [ -n "$ATTENDED" ]; then
    # 1002: linphonec, its commands written to a FIFO held open on fd 4.
    d=$OUT/phone-1002
    # linphonec does not start its SIP stack without its database directory under $HOME.
    mkdir -p "$d/.local/share/linphone"
    python3 - "$d/tone.wav" "${FREQ[1002]}" <<'PY2'
import math, struct, sys, wave
path, freq, rate = sys.argv[1], float(sys.argv[2]), 8000
with wave.open(path, "wb") as w:
    w.setnchannels(1); w.setsampwidth(2); w.setframerate(rate)
    w.writeframes(b"".join(struct.pack("<h", int(8000 * math.sin(2 * math.pi * freq * i / rate)))
                           for i in range(rate * 120)))
PY2
    cat > "$d/linphonerc" <<CFG
[sip]
sip_port=${SIPP[1002]}
sip_tcp_port=0
sip_tls_port=0
default_proxy=0
[rtp]
audio_rtp_port=40000-40999
[sound]
echocancellation=0
[misc]
history_max_size=0
[auth_info_0]
username=1002
userid=1002
passwd=secret-1002
realm=$DOMAIN
domain=$DOMAIN
[proxy_0]
reg_proxy=<sip:$HOST:$SIP_PORT;transport=udp>
reg_route=<sip:$HOST:$SIP_PORT;transport=udp;lr>
reg_identity=<sip:1002@$DOMAIN>
reg_expires=600
reg_sendregister=1
publish=0
CFG
    rm -f "$d/in"
    mkfifo "$d/in"
    HOME=$d linphonec -c "$d/linphonerc" -a -d 5 -l "$d/linphone.log" < "$d/in" > "$d/linphonec.out" 2>&1 &
    LP=$!
    CHILD_PIDS+=("$LP")
    exec 4> "$d/in"
    lp() { echo "$*" >&4; echo "$(elapsed "${t0:-0}" "$(now_s)") s: linphonec> $*" >> "$OUT/phone-1002/commands.txt"; }
    # lp_wait REGEX SECONDS: polls linphonec's output until a line matches.
    lp_wait() {
        for _ in $(seq 1 $(($2 * 10))); do
            grep -a -q -E "$1" "$OUT/phone-1002/linphonec.out" && return 0
            sleep 0.1
        done
        return 1
    }
    # No sound card here: WAV files instead; the tone file is its microphone.
    lp "soundcard use files"
    lp "play $d/tone.wav"
    lp "record $d/heard.wav"
fi
for u in "${BARESIPS[@]}"; do
    for _ in $(seq 1 50); do
        ctl "$u" about >/dev/null 2>&1 && break
        sleep 0.2
    done
    ctl "$u" about >/dev/null 2>&1 || die "baresip $u: ctrl_tcp does not answer on $HOST:${CTRL[$u]} (log: $OUT/phone-$u/baresip.log)"
done
wait_metric switchyard_registrar_bindings 3 10 'tenant="acme"' \
    || { say "result                 FAIL: the phones did not register (bindings $(metric switchyard_registrar_bindings 'tenant="acme"'))"; exit 1; }
say "phones                 1001 (440 Hz) udp:$HOST:${SIPP[1001]}, 1002 (660 Hz${ATTENDED:+, linphonec $(linphonec -v 2>&1 | awk '/version/ {print $2; exit}')}) udp:$HOST:${SIPP[1002]}, 1003 (880 Hz) udp:$HOST:${SIPP[1003]}; registered with digest"

if [ -n "$PCAP" ]; then
    command -v tshark >/dev/null || die "--pcap needs tshark"
    tshark -i lo -f "udp portrange 40000-40999" -w "$OUT/rtp.pcap" > "$OUT/tshark.log" 2>&1 &
    TSHARK=$!
    CHILD_PIDS+=("$TSHARK")
    for _ in $(seq 1 50); do grep -q "Capturing on" "$OUT/tshark.log" 2>/dev/null && break; sleep 0.1; done
fi

VERDICT=PASS
REASONS=()
XFER_EPOCH=$(date +%s.%N)
scrape "$OUT/metrics_before.txt" || die "GET /metrics failed"
t0=$(now_s)
step() { echo "$(elapsed "$t0" "$(now_s)") s: $*" | tee -a "$OUT/steps.txt"; }

# ---------------------------------------------------------------- the call and the transfer
step "1001 dials 1002"
ctl 1001 dial "sip:1002@$DOMAIN" > /dev/null || fail "1001: dial refused"
if wait_metric switchyard_calls_answered_total 1 10; then
    step "1002 answered"
else
    fail "1002 did not answer within 10 s"
fi
# Talk: let audio flow both ways before the transfer.
sleep "$TALK"
if [ "$VERDICT" = PASS ] && [ -n "$ATTENDED" ]; then
    step "1002 puts 1001 on hold (linphonec \"pause 1\": a re-INVITE)"
    lp "pause 1"
    lp_wait 'Call 1 .*paused' 5 || fail "linphonec did not say call 1 is paused"
    step "1002 calls 1003 (linphonec \"call\")"
    lp "call sip:1003@$DOMAIN"
    if wait_metric switchyard_calls_answered_total 2 10; then
        step "1003 answered the consultation"
    else
        fail "1003 did not answer 1002's consultation call within 10 s"
    fi
    sleep "$TALK"
    lp "calls"
    lp_wait '^2 +\| sip:1003' 5 || fail "linphonec does not list the consultation as call 2"
    step "1002 transfers call 1 to call 2 (linphonec \"transfer 1 --to-call 2\": REFER with Replaces)"
    XFER_EPOCH=$(date +%s.%N)
    lp "transfer 1 --to-call 2"
elif [ "$VERDICT" = PASS ]; then
    step "1002 transfers to 1003 (baresip \"transfer\": REFER)"
    XFER_EPOCH=$(date +%s.%N)
    ctl 1002 transfer "sip:1003@$DOMAIN" > "$OUT/transfer.out" 2>&1 || fail "1002: transfer command refused: $(cat "$OUT/transfer.out")"
fi
if [ "$VERDICT" = PASS ]; then
    if wait_metric switchyard_transfers_total 1 15 'outcome="completed"'; then
        step "transfer completed (1003 answered)"
    else
        fail "no completed transfer within 15 s (refused: $(metric switchyard_transfers_refused_total), failed: $(metric switchyard_transfers_total 'outcome="failed"'))"
    fi
fi
T_XFER=$(elapsed "$t0" "$(now_s)")
sleep "$TALK"
scrape "$OUT/metrics_talk.txt" || true
step "1001 hangs up"
ctl 1001 hangup > /dev/null || true
for _ in $(seq 1 50); do
    [ "$(metric switchyard_calls_active)" = 0 ] && break
    sleep 0.2
done
CA_AFTER=$(metric switchyard_calls_active)
[ "$CA_AFTER" = 0 ] || fail "switchyard_calls_active $CA_AFTER after the hangup"
step "call over (calls_active $CA_AFTER)"
scrape "$OUT/metrics_after.txt" || true
for u in "${BARESIPS[@]}"; do ctl "$u" quit > /dev/null 2>&1 || true; done
if [ -n "$ATTENDED" ]; then
    lp "quit"
    exec 4>&-
    for _ in $(seq 1 25); do kill -0 "$LP" 2>/dev/null || break; sleep 0.2; done
fi
if [ -n "$PCAP" ]; then
    kill -INT "$TSHARK" 2>/dev/null || true
    for _ in $(seq 1 25); do kill -0 "$TSHARK" 2>/dev/null || break; sleep 0.2; done
fi
for u in "${BARESIPS[@]}"; do
    pid_var=BS_$u
    for _ in $(seq 1 25); do kill -0 "${!pid_var}" 2>/dev/null || break; sleep 0.2; done
done
# A clean stop, so the CDR is in the database before it is read.
kill -TERM "$SW" 2>/dev/null || true
for _ in $(seq 1 100); do kill -0 "$SW" 2>/dev/null || break; sleep 0.2; done

# ---------------------------------------------------------------- what each phone heard
declare -A HEARD
for u in "${PHONES[@]}"; do
    # baresip's sndfile recording of what it heard; linphonec's "record" file.
    f=$(ls -1 "$OUT/phone-$u/dump/"*-dec.wav "$OUT/phone-$u/heard.wav" 2>/dev/null | head -1 || true)
    if [ -n "$f" ] && [ -s "$f" ]; then
        HEARD[$u]=$(python3 "$here/lib/tones.py" "$f" 440=1001 660=1002 880=1003)
    else
        HEARD[$u]='{"seconds": {}, "timeline": "no recording"}'
    fi
done
secs() { # phone tone-owner: seconds of that tone in the phone's recording
    printf '%s' "${HEARD[$1]}" | python3 -c 'import json,sys; print(json.load(sys.stdin).get("seconds", {}).get(sys.argv[1], 0))' "$2"
}
ge1() { awk -v s="$1" 'BEGIN { exit !(s + 0 >= 1.0) }'; }
A_HEARD_C=$(secs 1001 1003) C_HEARD_A=$(secs 1003 1001)
A_HEARD_B=$(secs 1001 1002) B_HEARD_A=$(secs 1002 1001)
ge1 "$A_HEARD_B" || fail "1001 heard 1002's tone for $A_HEARD_B s before the transfer (1 s at least expected)"
[ -n "$ATTENDED" ] || ge1 "$B_HEARD_A" || fail "1002 heard 1001's tone for $B_HEARD_A s (1 s at least expected)"
# After the attended transfer's hold re-INVITE baresip 1.0 records nothing more (its
# decoder does not come back from recvonly): the capture shows what reached 1001 then.
[ -n "$ATTENDED" ] || ge1 "$A_HEARD_C" || fail "1001 heard 1003's tone for $A_HEARD_C s after the transfer (1 s at least expected)"
ge1 "$C_HEARD_A" || fail "1003 heard 1001's tone for $C_HEARD_A s (1 s at least expected)"
C_HEARD_B=$(secs 1003 1002)
if [ -z "$ATTENDED" ]; then
    awk -v s="$C_HEARD_B" 'BEGIN { exit !(s + 0 == 0) }' || fail "1003 heard 1002's tone ($C_HEARD_B s): the transferor's audio leaked"
fi
# A phone's RTP port: the m= line of the first SDP it sent (its SIP trace names each
# message's direction, "UDP from -> to").
rtp_port() {
    sed -e 's/\x1b\[[0-9;]*m//g' "$OUT/phone-$1/baresip.log" \
        | awk -v me="$HOST:${SIPP[$1]}" '/^(UDP|TCP) .* -> / { out = ($2 == me) } out && /^m=audio/ { print $2; exit }'
}
# What the switch sent 1001 and 1003 from the transfer on (the capture's G.711 payloads).
WIRE_A='{"timeline": "not captured (--pcap)"}' WIRE_C='{"timeline": "not captured (--pcap)"}'
if [ -n "$PCAP" ] && [ -s "$OUT/rtp.pcap" ]; then
    WIRE_A=$(python3 "$here/lib/tones.py" --rtp "$OUT/rtp.pcap" "$(rtp_port 1001)" --after "$XFER_EPOCH" 440=1001 660=1002 880=1003 2>>"$OUT/tones.err" || echo '{"timeline": "capture unreadable"}')
    WIRE_C=$(python3 "$here/lib/tones.py" --rtp "$OUT/rtp.pcap" "$(rtp_port 1003)" --after "$XFER_EPOCH" 440=1001 660=1002 880=1003 2>>"$OUT/tones.err" || echo '{"timeline": "capture unreadable"}')
    wire_secs() { printf '%s' "$1" | python3 -c 'import json,sys; print(json.load(sys.stdin).get("seconds", {}).get(sys.argv[1], 0))' "$2"; }
    W_AC=$(wire_secs "$WIRE_A" 1003) W_CA=$(wire_secs "$WIRE_C" 1001)
    ge1 "$W_AC" || fail "the switch sent 1001 $W_AC s of 1003's tone after the transfer (1 s at least expected)"
    ge1 "$W_CA" || fail "the switch sent 1003 $W_CA s of 1001's tone after the transfer (1 s at least expected)"
fi

# ---------------------------------------------------------------- the switch's view
DB=$OUT/data/switchyard.db
CDR=NA
if [ -s "$DB" ]; then
    # The transfer chain and the legs, where the store has them (cdrs.transfers, cdr_legs).
    XF="''"
    if sqlite3 -batch -noheader "$DB" "SELECT name FROM pragma_table_info('cdrs')" 2>/dev/null | grep -qx transfers; then
        XF="', transfers ' || IFNULL(transfers, '-') || ', legs ' || IFNULL((SELECT group_concat(role || ' ' || party || ' ' || end_reason, ' / ') FROM (SELECT * FROM cdr_legs l WHERE l.cdr_id = cdrs.id ORDER BY seq)), '-')"
        if [ -n "$ATTENDED" ]; then
            t=$(sqlite3 -batch -noheader "$DB" "SELECT COUNT(*) FROM cdrs WHERE callee = '1002' AND transfers LIKE 'attended:phone>%1003%'" 2>/dev/null || echo 0)
            [ "$t" = 1 ] || fail "the CDR of 1001 -> 1002 does not show the attended transfer in cdrs.transfers"
        else
            t=$(sqlite3 -batch -noheader "$DB" "SELECT COUNT(*) FROM cdrs WHERE callee = '1002' AND transfers = 'blind:phone>user:1003'" 2>/dev/null || echo 0)
            [ "$t" = 1 ] || fail "the CDR of 1001 -> 1002 does not show blind:phone>user:1003 in cdrs.transfers"
        fi
    fi
    CDR=$(sqlite3 -batch -noheader "$DB" "SELECT 'caller ' || caller || ', callee ' || callee || ', target ' || IFNULL(target,'-') || ', hangup by ' || hangup_by || ' (' || disconnect_reason || '), billable ' || billable_ms || ' ms, packets A ' || IFNULL(packets_a,'NA') || ' / B ' || IFNULL(packets_b,'NA') || ', loss A ' || IFNULL(loss_a,'NA') || ' / B ' || IFNULL(loss_b,'NA') || $XF FROM cdrs" 2>&1 | paste -sd';' -)
    if [ -n "$ATTENDED" ]; then
        # The call 1001 -> 1002 ends with 1003 (the consultation's contact) as its target;
        # the consultation 1002 -> 1003 ends "replaced (attended transfer)".
        t=$(sqlite3 -batch -noheader "$DB" "SELECT COUNT(*) FROM cdrs WHERE callee = '1002' AND target LIKE 'sip:1003%' AND answer_at IS NOT NULL AND hangup_by = 'caller'" 2>/dev/null || echo 0)
        [ "$t" = 1 ] || fail "no CDR of 1001 -> 1002 ending with 1003"
        t=$(sqlite3 -batch -noheader "$DB" "SELECT COUNT(*) FROM cdrs WHERE callee = '1003' AND disconnect_reason LIKE 'replaced%'" 2>/dev/null || echo 0)
        [ "$t" = 1 ] || fail "no CDR of the consultation 1002 -> 1003 replaced by the transfer"
    else
        t=$(sqlite3 -batch -noheader "$DB" "SELECT COUNT(*) FROM cdrs WHERE callee = '1002' AND target = 'user:1003' AND answer_at IS NOT NULL" 2>/dev/null || echo 0)
        [ "$t" = 1 ] || fail "no CDR of 1001 -> 1002 transferred to user:1003"
    fi
fi
d_pk() { # dir kind: relay packet counter delta over the whole call
    local a b
    a=$(metric_sum switchyard_media_packets_total "$OUT/metrics_before.txt" "dir=\"$1\"" "kind=\"$2\"")
    b=$(metric_sum switchyard_media_packets_total "$OUT/metrics_after.txt" "dir=\"$1\"" "kind=\"$2\"")
    [ "$a" = NA ] && a=0
    [ "$b" = NA ] && { echo NA; return; }
    echo $((b - a))
}
say "steps                  $(paste -sd';' "$OUT/steps.txt" | sed 's/;/; /g')"
say "1001 heard             $(printf '%s' "${HEARD[1001]}" | python3 -c 'import json,sys; print(json.load(sys.stdin)["timeline"])')"
say "1002 heard             $(printf '%s' "${HEARD[1002]}" | python3 -c 'import json,sys; print(json.load(sys.stdin)["timeline"])')"
say "1003 heard             $(printf '%s' "${HEARD[1003]}" | python3 -c 'import json,sys; print(json.load(sys.stdin)["timeline"])')"
say "both ways after xfer   1001 heard 1003 for $A_HEARD_C s, 1003 heard 1001 for $C_HEARD_A s (transfer done at ${T_XFER} s; recordings)"
timeline() { printf '%s' "$1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["timeline"])'; }
say "to 1001 after xfer     $(timeline "$WIRE_A") (RTP the switch sent to 1001's port from the transfer command on, capture)"
say "to 1003 after xfer     $(timeline "$WIRE_C") (RTP the switch sent to 1003's port, capture)"
say "relay packets          in rtp $(d_pk in rtp), out rtp $(d_pk out rtp), in rtcp $(d_pk in rtcp), out rtcp $(d_pk out rtcp) (switchyard_media_packets_total)"
refused=$(metric_sum switchyard_transfers_refused_total "$OUT/metrics_after.txt")
[ "$refused" != NA ] || refused=0
say "transfers              completed $(metric_sum switchyard_transfers_total "$OUT/metrics_after.txt" 'outcome="completed"'), refused $refused (switchyard_transfers_total, switchyard_transfers_refused_total)"
say "CDR                    $CDR"
# What each phone said of its call (its log, colour codes and rate lines taken out).
for u in "${BARESIPS[@]}"; do
    say "phone $u log         $(sed -e 's/\x1b\[[0-9;]*m//g' -e 's/\[[0-9:]*\] audio=[^ ]* (bit\/s) *//g' "$OUT/phone-$u/baresip.log" \
        | grep -v sndfile | grep -E 'Call established|transferring|[Tt]ransfer|REFER|NOTIFY|terminated|answering call|Incoming call' | paste -sd'|' - | sed 's/|/ | /g')"
done
if [ -n "$ATTENDED" ]; then
    say "phone 1002 linphonec   $(sed 's/^linphonec> //' "$OUT/phone-1002/linphonec.out" | grep -a -E '^(Call [0-9]|Performing|The distant)' | sed 's/linphonec> / /g' | paste -sd'|' - | sed 's/|/ | /g')"
fi
if [ -n "$PCAP" ] && [ -s "$OUT/rtp.pcap" ]; then
    say "RTP flows (pcap; the phones' RTP ports: $(for u in "${BARESIPS[@]}"; do printf '%s ' "$u=$(rtp_port "$u")"; done); the switch's ports are 16384 and up):"
    tshark -r "$OUT/rtp.pcap" -T fields -e frame.time_relative -e udp.srcport -e udp.dstport -e icmp.type 2>/dev/null \
        | awk -F'\t' '{ k = $2 " -> " $3 ($4 != "" ? " (icmp)" : ""); if (!(k in n)) { first[k] = $1; order[++m] = k } n[k]++; last[k] = $1 }
            END { for (i = 1; i <= m; i++) { k = order[i]; printf "    %-24s %5d packets, %.2f-%.2f s\n", k, n[k], first[k], last[k] } }' | tee -a "$OUT/report.txt"
fi
say "$(verdict_line)"
say "files                  $OUT"
[ "$VERDICT" = PASS ]
