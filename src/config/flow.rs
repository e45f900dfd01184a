//! Programmable call flows (IVR): a tenant's `[[tenants.flows]]`, each a small graph of
//! steps a number may lead to (`target = "flow:<id>"`), and their compiled form the call
//! core runs ([`Flow`]).
//!
//! ```toml
//! [[tenants.flows]]
//! id = "main"
//! [[tenants.flows.steps]]
//! id = "welcome"
//! type = "menu"
//! prompt = "welcome"              # a prompt id: a WAV of media.prompts_dir or a media.tts entry
//! choices = { "1" = "sales", "2" = "more" }
//! timeout_secs = 5                # no digit this long after the prompt: a timeout
//! retries = 2                     # timeouts and invalid digits allowed before `fail`
//! timeout_prompt = "no-input"     # heard on a timeout before the menu again
//! invalid_prompt = "invalid"      # heard on a digit the menu lacks
//! fail = "bye"                    # where a caller out of retries goes (default: hang up)
//! ```
//!
//! Steps (`type`): `play` (`prompt`, then `next`), `menu` (above), `collect` (`var`,
//! `max_digits` and/or `terminator`, `timeout_secs`, optional `prompt`, then `next`),
//! `webhook` (POSTs the call's variables to the tenant's `webhook_url`, signed with
//! `webhook_secret`; `timeout_ms` and `fallback` required; the answer `{"next": "<step>"}`
//! names the next step, see `src/actors/call/core/flow.rs`),
//! `schedule` (`hours` like `"mon-fri 09:00-18:00"` in the tenant's `time_zone`, the
//! tenant's `holidays`; branches `open`, `closed`, `holiday` (default: closed)), `set`
//! (`priority`, `skills` = { name = level }, `vars`, then `next`), `queue` / `user` / `number` (`target`: a queue id, a
//! user name, a tenant number: the flow ends there) and `hangup`. `next` defaults to the
//! step that follows in the list. Validation refuses unknown types and fields, steps no
//! path reaches, loops that wait for no input (only `menu` and `collect` wait for the
//! caller), targets and prompts that do not exist, each with its place
//! (`tenants[0].flows[1].steps[2].next`).

use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::time::Duration;

/// How long a flow's steps may wait for a digit at most.
pub const MAX_TIMEOUT_SECS: u64 = 120;
/// A flow's step count bound (a flow is a menu tree, not a program).
pub const MAX_STEPS: usize = 256;

/// A flow as the configuration file (or the API) gives it.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlowConfig {
    /// Unique within the tenant (letters, digits, '-', '_').
    pub id: String,
    /// The first step (default: the first in the list).
    #[serde(default)]
    pub start: Option<String>,
    pub steps: Vec<StepConfig>,
}

/// One step of a flow; which fields apply depends on its `type`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepConfig {
    pub id: String,
    /// `play`, `menu`, `collect`, `set`, `queue`, `user`, `number`, `hangup`.
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub prompt: Option<String>,
    #[serde(default)]
    pub next: Option<String>,
    /// menu: digit -> step.
    #[serde(default)]
    pub choices: BTreeMap<String, String>,
    #[serde(default)]
    pub timeout_secs: Option<u64>,
    #[serde(default)]
    pub retries: Option<u32>,
    #[serde(default)]
    pub timeout_prompt: Option<String>,
    #[serde(default)]
    pub invalid_prompt: Option<String>,
    #[serde(default)]
    pub fail: Option<String>,
    /// collect: the variable the digits go into.
    #[serde(default)]
    pub var: Option<String>,
    #[serde(default)]
    pub max_digits: Option<u32>,
    #[serde(default)]
    pub terminator: Option<String>,
    /// set: the caller's priority in the queue it joins next.
    #[serde(default)]
    pub priority: Option<u32>,
    /// set: variables.
    #[serde(default)]
    pub vars: BTreeMap<String, String>,
    /// set: skills (name -> level 1-10) the agent must have, on top of the queue's.
    #[serde(default)]
    pub skills: BTreeMap<String, u8>,
    /// queue, user, number: where the flow ends.
    #[serde(default)]
    pub target: Option<String>,
    /// queue: a digit that leaves the queue for a step of the flow (`{ "0" = "menu" }`).
    #[serde(default)]
    pub exit_keys: BTreeMap<String, String>,
    /// schedule: opening hours, `"mon-fri 09:00-18:00"`, `"sat 10:00-14:00"` (the tenant's
    /// time zone; a range ends the same day, `24:00` at the latest).
    #[serde(default)]
    pub hours: Vec<String>,
    /// schedule: where the call goes in opening hours, outside them, and on one of the
    /// tenant's holidays (default: `closed`).
    #[serde(default)]
    pub open: Option<String>,
    #[serde(default)]
    pub closed: Option<String>,
    #[serde(default)]
    pub holiday: Option<String>,
    /// webhook: how long the tenant's server has to answer (100 to 10000 ms), and the step
    /// a late, failed or bad answer leads to.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    #[serde(default)]
    pub fallback: Option<String>,
}

