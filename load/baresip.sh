#!/usr/bin/env bash
# Interop with a real SIP phone: baresip (Debian package baresip), run headless with a sine
# tone as its microphone, registers as user 2001 of tenant acme.test with digest
# authentication (over UDP, or TCP with --tcp), auto-answers; SIPp then calls the user
# through the switch. Passes when baresip is registered and every call completes.
#
#   load/baresip.sh [--calls 3] [--tcp | --tls] [--switch-bin PATH]
# With --tls the phone trusts the switch's self-signed certificate (generated into the data
# directory at start) and registers and takes its calls over its TLS connection.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
CALLS=3 TRANSPORT=udp BIN="$root/target/release/switchyard"
while [ $# -gt 0 ]; do
    case "$1" in
        --calls) CALLS=$2; shift 2 ;;
        --tcp) TRANSPORT=tcp; shift ;;
        --tls) TRANSPORT=tls; shift ;;
        --switch-bin) BIN=$2; shift 2 ;;
        *) echo "baresip.sh: unknown option $1" >&2; exit 2 ;;
    esac
done
for t in baresip sipp curl; do command -v $t >/dev/null || { echo "baresip.sh: $t missing" >&2; exit 2; }; done
[ -x "$BIN" ] || (cd "$root" && cargo build --release >&2)
OUT=$(mktemp -d /tmp/switchyard-baresip.XXXXXX)
pick_port() { local p; for _ in $(seq 1 200); do p=$((20000 + RANDOM % 12000)); [ -z "$(ss -Htuan "( sport = :$p )" 2>/dev/null)" ] && { echo "$p"; return; }; done; exit 2; }
SIP=$(pick_port); HTTP=$(pick_port); PHONE=$(pick_port); CALLER=$(pick_port); TLS=$(pick_port)
cleanup() { kill "${BS:-}" "${SW:-}" 2>/dev/null || true; }
trap cleanup EXIT

{
    echo "data_dir = \"$OUT/data\""
    echo "[sip]"; echo "listen = [\"udp:127.0.0.1:$SIP\", \"tcp:127.0.0.1:$SIP\", \"tls:127.0.0.1:$TLS\"]"
    echo "[http]"; echo "listen = \"127.0.0.1:$HTTP\""
    # baresip 1.0 answers only the first challenge and its digest has MD5 only.
    echo "[registrar]"; echo "algorithms = [\"MD5\"]"
    echo "[[tenants]]"; echo "id = \"acme\""; echo "domain = \"acme.test\""
    echo "[[tenants.users]]"
    echo -n 'phone-secret' | "$BIN" ha1 --username 2001 --realm acme.test
} > "$OUT/switchyard.toml"
"$BIN" --config "$OUT/switchyard.toml" > "$OUT/switch.log" 2>&1 & SW=$!

mkdir -p "$OUT/baresip/dump"
# shellcheck source=lib/baresip.sh
. "$here/lib/baresip.sh"
TRANSPORTS=udp,tcp baresip_config "127.0.0.1:$PHONE" 440 "$OUT/baresip/dump" \
    "audio_player		aufile,$OUT/heard.wav" > "$OUT/baresip/config"
PHONE_TARGET="sip:127.0.0.1:$SIP;transport=$TRANSPORT"
if [ "$TRANSPORT" = tls ]; then
    for _ in $(seq 1 50); do [ -f "$OUT/data/tls/cert.pem" ] && break; sleep 0.1; done
    echo "sip_cafile		$OUT/data/tls/cert.pem" >> "$OUT/baresip/config"
    PHONE_TARGET="sip:127.0.0.1:$TLS;transport=tls"
fi
echo "<sip:2001@acme.test;transport=$TRANSPORT>;auth_pass=phone-secret;outbound=\"$PHONE_TARGET\";answermode=auto;regint=600" > "$OUT/baresip/accounts"
metric() { curl -sf "http://127.0.0.1:$HTTP/metrics" | awk -v m="$1" 'index($0, m) == 1 {s += $NF} END {print s + 0}'; }
for _ in $(seq 1 50); do curl -sf "http://127.0.0.1:$HTTP/health" >/dev/null 2>&1 && break; sleep 0.1; done
timeout $((30 + CALLS * 5)) baresip -f "$OUT/baresip" > "$OUT/baresip.log" 2>&1 & BS=$!
registered=0
# Up to 30 s: right after the heavier loads of .ci/run baresip's first REGISTER has taken
# more than 10 s once (it registered at once in the runs alone).
for _ in $(seq 1 150); do
    [ "$(metric 'switchyard_registrar_bindings{tenant="acme"}')" = 1 ] && { registered=1; break; }
    sleep 0.2
done
echo "baresip registered over $TRANSPORT with digest: $([ $registered = 1 ] && echo yes || echo NO)"

# A caller from outside the tenant dials the user at the tenant's domain.
sed -e 's/INVITE sip:\[service\]@\[remote_ip\]:\[remote_port\]/INVITE sip:[service]@acme.test/' \
    -e 's/To: <sip:\[service\]@\[remote_ip\]:\[remote_port\]>/To: <sip:[service]@acme.test>/' \
    -e 's/<recv response="180"[^>]*>/<recv response="180" optional="true">/' \
    -e 's/ start_rtd="ring"//' -e 's/ start_rtd="answer"//' -e 's/ rtd="answer"//' \
    "$here/scenarios/uac.xml" > "$OUT/uac_domain.xml"
(cd "$OUT" && timeout 60 sipp 127.0.0.1:"$SIP" -sf "$OUT/uac_domain.xml" -s 2001 -m "$CALLS" -r 1 -d 2000 \
    -i 127.0.0.1 -p "$CALLER" -nostdin -trace_stat -stf caller.csv -trace_err > caller.screen 2>&1) || true
ok=$(awk -F';' 'NR==1{for(i=1;i<=NF;i++) if($i=="SuccessfulCall(C)") c=i} END{print $c+0}' "$OUT/caller.csv")
failed=$(awk -F';' 'NR==1{for(i=1;i<=NF;i++) if($i=="FailedCall(C)") c=i} END{print $c+0}' "$OUT/caller.csv")
answered=$(metric switchyard_calls_answered_total)
echo "calls through the switch to baresip: $ok ok, $failed failed of $CALLS (switch answered: $answered)"
echo "files: $OUT"
[ $registered = 1 ] && [ "$ok" = "$CALLS" ] && [ "$failed" = 0 ]
