//! Risk rules for outbound calls (issue 20): black and white lists, forbidden call windows
//! and frequency caps. Pure decisions over tables and a clock, tested without tokio; the
//! stateful parts (the lists as loaded from the store, the attempt counts, the decision
//! record) live behind them in `actors::risk::RiskDesk`, the one decision point that every
//! outbound call passes (a phone's call through a route, click-to-call).
//!
//! The order of the rules, first refusal wins:
//! 1. **platform black list** (unless the platform's white list has the number): nothing a
//!    tenant does overrides it;
//! 2. **tag black lists** of the tenant's tags, then the **tenant's black list**: a white
//!    entry of the tenant or of one of its tags overrides both;
//! 3. **holidays**, then **forbidden windows** of the tenant, in the callee's time zone;
//! 4. **frequency caps** of the tenant, then of the route (trunk group), counted over
//!    several windows at once.
//!
//! Numbers are compared without a leading `+`; a list entry is a number or a prefix ending
//! in `*` (`4420*`).

use std::collections::{BTreeMap, HashMap, HashSet};

use jiff::civil::{Date, Weekday};
use jiff::tz::TimeZone;
use jiff::Timestamp;

use crate::config::{RiskCapConfig, RiskConfig, RiskTenantConfig};

/// Counter, labels `rule` and `result` (`allow`, `refuse`): decisions on outbound calls.
pub const RISK_DECISIONS: &str = "switchyard_risk_decisions_total";
/// Gauge, label `scope` (platform, tag, tenant): list entries in force.
pub const RISK_LIST_ENTRIES: &str = "switchyard_risk_list_entries";
/// Counter, label `result` (ok, bad_request, too_many, unavailable): list changes on the API.
pub const RISK_LIST_CHANGES: &str = "switchyard_risk_list_changes_total";
/// Counter, label `result` (allow, refuse): `GET /risk/check` answers (nothing recorded).
pub const RISK_CHECKS: &str = "switchyard_risk_checks_total";

/// Describes this module's metrics.
pub fn describe() {
    metrics::describe_counter!(
        RISK_DECISIONS,
        "Risk decisions on outbound calls, by rule (the one that refused, or none / a white list that let it through) and result (allow, refuse)"
    );
    metrics::describe_gauge!(
        RISK_LIST_ENTRIES,
        "Black and white list entries in force, by scope (platform, tag, tenant)"
    );
    metrics::describe_counter!(
        RISK_CHECKS,
        "GET /risk/check answers (dry checks, nothing recorded), by result (allow, refuse)"
    );
    metrics::describe_counter!(
        RISK_LIST_CHANGES,
        "Risk list changes on the API, by result (ok, bad_request, too_many, unavailable)"
    );
}

/// Longest number or list entry (digits, without `+` and `*`).
pub const MAX_NUMBER_LEN: usize = 32;

/// A number as the lists compare it: without a leading `+`; digits, letters, `*`, `#`
/// (what a phone may dial); `None` if empty, too long or anything else.
pub fn normalize(number: &str) -> Option<&str> {
    let n = number.strip_prefix('+').unwrap_or(number);
    let ok = !n.is_empty()
        && n.len() <= MAX_NUMBER_LEN
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'*' || b == b'#');
    ok.then_some(n)
}

/// A list entry: a whole number, or a prefix (written with a trailing `*`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Entry {
    Number(String),
    Prefix(String),
}

