#!/usr/bin/env bash
# SIPVicious against a running node (issue 16): the Debian package's svmap, svwar and
# svcrack, as an attacker runs them, against a release build with the shipped defences and
# a tenant user whose password is four digits. Each tool attacks from its own loopback
# address (127.0.0.21..24 stand in for internet hosts). Checks:
#   - svmap finds no SIP device; svwar enumerates no extension;
#   - svcrack finds no password within 10,000 guesses (0000-9999, the right one included);
#   - each scanner's source is banned at its first request and never answered;
#   - disguised as a phone (lib/sv.py: a phone's User-Agent, and nonce counts as RFC 7616
#     has them, which svcrack gets wrong), the guesser is shut out by the per-(user, source)
#     digest lock and the flood ban, still without the password;
#   - the user's own phone (127.0.0.1) registers afterwards: no lockout lever;
#   - control: with the defences relaxed for one address (flood-exempt, no digest lock) the
#     same disguised svcrack, given 4800-4830, does find the password: the checks can fail.
# Prints a report (also in OUT/report.txt); exits non-zero if any check fails.
#
#   load/sipvicious.sh [--switch-bin PATH] [--out DIR] [--keep]
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
BIN="" KEEP=""
OUT="$here/out/$(date -u +%Y%m%dT%H%M%SZ)-sipvicious-$$"
while [ $# -gt 0 ]; do
    case "$1" in
        --switch-bin) BIN=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        --keep) KEEP=1; shift ;;
        -h|--help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "sipvicious.sh: unknown option $1" >&2; exit 2 ;;
    esac
done
# shellcheck source=lib/common.sh
. "$here/lib/common.sh"
for t in svmap svwar svcrack sipp curl python3; do
    command -v "$t" >/dev/null || die "$t not installed (apt-get install sipvicious sip-tester curl python3)"
done
ensure_switch_bin
mkdir -p "$OUT"
HOST=127.0.0.1
pick_port SIP_PORT; pick_port HTTP_PORT; pick_port PHONE_PORT
TOKEN=$(random_token)
DOMAIN=acme.example.com USER_ID=1001 PASSWORD=4821
MAP_IP=127.0.0.21 WAR_IP=127.0.0.22 CRACK_IP=127.0.0.23 DISGUISED_IP=127.0.0.24
VERDICT=PASS
REASONS=()

ha1() { printf '%s' "$1:$DOMAIN:$2" | "$3" | cut -d' ' -f1; }
cat > "$OUT/switchyard.toml" <<CFG
data_dir = "$OUT/data"
[sip]
listen = ["udp:$HOST:$SIP_PORT"]
[http]
listen = "$HOST:$HTTP_PORT"
token = "$TOKEN"
# The shipped defences: [security] trusts no one, [security.flood] and [security.scanners]
# at their defaults (30 messages / 2 s, 60 s bans; the scanner list).
[registrar]
algorithms = ["MD5"]            # what sipvicious and SIPp speak
[[tenants]]
id = "acme"
domain = "$DOMAIN"
[[tenants.users]]
username = "$USER_ID"
ha1_md5 = "$(ha1 "$USER_ID" "$PASSWORD" md5sum)"
ha1_sha256 = "$(ha1 "$USER_ID" "$PASSWORD" sha256sum)"
CFG
"$BIN" check-config "$OUT/switchyard.toml" >/dev/null || die "config refused (see $OUT/switchyard.toml)"
start_switch

metric() { # name [label...]: the sum over matching series, 0 if none
    scrape "$OUT/metrics.txt" || die "no /metrics"
    local v
    v=$(metric_sum "$1" "$OUT/metrics.txt" "${@:2}")
    [ "$v" = NA ] && echo 0 || echo "$v"
}
bans_json() { api_get /security/bans || echo '{}'; }
banned() { # ip: whether /security/bans lists it
    bans_json | python3 -c 'import json,sys; ip=sys.argv[1]; print("yes" if any(b.get("source")==ip for b in json.load(sys.stdin).get("bans",[])) else "no")' "$1"
}
ban_reason() { # ip: "reason, N packets dropped since" or "-"
    bans_json | python3 -c 'import json,sys; ip=sys.argv[1]; print(next(("%s, %s packets dropped since" % (b.get("reason","?"), b.get("dropped","?")) for b in json.load(sys.stdin).get("bans",[]) if b.get("source")==ip), "-"))' "$1"
}
sent_total() { metric switchyard_sip_messages_sent_total; }
dropped_total() { metric switchyard_security_dropped_total; }