/// Where a tenant's webhook steps POST, and the key they sign with.
#[derive(Clone)]
pub struct WebhookTarget {
    pub url: String,
    pub secret: String,
}

impl std::fmt::Debug for WebhookTarget {
    // Never the secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookTarget")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

/// The shortest webhook secret accepted (HMAC-SHA256 key).
pub const MIN_WEBHOOK_SECRET: usize = 16;

impl WebhookTarget {
    /// A tenant's `webhook_url` and `webhook_secret` (both or neither), or the errors with
    /// their place under `place` (`tenants[0]`).
    pub fn parse(
        place: &str,
        url: Option<&str>,
        secret: Option<&str>,
    ) -> Result<Option<WebhookTarget>, Vec<(String, String)>> {
        let mut errors = Vec::new();
        match (url, secret) {
            (None, None) => return Ok(None),
            (Some(u), _) if !(u.starts_with("http://") || u.starts_with("https://")) || u.len() > 2048 => {
                errors.push((
                    format!("{place}.webhook_url"),
                    format!("{u:?}: an http:// or https:// URL"),
                ))
            }
            (Some(_), Some(s)) if s.len() >= MIN_WEBHOOK_SECRET => {}
            (Some(_), _) => errors.push((
                format!("{place}.webhook_secret"),
                format!("at least {MIN_WEBHOOK_SECRET} characters (the HMAC-SHA256 key webhooks are signed with)"),
            )),
            (None, Some(_)) => errors.push((
                format!("{place}.webhook_url"),
                "a webhook_secret needs its webhook_url".into(),
            )),
        }
        if errors.is_empty() {
            Ok(Some(WebhookTarget {
                url: url.unwrap_or_default().to_string(),
                secret: secret.unwrap_or_default().to_string(),
            }))
        } else {
            Err(errors)
        }
    }
}

/// A compiled flow: steps by index, every reference resolved.
#[derive(Clone, Debug)]
pub struct Flow {
    pub id: String,
    pub start: usize,
    pub steps: Vec<Step>,
    /// The tenant's time zone and holidays (schedule steps).
    pub calendar: Calendar,
    /// The tenant's webhook (webhook steps).
    pub webhook: Option<std::sync::Arc<WebhookTarget>>,
}

/// A tenant's time zone and holiday dates.
#[derive(Clone, Debug)]
pub struct Calendar {
    pub tz: jiff::tz::TimeZone,
    pub holidays: Vec<jiff::civil::Date>,
}

impl Default for Calendar {
    fn default() -> Calendar {
        Calendar {
            tz: jiff::tz::TimeZone::UTC,
            holidays: Vec::new(),
        }
    }
}

impl Calendar {
    /// The tenant's `time_zone` (IANA name, default UTC) and `holidays` (`YYYY-MM-DD`), or
    /// the errors with their place under `place` (`tenants[0]`).
    pub fn parse(
        place: &str,
        time_zone: Option<&str>,
        holidays: &[String],
    ) -> Result<Calendar, Vec<(String, String)>> {
        let mut errors = Vec::new();
        let tz = match time_zone {
            None => jiff::tz::TimeZone::UTC,
            Some(name) => jiff::tz::TimeZone::get(name).unwrap_or_else(|e| {
                errors.push((
                    format!("{place}.time_zone"),
                    format!("{name:?}: an IANA time zone like \"Asia/Shanghai\" ({e})"),
                ));
                jiff::tz::TimeZone::UTC
            }),
        };
        let mut dates = Vec::new();
        for (k, h) in holidays.iter().enumerate() {
            match h.parse::<jiff::civil::Date>() {
                Ok(d) => dates.push(d),
                Err(_) => errors.push((
                    format!("{place}.holidays[{k}]"),
                    format!("{h:?}: a date YYYY-MM-DD"),
                )),
            }
        }
        if errors.is_empty() {
            Ok(Calendar {
                tz,
                holidays: dates,
            })
        } else {
            Err(errors)
        }
    }