impl Entry {
    /// `"+4420 7946 0000"` is not an entry (no spaces); `"4420*"` is a prefix, `"+44207946"`
    /// a number (the `+` dropped). Digits only, at most [`MAX_NUMBER_LEN`].
    pub fn parse(text: &str) -> Result<Entry, String> {
        let t = text.trim();
        let t = t.strip_prefix('+').unwrap_or(t);
        let (digits, prefix) = match t.strip_suffix('*') {
            Some(d) => (d, true),
            None => (t, false),
        };
        if digits.is_empty()
            || digits.len() > MAX_NUMBER_LEN
            || !digits.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(format!(
                "{text:?}: digits (a leading + is dropped), at most {MAX_NUMBER_LEN}, a trailing * for a prefix"
            ));
        }
        Ok(if prefix {
            Entry::Prefix(digits.to_string())
        } else {
            Entry::Number(digits.to_string())
        })
    }

    /// The entry as written back: `4420*` or `442079460000`.
    pub fn text(&self) -> String {
        match self {
            Entry::Number(n) => n.clone(),
            Entry::Prefix(p) => format!("{p}*"),
        }
    }
}

/// A set of numbers and prefixes; a lookup costs one hash probe per digit of the number.
#[derive(Clone, Debug, Default)]
pub struct NumberList {
    numbers: HashSet<String>,
    prefixes: HashSet<String>,
}

impl NumberList {
    /// Adds `entry`; whether it was new.
    pub fn insert(&mut self, entry: &Entry) -> bool {
        match entry {
            Entry::Number(n) => self.numbers.insert(n.clone()),
            Entry::Prefix(p) => self.prefixes.insert(p.clone()),
        }
    }

    /// Removes `entry`; whether it was there.
    pub fn remove(&mut self, entry: &Entry) -> bool {
        match entry {
            Entry::Number(n) => self.numbers.remove(n),
            Entry::Prefix(p) => self.prefixes.remove(p),
        }
    }

    /// The entry `number` (normalized) matches: the number itself, else its longest listed
    /// prefix.
    pub fn matches(&self, number: &str) -> Option<Entry> {
        if self.numbers.contains(number) {
            return Some(Entry::Number(number.to_string()));
        }
        if self.prefixes.is_empty() {
            return None;
        }
        (1..=number.len())
            .rev()
            .filter(|&i| number.is_char_boundary(i))
            .map(|i| &number[..i])
            .find(|p| self.prefixes.contains(*p))
            .map(|p| Entry::Prefix(p.to_string()))
    }

    pub fn len(&self) -> usize {
        self.numbers.len() + self.prefixes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every entry, sorted.
    pub fn entries(&self) -> Vec<Entry> {
        let mut v: Vec<Entry> = self
            .numbers
            .iter()
            .map(|n| Entry::Number(n.clone()))
            .chain(self.prefixes.iter().map(|p| Entry::Prefix(p.clone())))
            .collect();
        v.sort();
        v
    }
}

/// Black or white.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ListKind {
    Black,
    White,
}

impl ListKind {
    pub fn parse(s: &str) -> Option<ListKind> {
        match s {
            "black" => Some(ListKind::Black),
            "white" => Some(ListKind::White),
            _ => None,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            ListKind::Black => "black",
            ListKind::White => "white",
        }
    }
}

/// Whose list: the platform's (the node operator's), a tag's (shared by the tenants that
/// carry the tag, managed by the operator) or a tenant's own.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    Platform,
    Tag(String),
    Tenant(String),
}

impl Scope {
    /// `platform`, `tag`, `tenant` (the store's `scope` column and the gauge's label).
    pub fn label(&self) -> &'static str {
        match self {
            Scope::Platform => "platform",
            Scope::Tag(_) => "tag",
            Scope::Tenant(_) => "tenant",
        }
    }

    /// The tag or tenant ("" for the platform).
    pub fn owner(&self) -> &str {
        match self {
            Scope::Platform => "",
            Scope::Tag(o) | Scope::Tenant(o) => o,
        }
    }

    /// From the store's columns.
    pub fn from_parts(scope: &str, owner: &str) -> Option<Scope> {
        match scope {
            "platform" => Some(Scope::Platform),
            "tag" => Some(Scope::Tag(owner.to_string())),
            "tenant" => Some(Scope::Tenant(owner.to_string())),
            _ => None,
        }
    }
}

