#!/usr/bin/env bash
# Click-to-call load (issue 7): N agents register their phones; POST /calls at a rate makes
# the switch ring an agent's phone (INVITE without SDP), and when the phone answers with its
# offer, call the customer through a trunk and bridge. Measures API request -> customer
# INVITE latency, from the switch's histogram and from the client side. Prints a report;
# exits non-zero unless every POST got 202 and both SIPp sides completed every call.
#
#   load/c2c.sh [--agents 10000] [--rate 50] [--calls 2000] [--talk 5] [--reg-rate 1000]
#               [--switch-bin PATH] [--out DIR] [--quick]
#
#   --agents N     agents aNNNNNN (SIP user uNNNNNN) of tenant cc, logged in (available),
#                  in no queue; every one registers a phone
#   --rate R       POST /calls per second; --calls N: how many in all
#   --talk S       talk time: the agent hangs up S seconds after the ACK
#   --reg-rate R   agent registrations per second
#   --quick        CI size: 200 agents, rate 10, 50 calls (options after it win)
#
# Agents are picked round-robin, so an agent gets its next call agents / rate seconds after
# its last: that must be well over a call's length (rate x talk x 2 < agents).
#
# Flow: users.csv, agents.csv and SIPp's injection file (python3), switchyard.toml (token,
# trunk "carrier" to the customer SIPp, route 9 -> strip 1 -> carrier), `switchyard
# check-config`, the switch, one SIPp UAS for every agent phone (scenarios/c2c_agent.xml),
# the registrations through SIPp (scenarios/cc_register.xml, Contact on the UAS's port), a
# wait until the switch counts the agents available, the customer SIPp UAS
# (scenarios/c2c_customer.xml, -trace_msg), then python3 POSTs /calls (call k dials
# 9<10000000+k>, so the customer's INVITE says which POST it belongs to), a drain, the report:
# POST statuses, both SIPp sides, switchyard_click_to_call_seconds{stage="customer_invite"}
# quantiles (interpolated in its buckets), the client-side POST sent -> customer INVITE
# received quantiles (microsecond clocks, one host), switch CPU and memory.
# Exit status: 0 PASS, 1 FAIL, 2 bad usage or a setup failure.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
# shellcheck source=lib/common.sh
. "$here/lib/common.sh"
scen=$here/scenarios


AGENTS=10000 RATE=50 CALLS=2000 TALK=5 REG_RATE=1000
BIN="" OUT=""
while [ $# -gt 0 ]; do
    case "$1" in
        --agents) AGENTS=${2:?}; shift 2 ;;
        --rate) RATE=${2:?}; shift 2 ;;
        --calls) CALLS=${2:?}; shift 2 ;;
        --talk) TALK=${2:?}; shift 2 ;;
        --reg-rate) REG_RATE=${2:?}; shift 2 ;;
        --switch-bin) BIN=${2:?}; shift 2 ;;
        --out) OUT=${2:?}; shift 2 ;;
        --quick) AGENTS=200 RATE=10 CALLS=50; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "c2c.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
    esac
done
for v in AGENTS RATE CALLS TALK REG_RATE; do
    [[ "${!v}" =~ ^[0-9]+$ ]] || die "--$(echo "$v" | tr 'A-Z_' 'a-z-') must be a whole number"
done
[ "$AGENTS" -gt 0 ] && [ "$AGENTS" -le 900000 ] || die "--agents must be 1..900000"
[ "$RATE" -gt 0 ] && [ "$CALLS" -gt 0 ] && [ "$REG_RATE" -gt 0 ] || die "--rate, --calls and --reg-rate must be > 0"
[ $((RATE * TALK * 2)) -lt "$AGENTS" ] || [ "$CALLS" -le "$AGENTS" ] \
    || die "rate x talk x 2 ($((RATE * TALK * 2))) must be below --agents ($AGENTS): an agent would get a call while still on its last"
for tool in sipp python3 curl ss; do
    command -v "$tool" >/dev/null || die "$tool not found (Debian/Ubuntu: sip-tester, python3, curl, iproute2)"
done

ensure_switch_bin
[ -n "$OUT" ] || OUT=$here/out/$(date -u +%Y%m%dT%H%M%SZ)-c2c-$$
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

HOST=127.0.0.1
DOMAIN=cc.example.com
TOKEN=$(random_token)
BUFF=4194304
TALK_MS=$((TALK * 1000))
# Call k dials 9<NUM_BASE + k>; the route strips the 9, the customer sees NUM_BASE + k.
NUM_BASE=10000000