# sv TOOL SOURCE_IP [--as-phone] ARGS...: sipvicious's TOOL as installed, from SOURCE_IP
# (and with a phone's User-Agent): see lib/sv.py.
SV=(python3 "$here/lib/sv.py")

say "== switchyard vs SIPVicious $(dpkg-query -W -f='${Version}' sipvicious 2>/dev/null || echo '?') ($(date -u +%FT%TZ), $(nproc) cores, shared)"
say "node            udp:$HOST:$SIP_PORT, $BIN"
say "target user     $USER_ID@$DOMAIN, password: four digits (MD5 digest)"

# --- svmap: is there a SIP device? ------------------------------------------------------
s0=$(sent_total)
timeout 60 "${SV[@]}" svmap "$MAP_IP" -p "$SIP_PORT" "$HOST" > "$OUT/svmap.txt" 2>&1 || true
s1=$(sent_total)
found=$(grep -cE "^\| *$HOST:$SIP_PORT" "$OUT/svmap.txt" || true)
say "svmap           from $MAP_IP: devices found $found; answers sent to it $((s1 - s0)); banned $(banned "$MAP_IP") ($(ban_reason "$MAP_IP"))"
[ "$found" = 0 ] || fail "svmap found the node"
[ "$(banned "$MAP_IP")" = yes ] || fail "svmap's source not banned"

# --- svwar: which extensions exist? --------------------------------------------------------
s0=$(sent_total); d0=$(dropped_total)
timeout 120 "${SV[@]}" svwar "$WAR_IP" -p "$SIP_PORT" -e 1000-1100 -m REGISTER --force --maximumtime 5 \
    "$HOST" > "$OUT/svwar.txt" 2>&1 || true
s1=$(sent_total); d1=$(dropped_total)
ext=$(grep -cE "^\| *[0-9]+ " "$OUT/svwar.txt" || true)
say "svwar           from $WAR_IP: extensions 1000-1100, found $ext; answers sent to it $((s1 - s0)); banned $(banned "$WAR_IP") ($(ban_reason "$WAR_IP"))"
[ "$ext" = 0 ] || fail "svwar enumerated $ext extension(s)"
[ "$(banned "$WAR_IP")" = yes ] || fail "svwar's source not banned"
[ $((s1 - s0)) = 0 ] || fail "svwar was answered"

# --- svcrack: guess the four-digit password ------------------------------------------------
s0=$(sent_total); d0=$(dropped_total)
timeout 300 "${SV[@]}" svcrack "$CRACK_IP" -p "$SIP_PORT" -u "$USER_ID" --domain "$DOMAIN" -r 0-9999 -z 4 \
    --maximumtime 5 "$HOST" > "$OUT/svcrack.txt" 2>&1 || true
s1=$(sent_total); d1=$(dropped_total)
cracked=$(grep -cE "^\| *$USER_ID +\| *[0-9]" "$OUT/svcrack.txt" || true)
say "svcrack         from $CRACK_IP: 0000-9999 for $USER_ID, password found: $([ "$cracked" = 0 ] && echo no || echo YES); answers sent to it $((s1 - s0)); banned $(banned "$CRACK_IP") ($(ban_reason "$CRACK_IP"))"
[ "$cracked" = 0 ] || fail "svcrack found the password"
[ "$(banned "$CRACK_IP")" = yes ] || fail "svcrack's source not banned"
[ $((s1 - s0)) = 0 ] || fail "svcrack was answered"