/// One scope's black and white lists.
#[derive(Clone, Debug, Default)]
pub struct ListPair {
    pub black: NumberList,
    pub white: NumberList,
}

impl ListPair {
    pub fn list(&self, kind: ListKind) -> &NumberList {
        match kind {
            ListKind::Black => &self.black,
            ListKind::White => &self.white,
        }
    }

    pub fn list_mut(&mut self, kind: ListKind) -> &mut NumberList {
        match kind {
            ListKind::Black => &mut self.black,
            ListKind::White => &mut self.white,
        }
    }
}

/// Every list in force.
#[derive(Clone, Debug, Default)]
pub struct Lists {
    scopes: HashMap<Scope, ListPair>,
}

impl Lists {
    pub fn get(&self, scope: &Scope) -> Option<&ListPair> {
        self.scopes.get(scope)
    }

    pub fn get_mut(&mut self, scope: Scope) -> &mut ListPair {
        self.scopes.entry(scope).or_default()
    }

    /// Entries per scope label (for the gauge).
    pub fn counts(&self) -> BTreeMap<&'static str, usize> {
        let mut out = BTreeMap::from([("platform", 0), ("tag", 0), ("tenant", 0)]);
        for (scope, pair) in &self.scopes {
            *out.entry(scope.label()).or_default() += pair.black.len() + pair.white.len();
        }
        out
    }

    fn matches(&self, scope: &Scope, kind: ListKind, number: &str) -> Option<Entry> {
        self.scopes.get(scope)?.list(kind).matches(number)
    }
}

/// The rule a decision names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Rule {
    /// Allowed: no rule objected.
    None,
    /// Allowed: on a black list, but a white list overrode it (which one: `detail`).
    Whitelisted,
    PlatformBlacklist,
    TagBlacklist,
    TenantBlacklist,
    Holiday,
    ForbiddenWindow,
    TenantCap,
    RouteCap,
    /// The attempt counts could not be read (the database): refused, secure by default.
    CapUnavailable,
}

impl Rule {
    /// The `rule` label of [`RISK_DECISIONS`], and what refusals name.
    pub fn label(self) -> &'static str {
        match self {
            Rule::None => "none",
            Rule::Whitelisted => "whitelist",
            Rule::PlatformBlacklist => "platform_blacklist",
            Rule::TagBlacklist => "tag_blacklist",
            Rule::TenantBlacklist => "tenant_blacklist",
            Rule::Holiday => "holiday",
            Rule::ForbiddenWindow => "forbidden_window",
            Rule::TenantCap => "tenant_frequency_cap",
            Rule::RouteCap => "route_frequency_cap",
            Rule::CapUnavailable => "cap_unavailable",
        }
    }
}

/// What the rules say of one call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub allow: bool,
    pub rule: Rule,
    /// What matched: the list entry and its scope, the window, the cap and its count.
    pub detail: String,
}

impl Decision {
    pub fn allow(rule: Rule, detail: impl Into<String>) -> Decision {
        Decision {
            allow: true,
            rule,
            detail: detail.into(),
        }
    }

    pub fn refuse(rule: Rule, detail: impl Into<String>) -> Decision {
        Decision {
            allow: false,
            rule,
            detail: detail.into(),
        }
    }

    /// The `result` label of [`RISK_DECISIONS`].
    pub fn result(&self) -> &'static str {
        if self.allow {
            "allow"
        } else {
            "refuse"
        }
    }
}

/// A forbidden window: on `days` (bit 0 Monday … bit 6 Sunday), from `from` to `to`
/// minutes after midnight; `to <= from` wraps over midnight into the next day.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    pub days: u8,
    pub from: u16,
    pub to: u16,
}

impl Window {
    /// Whether the local time `minute` of a day `day` falls in it.
    pub fn contains(&self, day: Weekday, minute: u16) -> bool {
        let on = |d: Weekday| self.days & (1 << (d.to_monday_zero_offset() as u8)) != 0;
        if self.from < self.to {
            on(day) && minute >= self.from && minute < self.to
        } else {
            (on(day) && minute >= self.from) || (on(day.previous()) && minute < self.to)
        }
    }