# ---------------------------------------------------------------- children

# ---------------------------------------------------------------- helpers (as in cc.sh)
# Number of rtd $2 samples in SIPp rtt file $1.
rtd_count() {
    if [ -z "$1" ] || [ ! -s "$1" ]; then echo 0; return; fi
    awk -F';' -v name="$2" 'NR>1 && $3==name { n++ } END { print n+0 }' "$1"
}

pick_port SIP_PORT; pick_port HTTP_PORT
pick_port AGENT_PORT; pick_port AGENT_CP
pick_port REG_PORT; pick_port REG_CP
pick_port CUST_PORT; pick_port CUST_CP

# ---------------------------------------------------------------- data and config
gen_agents "$AGENTS" "$DOMAIN" "$OUT" "" none
# Admission far above the offered load, so nothing is refused.
MAX_CALLS=$(( RATE * (TALK + 60) * 2 )); [ "$MAX_CALLS" -ge 20000 ] || MAX_CALLS=20000
ADM_CPS=$(( RATE * 4 )); [ "$ADM_CPS" -ge 5000 ] || ADM_CPS=5000
cat > "$OUT/switchyard.toml" <<CFG
# Written by load/c2c.sh.
data_dir = "$OUT/data"
$(sipp_node_config)
[[trunks]]
id = "carrier"
gateways = ["sip:$HOST:$CUST_PORT"]
probe_interval_secs = 0
[[routes]]
prefix = "9"
strip = 1
trunks = ["carrier"]
[[tenants]]
id = "cc"
domain = "$DOMAIN"
users_csv = "$OUT/users.csv"
agents_csv = "$OUT/agents.csv"
CFG
"$BIN" check-config "$OUT/switchyard.toml" > "$OUT/check-config.out" 2>&1 \
    || { cat "$OUT/check-config.out" >&2; die "switchyard check-config refused $OUT/switchyard.toml"; }

# The agent UAS gets a copy of its scenario with the talk time in place of the default.
sed -e 's/timeout="5000" ontimeout="hangup"/timeout="'"$TALK_MS"'" ontimeout="hangup"/' \
    "$scen/c2c_agent.xml" > "$OUT/c2c_agent.xml"
grep -q "timeout=\"$TALK_MS\" ontimeout=\"hangup\"" "$OUT/c2c_agent.xml" \
    || die "could not set the talk time in c2c_agent.xml"

# The client: POST /calls at RATE/s from a pool of threads, each on its own keep-alive
# connection; call k is due at t0 + k / RATE, goes to agent k mod AGENTS and dials
# 9<NUM_BASE + k>. One line per call: seq;agent;number;sent (epoch s, taken just before
# the request is written);answered;status;body.
cat > "$OUT/drive.py" <<'PY'
import http.client, json, sys, threading, time
host, port, token, agents, rate, calls, base, out = sys.argv[1:9]
port, agents, rate, calls, base = int(port), int(agents), float(rate), int(calls), int(base)
lock = threading.Lock()
nxt = [0]
rows = []
t0 = time.time() + 0.5

def worker():
    conn = None
    while True:
        with lock:
            k = nxt[0]
            nxt[0] += 1
        if k >= calls:
            break
        due = t0 + k / rate
        d = due - time.time()
        if d > 0:
            time.sleep(d)
        agent = f"a{100000 + k % agents}"
        number = f"9{base + k}"
        body = json.dumps({"tenant": "cc", "agent": agent, "number": number})
        status, text, sent = "ERR", "", time.time()
        for attempt in (1, 2):
            try:
                if conn is None:
                    conn = http.client.HTTPConnection(host, port, timeout=10)
                    conn.connect()
                sent = time.time()
                conn.request("POST", "/calls", body, {
                    "Authorization": f"Bearer {token}",
                    "Content-Type": "application/json"})
                r = conn.getresponse()
                text = r.read().decode(errors="replace")
                status = str(r.status)
                break
            except (OSError, http.client.HTTPException) as e:
                # A keep-alive connection the server closed: retry once on a new one.
                # (A retried POST may have been accepted already: then the customer
                # gets two INVITEs for this number and the first one counts.)
                status, text = "ERR", repr(e)
                if conn is not None:
                    conn.close()
                conn = None
        done = time.time()
        with lock:
            rows.append((k, agent, number, sent, done, status,
                         text.replace(";", ",").replace("\n", " ")[:200]))

threads = [threading.Thread(target=worker) for _ in range(min(64, max(4, int(rate))))]
for t in threads:
    t.start()
