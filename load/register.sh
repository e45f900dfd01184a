#!/usr/bin/env bash
# Registration load: N users of one tenant register through SIPp with digest authentication
# (MD5), then re-register at a given rate for a given time. Prints a report; exits non-zero
# on any failed registration.
#
#   load/register.sh [--users 20000] [--rate 1000] [--refresh-rate 1000] [--refresh-secs 60]
#                    [--switch-bin PATH] [--out DIR]
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
USERS=20000 RATE=1000 REFRESH_RATE=1000 REFRESH_SECS=60
BIN="$root/target/release/switchyard"
OUT="$here/out/$(date -u +%Y%m%dT%H%M%SZ)-register-$$"
while [ $# -gt 0 ]; do
    case "$1" in
        --users) USERS=$2; shift 2 ;;
        --rate) RATE=$2; shift 2 ;;
        --refresh-rate) REFRESH_RATE=$2; shift 2 ;;
        --refresh-secs) REFRESH_SECS=$2; shift 2 ;;
        --switch-bin) BIN=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        -h|--help) sed -n '2,8p' "$0"; exit 0 ;;
        *) echo "register.sh: unknown option $1" >&2; exit 2 ;;
    esac
done
command -v sipp >/dev/null || { echo "register.sh: sipp not installed (apt-get install sip-tester)" >&2; exit 2; }
command -v python3 >/dev/null || { echo "register.sh: python3 needed to hash the test passwords" >&2; exit 2; }
[ -x "$BIN" ] || (cd "$root" && cargo build --release >&2)
mkdir -p "$OUT"
DOMAIN=load.example.com
pick_port() {
    local p
    for _ in $(seq 1 200); do
        p=$((20000 + RANDOM % 12000))
        [ -z "$(ss -Htuan "( sport = :$p )" 2>/dev/null)" ] && { echo "$p"; return; }
    done
    echo "register.sh: no free port" >&2; exit 2
}
SIP_PORT=$(pick_port); HTTP_PORT=$(pick_port); PHONES_PORT=$(pick_port)
while [ "$HTTP_PORT" = "$SIP_PORT" ]; do HTTP_PORT=$(pick_port); done

# The phones keep their address across both phases (a refresh updates each binding).
# Users: SIPp's injection file (username;[authentication ...];domain) and the switch's users CSV
# (username,ha1_md5,ha1_sha256): the switch never sees a password.
python3 - "$USERS" "$DOMAIN" "$OUT" <<'PY'
import hashlib, sys
n, domain, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
with open(f"{out}/sipp_users.csv", "w") as s, open(f"{out}/users.csv", "w") as u:
    s.write("SEQUENTIAL\n")
    u.write("# username,ha1_md5,ha1_sha256\n")
    for i in range(n):
        user, pw = f"u{100000 + i}", f"pw-{i}-secret"
        a1 = f"{user}:{domain}:{pw}".encode()
        # SIPp expands keywords from the injection file but not inside [authentication]:
        # the whole keyword goes in the file (field1), as SIPp's documentation shows.
        s.write(f"{user};[authentication username={user} password={pw}];{domain}\n")
        u.write(f"{user},{hashlib.md5(a1).hexdigest()},{hashlib.sha256(a1).hexdigest()}\n")
PY
cat > "$OUT/switchyard.toml" <<CFG
data_dir = "$OUT/data"
[sip]
listen = ["udp:127.0.0.1:$SIP_PORT"]
[http]
listen = "127.0.0.1:$HTTP_PORT"
# SIPp sends far above a phone's rate from loopback: never banned (README "The edge").
[security.flood]
exempt = ["127.0.0.0/8"]
[registrar]
max_auth_failures = 1000000
# SIPp 3.6 answers only the first challenge and knows only MD5.
algorithms = ["MD5"]
[[tenants]]
id = "load"
domain = "$DOMAIN"
users_csv = "$OUT/users.csv"
CFG
"$BIN" check-config "$OUT/switchyard.toml" >/dev/null
"$BIN" --config "$OUT/switchyard.toml" > "$OUT/switch.log" 2>&1 &
SW=$!
trap 'kill $SW 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
    curl -sf "http://127.0.0.1:$HTTP_PORT/health" >/dev/null 2>&1 && break
    kill -0 $SW 2>/dev/null || { echo "register.sh: switch exited (see $OUT/switch.log)" >&2; exit 2; }
    sleep 0.1
done
ticks() { awk '{print $14+$15}' "/proc/$SW/stat"; }
hz=$(getconf CLK_TCK)

run_sipp() { # name total rate
    local name=$1 total=$2 rate=$3 t0 t1 c0 c1
    c0=$(ticks); t0=$(date +%s.%N)
    (cd "$OUT" && timeout $((total / rate + 60)) sipp 127.0.0.1:"$SIP_PORT" -sf "$here/scenarios/register.xml" \
        -inf "$OUT/sipp_users.csv" -auth_uri "$DOMAIN" -m "$total" -r "$rate" -l $((rate * 2)) -buff_size 4194304 \
        -i 127.0.0.1 -p "$PHONES_PORT" -nostdin -trace_stat -trace_err -stf "$name.csv" \
        -fd 1 > "$name.screen" 2>&1) || true
    t1=$(date +%s.%N); c1=$(ticks)
    local ok fail
    ok=$(awk -F';' 'NR==1{for(i=1;i<=NF;i++) if($i=="SuccessfulCall(C)") c=i} END{print $c}' "$OUT/$name.csv")
    fail=$(awk -F';' 'NR==1{for(i=1;i<=NF;i++) if($i=="FailedCall(C)") c=i} END{print $c}' "$OUT/$name.csv")
    awk -v n="$name" -v ok="$ok" -v f="$fail" -v a="$t0" -v b="$t1" -v c=$((c1 - c0)) -v hz="$hz" -v tot="$total" 'BEGIN {
        printf "%-22s %d ok, %d failed of %d; %.0f registrations/s; switch CPU %.2f s (%.0f us each)\n",
            n, ok, f, tot, ok / (b - a), c / hz, (ok > 0 ? c / hz / ok * 1e6 : 0) }'
    [ "${fail:-1}" = 0 ] && [ "${ok:-0}" = "$total" ]
}

echo "== switchyard registration load ($(date -u +%FT%TZ), $(nproc) cores)"
echo "users                  $USERS in tenant load ($DOMAIN), digest MD5 via SIPp"
verdict=PASS
run_sipp initial "$USERS" "$RATE" || verdict=FAIL
run_sipp refresh $((REFRESH_RATE * REFRESH_SECS)) "$REFRESH_RATE" || verdict=FAIL
bindings=$(curl -sf "http://127.0.0.1:$HTTP_PORT/metrics" | awk '/^switchyard_registrar_bindings\{/ {s+=$2} END {print s+0}')
echo "bindings now          $bindings"
echo "switch RSS             VmHWM $(awk '/VmHWM/ {print $2" "$3}' /proc/$SW/status), VmRSS $(awk '/VmRSS/ {print $2" "$3}' /proc/$SW/status)"
[ "$bindings" = "$USERS" ] || { echo "expected $USERS bindings"; verdict=FAIL; }
echo "result                 $verdict"
echo "files                  $OUT"
[ $verdict = PASS ]
