//! `switchyard ctl`: the operator's console over a node's HTTP API (what `fs_cli`,
//! `asterisk -r` and `kamcmd` are to those switches). One command and out
//! (`switchyard ctl calls --json`), or, without a command, a prompt with line editing and
//! history. Tables for a person, `--json` for scripts; a failure is one line that says what
//! to do, and the exit status is 1 (2 for a command that does not parse).
//!
//! The console holds nothing of the node: every command is one or two API requests made
//! with the node's token (taken from `--token`, the config file's `http.token`, or the data
//! directory's `api-token`).

pub mod client;
pub mod table;

use std::path::PathBuf;

use serde_json::{json, Value};

pub use client::{Client, CtlError, Target};
use table::{lookup, pairs, render, text, Column};

/// The commands, as `help` shows them.
pub const HELP: &str = "\
status                                    calls, calls per second, registrations, agents, trunks, cluster
calls                                     calls in progress
call ID                                   one call and its legs
hangup ID                                 end a call
queues                                    queues with their figures
agents [TENANT]                           agents and their states
agent TENANT/AGENT ready|not-ready [REASON]|login|logout
trunks                                    trunks, up or down
bans                                      sources banned by the edge
unban IP                                  lift a ban
drain | undrain                           give this node's work away in a cluster, or take it again
log                                       the log filter in force
log level LEVEL|FILTER                    change it (debug, info, or a RUST_LOG filter)
help                                      this list
quit                                      leave the prompt";

/// One parsed command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cmd {
    Status,
    Calls,
    Call(String),
    Hangup(String),
    Queues,
    Agents(Option<String>),
    Agent {
        tenant: String,
        agent: String,
        action: String,
        reason: Option<String>,
    },
    Trunks,
    Bans,
    Unban(String),
    Drain,
    Undrain,
    Log,
    LogLevel(String),
    Help,
    Quit,
}

/// Parses a command's words; Err is the line to print.
pub fn parse(words: &[&str]) -> Result<Cmd, String> {
    let usage = |u: &str| Err(format!("usage: {u}"));
    let id_ok = |s: &str| {
        !s.is_empty()
            && s.len() <= 256
            && s.chars()
                .all(|c| c.is_ascii_graphic() && !"/?#%".contains(c))
    };
    match words {
        ["status"] => Ok(Cmd::Status),
        ["calls"] => Ok(Cmd::Calls),
        ["call", id] if id_ok(id) => Ok(Cmd::Call(id.to_string())),
        ["call", ..] => usage("call ID"),
        ["hangup", id] if id_ok(id) => Ok(Cmd::Hangup(id.to_string())),
        ["hangup", ..] => usage("hangup ID"),
        ["queues"] => Ok(Cmd::Queues),
        ["agents"] => Ok(Cmd::Agents(None)),
        ["agents", t] if id_ok(t) => Ok(Cmd::Agents(Some(t.to_string()))),
        ["agent", who, action, rest @ ..] => {
            let Some((tenant, agent)) = who.split_once('/').filter(|(t, a)| id_ok(t) && id_ok(a))
            else {
                return usage("agent TENANT/AGENT ready|not-ready [REASON]|login|logout");
            };
            let reason = match (*action, rest) {
                ("not-ready", []) => None,
                ("not-ready", r) => Some(r.join(" ")),
                ("ready" | "login" | "logout", []) => None,
                _ => return usage("agent TENANT/AGENT ready|not-ready [REASON]|login|logout"),
            };
            Ok(Cmd::Agent {
                tenant: tenant.to_string(),
                agent: agent.to_string(),
                action: action.to_string(),
                reason,
            })
        }
        ["agent", ..] => usage("agent TENANT/AGENT ready|not-ready [REASON]|login|logout"),
        ["trunks"] => Ok(Cmd::Trunks),
        ["bans"] => Ok(Cmd::Bans),
        ["unban", ip] if ip.parse::<std::net::IpAddr>().is_ok() => Ok(Cmd::Unban(ip.to_string())),
        ["unban", ..] => usage("unban IP (an IPv4 or IPv6 address)"),
        ["drain"] => Ok(Cmd::Drain),
        ["undrain"] => Ok(Cmd::Undrain),
        ["log"] => Ok(Cmd::Log),
        ["log", "level", filter] => Ok(Cmd::LogLevel(filter.to_string())),
        ["log", ..] => usage("log | log level LEVEL|FILTER"),
        ["help"] | ["?"] => Ok(Cmd::Help),
        ["quit"] | ["exit"] => Ok(Cmd::Quit),
        [] => Err("no command; `help` lists them".into()),
        [other, ..] => Err(format!("unknown command {other:?}; `help` lists them")),
    }
}