for t in threads:
    t.join()
rows.sort()
with open(out, "w") as f:
    f.write("seq;agent;number;sent;answered;status;body\n")
    for r in rows:
        f.write("%d;%s;%s;%.6f;%.6f;%s;%s\n" % r)
span = rows[-1][3] - rows[0][3] if len(rows) > 1 else 0.0
print("posted %d in %.1f s (%.1f/s)" % (len(rows), span, (len(rows) - 1) / span if span else 0))
PY

# Report lines go to the terminal and to report.txt.
: > "$OUT/report.txt"
say "== switchyard click-to-call load ($(date -u +%FT%TZ), $(nproc) cores)"
say "agents                 $AGENTS of tenant cc ($DOMAIN), available, no queue"
say "offered                $CALLS POST /calls at $RATE/s; agents round-robin; talk ${TALK} s"
say "switch                 udp:$HOST:$SIP_PORT http:$HOST:$HTTP_PORT ($BIN)"
say "agent phones           SIPp UAS udp:$HOST:$AGENT_PORT (registered from udp:$HOST:$REG_PORT)"
say "customer               SIPp UAS udp:$HOST:$CUST_PORT (trunk carrier, route 9 strip 1)"

# ---------------------------------------------------------------- switch
start_switch

# ---------------------------------------------------------------- agent phones (UAS)
start_agent_uas "$OUT/c2c_agent.xml"

# ---------------------------------------------------------------- registrations
VERDICT=PASS
REASONS=()
register_agents

# ---------------------------------------------------------------- agents available
wait_agents_available

# ---------------------------------------------------------------- customer (UAS)
# -trace_msg: the INVITEs' receive times for the client-side latency.
(
    cd "$OUT"
    exec sipp -sf "$scen/c2c_customer.xml" -i "$HOST" -p "$CUST_PORT" -cp "$CUST_CP" -aa \
        -nostdin -buff_size "$BUFF" -max_socket 50000 \
        -recv_timeout $(( (TALK + 60) * 1000 )) \
        -trace_msg -message_file "$OUT/customer_msg.log" \
        -trace_stat -stf "$OUT/customer_stat.csv" -fd 1 \
        -trace_err -error_file "$OUT/customer_errors.log" \
        -trace_screen -screen_file "$OUT/customer_screen.log"
) > "$OUT/customer.out" 2>&1 < /dev/null &
CUST_PID=$!
CHILD_PIDS+=("$CUST_PID")
wait_udp_bound "$CUST_PORT" "$CUST_PID" "SIPp customer UAS"

# ---------------------------------------------------------------- POST /calls
scrape "$OUT/metrics_before.txt" || die "GET /metrics failed before the calls"
CPU_BEFORE=$(cpu_ticks "$SW")
RSS_BEFORE_KB=$(status_kb "$SW" VmRSS)
T_START=$(now_s)
python3 "$OUT/drive.py" "$HOST" "$HTTP_PORT" "$TOKEN" "$AGENTS" "$RATE" "$CALLS" "$NUM_BASE" \
    "$OUT/posts.csv" > "$OUT/drive.out" 2>&1 &
DRIVE_PID=$!
CHILD_PIDS+=("$DRIVE_PID")