    /// Where a schedule with `hours` stands at `wall_ms` (Unix milliseconds).
    pub fn status(&self, hours: &[Hours], wall_ms: i64) -> ScheduleStatus {
        let Ok(ts) = jiff::Timestamp::from_millisecond(wall_ms) else {
            return ScheduleStatus::Closed;
        };
        let local = self.tz.to_datetime(ts);
        if self.holidays.contains(&local.date()) {
            return ScheduleStatus::Holiday;
        }
        let day = local.weekday().to_monday_zero_offset() as u8;
        let minute = local.hour() as u16 * 60 + local.minute() as u16;
        let open = hours
            .iter()
            .any(|h| h.days & (1 << day) != 0 && h.from <= minute && minute < h.to);
        if open {
            ScheduleStatus::Open
        } else {
            ScheduleStatus::Closed
        }
    }
}

/// What a schedule step found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScheduleStatus {
    Open,
    Closed,
    Holiday,
}

impl ScheduleStatus {
    pub fn label(self) -> &'static str {
        match self {
            ScheduleStatus::Open => "open",
            ScheduleStatus::Closed => "closed",
            ScheduleStatus::Holiday => "holiday",
        }
    }
}

/// One opening-hours line: days of the week (bit 0 Monday .. bit 6 Sunday) and minutes of
/// the day `[from, to)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hours {
    pub days: u8,
    pub from: u16,
    pub to: u16,
}

impl Hours {
    /// `"mon-fri 09:00-18:00"`, `"sat,sun 10:00-14:00"`, `"wed 08:30-12:00"`.
    pub fn parse(s: &str) -> Result<Hours, String> {
        const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
        let bad = || format!("{s:?}: like \"mon-fri 09:00-18:00\"");
        let (days, times) = s.trim().split_once(' ').ok_or_else(bad)?;
        let day = |d: &str| DAYS.iter().position(|x| x.eq_ignore_ascii_case(d.trim()));
        let mut mask = 0u8;
        for part in days.split(',') {
            match part.split_once('-') {
                Some((a, b)) => {
                    let (a, b) = (day(a).ok_or_else(bad)?, day(b).ok_or_else(bad)?);
                    if a > b {
                        return Err(bad());
                    }
                    for d in a..=b {
                        mask |= 1 << d;
                    }
                }
                None => mask |= 1 << day(part).ok_or_else(bad)?,
            }
        }
        let minute = |t: &str| -> Option<u16> {
            let (h, m) = t.trim().split_once(':')?;
            let (h, m): (u16, u16) = (h.parse().ok()?, m.parse().ok()?);
            (m < 60 && (h < 24 || (h == 24 && m == 0))).then_some(h * 60 + m)
        };
        let (from, to) = times.trim().split_once('-').ok_or_else(bad)?;
        let (from, to) = (minute(from).ok_or_else(bad)?, minute(to).ok_or_else(bad)?);
        if from >= to {
            return Err(format!("{s:?}: a range ends after it starts, the same day"));
        }
        Ok(Hours {
            days: mask,
            from,
            to,
        })
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    pub id: String,
    pub action: Action,
}

/// What a step does.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    Play {
        prompt: String,
        next: usize,
    },
    Menu {
        prompt: String,
        choices: Vec<(char, usize)>,
        timeout: Duration,
        retries: u32,
        timeout_prompt: Option<String>,
        invalid_prompt: Option<String>,
        /// None: hang up.
        fail: Option<usize>,
    },
    Collect {
        prompt: Option<String>,
        var: String,
        max_digits: u32,
        terminator: Option<char>,
        timeout: Duration,
        next: usize,
    },
    Set {
        priority: Option<u32>,
        vars: Vec<(String, String)>,
        skills: Vec<crate::routing::acd::Requirement>,
        next: usize,
    },
    Schedule {
        hours: Vec<Hours>,
        open: usize,
        closed: usize,
        holiday: usize,
    },
    /// POST the call's variables to the tenant's webhook; its answer names the next step.
    Webhook {
        timeout: Duration,
        fallback: usize,
    },
    /// The caller waits in the queue; an exit key leaves it for its step.
    Queue {
        queue: String,
        exits: Vec<(char, usize)>,
    },
    User(String),
    Number(String),
    Hangup,
}

