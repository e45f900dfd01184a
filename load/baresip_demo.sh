#!/usr/bin/env bash
# The first five minutes with a real phone: the switch started with NO config file in an
# empty directory (its demo tenant), baresip (Debian package baresip) registers as demo user
# 1001 with the password the switch generated into data/demo-users.txt, calls the echo test
# 9196 with a 440 Hz sine as its microphone, and records what it hears. Passes when baresip
# registered, the switch answered the echo call and sent packets back, and the recording holds
# the phone's own 440 Hz tone.
#
#   load/baresip_demo.sh [--switch-bin PATH] [--seconds 6]
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
BIN="$root/target/release/switchyard" SECS=6
while [ $# -gt 0 ]; do
    case "$1" in
        --switch-bin) BIN=$2; shift 2 ;;
        --seconds) SECS=$2; shift 2 ;;
        *) echo "baresip_demo.sh: unknown option $1" >&2; exit 2 ;;
    esac
done
for t in baresip curl python3; do command -v $t >/dev/null || { echo "baresip_demo.sh: $t missing" >&2; exit 2; }; done
[ -x "$BIN" ] || (cd "$root" && cargo build --release >&2)
BIN=$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")
OUT=$(mktemp -d /tmp/switchyard-demo.XXXXXX)
pick_port() { local p; for _ in $(seq 1 200); do p=$((20000 + RANDOM % 12000)); [ -z "$(ss -Htuan "( sport = :$p )" 2>/dev/null)" ] && { echo "$p"; return; }; done; exit 2; }
SIP=$(pick_port); HTTP=$(pick_port); PHONE=$(pick_port)
cleanup() { kill "${BS:-}" "${SW:-}" 2>/dev/null || true; }
trap cleanup EXIT

# No config file: the embedded default and its demo, in an empty directory.
mkdir -p "$OUT/node"
(cd "$OUT/node" && exec "$BIN" --sip-listen "udp:127.0.0.1:$SIP" --http-listen "127.0.0.1:$HTTP" \
    > "$OUT/switch.out" 2> "$OUT/switch.log") & SW=$!
for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$HTTP/health" >/dev/null 2>&1 && break; sleep 0.1; done
PASS=$(awk '$1 == "1001" {print $2}' "$OUT/node/data/demo-users.txt")
[ -n "$PASS" ] || { echo "baresip_demo.sh: no password for 1001 in data/demo-users.txt" >&2; exit 1; }

mkdir -p "$OUT/baresip" "$OUT/heard"
# shellcheck source=lib/baresip.sh
. "$here/lib/baresip.sh"
baresip_config "127.0.0.1:$PHONE" 440 "$OUT/heard" "audio_player		aufile,$OUT/play.wav" \
    > "$OUT/baresip/config"
# Nothing but the server's address, the user and its password.
echo "<sip:1001@127.0.0.1;transport=udp>;auth_pass=$PASS;outbound=\"sip:127.0.0.1:$SIP;transport=udp\";regint=600" > "$OUT/baresip/accounts"
metric() { curl -sf "http://127.0.0.1:$HTTP/metrics" | awk -v m="$1" 'index($0, m) == 1 {s += $NF} END {print s + 0}'; }
timeout $((SECS + 20)) baresip -f "$OUT/baresip" -t $((SECS + 4)) -e "/dial sip:9196@127.0.0.1:$SIP" \
    > "$OUT/baresip.log" 2>&1 & BS=$!
registered=0
for _ in $(seq 1 50); do
    [ "$(metric 'switchyard_registrar_bindings{tenant="demo"}')" = 1 ] && { registered=1; break; }
    sleep 0.2
done
wait "$BS" 2>/dev/null || true
answered=$(metric 'switchyard_service_calls_total{service="echo",result="answered"}')
echoed=$(metric switchyard_media_echoed_packets_total)
heard=$(python3 - "$OUT"/heard/*dec*.wav <<'PY'
import math, struct, sys, wave
try:
    w = wave.open(sys.argv[1])
except Exception:
    print("0 0"); sys.exit()
rate, ch, n = w.getframerate(), w.getnchannels(), w.getnframes()
raw = w.readframes(n)
s = struct.unpack("<%dh" % (len(raw) // 2), raw)[::ch]
# The loudest second, then a Goertzel at 440 Hz against 1 kHz.
best = max(range(0, max(1, len(s) - rate), rate // 4), key=lambda i: sum(abs(x) for x in s[i:i + rate]), default=0)
x = s[best:best + rate]
def power(f):
    k = 2 * math.cos(2 * math.pi * f / rate); a = b = 0.0
    for v in x:
        a, b = v + k * a - b, a
    return a * a + b * b - k * a * b
rms = math.sqrt(sum(v * v for v in x) / max(1, len(x)))
print("%d %.1f" % (rms, power(440) / max(1.0, power(1000))))
PY
)
rms=${heard% *}; ratio=${heard#* }
echo "baresip registered as 1001 with the generated password: $([ $registered = 1 ] && echo yes || echo NO)"
echo "echo test 9196: answered $answered, packets echoed $echoed, heard RMS $rms, 440 Hz vs 1 kHz power x$ratio"
echo "files: $OUT"
[ $registered = 1 ] && [ "$answered" -ge 1 ] && [ "$echoed" -ge 50 ] && [ "$rms" -ge 300 ] \
    && awk -v r="$ratio" 'BEGIN {exit !(r >= 10)}'