# Sample the switch once a second while the client posts and the calls run.
SAMPLES=$OUT/switch_samples.csv
echo "t_s;cpu_ticks;rss_kb;calls_active" > "$SAMPLES"
HARD_TIMEOUT_S=$(( CALLS / RATE + TALK + 150 ))
deadline=$(( $(date +%s) + HARD_TIMEOUT_S ))
TIMED_OUT="" SW_DIED="" BUILD_SEEN=0 next_note=$(( $(date +%s) + 10 )) DRIVE_RC=NA
sample() {
    local ca=NA
    scrape "$OUT/metrics_now.txt" && ca=$(metric_sum switchyard_calls_active "$OUT/metrics_now.txt")
    echo "$(elapsed "$T_START" "$(now_s)");$(cpu_ticks "$SW" || echo NA);$(status_kb "$SW" VmRSS);$ca" >> "$SAMPLES"
    CA_NOW=$ca
}
# Phase 1: the client posts. Phase 2: the calls end (talk time, then the BYEs): the switch
# has no call left and neither SIPp has one open.
while :; do
    if pgrep -x rustc >/dev/null || pgrep -x cargo >/dev/null; then BUILD_SEEN=1; fi
    kill -0 "$SW" 2>/dev/null || { SW_DIED=1; break; }
    if [ "$(date +%s)" -ge "$deadline" ]; then
        TIMED_OUT=1
        echo "c2c.sh: calls still running after ${HARD_TIMEOUT_S} s, stopping" >&2
        break
    fi
    sample
    if [ "$DRIVE_RC" = NA ] && ! kill -0 "$DRIVE_PID" 2>/dev/null; then
        DRIVE_RC=0; wait "$DRIVE_PID" || DRIVE_RC=$?
        T_POSTED=$(now_s)
    fi
    if [ "$DRIVE_RC" != NA ] && [ "$CA_NOW" = 0 ] \
        && [ "$(stat_col "$OUT/agent_stat.csv" CurrentCall)" = 0 ] \
        && [ "$(stat_col "$OUT/customer_stat.csv" CurrentCall)" = 0 ]; then
        break
    fi
    if [ "$(date +%s)" -ge "$next_note" ]; then
        next_note=$(( next_note + 10 ))
        echo "c2c.sh: t=$(elapsed "$T_START" "$(now_s)") s: client $( [ "$DRIVE_RC" = NA ] && echo posting || echo done), agent ok $(stat_col "$OUT/agent_stat.csv" "SuccessfulCall(C)") failed $(stat_col "$OUT/agent_stat.csv" "FailedCall(C)"), customer ok $(stat_col "$OUT/customer_stat.csv" "SuccessfulCall(C)") failed $(stat_col "$OUT/customer_stat.csv" "FailedCall(C)"); switch calls_active $CA_NOW" >&2
    fi
    sleep 1
done
T_END=$(now_s)
[ "$DRIVE_RC" != NA ] || { kill -TERM "$DRIVE_PID" 2>/dev/null || true; wait "$DRIVE_PID" 2>/dev/null || true; }
sipp_stop "$AGENT_PID"
sipp_stop "$CUST_PID"

SW_CPU_S=NA SW_CPU_TOTAL_S=NA SW_HWM_KB=NA SW_RSS_KB=NA CA_AFTER=NA
if kill -0 "$SW" 2>/dev/null; then
    CPU_AFTER=$(cpu_ticks "$SW")
    SW_CPU_S=$(ticks_s $((CPU_AFTER - CPU_BEFORE)))
    SW_CPU_TOTAL_S=$(ticks_s "$CPU_AFTER")
    SW_HWM_KB=$(status_kb "$SW" VmHWM)
    SW_RSS_KB=$(status_kb "$SW" VmRSS)
    # The switch drains histogram samples into their buckets every 5 s.
    sleep 6
    scrape "$OUT/metrics_after.txt" || true
    [ -s "$OUT/metrics_after.txt" ] && CA_AFTER=$(metric_sum switchyard_calls_active "$OUT/metrics_after.txt")
    kill -TERM "$SW" 2>/dev/null || true
    for _ in $(seq 1 150); do kill -0 "$SW" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$SW" 2>/dev/null || true
    wait "$SW" 2>/dev/null || true
else
    SW_DIED=1
fi

# ---------------------------------------------------------------- latency
# The switch's histogram: quantiles interpolated linearly inside a bucket (as Prometheus'
# histogram_quantile). The client side: POST sent -> customer INVITE received, matched by
# the dialled number (first INVITE per number: retransmissions do not count).
python3 - "$OUT" "$NUM_BASE" > "$OUT/latency.txt" 2>"$OUT/latency.err" <<'PY' || echo "latency computation failed: $(head -c 300 "$OUT/latency.err")" > "$OUT/latency.txt"
import datetime, math, os, re, sys
out, base = sys.argv[1], int(sys.argv[2])

def rank(v, p):
    # Nearest rank: the smallest value with at least p of the values at or below it.
    if not v:
        return None
    i = max(1, math.ceil(round(p * len(v), 9)))
    return v[min(len(v), i) - 1]

def fmt(x):
    return "NA" if x is None else "%.1f" % x

# Switch histogram.
buckets, count, total = [], None, None
path = f"{out}/metrics_after.txt"
if os.path.exists(path):
    for line in open(path):
        if line.startswith("#") or "switchyard_click_to_call_seconds" not in line:
            continue
        if 'stage="customer_invite"' not in line:
            continue
        name, val = line.rsplit(None, 1)
        if name.startswith("switchyard_click_to_call_seconds_bucket"):
            le = re.search(r'le="([^"]+)"', name).group(1)
            buckets.append((float("inf") if le == "+Inf" else float(le), float(val)))
        elif name.startswith("switchyard_click_to_call_seconds_count"):
            count = float(val)
        elif name.startswith("switchyard_click_to_call_seconds_sum"):
            total = float(val)