# --- svcrack with its User-Agent disguised ------------------------------------------------
# The same tool with the User-Agent of a phone: the scanner list no longer sees it; the
# flood ban and the digest lock per (user, source) must.
s0=$(sent_total)
f0=$(metric switchyard_auth_total 'outcome="failure"'); l0=$(metric switchyard_auth_total 'outcome="locked"')
timeout 300 "${SV[@]}" svcrack "$DISGUISED_IP" --as-phone -p "$SIP_PORT" -u "$USER_ID" --domain "$DOMAIN" \
    -r 0-9999 -z 4 --maximumtime 5 "$HOST" > "$OUT/svcrack-disguised.txt" 2>&1 || true
s1=$(sent_total)
f1=$(metric switchyard_auth_total 'outcome="failure"'); l1=$(metric switchyard_auth_total 'outcome="locked"')
dcracked=$(grep -cE "^\| *$USER_ID +\| *[0-9]" "$OUT/svcrack-disguised.txt" || true)
say "svcrack (as a phone) from $DISGUISED_IP: password found: $([ "$dcracked" = 0 ] && echo no || echo YES); answers sent to it $((s1 - s0)): $((f1 - f0)) wrong guesses, then $((l1 - l0)) refused 403 (locked); banned $(banned "$DISGUISED_IP") ($(ban_reason "$DISGUISED_IP"))"
[ "$dcracked" = 0 ] || fail "the disguised svcrack found the password"

# --- the user's own phone still registers --------------------------------------------------
printf 'SEQUENTIAL\n%s;[authentication username=%s password=%s];%s\n' "$USER_ID" "$USER_ID" "$PASSWORD" "$DOMAIN" > "$OUT/phone.csv"
(cd "$OUT" && timeout 30 sipp "$HOST:$SIP_PORT" -sf "$here/scenarios/register.xml" -inf "$OUT/phone.csv" \
    -auth_uri "$DOMAIN" \
    -m 1 -r 1 -i "$HOST" -p "$PHONE_PORT" -nostdin -trace_stat -stf phone.csv.stat -trace_err \
    > "$OUT/phone.screen" 2>&1) && phone=yes || phone=no
say "the user's phone from $HOST: registers after the attacks: $phone"
[ "$phone" = yes ] || fail "the user's own phone cannot register"

# --- control: the harness sees a cracked password when the defences let it through -------
CONTROL_IP=127.0.0.25
kill -TERM "$SW" 2>/dev/null || true
for _ in $(seq 1 50); do kill -0 "$SW" 2>/dev/null || break; sleep 0.1; done
cp "$OUT/metrics.txt" "$OUT/metrics-main.txt"
sed -i -e 's/^\[registrar\]$/[security.flood]\nexempt = ["'"$CONTROL_IP"'"]\n[registrar]\nmax_auth_failures = 1000000/' "$OUT/switchyard.toml"
"$BIN" check-config "$OUT/switchyard.toml" >/dev/null || die "control config refused"
start_switch
timeout 120 "${SV[@]}" svcrack "$CONTROL_IP" --as-phone -p "$SIP_PORT" -u "$USER_ID" --domain "$DOMAIN" \
    -r 4800-4830 -z 4 --maximumtime 5 "$HOST" > "$OUT/svcrack-control.txt" 2>&1 || true
control=$(grep -E "^\| *$USER_ID +\| *[0-9]" "$OUT/svcrack-control.txt" | awk -F'|' '{gsub(/ /,"",$3); print $3}' | head -1 || true)
say "control         defences relaxed for $CONTROL_IP: the disguised svcrack (4800-4830) finds: ${control:-nothing}"
[ "$control" = "$PASSWORD" ] || fail "control: svcrack did not find the password with the defences relaxed"
cp "$OUT/metrics-main.txt" "$OUT/metrics.txt"

bans=$(metric_sum switchyard_security_bans_total "$OUT/metrics-main.txt")
say "bans            $bans in all; dropped packets $(metric_sum switchyard_security_dropped_total "$OUT/metrics-main.txt"); scanner requests dropped $(metric_sum switchyard_security_dropped_total "$OUT/metrics-main.txt" 'reason="scanner"')"
say "result          $VERDICT${REASONS[*]:+ (${REASONS[*]})}"
say "files           $OUT"
[ -n "$KEEP" ] || rm -rf "$OUT/data"
[ "$VERDICT" = PASS ]