impl Action {
    /// The step's kind (metrics label).
    pub fn label(&self) -> &'static str {
        match self {
            Action::Play { .. } => "play",
            Action::Menu { .. } => "menu",
            Action::Collect { .. } => "collect",
            Action::Set { .. } => "set",
            Action::Schedule { .. } => "schedule",
            Action::Webhook { .. } => "webhook",
            Action::Queue { .. } => "queue",
            Action::User(_) => "user",
            Action::Number(_) => "number",
            Action::Hangup => "hangup",
        }
    }

    /// Whether the step waits for the caller's digits (what breaks a loop).
    fn waits_for_input(&self) -> bool {
        matches!(
            self,
            Action::Menu { .. } | Action::Collect { .. } | Action::Queue { .. }
        )
    }

    /// The steps this one may go on to.
    fn successors(&self) -> Vec<usize> {
        match self {
            Action::Play { next, .. } | Action::Collect { next, .. } | Action::Set { next, .. } => {
                vec![*next]
            }
            Action::Menu { choices, fail, .. } => choices
                .iter()
                .map(|c| c.1)
                .chain(fail.iter().copied())
                .collect(),
            Action::Schedule {
                open,
                closed,
                holiday,
                ..
            } => vec![*open, *closed, *holiday],
            // Its answer may name any step (see the reachability check in `compile`).
            Action::Webhook { fallback, .. } => vec![*fallback],
            Action::Queue { exits, .. } => exits.iter().map(|e| e.1).collect(),
            Action::User(_) | Action::Number(_) | Action::Hangup => Vec::new(),
        }
    }
}

impl Flow {
    pub fn step(&self, i: usize) -> Option<&Step> {
        self.steps.get(i)
    }

    /// The index of step `id`.
    pub fn index_of(&self, id: &str) -> Option<usize> {
        self.steps.iter().position(|s| s.id == id)
    }
}

/// What a tenant offers a flow to refer to.
pub struct FlowScope<'a> {
    pub queues: &'a BTreeSet<String>,
    /// The tenant's time zone and holidays.
    pub calendar: &'a Calendar,
    /// The tenant's webhook, if it has one.
    pub webhook: Option<&'a std::sync::Arc<WebhookTarget>>,
    /// Prompt ids that exist (`None`: not checked).
    pub prompts: Option<&'a BTreeSet<String>>,
}