buckets.sort()

def hq(q):
    if not buckets or buckets[-1][1] == 0:
        return None
    n = buckets[-1][1]
    r = q * n
    lo, prev = 0.0, 0.0
    for le, c in buckets:
        if c >= r:
            if le == float("inf"):
                return lo * 1000  # above the last bound: the bound is all we know
            if c == prev:
                return le * 1000
            return (lo + (le - lo) * (r - prev) / (c - prev)) * 1000
        lo, prev = le, c
    return None

if buckets:
    bounds = ", ".join("+Inf" if b == float("inf") else ("%g" % (b * 1000)) for b, _ in buckets)
    per = ", ".join("%s:%d" % ("+Inf" if b == float("inf") else "%g" % (b * 1000), c) for b, c in buckets)
    mean = (total / count * 1000) if count else None
    print("switch histogram       API -> customer INVITE ms: p50 %s  p99 %s  mean %s  (n=%d; interpolated in buckets)"
          % (fmt(hq(0.5)), fmt(hq(0.99)), fmt(mean), int(count or 0)))
    print("  bucket bounds ms     " + bounds)
    print("  cumulative counts    " + per)
else:
    print("switch histogram       switchyard_click_to_call_seconds{stage=\"customer_invite\"} not found in /metrics")

# Client side.
posts = {}
api_ms = []
for line in list(open(f"{out}/posts.csv"))[1:]:
    seq, agent, number, sent, done, status, body = line.rstrip("\n").split(";", 6)
    posts[number[1:]] = float(sent)
    if status == "202":
        api_ms.append((float(done) - float(sent)) * 1000)
api_ms.sort()
first = {}
sep = re.compile(r"^-{20,}\s+(\d{4}-\d\d-\d\d)\s+(\d\d:\d\d:\d\d\.\d+)")
ts, recv = None, False
with open(f"{out}/customer_msg.log", errors="replace") as f:
    want = False
    for line in f:
        m = sep.match(line)
        if m:
            ts = datetime.datetime.strptime(m.group(1) + " " + m.group(2), "%Y-%m-%d %H:%M:%S.%f").timestamp()
            want, recv = False, False
            continue
        if line.startswith("UDP message received"):
            recv, want = True, True
            continue
        if line.startswith("UDP message sent"):
            recv, want = False, False
            continue
        if want and line.strip():
            want = False
            m = re.match(r"INVITE sips?:([^@;> ]+)@", line)
            if recv and m and m.group(1) not in first:
                first[m.group(1)] = ts
lat = sorted((first[n] - posts[n]) * 1000 for n in first if n in posts)
unmatched = sum(1 for n in first if n not in posts)
print("client side            POST sent -> customer INVITE received ms: p50 %s  p99 %s  max %s  (n=%d matched of %d POSTs; %d INVITEs for unknown numbers)"
      % (fmt(rank(lat, 0.5)), fmt(rank(lat, 0.99)), fmt(lat[-1] if lat else None), len(lat), len(posts), unmatched))
print("POST /calls answer ms  p50 %s  p99 %s  max %s  (POST sent -> 202 received, n=%d)"
      % (fmt(rank(api_ms, 0.5)), fmt(rank(api_ms, 0.99)), fmt(api_ms[-1] if api_ms else None), len(api_ms)))
PY

# ---------------------------------------------------------------- report
POSTS=NA P202=NA POST_OTHER="none"
if [ -s "$OUT/posts.csv" ]; then
    POSTS=$(awk -F';' 'NR>1 { n++ } END { print n+0 }' "$OUT/posts.csv")
    P202=$(awk -F';' 'NR>1 && $6=="202" { n++ } END { print n+0 }' "$OUT/posts.csv")
    POST_OTHER=$(awk -F';' 'NR>1 && $6!="202" { c[$6]++ } END { s=""; for (k in c) s=s (s?", ":"") k ": " c[k]; print (s ? s : "none") }' "$OUT/posts.csv")