/// Runs `cmd` against the node: what to print.
pub fn execute(client: &Client, cmd: &Cmd, json_out: bool) -> Result<String, CtlError> {
    let (value, shown) = match cmd {
        Cmd::Help => return Ok(format!("{HELP}\n")),
        Cmd::Quit => return Ok(String::new()),
        Cmd::Status => {
            let v = client.get("/status")?;
            let s = status_text(&v);
            (v, s)
        }
        Cmd::Calls => {
            let v = client.get("/calls?limit=1000")?;
            let s = calls_text(&v);
            (v, s)
        }
        Cmd::Call(id) => {
            let v = client.get(&format!("/calls/{id}"))?;
            let s = call_text(&v);
            (v, s)
        }
        Cmd::Hangup(id) => {
            let v = client.delete(&format!("/calls/{id}"))?;
            (v, format!("call {id}: released\n"))
        }
        Cmd::Queues => {
            let v = client.get("/queues")?;
            let s = queues_text(&v);
            (v, s)
        }
        Cmd::Agents(tenant) => {
            let path = match tenant {
                Some(t) => format!("/agents?tenant={t}&limit=1000"),
                None => "/agents?limit=1000".into(),
            };
            let v = client.get(&path)?;
            let s = agents_text(&v);
            (v, s)
        }
        Cmd::Agent {
            tenant,
            agent,
            action,
            reason,
        } => {
            let body = reason.as_ref().map(|r| json!({ "reason": r }));
            let v = client.post(&format!("/agents/{tenant}/{agent}/{action}"), body)?;
            let state = text(lookup(&v, "state"));
            (v, format!("agent {tenant}/{agent}: {state}\n"))
        }
        Cmd::Trunks => {
            let trunks = client.get("/trunks")?;
            let status = client.get("/status")?;
            let s = trunks_text(&trunks, &status);
            (trunks, s)
        }
        Cmd::Bans => {
            let v = client.get("/security/bans")?;
            let s = bans_text(&v);
            (v, s)
        }
        Cmd::Unban(ip) => {
            let v = client.delete(&format!("/security/bans/{ip}"))?;
            (v, format!("{ip}: ban lifted\n"))
        }
        Cmd::Drain => {
            let v = client.post("/cluster/drain", None)?;
            (
                v,
                "draining: this node's singletons went to the other nodes\n".into(),
            )
        }
        Cmd::Undrain => {
            let v = client.post("/cluster/undrain", None)?;
            (v, "up: this node takes singletons again\n".into())
        }
        Cmd::Log => {
            let v = client.get("/log")?;
            let s = format!("{}\n", text(lookup(&v, "filter")));
            (v, s)
        }
        Cmd::LogLevel(filter) => {
            let v = client.put("/log", json!({ "filter": filter }))?;
            let s = format!("log filter now {}\n", text(lookup(&v, "filter")));
            (v, s)
        }
    };
    if json_out {
        Ok(format!(
            "{}\n",
            serde_json::to_string_pretty(&value).unwrap_or_default()
        ))
    } else {
        Ok(shown)
    }
}