/// The prompt ids a node will have: the WAVs of `dir` (file stems) and the `media.tts`
/// entries.
pub fn known_prompts(dir: &Path, tts: &BTreeMap<String, String>) -> BTreeSet<String> {
    let mut ids: BTreeSet<String> = tts.keys().cloned().collect();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x.eq_ignore_ascii_case("wav")) {
                if let Some(stem) = p.file_stem().and_then(|s| s.to_str()) {
                    ids.insert(stem.to_string());
                }
            }
        }
    }
    ids
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// Compiles a flow, or says every error with its place under `place`
/// (`tenants[0].flows[1]`).
pub fn compile(
    place: &str,
    f: &FlowConfig,
    scope: &FlowScope,
) -> Result<Flow, Vec<(String, String)>> {
    let mut errors: Vec<(String, String)> = Vec::new();
    let mut err = |p: String, m: String| errors.push((p, m));
    if !valid_id(&f.id) {
        err(
            format!("{place}.id"),
            format!("{:?}: letters, digits, '-', '_'", f.id),
        );
    }
    if f.steps.is_empty() || f.steps.len() > MAX_STEPS {
        err(
            format!("{place}.steps"),
            format!("a flow has 1 to {MAX_STEPS} steps"),
        );
        return Err(errors);
    }
    let mut index: HashMap<&str, usize> = HashMap::new();
    for (j, s) in f.steps.iter().enumerate() {
        if !valid_id(&s.id) || index.insert(s.id.as_str(), j).is_some() {
            err(
                format!("{place}.steps[{j}].id"),
                format!("{:?}: letters, digits, '-', '_', unique in the flow", s.id),
            );
        }
    }
    let start = match &f.start {
        None => 0,
        Some(s) => match index.get(s.as_str()) {
            Some(&i) => i,
            None => {
                err(format!("{place}.start"), format!("no step {s:?}"));
                0
            }
        },
    };
    let mut steps = Vec::with_capacity(f.steps.len());
    for (j, s) in f.steps.iter().enumerate() {
        let at = format!("{place}.steps[{j}]");
        let refer = |field: &str, name: &str, err: &mut dyn FnMut(String, String)| {
            index.get(name).copied().unwrap_or_else(|| {
                err(format!("{at}.{field}"), format!("no step {name:?}"));
                0
            })
        };
        let next = |err: &mut dyn FnMut(String, String)| match &s.next {
            Some(n) => refer("next", n, err),
            None if j + 1 < f.steps.len() => j + 1,
            None => {
                err(
                    format!("{at}.next"),
                    "the last step needs a next (or be queue, user, number, hangup)".into(),
                );
                0
            }
        };
        let prompt =
            |field: &str, p: Option<&String>, need: bool, err: &mut dyn FnMut(String, String)| {
                match p {
                    None if need => {
                        err(format!("{at}.{field}"), "a prompt id is needed".into());
                        None
                    }
                    None => None,
                    Some(p) => {
                        if scope.prompts.is_some_and(|k| !k.contains(p)) {
                            err(
                                format!("{at}.{field}"),
                                format!(
                                "no prompt {p:?} (a WAV of media.prompts_dir or a media.tts id)"
                            ),
                            );
                        }
                        Some(p.clone())
                    }
                }
            };
        // Digit -> step maps (menu choices, queue exit keys).
        let digit_map =
            |field: &str, map: &BTreeMap<String, String>, err: &mut dyn FnMut(String, String)| {
                let mut out = Vec::new();
                for (d, to) in map {
                    let mut cs = d.chars();
                    match (cs.next(), cs.next()) {
                        (Some(c), None) if c.is_ascii_digit() || c == '*' || c == '#' => {
                            out.push((c, refer(field, to, err)))
                        }
                        _ => err(
                            format!("{at}.{field}"),
                            format!("{d:?}: one digit 0-9, * or #"),
                        ),
                    }
                }
                out
            };
        let timeout = |err: &mut dyn FnMut(String, String), default: u64| {
            let t = s.timeout_secs.unwrap_or(default);
            if t == 0 || t > MAX_TIMEOUT_SECS {
                err(
                    format!("{at}.timeout_secs"),
                    format!("1 to {MAX_TIMEOUT_SECS}"),
                );
            }
            Duration::from_secs(t)
        };
        let target = |err: &mut dyn FnMut(String, String)| match &s.target {
            Some(t) if !t.is_empty() => t.clone(),
            _ => {
                err(format!("{at}.target"), "a target is needed".into());
                String::new()
            }
        };
        let action = match s.kind.as_str() {
            "play" => Action::Play {
                prompt: prompt("prompt", s.prompt.as_ref(), true, &mut err).unwrap_or_default(),
                next: next(&mut err),
            },
            "menu" => {
                let choices = digit_map("choices", &s.choices, &mut err);
                if choices.is_empty() {
                    err(format!("{at}.choices"), "a menu needs choices".into());
                }
                Action::Menu {
                    prompt: prompt("prompt", s.prompt.as_ref(), true, &mut err).unwrap_or_default(),
                    choices,
                    timeout: timeout(&mut err, 5),
                    retries: s.retries.unwrap_or(2).min(10),
                    timeout_prompt: prompt(
                        "timeout_prompt",
                        s.timeout_prompt.as_ref(),
                        false,
                        &mut err,
                    ),
                    invalid_prompt: prompt(
                        "invalid_prompt",
                        s.invalid_prompt.as_ref(),
                        false,
                        &mut err,
                    ),
                    fail: s.fail.as_ref().map(|x| refer("fail", x, &mut err)),
                }
            }
            "collect" => {
                let var = s.var.clone().unwrap_or_default();
                if !valid_id(&var) {
                    err(format!("{at}.var"), format!("{var:?}: a variable name"));
                }
                let terminator = match s.terminator.as_deref() {
                    None => None,
                    Some("#") => Some('#'),
                    Some("*") => Some('*'),
                    Some(t) => {
                        err(format!("{at}.terminator"), format!("{t:?}: # or *"));
                        None
                    }
                };
                let max_digits = s.max_digits.unwrap_or(0);
                if max_digits > 32 || (max_digits == 0 && terminator.is_none()) {
                    err(
                        format!("{at}.max_digits"),
                        "1 to 32, or 0 with a terminator".into(),
                    );
                }
                Action::Collect {
                    prompt: prompt("prompt", s.prompt.as_ref(), false, &mut err),
                    var,
                    max_digits: if max_digits == 0 { 32 } else { max_digits },
                    terminator,
                    timeout: timeout(&mut err, 5),
                    next: next(&mut err),
                }
            }
            "set" => {
                for k in s.vars.keys() {
                    if !valid_id(k) {
                        err(format!("{at}.vars"), format!("{k:?}: a variable name"));
                    }
                }
                for (k, level) in &s.skills {
                    if k.is_empty() || !(1..=10).contains(level) {
                        err(
                            format!("{at}.skills"),
                            format!("{k:?} = {level}: a skill name and a level 1-10"),
                        );
                    }
                }
                Action::Set {
                    priority: s.priority,
                    vars: s.vars.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
                    skills: s
                        .skills
                        .iter()
                        .map(|(k, l)| crate::routing::acd::Requirement {
                            skill: k.clone(),
                            level: *l,
                        })
                        .collect(),
                    next: next(&mut err),
                }
            }
            "queue" => {
                let q = target(&mut err);
                if !q.is_empty() && !scope.queues.contains(&q) {
                    err(format!("{at}.target"), format!("no queue {q:?}"));
                }
                Action::Queue {
                    queue: q,
                    exits: digit_map("exit_keys", &s.exit_keys, &mut err),
                }
            }
            "user" => Action::User(target(&mut err)),
            "number" => Action::Number(target(&mut err)),
            "schedule" => {
                let mut hours = Vec::new();
                for (k, h) in s.hours.iter().enumerate() {
                    match Hours::parse(h) {
                        Ok(h) => hours.push(h),
                        Err(e) => err(format!("{at}.hours[{k}]"), e),
                    }
                }
                if s.hours.is_empty() {
                    err(format!("{at}.hours"), "opening hours are needed".into());
                }
                let branch = |field: &str,
                              v: &Option<String>,
                              err: &mut dyn FnMut(String, String)| {
                    match v {
                        Some(n) => refer(field, n, err),
                        None => {
                            err(format!("{at}.{field}"), "a step is needed".into());
                            0
                        }
                    }
                };
                let open = branch("open", &s.open, &mut err);
                let closed = branch("closed", &s.closed, &mut err);
                let holiday = match &s.holiday {
                    Some(n) => refer("holiday", n, &mut err),
                    None => closed,
                };
                Action::Schedule {
                    hours,
                    open,
                    closed,
                    holiday,
                }
            }
            "webhook" => {
                if scope.webhook.is_none() {
                    err(
                        format!("{at}.type"),
                        "a webhook step needs the tenant's webhook_url and webhook_secret".into(),
                    );
                }
                let timeout = s.timeout_ms.unwrap_or(0);
                if !(100..=10_000).contains(&timeout) {
                    err(format!("{at}.timeout_ms"), "100 to 10000 (required)".into());
                }
                let fallback = match &s.fallback {
                    Some(n) => refer("fallback", n, &mut err),
                    None => {
                        err(
                            format!("{at}.fallback"),
                            "a fallback step is required".into(),
                        );
                        0
                    }
                };
                Action::Webhook {
                    timeout: Duration::from_millis(timeout),
                    fallback,
                }
            }
            "hangup" => Action::Hangup,
            other => {
                err(
                    format!("{at}.type"),
                    format!("{other:?}: play, menu, collect, set, schedule, webhook, queue, user, number or hangup"),
                );
                Action::Hangup
            }
        };
        steps.push(Step {
            id: s.id.clone(),
            action,
        });
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    // Every step reachable from the start.
    let mut seen = vec![false; steps.len()];
    let mut todo = vec![start];
    while let Some(i) = todo.pop() {
        if std::mem::replace(&mut seen[i], true) {
            continue;
        }
        if matches!(steps[i].action, Action::Webhook { .. }) {
            // A webhook's answer may name any step.
            todo.extend(0..steps.len());
        }
        todo.extend(steps[i].action.successors());
    }
    for (j, s) in seen.iter().enumerate() {
        if !s {
            errors.push((
                format!("{place}.steps[{j}]"),
                format!("step {:?} is reached from no step", steps[j].id),
            ));
        }
    }
    // No cycle of steps that wait for no input (it would spin without the caller).
    if let Some(j) = loop_without_input(&steps) {
        errors.push((
            format!("{place}.steps[{j}]"),
            format!(
                "step {:?} is on a loop that waits for no input (put a menu or collect in it)",
                steps[j].id
            ),
        ));
    }
    if errors.is_empty() {
        Ok(Flow {
            id: f.id.clone(),
            start,
            steps,
            calendar: scope.calendar.clone(),
            webhook: scope.webhook.cloned(),
        })
    } else {
        Err(errors)
    }
}

/// A step on a cycle through steps that do not wait for input, if any (depth-first
/// search for a back edge over the graph without the waiting steps).
fn loop_without_input(steps: &[Step]) -> Option<usize> {
    // 0: unvisited, 1: on the stack, 2: done.
    let mut mark = vec![0u8; steps.len()];
    for root in 0..steps.len() {
        if mark[root] != 0 || steps[root].action.waits_for_input() {
            continue;
        }
        let mut stack = vec![(root, 0usize)];
        mark[root] = 1;
        while let Some(&mut (i, ref mut k)) = stack.last_mut() {
            let succ = steps[i].action.successors();
            if *k < succ.len() {
                let n = succ[*k];
                *k += 1;
                if steps[n].action.waits_for_input() {
                    continue;
                }
                match mark[n] {
                    1 => return Some(n),
                    0 => {
                        mark[n] = 1;
                        stack.push((n, 0));
                    }
                    _ => {}
                }
            } else {
                mark[i] = 2;
                stack.pop();
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> FlowConfig {
        toml::from_str(text).expect("flow parses")
    }

    fn scope_compile(f: &FlowConfig) -> Result<Flow, Vec<(String, String)>> {
        let queues: BTreeSet<String> = ["sales".to_string()].into();
        let prompts: BTreeSet<String> = ["welcome", "bye", "again"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        compile(
            "flows[0]",
            f,
            &FlowScope {
                queues: &queues,
                calendar: &Calendar::default(),
                webhook: None,
                prompts: Some(&prompts),
            },
        )
    }

    const MENU: &str = r#"
id = "main"
[[steps]]
id = "welcome"
type = "menu"
prompt = "welcome"
choices = { "1" = "sales", "2" = "bye" }
retries = 1
invalid_prompt = "again"
fail = "bye"
[[steps]]
id = "sales"
type = "queue"
target = "sales"
[[steps]]
id = "bye"
type = "play"
prompt = "bye"
next = "end"
[[steps]]
id = "end"
type = "hangup"
"#;

    #[test]
    fn a_menu_compiles_with_its_references_resolved() {
        let f = scope_compile(&parse(MENU)).expect("valid");
        assert_eq!(f.start, 0);
        let Action::Menu {
            choices,
            fail,
            retries,
            timeout,
            ..
        } = &f.steps[0].action
        else {
            panic!("a menu")
        };
        assert_eq!(choices, &vec![('1', 1), ('2', 2)]);
        assert_eq!(*fail, Some(2));
        assert_eq!(*retries, 1);
        assert_eq!(*timeout, Duration::from_secs(5));
        assert_eq!(
            f.steps[2].action,
            Action::Play {
                prompt: "bye".into(),
                next: 3
            }
        );
    }

    fn errors_of(text: &str) -> Vec<(String, String)> {
        scope_compile(&parse(text)).expect_err("invalid")
    }

    #[test]
    fn unknown_types_prompts_queues_and_steps_are_refused_with_their_place() {
        let e = errors_of(
            r#"
id = "x"
[[steps]]
id = "a"
type = "dance"
[[steps]]
id = "b"
type = "play"
prompt = "nope"
next = "zz"
[[steps]]
id = "c"
type = "queue"
target = "support"
"#,
        );
        let places: Vec<&str> = e.iter().map(|x| x.0.as_str()).collect();
        assert!(places.contains(&"flows[0].steps[0].type"), "{e:?}");
        assert!(places.contains(&"flows[0].steps[1].prompt"), "{e:?}");
        assert!(places.contains(&"flows[0].steps[1].next"), "{e:?}");
        assert!(places.contains(&"flows[0].steps[2].target"), "{e:?}");
    }

    #[test]
    fn unreachable_steps_are_refused() {
        let e = errors_of(
            r#"
id = "x"
[[steps]]
id = "a"
type = "hangup"
[[steps]]
id = "lost"
type = "queue"
target = "sales"
"#,
        );
        assert_eq!(e[0].0, "flows[0].steps[1]", "{e:?}");
        assert!(e[0].1.contains("reached from no step"), "{e:?}");
    }

    #[test]
    fn a_loop_without_input_is_refused_but_one_through_a_menu_is_not() {
        let e = errors_of(
            r#"
id = "x"
[[steps]]
id = "a"
type = "play"
prompt = "welcome"
[[steps]]
id = "b"
type = "set"
priority = 3
next = "a"
"#,
        );
        assert!(e[0].1.contains("loop that waits for no input"), "{e:?}");
        // The same loop through a menu waits for the caller each time round.
        scope_compile(&parse(
            r#"
id = "x"
[[steps]]
id = "a"
type = "play"
prompt = "welcome"
[[steps]]
id = "m"
type = "menu"
prompt = "again"
choices = { "9" = "a", "1" = "q" }
[[steps]]
id = "q"
type = "queue"
target = "sales"
"#,
        ))
        .expect("a loop through a menu is fine");
    }

    fn at(rfc3339: &str) -> i64 {
        rfc3339
            .parse::<jiff::Timestamp>()
            .expect("a timestamp")
            .as_millisecond()
    }

    #[test]
    fn opening_hours_parse_and_refuse_what_they_cannot_mean() {
        assert_eq!(
            Hours::parse("mon-fri 09:00-18:00"),
            Ok(Hours {
                days: 0b0011111,
                from: 540,
                to: 1080
            })
        );
        assert_eq!(Hours::parse("sat,SUN 10:00-24:00").unwrap().days, 0b1100000);
        for bad in [
            "mon-fri",
            "fri-mon 09:00-10:00",
            "mon 18:00-09:00",
            "mon 09:60-10:00",
            "xyz 09:00-10:00",
        ] {
            assert!(Hours::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn schedules_read_the_tenants_clock_across_time_zones_and_holidays() {
        let hours = [Hours::parse("mon-fri 09:00-18:00").unwrap()];
        let cal = |tz: &str, holidays: &[&str]| {
            let h: Vec<String> = holidays.iter().map(|s| s.to_string()).collect();
            Calendar::parse("t", Some(tz), &h).expect("a calendar")
        };
        // Monday 2026-12-07 02:00 UTC: 10:00 on Monday in Shanghai, 21:00 on Sunday in
        // New York, 02:00 on Monday in UTC.
        let t = at("2026-12-07T02:00:00Z");
        assert_eq!(
            cal("Asia/Shanghai", &[]).status(&hours, t),
            ScheduleStatus::Open
        );
        assert_eq!(
            cal("America/New_York", &[]).status(&hours, t),
            ScheduleStatus::Closed
        );
        assert_eq!(cal("UTC", &[]).status(&hours, t), ScheduleStatus::Closed);
        // A holiday is a local date: the 7th in Shanghai, still the 6th in New York.
        let holiday = ["2026-12-07"];
        assert_eq!(
            cal("Asia/Shanghai", &holiday).status(&hours, t),
            ScheduleStatus::Holiday
        );
        assert_eq!(
            cal("America/New_York", &holiday).status(&hours, t),
            ScheduleStatus::Closed
        );
        // Daylight saving: Monday 2026-03-09 13:30 UTC is 09:30 EDT (open); the same time
        // of day a week earlier is 08:30 EST (closed).
        let ny = cal("America/New_York", &[]);
        assert_eq!(
            ny.status(&hours, at("2026-03-09T13:30:00Z")),
            ScheduleStatus::Open
        );
        assert_eq!(
            ny.status(&hours, at("2026-03-02T13:30:00Z")),
            ScheduleStatus::Closed
        );
        // The end of a range is outside it.
        assert_eq!(
            cal("UTC", &[]).status(&hours, at("2026-12-07T18:00:00Z")),
            ScheduleStatus::Closed
        );
        assert_eq!(
            cal("UTC", &[]).status(&hours, at("2026-12-07T17:59:00Z")),
            ScheduleStatus::Open
        );
    }

    #[test]
    fn bad_time_zones_holidays_and_schedule_steps_are_refused_with_their_place() {
        let e = Calendar::parse("tenants[0]", Some("Mars/Olympus"), &["2026-13-01".into()])
            .unwrap_err();
        let places: Vec<&str> = e.iter().map(|x| x.0.as_str()).collect();
        assert_eq!(places, ["tenants[0].time_zone", "tenants[0].holidays[0]"]);
        let e = errors_of(
            r#"
id = "x"
[[steps]]
id = "hours"
type = "schedule"
hours = ["mon-fri 9-18"]
open = "q"
[[steps]]
id = "q"
type = "queue"
target = "sales"
"#,
        );
        let places: Vec<&str> = e.iter().map(|x| x.0.as_str()).collect();
        assert_eq!(
            places,
            ["flows[0].steps[0].hours[0]", "flows[0].steps[0].closed"],
            "{e:?}"
        );
    }

    #[test]
    fn collect_needs_a_bound() {
        let e = errors_of(
            r#"
id = "x"
[[steps]]
id = "a"
type = "collect"
var = "account"
next = "b"
[[steps]]
id = "b"
type = "hangup"
"#,
        );
        assert_eq!(e[0].0, "flows[0].steps[0].max_digits", "{e:?}");
    }

    #[test]
    fn unknown_fields_are_refused_by_the_parser() {
        assert!(toml::from_str::<FlowConfig>(
            "id = \"x\"\n[[steps]]\nid = \"a\"\ntype = \"hangup\"\ncolour = \"red\"\n"
        )
        .is_err());
    }
}