fi
AS=$OUT/agent_stat.csv CS=$OUT/customer_stat.csv
A_IN=$(stat_col "$AS" "IncomingCall(C)")
A_OK=$(stat_col "$AS" "SuccessfulCall(C)")
A_FAILED=$(stat_col "$AS" "FailedCall(C)")
A_PEAK=$(stat_col "$AS" CurrentCall max)
C_IN=$(stat_col "$CS" "IncomingCall(C)")
C_OK=$(stat_col "$CS" "SuccessfulCall(C)")
C_FAILED=$(stat_col "$CS" "FailedCall(C)")
C_PEAK=$(stat_col "$CS" CurrentCall max)
A_RTT=$(ls -1 "$OUT"/c2c_agent_*_rtt.csv 2>/dev/null | head -1 || true)
A_HUNGUP=$(rtd_count "$A_RTT" hungup)
A_RELEASED=$(rtd_count "$A_RTT" released)
PEAK_SW=$(awk -F';' 'NR>1 && $4!="NA" && $4!="" { if (!s || $4+0>m) m=$4+0; s=1 } END { print s ? m : "NA" }' "$SAMPLES")
PEAK_RSS_KB=$(awk -F';' 'NR>1 && $3+0>m { m=$3+0 } END { print m+0 }' "$SAMPLES")
POST_SPAN=$(awk -F';' 'NR==2 { a=$4 } NR>1 { b=$4 } END { printf "%.1f", b-a }' "$OUT/posts.csv" 2>/dev/null || echo NA)

[ "$POSTS" = "$CALLS" ] || fail "the client posted $POSTS of $CALLS"
[ "$P202" = "$CALLS" ] || fail "POST /calls answered 202 $P202 of $CALLS times (others: $POST_OTHER)"
[ "$A_FAILED" = 0 ] || fail "agent-side failed calls: $A_FAILED"
[ "$C_FAILED" = 0 ] || fail "customer-side failed calls: $C_FAILED"
[ "$A_OK" = "$CALLS" ] || fail "agent side completed $A_OK of $CALLS calls"
[ "$C_OK" = "$CALLS" ] || fail "customer side completed $C_OK of $CALLS calls"
[ -z "$TIMED_OUT" ] || fail "hard timeout (${HARD_TIMEOUT_S} s) reached"
[ -z "$SW_DIED" ] || fail "switch died during the run (log: $OUT/switch.log)"
[ "$CA_AFTER" = 0 ] || fail "switchyard_calls_active $CA_AFTER after the run, not 0"

{
    echo "POST /calls            $POSTS sent in $POST_SPAN s: 202 $P202; others: $POST_OTHER (client exit $DRIVE_RC)"
    echo "agents (SIPp UAS)      incoming $A_IN, successful $A_OK (hung up by the agent $A_HUNGUP, by the switch $A_RELEASED), failed $A_FAILED; peak concurrent $A_PEAK"
    echo "customer (SIPp UAS)    incoming $C_IN, successful $C_OK, failed $C_FAILED; peak concurrent $C_PEAK"
    cat "$OUT/latency.txt"
    echo "switch calls_active    peak $PEAK_SW (1 s samples), after the run $CA_AFTER"
    echo "switch CPU             $SW_CPU_S s during the calls ($(awk -v s="$SW_CPU_S" -v n="$CALLS" 'BEGIN { if (s=="NA" || n+0==0) print "NA"; else printf "%.0f", s*1e6/n }') us per call), $SW_CPU_TOTAL_S s since start (incl. $AGENTS registrations); wall $(elapsed "$T_START" "$T_END") s"
    echo "switch memory          VmHWM $(kib_mib "$SW_HWM_KB"), sampled peak VmRSS $(kib_mib "$PEAK_RSS_KB"), VmRSS before calls $(kib_mib "$RSS_BEFORE_KB"), after $(kib_mib "$SW_RSS_KB")"
    echo "switch log             $(log_counts)"
    [ "$BUILD_SEEN" = 0 ] || echo "WARNING                rustc/cargo ran during the run: CPU and latency figures are disturbed"
    verdict_line
    echo "files                  $OUT"
} | tee -a "$OUT/report.txt"

if [ "$VERDICT" != PASS ]; then
    for f in "$OUT/agent_errors.log" "$OUT/customer_errors.log"; do
        [ -s "$f" ] || continue
        echo "--- first errors in $f ---" >&2
        sed 's/\(2[0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]\t\)/\n\1/g' "$f" | grep -v -e "jumping to label" -e "^The following events occurred" | grep -v '^$' | head -20 >&2 || true
    done
    awk -F';' 'NR>1 && $6!="202"' "$OUT/posts.csv" 2>/dev/null | head -5 | sed 's/^/non-202 POST: /' >&2 || true
    grep -E ' (WARN|ERROR) ' "$OUT/switch.log" | head -20 | sed 's/^/switch.log: /' >&2 || true
    exit 1
fi
exit 0