fn status_text(v: &Value) -> String {
    let agents = lookup(v, "agents")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter(|(_, n)| n.as_u64().unwrap_or(0) > 0)
                .map(|(k, n)| format!("{k} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "none".into());
    let trunks = format!(
        "{} up, {} down{}",
        text(lookup(v, "trunks.up")),
        text(lookup(v, "trunks.down")),
        match lookup(v, "trunks.down_ids").map(|d| text(Some(d))) {
            Some(ids) if !ids.is_empty() && ids != "-" => format!(" ({ids})"),
            _ => String::new(),
        }
    );
    let cluster = match lookup(v, "cluster") {
        None | Some(Value::Null) => "alone (no cluster)".to_string(),
        Some(c) => {
            let nodes = c
                .get("nodes")
                .and_then(Value::as_array)
                .map(|ns| {
                    ns.iter()
                        .map(|n| format!("{} owns {}", text(n.get("name")), text(n.get("owns"))))
                        .collect::<Vec<_>>()
                        .join("; ")
                })
                .unwrap_or_default();
            let unowned = c
                .get("unowned")
                .and_then(Value::as_array)
                .map_or(0, Vec::len);
            format!("{}; {nodes}; {unowned} unowned", text(c.get("state")))
        }
    };
    pairs(&[
        ("node", text(lookup(v, "node"))),
        ("version", text(lookup(v, "version"))),
        (
            "uptime",
            duration(lookup(v, "uptime_secs").and_then(Value::as_u64)),
        ),
        ("calls", text(lookup(v, "calls_active"))),
        (
            "calls/s",
            format!(
                "{:.1} (last 10 s)",
                lookup(v, "calls_per_second")
                    .and_then(Value::as_f64)
                    .unwrap_or(0.0)
            ),
        ),
        ("registrations", text(lookup(v, "registrations"))),
        ("agents", agents),
        ("trunks", trunks),
        ("cluster", cluster),
        ("log", text(lookup(v, "log_filter"))),
    ])
}

fn duration(secs: Option<u64>) -> String {
    match secs {
        None => "-".into(),
        Some(s) if s >= 86_400 => format!("{}d {}h", s / 86_400, s % 86_400 / 3600),
        Some(s) if s >= 3600 => format!("{}h {}m", s / 3600, s % 3600 / 60),
        Some(s) if s >= 60 => format!("{}m {}s", s / 60, s % 60),
        Some(s) => format!("{s}s"),
    }
}

/// Seconds since a unix-ms timestamp field, as a duration.
fn age(row: &Value, field: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    match lookup(row, field).and_then(Value::as_i64) {
        Some(ms) => duration(Some(((now - ms).max(0) / 1000) as u64)),
        None => "-".into(),
    }
}

fn legs(row: &Value) -> String {
    row.get("legs")
        .and_then(Value::as_array)
        .map(|ls| {
            ls.iter()
                .map(|l| format!("{}:{}", text(l.get("position")), text(l.get("state"))))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_else(|| "-".into())
}

fn calls_text(v: &Value) -> String {
    let rows = lookup(v, "calls")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut out = render(
        &[
            Column::field("call", "call_id"),
            Column::field("tenant", "tenant"),
            Column::field("phase", "phase"),
            Column::field("caller", "caller"),
            Column::field("callee", "callee"),
            Column::with("age", |r| age(r, "start_ms")),
            Column::with("legs", legs),
        ],
        &rows,
    );
    if let Some(total) = lookup(v, "total").and_then(Value::as_u64) {
        if total as usize > rows.len() {
            out.push_str(&format!("({} of {total} shown)\n", rows.len()));
        }
    }
    out
}

fn call_text(v: &Value) -> String {
    let mut out = pairs(&[
        ("call", text(lookup(v, "call_id"))),
        ("tenant", text(lookup(v, "tenant"))),
        ("phase", text(lookup(v, "phase"))),
        ("caller", text(lookup(v, "caller"))),
        ("callee", text(lookup(v, "callee"))),
        ("age", age(v, "start_ms")),
    ]);
    out.push('\n');
    let rows = lookup(v, "legs")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    out.push_str(&render(
        &[
            Column::field("leg", "position"),
            Column::field("state", "state"),
            Column::field("party", "party"),
            Column::field("user", "user"),
            Column::field("leg call-id", "call_id"),
        ],
        &rows,
    ));
    out
}

fn queues_text(v: &Value) -> String {
    let rows = v.as_array().cloned().unwrap_or_default();
    render(
        &[
            Column::field("tenant", "tenant"),
            Column::field("queue", "queue"),
            Column::field("strategy", "strategy"),
            Column::field("waiting", "waiting"),
            Column::with("longest", |r| {
                duration(
                    lookup(r, "longest_wait_ms")
                        .and_then(Value::as_u64)
                        .map(|m| m / 1000),
                )
            }),
            Column::field("available", "available"),
            Column::field("logged in", "logged_in"),
            Column::field("answered", "answered"),
            Column::field("abandoned", "abandoned"),
            Column::with("sl", |r| {
                lookup(r, "service_level")
                    .and_then(Value::as_f64)
                    .map_or("-".into(), |f| format!("{:.0}%", f * 100.0))
            }),
        ],
        &rows,
    )
}

fn agents_text(v: &Value) -> String {
    let rows = lookup(v, "agents")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    render(
        &[
            Column::field("tenant", "tenant"),
            Column::field("agent", "id"),
            Column::field("user", "user"),
            Column::field("state", "state"),
            Column::field("detail", "detail"),
            Column::with("since", |r| age(r, "since_ms")),
            Column::field("phone", "phone_registered"),
            Column::field("calls", "calls"),
            Column::field("queues", "queues"),
        ],
        &rows,
    )
}

fn trunks_text(trunks: &Value, status: &Value) -> String {
    let down: Vec<String> = lookup(status, "trunks.down_ids")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    let mut rows = trunks.as_array().cloned().unwrap_or_default();
    rows.sort_by_key(|r| text(r.get("id")));
    let columns = [
        Column::field("trunk", "id"),
        Column::with("state", |r| {
            let id = text(r.get("id"));
            if down.contains(&id) { "down" } else { "up" }.to_string()
        }),
        Column::with("gateways", |r| {
            text(r.get("gateways").or_else(|| r.get("gateway")))
        }),
        Column::field("channels", "channels"),
        Column::field("cps", "cps"),
    ];
    render(&columns, &rows)
}

fn bans_text(v: &Value) -> String {
    let rows = lookup(v, "bans")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    render(
        &[
            Column::field("source", "source"),
            Column::field("reason", "reason"),
            Column::with("remaining", |r| {
                duration(lookup(r, "remaining_secs").and_then(Value::as_u64))
            }),
            Column::field("offences", "offences"),
            Column::field("dropped", "dropped"),
        ],
        &rows,
    )
}

/// How the console was started.
#[derive(Clone, Debug)]
pub struct Options {
    pub target: Target,
    pub json: bool,
    /// Where the prompt keeps its history (None: not kept).
    pub history: Option<PathBuf>,
}

/// Runs one command (`words` not empty) or the prompt; the process's exit code.
pub fn run(options: Options, words: &[String]) -> u8 {
    let client = match Client::new(options.target.clone()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("switchyard ctl: {e}");
            return 2;
        }
    };
    if !words.is_empty() {
        let words: Vec<&str> = words.iter().map(String::as_str).collect();
        let cmd = match parse(&words) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("switchyard ctl: {e}");
                return 2;
            }
        };
        return match execute(&client, &cmd, options.json) {
            Ok(out) => {
                print!("{out}");
                0
            }
            Err(e) => {
                eprintln!("switchyard ctl: {e}");
                1
            }
        };
    }
    prompt(&client, &options)
}

/// The interactive console: a prompt with line editing and history.
fn prompt(client: &Client, options: &Options) -> u8 {
    use rustyline::error::ReadlineError;
    let mut editor = match rustyline::DefaultEditor::new() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("switchyard ctl: no terminal for the prompt ({e}); give a command instead");
            return 2;
        }
    };
    if let Some(h) = &options.history {
        let _ = editor.load_history(h);
    }
    println!(
        "switchyard ctl on {} (`help` lists the commands, `quit` leaves)",
        options.target.url
    );
    loop {
        match editor.readline("switchyard> ") {
            Ok(line) => {
                let words: Vec<&str> = line.split_whitespace().collect();
                if words.is_empty() {
                    continue;
                }
                let _ = editor.add_history_entry(line.as_str());
                match parse(&words) {
                    Ok(Cmd::Quit) => break,
                    Ok(cmd) => match execute(client, &cmd, options.json) {
                        Ok(out) => print!("{out}"),
                        Err(e) => println!("error: {e}"),
                    },
                    Err(e) => println!("{e}"),
                }
            }
            Err(ReadlineError::Interrupted) => continue,
            Err(ReadlineError::Eof) => break,
            Err(e) => {
                eprintln!("switchyard ctl: {e}");
                break;
            }
        }
    }
    if let Some(h) = &options.history {
        let _ = editor.save_history(h);
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_parse_and_bad_ones_say_how() {
        assert_eq!(parse(&["status"]), Ok(Cmd::Status));
        assert_eq!(parse(&["call", "abc@h"]), Ok(Cmd::Call("abc@h".into())));
        assert!(parse(&["call", "../x"])
            .unwrap_err()
            .contains("usage: call ID"));
        assert_eq!(
            parse(&["agent", "demo/1001", "not-ready", "lunch", "break"]),
            Ok(Cmd::Agent {
                tenant: "demo".into(),
                agent: "1001".into(),
                action: "not-ready".into(),
                reason: Some("lunch break".into()),
            })
        );
        assert!(parse(&["agent", "demo", "ready"]).is_err());
        assert!(parse(&["agent", "demo/1001", "ready", "now"]).is_err());
        assert_eq!(parse(&["unban", "::1"]), Ok(Cmd::Unban("::1".into())));
        assert!(parse(&["unban", "nope"]).is_err());
        assert_eq!(
            parse(&["log", "level", "debug"]),
            Ok(Cmd::LogLevel("debug".into()))
        );
        assert!(parse(&["frobnicate"]).unwrap_err().contains("help"));
        assert!(parse(&[]).is_err());
    }

    #[test]
    fn durations_read_like_a_person_would_say_them() {
        assert_eq!(duration(Some(5)), "5s");
        assert_eq!(duration(Some(65)), "1m 5s");
        assert_eq!(duration(Some(7260)), "2h 1m");
        assert_eq!(duration(Some(90_000)), "1d 1h");
    }

    #[test]
    fn status_reads_as_one_screen() {
        let v = json!({
            "node": "n1", "version": "0.1.0", "uptime_secs": 61, "calls_active": 3,
            "calls_per_second": 1.25, "registrations": 2,
            "agents": {"available": 1, "logged_out": 1, "on_call": 0},
            "trunks": {"up": 1, "down": 1, "down_ids": ["t2"]},
            "cluster": null, "log_filter": "switchyard=info"
        });
        let s = status_text(&v);
        assert!(s.contains("calls          3\n"), "{s}");
        assert!(s.contains("calls/s        1.2 (last 10 s)"), "{s}");
        assert!(
            s.contains("agents         available 1, logged_out 1\n"),
            "{s}"
        );
        assert!(s.contains("trunks         1 up, 1 down (t2)"), "{s}");
        assert!(s.contains("cluster        alone"), "{s}");
    }
}
