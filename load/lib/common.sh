# Shared by the load scripts (cc.sh, c2c.sh, trunks.sh, transfer.sh): children and clean-up, ports,
# metrics and SIPp statistics, process figures, the report. Sourced after `here`/`root`
# are set; the caller defines its own variables (HOST, HTTP_PORT, TOKEN, OUT, ...).
# shellcheck shell=bash
SCRIPT=${0##*/}
die() { echo "$SCRIPT: $*" >&2; exit 2; }
CHILD_PIDS=()
TAKEN_PORTS=" "
HZ=$(getconf CLK_TCK)
usage() { awk 'NR == 1 { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "$0"; }
cleanup() {
    local pid
    for pid in "${CHILD_PIDS[@]:-}"; do
        [ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${CHILD_PIDS[@]:-}"; do
        [ -n "$pid" ] || continue
        for _ in $(seq 1 25); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
        kill -KILL "$pid" 2>/dev/null || true
    done
}
pick_port() {
    local var=$1 p
    for _ in $(seq 1 500); do
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
wait_udp_bound() { # port pid what
    for _ in $(seq 1 100); do
        udp_bound "$1" && return 0
        kill -0 "$2" 2>/dev/null || die "$3 exited during start-up (see $OUT)"
        sleep 0.1
    done
    die "$3 did not bind udp:$HOST:$1 within 10 s"
}
scrape() { curl -sf --max-time 5 "http://$HOST:$HTTP_PORT/metrics" -o "$1" 2>/dev/null; }
# Every API route but /health and /metrics needs the node's token (at least 32 characters).
api_get() { curl -sf --max-time 5 -H "Authorization: Bearer $TOKEN" "http://$HOST:$HTTP_PORT$1" 2>/dev/null; }
# A fresh node token for a run: 256 random bits as 64 hex digits.
random_token() { od -An -tx1 -N32 /dev/urandom | tr -d ' \n'; }
# Sum of metric $1 over the series whose labels contain every one of $3...; "NA" if none.
metric_sum() {
    local name=$1 file=$2; shift 2
    awk -v m="$name" -v want="$*" '
        $0 ~ /^#/ || NF < 2 { next }
        { n=$1; sub(/\{.*/, "", n); if (n != m) next
          k=split(want, w, " "); for (i=1;i<=k;i++) if (index($0, w[i]) == 0) next
          s+=$NF; f=1 }
        END { if (f) printf "%.0f\n", s; else print "NA" }' "$file"
}
cpu_ticks() { # utime+stime of pid $1 (the command name may hold spaces)
    local s rest
    s=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    rest=${s##*) }
    # shellcheck disable=SC2086
    set -- $rest
    echo $(( ${12} + ${13} ))
}
status_kb() { awk -v k="$2:" '$1==k {print $2}' "/proc/$1/status" 2>/dev/null; }
ticks_s() { awk -v t="$1" -v hz="$HZ" 'BEGIN { if (t=="NA" || t=="") print "NA"; else printf "%.2f", t/hz }'; }
# Column $2 of SIPp stat file $1: last row, or the maximum with $3 = max.
stat_col() {
    [ -s "$1" ] || { echo NA; return; }
    awk -F';' -v col="$2" -v mode="${3:-last}" '
        NR==1 { for (i=1;i<=NF;i++) if ($i==col) c=i; next }
        c && $c != "" { v=$c+0; if (mode=="max") { if (!seen || v>m) m=v } else m=v; seen=1 }
        END { if (seen) print m; else print "NA" }' "$1"
}
is_num() { [[ "$1" =~ ^[0-9]+$ ]]; }
now_s() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b-a }'; }
sipp_stop() { # pid: SIGUSR1 makes SIPp stop, write its final statistics and quit
    kill -0 "$1" 2>/dev/null || return 0
    kill -USR1 "$1" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$1" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}
# While the SIPp caller (pid $1) runs, bounded by HARD_TIMEOUT_S: a sample a second to
# $SAMPLES (t;cpu ticks;VmRSS;calls_active), a progress note every 10 s. Then the caller
# is stopped and the switch's calls drain back to 0 (up to 60 s). Sets TIMED_OUT, SW_DIED,
# BUILD_SEEN, T_END and CA_AFTER (NA when unknown). Needs SW, T_START, OUT.
watch_caller() {
    local pid=$1 deadline next_note ca
    deadline=$(( $(date +%s) + HARD_TIMEOUT_S ))
    next_note=$(( $(date +%s) + 10 ))
    TIMED_OUT="" SW_DIED="" BUILD_SEEN=0
    while kill -0 "$pid" 2>/dev/null; do
        if pgrep -x rustc >/dev/null || pgrep -x cargo >/dev/null; then BUILD_SEEN=1; fi
        kill -0 "$SW" 2>/dev/null || { SW_DIED=1; break; }
        if [ "$(date +%s)" -ge "$deadline" ]; then
            TIMED_OUT=1
            echo "$SCRIPT: callers still running after ${HARD_TIMEOUT_S} s, stopping them" >&2
            break
        fi
        ca=NA
        scrape "$OUT/metrics_now.txt" && ca=$(metric_sum switchyard_calls_active "$OUT/metrics_now.txt")
        echo "$(elapsed "$T_START" "$(now_s)");$(cpu_ticks "$SW" || echo NA);$(status_kb "$SW" VmRSS);$ca" >> "$SAMPLES"
        if [ "$(date +%s)" -ge "$next_note" ]; then
            next_note=$(( next_note + 10 ))
            echo "$SCRIPT: t=$(elapsed "$T_START" "$(now_s)") s: caller created $(stat_col "$OUT/caller_stat.csv" "OutgoingCall(C)"), ok $(stat_col "$OUT/caller_stat.csv" "SuccessfulCall(C)"), failed $(stat_col "$OUT/caller_stat.csv" "FailedCall(C)"); switch calls_active $ca" >&2
        fi
        sleep 1
    done
    sipp_stop "$pid"
    T_END=$(now_s)
    CA_AFTER=NA
    if kill -0 "$SW" 2>/dev/null; then
        for _ in $(seq 1 120); do
            scrape "$OUT/metrics_after.txt" && CA_AFTER=$(metric_sum switchyard_calls_active "$OUT/metrics_after.txt")
            [ "$CA_AFTER" = 0 ] || [ "$CA_AFTER" = NA ] && break
            sleep 0.5
        done
    else
        SW_DIED=1
    fi
}

kib_mib() { [ "$1" = NA ] || [ -z "$1" ] && echo NA || awk -v k="$1" 'BEGIN { printf "%.1f MiB", k/1024 }'; }
say() { echo "$@" | tee -a "$OUT/report.txt"; }
fail() { VERDICT=FAIL; REASONS+=("$1"); }
# The report's result line: PASS, or FAIL with the reasons given to fail().
verdict_line() {
    if [ "$VERDICT" = PASS ]; then
        echo "result                 PASS"
    else
        local joined
        joined=$(printf '%s; ' "${REASONS[@]}")
        echo "result                 FAIL: ${joined%; }"
    fi
}
# WARN and ERROR lines in the switch's log.
log_counts() { awk '$2=="WARN" { w++ } $2=="ERROR" { e++ } END { printf "%d WARN, %d ERROR lines", w, e }' "$OUT/switch.log"; }
# Agents' accounts: SIPp's injection file (username;[authentication ...];domain), the
# switch's users CSV (username,ha1_md5,ha1_sha256: the switch never sees a password) and
# agents CSV (id,user,queues,skills,state), for N agents a<100000+i> with users u<100000+i>.
# $4: the queues column ("" for none); $5: "skills" gives each agent english 1-10, else none.
gen_agents() { # n domain out queues skills
    python3 - "$1" "$2" "$3" "$4" "$5" <<'PY'
import hashlib, sys
n, domain, out, queues, skills = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
with open(f"{out}/sipp_users.csv", "w") as s, open(f"{out}/users.csv", "w") as u, \
        open(f"{out}/agents.csv", "w") as a:
    s.write("SEQUENTIAL\n")
    u.write("# username,ha1_md5,ha1_sha256\n")
    for i in range(n):
        num = 100000 + i
        user, pw = f"u{num}", f"pw-{i}-secret"
        a1 = f"{user}:{domain}:{pw}".encode()
        # SIPp expands keywords from the injection file but not inside [authentication]:
        # the whole keyword goes in the file (field1), as register.sh does.
        s.write(f"{user};[authentication username={user} password={pw}];{domain}\n")
        u.write(f"{user},{hashlib.md5(a1).hexdigest()},{hashlib.sha256(a1).hexdigest()}\n")
        skill = f"english:{1 + i % 10}" if skills == "skills" else ""
        a.write(f"a{num},{user},{queues},{skill},available\n")
PY
}
trap cleanup EXIT
trap 'echo "$SCRIPT: interrupted" >&2; exit 130' INT TERM

# start_switch [NICE]: starts $BIN with $OUT/switchyard.toml (log $OUT/switch.log) as a child,
# sets SW to its pid and waits until /health answers on $HOST:$HTTP_PORT and $SIP_PORT is
# bound (30 s at most; dies with the log's tail if the switch exits or never gets there).
start_switch() {
    NO_COLOR=1 nice -n "${1:-0}" "$BIN" --config "$OUT/switchyard.toml" > "$OUT/switch.log" 2>&1 < /dev/null &
    SW=$!
    CHILD_PIDS+=("$SW")
    local healthy=""
    for _ in $(seq 1 150); do
        kill -0 "$SW" 2>/dev/null || { tail -20 "$OUT/switch.log" >&2; die "switch exited during start-up (log: $OUT/switch.log)"; }
        if curl -sf --max-time 1 "http://$HOST:$HTTP_PORT/health" >/dev/null 2>&1 && udp_bound "$SIP_PORT"; then
            healthy=1; break
        fi
        sleep 0.2
    done
    [ -n "$healthy" ] || die "switch not healthy within 30 s (log: $OUT/switch.log)"
}

# ensure_switch_bin: BIN defaults to $root/target/release/switchyard, built when missing;
# warns when it is older than the sources; dies if it is not executable.
ensure_switch_bin() {
    if [ -z "$BIN" ]; then
        BIN=$root/target/release/switchyard
        if [ ! -x "$BIN" ]; then
            echo "$SCRIPT: $BIN missing, building (cargo build --release)" >&2
            (cd "$root" && cargo build --release --bin switchyard) >&2 || die "cargo build --release failed"
        elif [ -n "$(find "$root/src" "$root/Cargo.toml" -newer "$BIN" -print -quit 2>/dev/null)" ]; then
            echo "$SCRIPT: WARNING: $BIN is older than the sources; run cargo build --release" >&2
        fi
    fi
    [ -x "$BIN" ] || die "switch binary not executable: $BIN"
}

# Count, p50, p99 and max (ms) of SIPp's response-time samples named $2 in rtt file $1.
rtd_stats() {
    if [ -z "$1" ] || [ ! -s "$1" ]; then echo "0 NA NA NA"; return; fi
    awk -F';' -v name="$2" 'NR>1 && $3==name { print $2+0 }' "$1" | sort -g | awk '{ v[NR]=$1 }
        function rank(p,  r) { r=int(p*NR); if (r<p*NR) r++; if (r<1) r=1; return v[r] }
        END { if (NR==0) print "0 NA NA NA"; else printf "%d %s %s %s\n", NR, rank(0.50), rank(0.99), v[NR] }'
}

# ---------------------------------------------------------------- agents (cc.sh, c2c.sh, ivr.sh)
# The agents' phones: one SIPp UAS on one UDP socket for every agent; the calls are told apart
# by Call-ID (so a switch that forked one Call-ID to several agents would confuse it).
# -recv_timeout bounds a call that never gets its ACK or its BYE's 200; -max_socket only
# matters with -t un. Sets AGENT_PID.
start_agent_uas() { # scenario.xml
    (
        cd "$OUT"
        exec sipp -sf "$1" -i "$HOST" -p "$AGENT_PORT" -cp "$AGENT_CP" \
            -nostdin -buff_size "$BUFF" -max_socket 50000 \
            -recv_timeout $(( (TALK + 60) * 1000 )) \
            -trace_stat -stf "$OUT/agent_stat.csv" -fd 1 \
            -trace_rtt -rtt_freq 1 \
            -trace_err -error_file "$OUT/agent_errors.log" \
            -trace_screen -screen_file "$OUT/agent_screen.log"
    ) > "$OUT/agent.out" 2>&1 < /dev/null &
    AGENT_PID=$!
    CHILD_PIDS+=("$AGENT_PID")
    wait_udp_bound "$AGENT_PORT" "$AGENT_PID" "SIPp agent UAS"
}

# The $AGENTS users of sipp_users.csv register with digest at $REG_RATE a second (their
# Contact is the agent UAS); the script ends (1) unless every one succeeded.
register_agents() {
    local t0 t1
    t0=$(now_s)
    (cd "$OUT" && timeout $((AGENTS / REG_RATE + 60)) sipp "$HOST:$SIP_PORT" -sf "$scen/cc_register.xml" \
        -auth_uri "$DOMAIN" \
        -inf "$OUT/sipp_users.csv" -key agent_port "$AGENT_PORT" \
        -m "$AGENTS" -r "$REG_RATE" -l $((REG_RATE * 2)) -buff_size "$BUFF" \
        -i "$HOST" -p "$REG_PORT" -cp "$REG_CP" -nostdin \
        -trace_stat -stf "$OUT/register_stat.csv" -fd 1 -trace_err -error_file "$OUT/register_errors.log" \
        > "$OUT/register.out" 2>&1 < /dev/null) || true
    t1=$(now_s)
    REG_OK=$(stat_col "$OUT/register_stat.csv" "SuccessfulCall(C)")
    REG_FAIL=$(stat_col "$OUT/register_stat.csv" "FailedCall(C)")
    awk -v ok="$REG_OK" -v f="$REG_FAIL" -v n="$AGENTS" -v a="$t0" -v b="$t1" 'BEGIN {
        printf "registrations          %s ok, %s failed of %d in %.1f s (%.0f/s)\n", ok, f, n, b - a, (b > a ? ok / (b - a) : 0) }' | tee -a "$OUT/report.txt"
    if [ "$REG_OK" != "$AGENTS" ] || [ "$REG_FAIL" != 0 ]; then
        echo "$SCRIPT: agent registration failed; first errors:" >&2
        head -c 2000 "$OUT/register_errors.log" >&2 2>/dev/null || true
        say "result                 FAIL: registrations $REG_OK ok, $REG_FAIL failed of $AGENTS"
        say "files                  $OUT"
        exit 1
    fi
}

# Tenant cc's available agents by GET /agents (its "total"), NA if it does not say.
api_available() {
    local body
    body=$(api_get "/agents?tenant=cc&state=available&limit=1") || { echo NA; return; }
    printf '%s' "$body" | python3 -c '
import json, sys
try:
    print(int(json.load(sys.stdin)["total"]))
except Exception:
    print("NA")
' 2>/dev/null || echo NA
}

# Waits until every binding is in the registrar and the switch counts every agent available
# (the gauge switchyard_agents{tenant="cc",state="available"}, else GET /agents); the
# script ends (1) if that does not come. Sets BINDINGS, AVAIL, AVAIL_SRC.
wait_agents_available() {
    local deadline
    AVAIL=NA BINDINGS=NA AVAIL_SRC=metric
    deadline=$(( $(date +%s) + 30 + AGENTS / 1000 ))
    while :; do
        kill -0 "$SW" 2>/dev/null || die "switch exited while agents registered (log: $OUT/switch.log)"
        if scrape "$OUT/metrics_agents.txt"; then
            BINDINGS=$(metric_sum switchyard_registrar_bindings "$OUT/metrics_agents.txt" 'tenant="cc"')
            AVAIL=$(metric_sum switchyard_agents "$OUT/metrics_agents.txt" 'tenant="cc"' 'state="available"')
        fi
        if [ "$AVAIL" = NA ]; then AVAIL=$(api_available); AVAIL_SRC="GET /agents"; else AVAIL_SRC=metric; fi
        if is_num "$BINDINGS" && [ "$BINDINGS" -ge "$AGENTS" ] && is_num "$AVAIL" && [ "$AVAIL" -ge "$AGENTS" ]; then
            break
        fi
        if [ "$(date +%s)" -ge "$deadline" ]; then
            if ! is_num "$AVAIL" && is_num "$BINDINGS" && [ "$BINDINGS" -ge "$AGENTS" ]; then
                echo "$SCRIPT: WARNING: neither switchyard_agents{state=\"available\"} nor GET /agents?tenant=cc says how many agents are available; going on with $BINDINGS bindings" >&2
                break
            fi
            say "result                 FAIL: agents not ready after the registrations: bindings $BINDINGS, available $AVAIL ($AVAIL_SRC) of $AGENTS"
            say "files                  $OUT"
            exit 1
        fi
        sleep 0.5
    done
    say "agents ready           bindings $BINDINGS, available $AVAIL ($AVAIL_SRC)"
}

# The node settings of a switch that SIPp agents and callers on loopback drive (cc.sh,
# c2c.sh, ivr.sh): listeners, SIPp's addresses trusted and never banned, admission at
# $MAX_CALLS / $ADM_CPS, a registrar for SIPp's digest. Printed into their config file.
sipp_node_config() {
    cat <<CFG
[sip]
listen = ["udp:$HOST:$SIP_PORT"]
[http]
listen = "$HOST:$HTTP_PORT"
token = "$TOKEN"
# SIPp runs on loopback: its addresses are trusted peers (nothing is by default;
# untrusted callers reach only tenants' numbers and users, never a route).
[security]
trusted = ["127.0.0.0/8"]
[admission]
max_calls = $MAX_CALLS
cps = $ADM_CPS
per_source_cps = 0
# SIPp sends far above a phone's rate from loopback: never banned (README "The edge").
[security.flood]
exempt = ["127.0.0.0/8"]
[registrar]
max_auth_failures = 1000000
# SIPp 3.6 answers only the first challenge and knows only MD5.
algorithms = ["MD5"]
max_expires_secs = 7200
CFG
}