    /// `mon-fri 21:00-09:00` style, for decisions.
    pub fn describe(&self) -> String {
        format!(
            "days {:07b} {:02}:{:02}-{:02}:{:02}",
            self.days.reverse_bits() >> 1,
            self.from / 60,
            self.from % 60,
            self.to / 60,
            self.to % 60
        )
    }
}

/// A frequency cap: at most `max` calls to one number within `window_secs`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cap {
    pub window_secs: u64,
    pub max: u32,
}

impl Cap {
    /// The window as written in the config: `1d`, `12h`, `90m` or `45s`.
    pub fn label(&self) -> String {
        let s = self.window_secs;
        match s {
            _ if s % 86_400 == 0 => format!("{}d", s / 86_400),
            _ if s % 3_600 == 0 => format!("{}h", s / 3_600),
            _ if s % 60 == 0 => format!("{}m", s / 60),
            _ => format!("{s}s"),
        }
    }
}

/// A tenant's rules.
#[derive(Clone, Debug)]
pub struct TenantRules {
    pub tags: Vec<String>,
    pub zone: TimeZone,
    /// Callee zones by number prefix, longest first.
    pub zones: Vec<(String, TimeZone)>,
    pub holidays: HashSet<Date>,
    pub windows: Vec<Window>,
    pub caps: Vec<Cap>,
}

impl Default for TenantRules {
    fn default() -> Self {
        TenantRules {
            tags: Vec::new(),
            zone: TimeZone::UTC,
            zones: Vec::new(),
            holidays: HashSet::new(),
            windows: Vec::new(),
            caps: Vec::new(),
        }
    }
}

impl TenantRules {
    /// The callee's zone: the longest `zones` prefix of the number, else the tenant's.
    pub fn callee_zone(&self, number: &str) -> &TimeZone {
        self.zones
            .iter()
            .find(|(p, _)| number.starts_with(p.as_str()))
            .map_or(&self.zone, |(_, z)| z)
    }
}

/// The rules of the config file: per tenant, and the caps per route (trunk group).
#[derive(Clone, Debug, Default)]
pub struct Rules {
    pub tenants: HashMap<String, TenantRules>,
    pub routes: HashMap<String, Vec<Cap>>,
}

impl Rules {
    /// The rules of a validated `[risk]` section (entries that do not parse are left out:
    /// `Config::validate` has refused them already).
    pub fn from_config(config: &RiskConfig) -> Rules {
        Rules {
            tenants: config
                .tenants
                .iter()
                .map(|t| (t.tenant.clone(), tenant_rules(t)))
                .collect(),
            routes: config
                .routes
                .iter()
                .map(|r| (r.route.clone(), caps(&r.caps)))
                .collect(),
        }
    }
}

fn caps(configs: &[RiskCapConfig]) -> Vec<Cap> {
    configs
        .iter()
        .filter_map(|c| {
            Some(Cap {
                window_secs: crate::config::parse_risk_window(&c.window).ok()?,
                max: c.max,
            })
        })
        .collect()
}

fn tenant_rules(t: &RiskTenantConfig) -> TenantRules {
    let zone = |name: &str| TimeZone::get(name).ok();
    let mut zones: Vec<(String, TimeZone)> = t
        .zones
        .iter()
        .filter_map(|(p, z)| Some((p.trim_start_matches('+').to_string(), zone(z)?)))
        .collect();
    zones.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
    TenantRules {
        tags: t.tags.clone(),
        zone: t
            .time_zone
            .as_deref()
            .and_then(zone)
            .unwrap_or(TimeZone::UTC),
        zones,
        holidays: t.holidays.iter().filter_map(|d| d.parse().ok()).collect(),
        windows: t.forbidden.iter().filter_map(|w| w.window().ok()).collect(),
        caps: caps(&t.caps),
    }
}

