# Per-call INVITE->180 and INVITE->200 latency (microsecond clock) from a SIPp
# caller's -trace_msg log. Prints "call_id;invite_to_180_ms;invite_to_200_ms"
# per call (NA where the response never came). Run with mawk or gawk.
#
# A log entry is a separator line "----... YYYY-MM-DD HH:MM:SS.uuuuuu", a
# "UDP message sent/received" line, a blank line, then the SIP message.
function tod(s,   a) {
    split(s, a, ":")
    return a[1] * 3600 + a[2] * 60 + a[3]
}
function hvalue(line) {
    sub(/^[^:]*:[ \t]*/, "", line)
    sub(/[ \t]+$/, "", line)
    return line
}
function flush_entry(   m) {
    if (cid == "") return
    if (dir == "sent" && first ~ /^INVITE / && !(cid in inv)) {
        inv[cid] = ts
        order[++n] = cid
    } else if (dir == "recv" && (cid in inv) && cseq_method == "INVITE") {
        if (first ~ /^SIP\/2\.0 180 / && !(cid in r180)) r180[cid] = ts - inv[cid]
        if (first ~ /^SIP\/2\.0 200 / && !(cid in r200)) r200[cid] = ts - inv[cid]
    }
}
{ sub(/\r$/, "") }
/^-----------------------------------------------/ {
    flush_entry()
    t = tod($NF)
    # The log carries time of day only: a run over midnight wraps.
    if (have_last && t < last_t - 43200) day += 86400
    last_t = t; have_last = 1
    ts = day + t
    dir = ""; first = ""; cid = ""; cseq_method = ""; want_first = 0
    next
}
/^UDP message sent/     { dir = "sent"; want_first = 1; next }
/^UDP message received/ { dir = "recv"; want_first = 1; next }
want_first && NF > 0    { first = $0; want_first = 0; next }
tolower($0) ~ /^(call-id|i)[ \t]*:/ { cid = hvalue($0); next }
tolower($0) ~ /^cseq[ \t]*:/ { split(hvalue($0), cs, /[ \t]+/); cseq_method = cs[2]; next }
END {
    flush_entry()
    for (i = 1; i <= n; i++) {
        c = order[i]
        a = (c in r180) ? sprintf("%.3f", r180[c] * 1000) : "NA"
        b = (c in r200) ? sprintf("%.3f", r200[c] * 1000) : "NA"
        print c ";" a ";" b
    }
}