/// Who is calling what, for [`screen`].
#[derive(Clone, Copy, Debug)]
pub struct Subject<'a> {
    /// The calling tenant (None: a trusted peer or a trunk's transit: platform rules only).
    pub tenant: Option<&'a str>,
    /// The number as it goes out (after the route's strip and prepend), normalized.
    pub number: &'a str,
    /// The callee's zone when the caller knows it (a campaign's row); else the tenant's
    /// `zones`, else its `time_zone`.
    pub zone: Option<&'a TimeZone>,
}

/// The list and time rules (everything but the caps, which need counts): a refusal, or
/// the allowing decision (`None` or `Whitelisted`).
pub fn screen(
    lists: &Lists,
    rules: Option<&TenantRules>,
    subject: Subject<'_>,
    now: Timestamp,
) -> Decision {
    let number = subject.number;
    // 1. The platform's lists.
    let mut whitelisted: Option<String> = None;
    if let Some(hit) = lists.matches(&Scope::Platform, ListKind::Black, number) {
        match lists.matches(&Scope::Platform, ListKind::White, number) {
            Some(w) => whitelisted = Some(format!("platform white {}", w.text())),
            None => {
                return Decision::refuse(
                    Rule::PlatformBlacklist,
                    format!("platform black {}", hit.text()),
                )
            }
        }
    }
    let Some(tenant) = subject.tenant else {
        return allowed(whitelisted);
    };
    // 2. Tags' and the tenant's lists: a white entry of any of them overrides all of them.
    let tags: &[String] = rules.map_or(&[], |r| &r.tags);
    let own = Scope::Tenant(tenant.to_string());
    let tag_scopes: Vec<Scope> = tags.iter().map(|t| Scope::Tag(t.clone())).collect();
    let black = tag_scopes
        .iter()
        .find_map(|s| Some((s, lists.matches(s, ListKind::Black, number)?)))
        .map(|(s, e)| {
            (
                Rule::TagBlacklist,
                format!("tag {} black {}", s.owner(), e.text()),
            )
        })
        .or_else(|| {
            lists
                .matches(&own, ListKind::Black, number)
                .map(|e| (Rule::TenantBlacklist, format!("tenant black {}", e.text())))
        });
    if let Some((rule, detail)) = black {
        let white = lists
            .matches(&own, ListKind::White, number)
            .map(|e| format!("tenant white {}", e.text()))
            .or_else(|| {
                tag_scopes.iter().find_map(|s| {
                    let e = lists.matches(s, ListKind::White, number)?;
                    Some(format!("tag {} white {}", s.owner(), e.text()))
                })
            });
        match white {
            Some(w) => whitelisted = Some(format!("{detail}, overridden by {w}")),
            None => return Decision::refuse(rule, detail),
        }
    }
    // 3. Holidays and forbidden windows, in the callee's time zone.
    if let Some(r) = rules {
        let zone = subject.zone.unwrap_or_else(|| r.callee_zone(number));
        let local = zone.to_datetime(now);
        let date = local.date();
        if r.holidays.contains(&date) {
            return Decision::refuse(Rule::Holiday, format!("{date} ({})", zone_name(zone)));
        }
        let minute = (local.hour() as u16) * 60 + local.minute() as u16;
        if let Some(w) = r
            .windows
            .iter()
            .find(|w| w.contains(local.weekday(), minute))
        {
            return Decision::refuse(
                Rule::ForbiddenWindow,
                format!(
                    "{} at {:02}:{:02} {:?} ({})",
                    w.describe(),
                    local.hour(),
                    local.minute(),
                    local.weekday(),
                    zone_name(zone)
                ),
            );
        }
    }
    allowed(whitelisted)
}

fn zone_name(zone: &TimeZone) -> &str {
    zone.iana_name().unwrap_or("fixed offset")
}

fn allowed(whitelisted: Option<String>) -> Decision {
    match whitelisted {
        Some(w) => Decision::allow(Rule::Whitelisted, w),
        None => Decision::allow(Rule::None, ""),
    }
}

/// Which attempts a cap counts: the tenant's to the number, or all through the route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CapScope {
    Tenant,
    Route,
}

/// The caps that apply to one call, in order (the tenant's, then the route's).
pub fn applicable_caps(
    rules: &Rules,
    tenant: Option<&str>,
    route: Option<&str>,
) -> Vec<(CapScope, Cap)> {
    let mut out = Vec::new();
    if let Some(r) = tenant.and_then(|t| rules.tenants.get(t)) {
        out.extend(r.caps.iter().map(|c| (CapScope::Tenant, *c)));
    }
    if let Some(c) = route.and_then(|r| rules.routes.get(r)) {
        out.extend(c.iter().map(|c| (CapScope::Route, *c)));
    }
    out
}

/// The caps' verdict given how many attempts each counted (same order): the first cap
/// already reached refuses.
pub fn cap_verdict(caps: &[(CapScope, Cap)], counts: &[u64]) -> Option<Decision> {
    caps.iter().zip(counts).find_map(|((scope, cap), &n)| {
        (n >= u64::from(cap.max)).then(|| {
            let rule = match scope {
                CapScope::Tenant => Rule::TenantCap,
                CapScope::Route => Rule::RouteCap,
            };
            Decision::refuse(
                rule,
                format!("{n} calls in {} (at most {})", cap.label(), cap.max),
            )
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn lists(entries: &[(Scope, ListKind, &str)]) -> Lists {
        let mut l = Lists::default();
        for (s, k, e) in entries {
            l.get_mut(s.clone())
                .list_mut(*k)
                .insert(&Entry::parse(e).unwrap());
        }
        l
    }

    fn subject<'a>(tenant: Option<&'a str>, number: &'a str) -> Subject<'a> {
        Subject {
            tenant,
            number,
            zone: None,
        }
    }

    const NOON: &str = "2026-12-09T12:00:00Z"; // a Wednesday

    #[test]
    fn entries_parse_and_normalize() {
        assert_eq!(
            Entry::parse("+4420*").unwrap(),
            Entry::Prefix("4420".into())
        );
        assert_eq!(
            Entry::parse(" 4420794 ").unwrap(),
            Entry::Number("4420794".into())
        );
        for bad in ["", "*", "+", "44 20", "44a", "4*4", &"1".repeat(33)] {
            assert!(Entry::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(normalize("+4420"), Some("4420"));
        assert_eq!(normalize("*72#"), Some("*72#"));
        assert_eq!(normalize(""), None);
        assert_eq!(normalize("44 20"), None);
    }

    #[test]
    fn a_number_matches_itself_or_its_longest_prefix() {
        let mut l = NumberList::default();
        for e in ["44*", "4420*", "4420794600"] {
            assert!(l.insert(&Entry::parse(e).unwrap()));
        }
        assert!(!l.insert(&Entry::parse("44*").unwrap()));
        assert_eq!(
            l.matches("4420794600"),
            Some(Entry::Number("4420794600".into()))
        );
        assert_eq!(l.matches("4420794601"), Some(Entry::Prefix("4420".into())));
        assert_eq!(l.matches("4413"), Some(Entry::Prefix("44".into())));
        assert_eq!(l.matches("33"), None);
        assert_eq!(l.len(), 3);
        assert!(l.remove(&Entry::parse("4420*").unwrap()));
        assert_eq!(l.matches("4420794601"), Some(Entry::Prefix("44".into())));
    }

    #[test]
    fn a_tenant_white_entry_overrides_its_black_list_but_not_the_platforms() {
        let t = Scope::Tenant("acme".into());
        let l = lists(&[
            (Scope::Platform, ListKind::Black, "900*"),
            (t.clone(), ListKind::Black, "44*"),
            (t.clone(), ListKind::White, "4420*"),
            (t.clone(), ListKind::White, "900123"),
        ]);
        let now = ts(NOON);
        let d = screen(&l, None, subject(Some("acme"), "4413"), now);
        assert_eq!((d.allow, d.rule), (false, Rule::TenantBlacklist));
        assert_eq!(d.detail, "tenant black 44*");
        let d = screen(&l, None, subject(Some("acme"), "44201"), now);
        assert_eq!((d.allow, d.rule), (true, Rule::Whitelisted));
        // The platform's black list wins over a tenant's white entry.
        let d = screen(&l, None, subject(Some("acme"), "900123"), now);
        assert_eq!((d.allow, d.rule), (false, Rule::PlatformBlacklist));
        // Another tenant is not bound by acme's lists; the platform's binds everyone,
        // transit without a tenant too.
        assert!(screen(&l, None, subject(Some("other"), "4413"), now).allow);
        assert!(!screen(&l, None, subject(None, "9001"), now).allow);
        assert_eq!(
            screen(&l, None, subject(None, "4413"), now).rule,
            Rule::None
        );
    }

    #[test]
    fn platform_white_overrides_platform_black_and_tags_apply_to_their_tenants() {
        let l = lists(&[
            (Scope::Platform, ListKind::Black, "900*"),
            (Scope::Platform, ListKind::White, "9005*"),
            (Scope::Tag("finance".into()), ListKind::Black, "33*"),
            (Scope::Tag("finance".into()), ListKind::White, "331*"),
            (Scope::Tenant("acme".into()), ListKind::White, "332*"),
        ]);
        let rules = TenantRules {
            tags: vec!["finance".into()],
            ..TenantRules::default()
        };
        let now = ts(NOON);
        assert!(screen(&l, None, subject(Some("x"), "90051"), now).allow);
        let d = screen(&l, Some(&rules), subject(Some("acme"), "339"), now);
        assert_eq!((d.allow, d.rule), (false, Rule::TagBlacklist));
        assert_eq!(d.detail, "tag finance black 33*");
        // A tag's own white entry, and the tenant's, release a tag's black entry.
        assert!(screen(&l, Some(&rules), subject(Some("acme"), "3311"), now).allow);
        assert!(screen(&l, Some(&rules), subject(Some("acme"), "3321"), now).allow);
        // A tenant without the tag is not bound by it.
        assert!(screen(&l, None, subject(Some("acme"), "339"), now).allow);
    }

    fn window(days: u8, from: &str, to: &str) -> Window {
        crate::config::RiskWindowConfig {
            days: (0..7)
                .filter(|i| days & (1 << i) != 0)
                .map(|i| ["mon", "tue", "wed", "thu", "fri", "sat", "sun"][i].to_string())
                .collect(),
            from: from.into(),
            to: to.into(),
        }
        .window()
        .unwrap()
    }

    #[test]
    fn windows_wrap_over_midnight_into_the_next_day() {
        // Mon-Fri 21:00-09:00: Friday 22:00 and Saturday 08:00 are in, Saturday 22:00 not.
        let w = window(0b0011111, "21:00", "09:00");
        assert!(w.contains(Weekday::Friday, 22 * 60));
        assert!(w.contains(Weekday::Saturday, 8 * 60 + 59));
        assert!(!w.contains(Weekday::Saturday, 9 * 60));
        assert!(!w.contains(Weekday::Saturday, 22 * 60));
        assert!(!w.contains(Weekday::Monday, 8 * 60)); // Sunday night is not listed
        let all_day = window(0b1100000, "00:00", "24:00");
        assert!(all_day.contains(Weekday::Sunday, 0));
        assert!(all_day.contains(Weekday::Sunday, 23 * 60 + 59));
        assert!(!all_day.contains(Weekday::Monday, 0));
    }

    #[test]
    fn windows_and_holidays_are_in_the_callees_zone() {
        let rules = TenantRules {
            zone: TimeZone::get("Europe/London").unwrap(),
            zones: vec![
                ("1".into(), TimeZone::get("America/New_York").unwrap()),
                ("86".into(), TimeZone::get("Asia/Shanghai").unwrap()),
            ],
            windows: vec![window(0b1111111, "21:00", "09:00")],
            holidays: ["2026-12-25".parse().unwrap()].into(),
            ..TenantRules::default()
        };
        let l = Lists::default();
        let at = |t: &str, n: &str| screen(&l, Some(&rules), subject(Some("acme"), n), ts(t));
        // 13:30 UTC: London 13:30 (fine), New York 08:30 (too early), Shanghai 21:30 (too late).
        let t = "2026-12-09T13:30:00Z";
        assert!(at(t, "4420").allow);
        let ny = at(t, "12125550100");
        assert_eq!((ny.allow, ny.rule), (false, Rule::ForbiddenWindow));
        assert!(ny.detail.contains("America/New_York"), "{}", ny.detail);
        assert_eq!(at(t, "8610").rule, Rule::ForbiddenWindow);
        // 02:00 UTC: Shanghai 10:00 is fine, London 02:00 is not.
        assert!(at("2026-12-09T02:00:00Z", "8610").allow);
        assert!(!at("2026-12-09T02:00:00Z", "4420").allow);
        // Christmas Day in London; in New York it is still the 24th at 03:00 UTC.
        let xmas = at("2026-12-25T12:00:00Z", "4420");
        assert_eq!((xmas.allow, xmas.rule), (false, Rule::Holiday));
        let eve = at("2026-12-25T03:00:00Z", "12125550100");
        assert_eq!(eve.rule, Rule::ForbiddenWindow); // 22:00 on the 24th: the window, not the holiday
        assert!(at("2026-12-24T16:00:00Z", "12125550100").allow);
        // A zone the caller knows (a campaign row's) wins over the prefixes.
        let tokyo = TimeZone::get("Asia/Tokyo").unwrap();
        let s = Subject {
            tenant: Some("acme"),
            number: "12125550100",
            zone: Some(&tokyo),
        };
        assert!(screen(&l, Some(&rules), s, ts("2026-12-09T03:00:00Z")).allow);
        // Across a daylight-saving change: 13:30 UTC is 09:30 in New York in July.
        assert!(at("2026-07-08T13:30:00Z", "12125550100").allow);
    }

    #[test]
    fn caps_refuse_at_their_maximum_over_several_windows() {
        let cap = |window_secs, max, _label: &str| Cap { window_secs, max };
        let rules = Rules {
            tenants: HashMap::from([(
                "acme".to_string(),
                TenantRules {
                    caps: vec![cap(86_400, 1, "1d"), cap(7 * 86_400, 3, "7d")],
                    ..TenantRules::default()
                },
            )]),
            routes: HashMap::from([("uk".to_string(), vec![cap(30 * 86_400, 5, "30d")])]),
        };
        let caps = applicable_caps(&rules, Some("acme"), Some("uk"));
        assert_eq!(caps.len(), 3);
        assert_eq!(cap_verdict(&caps, &[0, 2, 4]), None);
        let d = cap_verdict(&caps, &[1, 1, 1]).unwrap();
        assert_eq!((d.allow, d.rule), (false, Rule::TenantCap));
        assert_eq!(d.detail, "1 calls in 1d (at most 1)");
        assert_eq!(
            cap_verdict(&caps, &[0, 3, 0]).unwrap().rule,
            Rule::TenantCap
        );
        assert_eq!(cap_verdict(&caps, &[0, 0, 5]).unwrap().rule, Rule::RouteCap);
        assert!(applicable_caps(&rules, Some("other"), None).is_empty());
        assert_eq!(applicable_caps(&rules, None, Some("uk")).len(), 1);
    }
}
