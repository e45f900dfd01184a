//! Trunk decisions: the pure logic a trunk actor and a trunk group run. No tokio, no actors:
//! time is passed in (milliseconds), so every rule is tested with a fixed clock.
//!
//! - [`classify`]: a B-leg's final result as answered, the callee's final word (relayed at
//!   once, never retried elsewhere) or a failover cause (try the next trunk).
//! - [`CostTable`]: per-minute rates by destination prefix (longest match) with billing
//!   increments.
//! - [`Window`]: a trunk's live statistics over the last few minutes and the last N calls
//!   (ASR, NER, PDD, ACD, short calls, SIP statuses, CPS, a quality score).
//! - [`Health`]: up/down with hysteresis from OPTIONS probes and failed calls.
//! - [`AsrAlarm`], [`FailureStreakAlarm`], [`SaturationAlarm`]: alarm edges (raise once per
//!   excursion, clear once).
//! - [`order`]: a route policy's ordering of a trunk group for one dialled number.

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt::Write as _;
use std::sync::Arc;

// ---------------------------------------------------------------------------------------------
// Classification of a B-leg's result
// ---------------------------------------------------------------------------------------------

/// Why a call moves on to the next trunk of its group.
///
/// The first group comes from the carrier's answer (or its silence); the last three are
/// decided before anything is sent ([`FailoverCause::is_pre_send`]) and also name why
/// [`order`] left a trunk out of a [`Plan`].
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub enum FailoverCause {
    /// 500 Server Internal Error.
    ServerInternalError,
    /// 502 Bad Gateway.
    BadGateway,
    /// 503 Service Unavailable.
    ServiceUnavailable,
    /// 504 Server Time-out.
    ServerTimeout,
    /// Any other 5xx (501, 505, 513, 580…): this carrier cannot handle the request, another
    /// one may.
    OtherServerError,
    /// 408 Request Timeout from the carrier.
    RequestTimeout,
    /// A final 401/407: the carrier refuses our credentials (or we have none for it). The
    /// callee had no say, so another carrier may complete the call.
    AuthRejected,
    /// No final response before the INVITE timer fired (Timer B or the failover timer).
    Timeout,
    /// Nothing usable came back and no timer fired: a transport error (ICMP unreachable, TCP
    /// reset) or only provisional responses before the leg ended.
    NoResponse,
    /// A status outside 100–699.
    InvalidResponse,
    /// The trunk is marked down ([`Health`]).
    TrunkDown,
    /// Every channel of the trunk is in use.
    ChannelsFull,
    /// The trunk's calls-per-second budget for the current second is spent.
    CpsFull,
}

impl FailoverCause {
    /// A short stable name for logs, CDRs and metric labels.
    pub fn label(self) -> &'static str {
        match self {
            FailoverCause::ServerInternalError => "500",
            FailoverCause::BadGateway => "502",
            FailoverCause::ServiceUnavailable => "503",
            FailoverCause::ServerTimeout => "504",
            FailoverCause::OtherServerError => "5xx",
            FailoverCause::RequestTimeout => "408",
            FailoverCause::AuthRejected => "auth-rejected",
            FailoverCause::Timeout => "timeout",
            FailoverCause::NoResponse => "no-response",
            FailoverCause::InvalidResponse => "invalid-response",
            FailoverCause::TrunkDown => "trunk-down",
            FailoverCause::ChannelsFull => "channels-full",
            FailoverCause::CpsFull => "cps-full",
        }
    }

    /// Whether the cause is decided before an INVITE is sent (trunk down, channels or CPS
    /// full). Such attempts never reached the carrier, so they are not trunk statistics.
    pub fn is_pre_send(self) -> bool {
        matches!(
            self,
            FailoverCause::TrunkDown | FailoverCause::ChannelsFull | FailoverCause::CpsFull
        )
    }

    /// Whether the carrier (or the path to it) stayed silent: these cost the caller the
    /// whole failover timer, so the quality score weighs them double.
    pub fn is_silence(self) -> bool {
        matches!(self, FailoverCause::Timeout | FailoverCause::NoResponse)
    }
}

/// What a B-leg's result means for the call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Outcome {
    /// 2xx: the callee answered.
    Answered,
    /// The callee's (or the destination network's) final word: relay it to the caller at
    /// once and never try another trunk (486 busy, 603 decline, 404 unknown number…).
    CalleeFinal,
    /// The trunk failed the call: try the next trunk of the group.
    Failover(FailoverCause),
}

/// Classifies a B-leg's result.
///
/// `status` is the final response's status (a provisional 1xx counts as none);
/// `timed_out` says the INVITE timer fired before a final response. A final status wins over
/// `timed_out`.
///
/// Decisions (issue 7: fail over on 503, 500, 408, timeouts and silence; never on a callee's
/// answer):
/// - 2xx: [`Outcome::Answered`].
/// - 3xx: [`Outcome::CalleeFinal`]: a redirect is the destination's word; following it is
///   the caller's business, not another carrier's.
/// - 408: failover. 401/407 (final, i.e. after any challenge was answered): failover, the
///   carrier refused us, not the callee. Every other 4xx — 404, 480, 484, 486, 487, 488, and
///   403 too, which carriers send for barred destinations — is [`Outcome::CalleeFinal`].
/// - 5xx: all failover (500, 502, 503, 504 with their own cause; the rest as
///   [`FailoverCause::OtherServerError`]): a server failure belongs to this carrier's path.
/// - 6xx: [`Outcome::CalleeFinal`] (600 busy everywhere, 603 decline, 604, 606).
/// - no final status: [`FailoverCause::Timeout`] if the timer fired, else
///   [`FailoverCause::NoResponse`]. Statuses of 700 and above: failover, invalid response.
pub fn classify(status: Option<u16>, timed_out: bool) -> Outcome {
    let final_status = status.filter(|&s| s >= 200);
    let Some(s) = final_status else {
        return Outcome::Failover(if timed_out {
            FailoverCause::Timeout
        } else {
            FailoverCause::NoResponse
        });
    };
    match s {
        200..=299 => Outcome::Answered,
        300..=399 => Outcome::CalleeFinal,
        408 => Outcome::Failover(FailoverCause::RequestTimeout),
        401 | 407 => Outcome::Failover(FailoverCause::AuthRejected),
        400..=499 => Outcome::CalleeFinal,
        500..=599 => Outcome::Failover(match s {
            500 => FailoverCause::ServerInternalError,
            502 => FailoverCause::BadGateway,
            503 => FailoverCause::ServiceUnavailable,
            504 => FailoverCause::ServerTimeout,
            _ => FailoverCause::OtherServerError,
        }),
        600..=699 => Outcome::CalleeFinal,
        _ => Outcome::Failover(FailoverCause::InvalidResponse),
    }
}

/// Whether a callee-final status is a *user* outcome for the network effectiveness ratio:
/// the network delivered the call and the user (or the caller) ended it — 480 unavailable,
/// 486 busy, 487 cancelled by the caller, 600 busy everywhere, 603 declined (ITU-T E.425's
/// busy / no answer / terminal reject).
///
/// 404 and 484 are relayed as callee-final but are *not* counted as effective: a carrier
/// that cannot route a valid number often says 404, and counting that as success would hide
/// the fault.
pub fn is_user_outcome(status: u16) -> bool {
    matches!(status, 480 | 486 | 487 | 600 | 603)
}

// ---------------------------------------------------------------------------------------------
// Cost tables
// ---------------------------------------------------------------------------------------------

/// Billing increment when a cost entry names none: whole minutes ("60/60").
pub const DEFAULT_INCREMENT_SECS: u32 = 60;

/// The call length least-cost routing prices a trunk at ([`order`] with
/// [`Policy::LeastCost`]), so that billing increments count: at 2 minutes a 0.011/min trunk
/// billed per second beats a 0.010/min one billed per started minute only for calls far from
/// whole minutes, which is the point.
pub const REFERENCE_CALL_SECS: u64 = 120;

/// One row of a cost table as written in the configuration.
#[derive(Clone, Debug, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CostEntry {
    /// Destination prefix, digits only (a leading `+` is ignored); `""` matches everything.
    pub prefix: String,
    /// Price per minute in the carrier's currency units (e.g. `0.012`), as f64: costs are
    /// compared and reported, never summed into an invoice here.
    pub per_minute: f64,
    /// Billing increment in seconds after the first block (60 for "60/60", 6 for "30/6",
    /// 1 for "1/1"); defaults to [`DEFAULT_INCREMENT_SECS`].
    #[serde(default = "default_increment")]
    pub increment_secs: u32,
    /// The first billed block in seconds (30 for "30/6"); 0 when the first block is one
    /// increment.
    #[serde(default)]
    pub min_secs: u32,
}

fn default_increment() -> u32 {
    DEFAULT_INCREMENT_SECS
}

/// The price of calls to one destination prefix.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rate {
    /// Price per minute (currency units).
    pub per_minute: f64,
    /// Billing increment in seconds (at least 1).
    pub increment_secs: u32,
    /// First billed block in seconds (0: one increment).
    pub min_secs: u32,
}

impl Rate {
    /// The seconds billed for a call of `duration_secs`: 0 for 0 (unanswered calls are
    /// free); otherwise at least `min_secs`, and beyond it rounded up to whole increments.
    /// "60/60": 1 s → 60, 61 s → 120. "30/6": 10 s → 30, 31 s → 36. "1/1": exact.
    pub fn billable_secs(&self, duration_secs: u64) -> u64 {
        if duration_secs == 0 {
            return 0;
        }
        let min = u64::from(self.min_secs);
        if duration_secs <= min {
            return min;
        }
        let inc = u64::from(self.increment_secs.max(1));
        min + (duration_secs - min).div_ceil(inc) * inc
    }

    /// The price of a call of `duration_secs` (see [`Rate::billable_secs`]).
    pub fn cost(&self, duration_secs: u64) -> f64 {
        self.billable_secs(duration_secs) as f64 / 60.0 * self.per_minute
    }
}

/// Why a cost table was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CostError {
    /// A prefix holds something other than digits (after an optional leading `+`).
    #[error("cost table: prefix {0:?} is not digits")]
    BadPrefix(String),
    /// The same prefix twice: which rate applies would be an accident of order.
    #[error("cost table: prefix {0:?} appears twice")]
    DuplicatePrefix(String),
    /// A negative, infinite or NaN rate.
    #[error("cost table: prefix {0:?} has an invalid rate")]
    BadRate(String),
    /// A zero billing increment.
    #[error("cost table: prefix {0:?} has a zero billing increment")]
    ZeroIncrement(String),
}

/// Rates by destination prefix, looked up by longest match. Deserializes from a list of
/// [`CostEntry`] (validated).
#[derive(Clone, Debug, Default, PartialEq, serde::Deserialize)]
#[serde(try_from = "Vec<CostEntry>")]
pub struct CostTable {
    rates: HashMap<String, Rate>,
    /// The longest prefix, so a lookup tries at most this many + 1 prefixes.
    max_len: usize,
}

impl CostTable {
    /// Builds a table, refusing bad prefixes, duplicates, bad rates and zero increments.
    pub fn new(entries: Vec<CostEntry>) -> Result<CostTable, CostError> {
        let mut rates = HashMap::with_capacity(entries.len());
        let mut max_len = 0;
        for e in entries {
            let prefix = e.prefix.strip_prefix('+').unwrap_or(&e.prefix).to_string();
            if !prefix.bytes().all(|b| b.is_ascii_digit()) {
                return Err(CostError::BadPrefix(e.prefix));
            }
            if !e.per_minute.is_finite() || e.per_minute < 0.0 {
                return Err(CostError::BadRate(e.prefix));
            }
            if e.increment_secs == 0 {
                return Err(CostError::ZeroIncrement(e.prefix));
            }
            max_len = max_len.max(prefix.len());
            let rate = Rate {
                per_minute: e.per_minute,
                increment_secs: e.increment_secs,
                min_secs: e.min_secs,
            };
            if rates.insert(prefix, rate).is_some() {
                return Err(CostError::DuplicatePrefix(e.prefix));
            }
        }
        Ok(CostTable { rates, max_len })
    }

    /// Number of prefixes.
    pub fn len(&self) -> usize {
        self.rates.len()
    }

    /// Whether the table has no prefix at all.
    pub fn is_empty(&self) -> bool {
        self.rates.is_empty()
    }

    /// The rate of the longest prefix of `number` (a leading `+` is ignored), with that
    /// prefix. O(length of the longest prefix) hash lookups.
    pub fn lookup_prefix(&self, number: &str) -> Option<(&str, &Rate)> {
        let number = number.strip_prefix('+').unwrap_or(number);
        let longest = self.max_len.min(number.len());
        (0..=longest).rev().find_map(|len| {
            // `get` is None off a char boundary: such a prefix cannot be all digits anyway.
            let head = number.get(..len)?;
            self.rates.get_key_value(head).map(|(k, r)| (k.as_str(), r))
        })
    }

    /// The rate of the longest prefix of `number`.
    pub fn lookup(&self, number: &str) -> Option<&Rate> {
        self.lookup_prefix(number).map(|(_, r)| r)
    }

    /// The price of a call of `duration_secs` to `number` (None when no prefix matches).
    /// Callers holding milliseconds round up first: `duration_ms.div_ceil(1000)`.
    pub fn cost(&self, number: &str, duration_secs: u64) -> Option<f64> {
        self.lookup(number).map(|r| r.cost(duration_secs))
    }
}

impl TryFrom<Vec<CostEntry>> for CostTable {
    type Error = CostError;

    fn try_from(entries: Vec<CostEntry>) -> Result<Self, Self::Error> {
        CostTable::new(entries)
    }
}

// ---------------------------------------------------------------------------------------------
// Sliding-window statistics
// ---------------------------------------------------------------------------------------------

/// One finished call attempt through a trunk (the INVITE was sent).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CallRecord {
    /// [`classify`]'s verdict.
    pub outcome: Outcome,
    /// Post-dial delay: INVITE sent → first 180/183 (or the answer if no ringing came).
    pub pdd_ms: Option<u64>,
    /// Talk time of an answered call (answer → BYE); ignored for unanswered calls.
    pub duration_ms: Option<u64>,
    /// Final SIP status, if any.
    pub status: Option<u16>,
}

/// Tuning of a [`Window`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WindowConfig {
    /// Length of the time window (default 5 minutes).
    pub time_window_ms: u64,
    /// The time window is kept as this many buckets of aggregates (default 30, i.e. 10 s
    /// each for 5 minutes): memory is fixed whatever the call rate, and a call leaves the
    /// window within one bucket of its age passing `time_window_ms`.
    pub buckets: u32,
    /// Length of the count window: the last N calls (default 100).
    pub count_window: usize,
    /// Answered calls shorter than this are short calls (default 10 s).
    pub short_call_ms: u64,
    /// Mean PDD at which the PDD part of the quality score reaches 0 (default 10 s).
    pub pdd_bad_ms: u64,
    /// Most attempts remembered for the CPS count (default 10,000: far above any trunk's
    /// rate; the bound only keeps memory finite).
    pub cps_cap: usize,
}

impl Default for WindowConfig {
    fn default() -> Self {
        WindowConfig {
            time_window_ms: 300_000,
            buckets: 30,
            count_window: 100,
            short_call_ms: 10_000,
            pdd_bad_ms: 10_000,
            cps_cap: 10_000,
        }
    }
}

/// Media quality reported from RTCP once media is anchored (the hook for the quality score).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MediaQuality {
    /// Packet loss fraction, 0..=1.
    pub loss: f64,
    /// Interarrival jitter in ms.
    pub jitter_ms: f64,
    /// Mean opinion score estimate, 1..=4.5 (E-model; it already accounts for loss and
    /// jitter, so the quality score uses it alone and keeps the others for reports).
    pub mos: f64,
}

/// Aggregates over a set of calls. Counts and sums are exact integers, so adding and
/// removing calls never drifts; the ratios are computed on demand.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Stats {
    /// Calls sent to the trunk.
    pub attempts: u64,
    /// Calls answered.
    pub answered: u64,
    /// Callee-final outcomes (relayed, not failed over).
    pub callee_final: u64,
    /// The callee-final outcomes that count as network-effective ([`is_user_outcome`]).
    pub user_final: u64,
    /// Calls that ended in a failover cause.
    pub failovers: u64,
    /// Of those, the silent ones ([`FailoverCause::is_silence`]).
    pub silent: u64,
    /// Sum and count of the PDDs recorded.
    pub pdd_sum_ms: u64,
    pub pdd_count: u64,
    /// Sum and count of the durations of answered calls.
    pub duration_sum_ms: u64,
    pub duration_count: u64,
    /// Answered calls shorter than the window's `short_call_ms`.
    pub short_calls: u64,
    /// Final SIP status → number of calls.
    pub statuses: BTreeMap<u16, u64>,
    /// Failover cause → number of calls.
    pub causes: BTreeMap<FailoverCause, u64>,
}

fn ratio(num: u64, den: u64) -> Option<f64> {
    (den > 0).then(|| num as f64 / den as f64)
}

fn bump<K: Ord>(map: &mut BTreeMap<K, u64>, key: K, add: bool, by: u64) {
    if add {
        *map.entry(key).or_insert(0) += by;
    } else if let Some(n) = map.get_mut(&key) {
        *n = n.saturating_sub(by);
        if *n == 0 {
            map.remove(&key);
        }
    }
}

impl Stats {
    /// Answer-seizure ratio: answered / attempts.
    pub fn asr(&self) -> Option<f64> {
        ratio(self.answered, self.attempts)
    }

    /// The ASR when at least `min_calls` calls back it (what routing and alarms should use:
    /// three calls say nothing about a trunk).
    pub fn asr_if(&self, min_calls: u64) -> Option<f64> {
        if self.attempts >= min_calls.max(1) {
            self.asr()
        } else {
            None
        }
    }

    /// Network effectiveness ratio: (answered + user outcomes) / attempts.
    pub fn ner(&self) -> Option<f64> {
        ratio(self.answered + self.user_final, self.attempts)
    }

    /// Mean post-dial delay over the calls that reported one.
    pub fn mean_pdd_ms(&self) -> Option<f64> {
        ratio(self.pdd_sum_ms, self.pdd_count)
    }

    /// Average call duration (ACD) of answered calls.
    pub fn acd_ms(&self) -> Option<f64> {
        ratio(self.duration_sum_ms, self.duration_count)
    }

    /// Share of answered calls (with a duration) that were short.
    pub fn short_call_ratio(&self) -> Option<f64> {
        ratio(self.short_calls, self.duration_count)
    }

    /// Quality score 0..=100, None without any attempt. The score rewards a short PDD and
    /// few trunk failures:
    /// - PDD part: `100 * (1 - mean_pdd / pdd_bad_ms)`, clamped to 0..=100; 0 when no call
    ///   got as far as ringing.
    /// - failure part: `100 * (1 - (failovers + silent) / attempts)`, clamped: a timeout or
    ///   silence counts twice because it also costs the caller the failover timer.
    /// - without media: the mean of the two; with media (RTCP): 35 % PDD, 35 % failures and
    ///   30 % `100 * (mos - 1) / 3.5` (clamped).
    pub fn quality_score(&self, pdd_bad_ms: u64, media: Option<&MediaQuality>) -> Option<f64> {
        if self.attempts == 0 {
            return None;
        }
        let pdd = match self.mean_pdd_ms() {
            Some(p) => 100.0 * (1.0 - p / pdd_bad_ms.max(1) as f64).clamp(0.0, 1.0),
            None => 0.0,
        };
        let failed = (self.failovers + self.silent) as f64 / self.attempts as f64;
        let fail = 100.0 * (1.0 - failed.clamp(0.0, 1.0));
        let score = match media {
            None => 0.5 * pdd + 0.5 * fail,
            Some(m) => {
                let mos = 100.0 * ((m.mos - 1.0) / 3.5).clamp(0.0, 1.0);
                0.35 * pdd + 0.35 * fail + 0.3 * mos
            }
        };
        Some(score.clamp(0.0, 100.0))
    }

    /// Adds (`add`) or removes one call, `short_call_ms` deciding what a short call is.
    fn apply(&mut self, rec: &CallRecord, short_call_ms: u64, add: bool) {
        fn step(n: &mut u64, add: bool) {
            *n = if add { *n + 1 } else { n.saturating_sub(1) };
        }
        fn step_by(n: &mut u64, by: u64, add: bool) {
            *n = if add { *n + by } else { n.saturating_sub(by) };
        }
        step(&mut self.attempts, add);
        match rec.outcome {
            Outcome::Answered => {
                step(&mut self.answered, add);
                if let Some(d) = rec.duration_ms {
                    step_by(&mut self.duration_sum_ms, d, add);
                    step(&mut self.duration_count, add);
                    if d < short_call_ms {
                        step(&mut self.short_calls, add);
                    }
                }
            }
            Outcome::CalleeFinal => {
                step(&mut self.callee_final, add);
                if rec.status.is_some_and(is_user_outcome) {
                    step(&mut self.user_final, add);
                }
            }
            Outcome::Failover(cause) => {
                step(&mut self.failovers, add);
                if cause.is_silence() {
                    step(&mut self.silent, add);
                }
                bump(&mut self.causes, cause, add, 1);
            }
        }
        if let Some(p) = rec.pdd_ms {
            step_by(&mut self.pdd_sum_ms, p, add);
            step(&mut self.pdd_count, add);
        }
        if let Some(s) = rec.status {
            bump(&mut self.statuses, s, add, 1);
        }
    }

    /// Removes a whole aggregate (a time bucket leaving the window).
    fn subtract(&mut self, other: &Stats) {
        let sub = |a: &mut u64, b: u64| *a = a.saturating_sub(b);
        sub(&mut self.attempts, other.attempts);
        sub(&mut self.answered, other.answered);
        sub(&mut self.callee_final, other.callee_final);
        sub(&mut self.user_final, other.user_final);
        sub(&mut self.failovers, other.failovers);
        sub(&mut self.silent, other.silent);
        sub(&mut self.pdd_sum_ms, other.pdd_sum_ms);
        sub(&mut self.pdd_count, other.pdd_count);
        sub(&mut self.duration_sum_ms, other.duration_sum_ms);
        sub(&mut self.duration_count, other.duration_count);
        sub(&mut self.short_calls, other.short_calls);
        for (&s, &n) in &other.statuses {
            bump(&mut self.statuses, s, false, n);
        }
        for (&c, &n) in &other.causes {
            bump(&mut self.causes, c, false, n);
        }
    }
}

/// A trunk's live statistics over two sliding windows — the last `time_window_ms` and the
/// last `count_window` calls — plus the attempts of the last second (CPS).
///
/// Memory is bounded (a fixed number of time buckets, a ring of N calls, at most `cps_cap`
/// timestamps) and each record is O(1) amortized (plus a log-size map update for the status).
/// Old data expires on access. `Clone` is the trunk actor's checkpoint: a few kilobytes.
///
/// Serializable as a whole (a cluster hands a trunk's window to its next owner, see
/// `cluster::checkpoints`); its times are wall-clock milliseconds, so they mean the same on
/// every node.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Window {
    cfg: WindowConfig,
    bucket_ms: u64,
    /// (bucket number = time / bucket_ms, aggregate), oldest first.
    buckets: VecDeque<(u64, Stats)>,
    time_total: Stats,
    ring: VecDeque<CallRecord>,
    count_total: Stats,
    /// Times of the attempts of about the last second, oldest first. Not handed over: the
    /// next owner's rate is its own.
    #[serde(skip)]
    sent: VecDeque<u64>,
    media: Option<MediaQuality>,
}

impl Window {
    /// An empty window (zero sizes in `cfg` are raised to 1).
    pub fn new(cfg: WindowConfig) -> Window {
        let cfg = WindowConfig {
            time_window_ms: cfg.time_window_ms.max(1),
            buckets: cfg.buckets.max(1),
            count_window: cfg.count_window.max(1),
            cps_cap: cfg.cps_cap.max(1),
            ..cfg
        };
        let bucket_ms = cfg.time_window_ms.div_ceil(u64::from(cfg.buckets)).max(1);
        Window {
            cfg,
            bucket_ms,
            buckets: VecDeque::with_capacity(cfg.buckets as usize + 1),
            time_total: Stats::default(),
            ring: VecDeque::with_capacity(cfg.count_window),
            count_total: Stats::default(),
            sent: VecDeque::new(),
            media: None,
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> &WindowConfig {
        &self.cfg
    }

    /// Records a finished attempt. Pre-send failovers ([`FailoverCause::is_pre_send`]) never
    /// reached the carrier and are ignored.
    pub fn record_call(&mut self, now_ms: u64, rec: CallRecord) {
        if let Outcome::Failover(cause) = rec.outcome {
            if cause.is_pre_send() {
                return;
            }
        }
        let short = self.cfg.short_call_ms;
        self.expire(now_ms);
        let n = now_ms / self.bucket_ms;
        // A clock that stepped back adds to the newest bucket rather than reordering them.
        match self.buckets.back_mut() {
            Some((b, stats)) if *b >= n => stats.apply(&rec, short, true),
            _ => {
                let mut stats = Stats::default();
                stats.apply(&rec, short, true);
                self.buckets.push_back((n, stats));
            }
        }
        self.time_total.apply(&rec, short, true);

        if self.ring.len() == self.cfg.count_window {
            if let Some(old) = self.ring.pop_front() {
                self.count_total.apply(&old, short, false);
            }
        }
        self.ring.push_back(rec);
        self.count_total.apply(&rec, short, true);
    }

    /// Drops the time buckets wholly older than the time window.
    fn expire(&mut self, now_ms: u64) {
        let horizon = now_ms.saturating_sub(self.cfg.time_window_ms);
        while let Some((b, _)) = self.buckets.front() {
            if (b + 1) * self.bucket_ms > horizon {
                break;
            }
            if let Some((_, old)) = self.buckets.pop_front() {
                self.time_total.subtract(&old);
            }
        }
    }

    /// Statistics over the time window at `now_ms`.
    pub fn time_stats(&mut self, now_ms: u64) -> &Stats {
        self.expire(now_ms);
        &self.time_total
    }

    /// Statistics over the last `count_window` calls.
    pub fn count_stats(&self) -> &Stats {
        &self.count_total
    }

    /// The more recent of the two windows: both end at the latest call, so the one holding
    /// fewer calls starts later (the count window on a busy trunk, the time window on a quiet
    /// one). Routing and alarms read this one to react within either window.
    pub fn recent(&mut self, now_ms: u64) -> &Stats {
        self.expire(now_ms);
        if self.time_total.attempts < self.count_total.attempts {
            &self.time_total
        } else {
            &self.count_total
        }
    }

    /// Notes an INVITE sent at `now_ms` (for [`Window::cps`]).
    pub fn note_attempt(&mut self, now_ms: u64) {
        while self.sent.front().is_some_and(|&t| t + 1000 <= now_ms) {
            self.sent.pop_front();
        }
        if self.sent.len() >= self.cfg.cps_cap {
            self.sent.pop_front();
        }
        self.sent.push_back(now_ms);
    }

    /// Attempts in the last second, i.e. at times in (now_ms - 1000, now_ms].
    pub fn cps(&self, now_ms: u64) -> u32 {
        let first = self.sent.partition_point(|&t| t + 1000 <= now_ms);
        let n = self.sent.len() - first;
        u32::try_from(n).unwrap_or(u32::MAX)
    }

    /// Sets the media quality from RTCP (the hook for when media is anchored); `None`
    /// returns to the signalling-only score.
    pub fn with_media(&mut self, media: Option<MediaQuality>) {
        self.media = media;
    }

    /// The media quality set by [`Window::with_media`].
    pub fn media(&self) -> Option<&MediaQuality> {
        self.media.as_ref()
    }

    /// Quality score 0..=100 over [`Window::recent`] (see [`Stats::quality_score`]); None
    /// before any call.
    pub fn quality_score(&mut self, now_ms: u64) -> Option<f64> {
        let pdd_bad = self.cfg.pdd_bad_ms;
        let media = self.media;
        self.recent(now_ms).quality_score(pdd_bad, media.as_ref())
    }
}

// ---------------------------------------------------------------------------------------------
// Health with hysteresis
// ---------------------------------------------------------------------------------------------

/// When a trunk goes down and comes back up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HealthConfig {
    /// Consecutive failed OPTIONS probes that take the trunk down (default 3).
    pub down_after_failed_probes: u32,
    /// Consecutive calls ending in a failover cause (incl. INVITE timeouts) that take it down
    /// (default 5).
    pub down_after_failed_calls: u32,
    /// Consecutive good probes that bring a down trunk back (default 3).
    pub up_after_good_probes: u32,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            down_after_failed_probes: 3,
            down_after_failed_calls: 5,
            up_after_good_probes: 3,
        }
    }
}

/// A trunk's health.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HealthState {
    /// Calls may be sent.
    Up,
    /// No call is sent; probes decide when it comes back.
    Down,
}

impl HealthState {
    /// "up" or "down".
    pub fn label(self) -> &'static str {
        match self {
            HealthState::Up => "up",
            HealthState::Down => "down",
        }
    }
}

/// Why a trunk went down.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DownReason {
    /// This many consecutive OPTIONS probes failed.
    FailedProbes(u32),
    /// This many consecutive calls failed over.
    FailedCalls(u32),
}

impl DownReason {
    /// "failed-probes" or "failed-calls".
    pub fn label(self) -> &'static str {
        match self {
            DownReason::FailedProbes(_) => "failed-probes",
            DownReason::FailedCalls(_) => "failed-calls",
        }
    }
}

/// A change of health, for the log, the metrics and the alarm webhook.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Transition {
    /// Up → Down.
    Down { reason: DownReason, at_ms: u64 },
    /// Down → Up after `good_probes` consecutive good probes; it had been down `down_ms`.
    Up {
        good_probes: u32,
        down_ms: u64,
        at_ms: u64,
    },
}

/// Up/down state with hysteresis: it takes N failed probes *in a row* (or M failed calls in
/// a row) to go down and K good probes in a row to come back, and any contrary result
/// restarts the count. A gateway answering every other probe therefore stays in whichever
/// state it is in instead of flipping on every probe. Calls never bring a trunk back up (none
/// are sent to a down trunk; late replies of calls sent before are ignored): only probes do,
/// which also makes a trunk taken down by failed calls wait K probe intervals before
/// carrying traffic again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Health {
    cfg: HealthConfig,
    state: HealthState,
    since_ms: u64,
    failed_probes: u32,
    failed_calls: u32,
    good_probes: u32,
}

impl Health {
    /// A trunk that starts up (zero thresholds in `cfg` act as 1).
    pub fn new(cfg: HealthConfig, now_ms: u64) -> Health {
        Health::starting(cfg, HealthState::Up, now_ms)
    }

    /// A trunk that starts in `state` (e.g. down until its first good probes).
    pub fn starting(cfg: HealthConfig, state: HealthState, now_ms: u64) -> Health {
        Health {
            cfg,
            state,
            since_ms: now_ms,
            failed_probes: 0,
            failed_calls: 0,
            good_probes: 0,
        }
    }

    /// The current state.
    pub fn state(&self) -> HealthState {
        self.state
    }

    /// Whether calls may be sent.
    pub fn is_up(&self) -> bool {
        self.state == HealthState::Up
    }

    /// When the current state began.
    pub fn since_ms(&self) -> u64 {
        self.since_ms
    }

    /// Consecutive good probes while down (progress towards up).
    pub fn good_probes(&self) -> u32 {
        self.good_probes
    }

    fn go_down(&mut self, reason: DownReason, now_ms: u64) -> Option<Transition> {
        self.state = HealthState::Down;
        self.since_ms = now_ms;
        self.failed_probes = 0;
        self.failed_calls = 0;
        self.good_probes = 0;
        Some(Transition::Down {
            reason,
            at_ms: now_ms,
        })
    }

    /// An OPTIONS probe got a response (any response proves the gateway alive and reachable).
    pub fn probe_ok(&mut self, now_ms: u64) -> Option<Transition> {
        match self.state {
            HealthState::Up => {
                self.failed_probes = 0;
                None
            }
            HealthState::Down => {
                self.good_probes += 1;
                if self.good_probes < self.cfg.up_after_good_probes.max(1) {
                    return None;
                }
                let t = Transition::Up {
                    good_probes: self.good_probes,
                    down_ms: now_ms.saturating_sub(self.since_ms),
                    at_ms: now_ms,
                };
                self.state = HealthState::Up;
                self.since_ms = now_ms;
                self.failed_probes = 0;
                self.failed_calls = 0;
                self.good_probes = 0;
                Some(t)
            }
        }
    }

    /// An OPTIONS probe timed out or could not be sent.
    pub fn probe_failed(&mut self, now_ms: u64) -> Option<Transition> {
        match self.state {
            HealthState::Up => {
                self.failed_probes += 1;
                if self.failed_probes >= self.cfg.down_after_failed_probes.max(1) {
                    let n = self.failed_probes;
                    return self.go_down(DownReason::FailedProbes(n), now_ms);
                }
                None
            }
            HealthState::Down => {
                self.good_probes = 0;
                None
            }
        }
    }

    /// A call sent to this trunk ended in a failover cause (5xx, 408, timeout, silence).
    pub fn call_failed_failover(&mut self, now_ms: u64) -> Option<Transition> {
        if self.state == HealthState::Down {
            return None;
        }
        self.failed_calls += 1;
        if self.failed_calls >= self.cfg.down_after_failed_calls.max(1) {
            let n = self.failed_calls;
            return self.go_down(DownReason::FailedCalls(n), now_ms);
        }
        None
    }

    /// A call sent to this trunk was answered or got the callee's final word: the trunk
    /// works, the failed-call streak restarts. Never a transition (see [`Health`]).
    pub fn call_ok(&mut self, _now_ms: u64) -> Option<Transition> {
        if self.state == HealthState::Up {
            self.failed_calls = 0;
        }
        None
    }
}

// ---------------------------------------------------------------------------------------------
// Alarms
// ---------------------------------------------------------------------------------------------

/// A saturable trunk resource.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Resource {
    /// Concurrent channels.
    Channels,
    /// Calls per second.
    Cps,
}

/// An alarm edge: raised once when a condition starts, cleared once when it ends.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
#[serde(tag = "alarm", rename_all = "kebab-case")]
pub enum AlarmEvent {
    /// The answer rate left its baseline by more than the configured deviation.
    AsrDeviation { asr: f64, baseline: f64, at_ms: u64 },
    /// The answer rate is back near its baseline.
    AsrRecovered { asr: f64, baseline: f64, at_ms: u64 },
    /// This many calls in a row failed over.
    ConsecutiveFailures { count: u32, at_ms: u64 },
    /// A call succeeded after a failure streak alarm.
    FailuresCleared { at_ms: u64 },
    /// A resource reached its limit.
    Saturated {
        resource: Resource,
        used: u32,
        max: u32,
        at_ms: u64,
    },
    /// The resource fell back below the clear level.
    SaturationCleared {
        resource: Resource,
        used: u32,
        max: u32,
        at_ms: u64,
    },
}

impl AlarmEvent {
    /// Whether this raises (true) or clears (false) an alarm.
    pub fn raised(&self) -> bool {
        matches!(
            self,
            AlarmEvent::AsrDeviation { .. }
                | AlarmEvent::ConsecutiveFailures { .. }
                | AlarmEvent::Saturated { .. }
        )
    }

    /// The alarm's name, the same for its raise and its clear (a metric label): "asr-deviation",
    /// "consecutive-failures", "channels-saturated", "cps-saturated".
    pub fn kind(&self) -> &'static str {
        match self {
            AlarmEvent::AsrDeviation { .. } | AlarmEvent::AsrRecovered { .. } => "asr-deviation",
            AlarmEvent::ConsecutiveFailures { .. } | AlarmEvent::FailuresCleared { .. } => {
                "consecutive-failures"
            }
            AlarmEvent::Saturated { resource, .. }
            | AlarmEvent::SaturationCleared { resource, .. } => match resource {
                Resource::Channels => "channels-saturated",
                Resource::Cps => "cps-saturated",
            },
        }
    }
}

/// Tuning of an [`AsrAlarm`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AsrAlarmConfig {
    /// Raise when |ASR - baseline| exceeds this, in ASR points (default 0.2: 0.6 → 0.39
    /// raises).
    pub deviation: f64,
    /// Clear when |ASR - baseline| falls to `deviation * clear_ratio` or less (default 0.5):
    /// the gap between raise and clear is the hysteresis.
    pub clear_ratio: f64,
    /// Samples backed by fewer calls are ignored: no baseline learning, no alarm
    /// (default 30).
    pub min_calls: u64,
    /// Time constant of the baseline's exponential moving average (default 1 hour): the
    /// baseline follows slow drift, not an excursion.
    pub baseline_tau_ms: u64,
}

impl Default for AsrAlarmConfig {
    fn default() -> Self {
        AsrAlarmConfig {
            deviation: 0.2,
            clear_ratio: 0.5,
            min_calls: 30,
            baseline_tau_ms: 3_600_000,
        }
    }
}

/// Answer rate against its own baseline: a time-weighted EWMA of the ASR samples, learned
/// only while no alarm is raised (an excursion does not become the new normal while it
/// lasts). Raises once per excursion and clears once on recovery.
#[derive(Clone, Debug, PartialEq)]
pub struct AsrAlarm {
    cfg: AsrAlarmConfig,
    baseline: Option<f64>,
    last_ms: u64,
    raised: bool,
}

impl AsrAlarm {
    /// No baseline yet.
    pub fn new(cfg: AsrAlarmConfig) -> AsrAlarm {
        AsrAlarm {
            cfg,
            baseline: None,
            last_ms: 0,
            raised: false,
        }
    }

    /// The learned baseline, once the first sample with enough calls came.
    pub fn baseline(&self) -> Option<f64> {
        self.baseline
    }

    /// Whether the deviation alarm is raised.
    pub fn is_raised(&self) -> bool {
        self.raised
    }

    /// Feeds the current ASR (`current_asr`, over a window holding `calls` attempts, e.g.
    /// [`Window::recent`]) and returns the alarm edge, if any. Call it periodically (every
    /// few seconds) or after each call: the baseline is weighted by time, not by samples.
    pub fn check_asr(&mut self, now_ms: u64, current_asr: f64, calls: u64) -> Option<AlarmEvent> {
        if calls < self.cfg.min_calls.max(1) || !current_asr.is_finite() {
            return None;
        }
        let Some(baseline) = self.baseline else {
            self.baseline = Some(current_asr);
            self.last_ms = now_ms;
            return None;
        };
        let gap = (current_asr - baseline).abs();
        if self.raised {
            self.last_ms = now_ms;
            if gap <= self.cfg.deviation * self.cfg.clear_ratio {
                self.raised = false;
                return Some(AlarmEvent::AsrRecovered {
                    asr: current_asr,
                    baseline,
                    at_ms: now_ms,
                });
            }
            return None;
        }
        if gap > self.cfg.deviation {
            self.raised = true;
            self.last_ms = now_ms;
            return Some(AlarmEvent::AsrDeviation {
                asr: current_asr,
                baseline,
                at_ms: now_ms,
            });
        }
        let dt = now_ms.saturating_sub(self.last_ms) as f64;
        let alpha = 1.0 - (-dt / self.cfg.baseline_tau_ms.max(1) as f64).exp();
        self.baseline = Some(baseline + alpha * (current_asr - baseline));
        self.last_ms = now_ms;
        None
    }
}

/// Consecutive failed-over calls: raises once when the streak reaches `threshold`, clears on
/// the next call that does not fail over.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FailureStreakAlarm {
    threshold: u32,
    streak: u32,
    raised: bool,
}

impl FailureStreakAlarm {
    /// Raises at `threshold` (at least 1) failures in a row.
    pub fn new(threshold: u32) -> FailureStreakAlarm {
        FailureStreakAlarm {
            threshold: threshold.max(1),
            streak: 0,
            raised: false,
        }
    }

    /// The current streak.
    pub fn streak(&self) -> u32 {
        self.streak
    }

    /// Feeds one call sent to the trunk: `failed_over` when it ended in a failover cause.
    pub fn on_call(&mut self, now_ms: u64, failed_over: bool) -> Option<AlarmEvent> {
        if failed_over {
            self.streak = self.streak.saturating_add(1);
            if !self.raised && self.streak >= self.threshold {
                self.raised = true;
                return Some(AlarmEvent::ConsecutiveFailures {
                    count: self.streak,
                    at_ms: now_ms,
                });
            }
            return None;
        }
        self.streak = 0;
        if self.raised {
            self.raised = false;
            return Some(AlarmEvent::FailuresCleared { at_ms: now_ms });
        }
        None
    }
}

/// A resource at its limit: raises when `used >= max`, clears when `used` falls to
/// `clear_ratio * max` or below (default 0.8), so a trunk hovering at its limit raises once.
#[derive(Clone, Debug, PartialEq)]
pub struct SaturationAlarm {
    resource: Resource,
    clear_ratio: f64,
    raised: bool,
}

impl SaturationAlarm {
    /// An alarm for `resource` clearing at 80 % of the limit.
    pub fn new(resource: Resource) -> SaturationAlarm {
        SaturationAlarm::with_clear_ratio(resource, 0.8)
    }

    /// An alarm clearing at `clear_ratio` (0..=1) of the limit.
    pub fn with_clear_ratio(resource: Resource, clear_ratio: f64) -> SaturationAlarm {
        SaturationAlarm {
            resource,
            clear_ratio: clear_ratio.clamp(0.0, 1.0),
            raised: false,
        }
    }

    /// Whether the alarm is raised.
    pub fn is_raised(&self) -> bool {
        self.raised
    }

    /// Feeds the current use against the limit (`max` 0 means unlimited: never raises).
    pub fn check(&mut self, now_ms: u64, used: u32, max: u32) -> Option<AlarmEvent> {
        let resource = self.resource;
        if !self.raised && max > 0 && used >= max {
            self.raised = true;
            return Some(AlarmEvent::Saturated {
                resource,
                used,
                max,
                at_ms: now_ms,
            });
        }
        if self.raised && (max == 0 || f64::from(used) <= self.clear_ratio * f64::from(max)) {
            self.raised = false;
            return Some(AlarmEvent::SaturationCleared {
                resource,
                used,
                max,
                at_ms: now_ms,
            });
        }
        None
    }
}

// ---------------------------------------------------------------------------------------------
// Route policy
// ---------------------------------------------------------------------------------------------

/// How a route orders its trunk group. In the configuration: `policy = "least-cost"`, or
/// for the weighted score a table, `policy = { weighted = { asr = 0.5, quality = 0.3,
/// cost = 0.2 } }`.
#[derive(Clone, Copy, Debug, PartialEq, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Policy {
    /// Lowest `priority` first.
    Priority,
    /// Smooth weighted round-robin (nginx): over any run of picks each trunk gets its
    /// weight's share, interleaved rather than in bursts.
    WeightedRoundRobin,
    /// Cheapest first for the dialled number (priced at [`REFERENCE_CALL_SECS`]); trunks
    /// without a rate for it last.
    LeastCost,
    /// Highest recent answer rate first.
    AnswerRate,
    /// Highest quality score first.
    Quality,
    /// Highest weighted score first: `asr * ASR + quality * quality/100 + cost * cost
    /// score`, where the cost score is 1 for the cheapest trunk, 0 for the dearest (linear
    /// between; 0 without a rate). Weights need not sum to 1; use non-negative ones.
    Weighted { asr: f64, quality: f64, cost: f64 },
}

impl Policy {
    /// The policy's name as written in the configuration.
    pub fn label(&self) -> &'static str {
        match self {
            Policy::Priority => "priority",
            Policy::WeightedRoundRobin => "weighted-round-robin",
            Policy::LeastCost => "least-cost",
            Policy::AnswerRate => "answer-rate",
            Policy::Quality => "quality",
            Policy::Weighted { .. } => "weighted",
        }
    }
}

/// ASR assumed for a trunk without a meaningful one when no trunk of the group has one.
pub const NEUTRAL_ASR: f64 = 0.5;
/// Quality assumed for a trunk without a score when no trunk of the group has one.
pub const NEUTRAL_QUALITY: f64 = 50.0;

/// What a trunk group knows of one trunk at decision time.
#[derive(Clone, Debug, PartialEq)]
pub struct TrunkView {
    /// Trunk id (the last tie-break).
    pub id: Arc<str>,
    /// Lower first under [`Policy::Priority`]; the first tie-break of every other policy.
    pub priority: u32,
    /// Share under [`Policy::WeightedRoundRobin`]; 0 takes no share (the trunk is only a
    /// fallback after the weighted ones).
    pub weight: u32,
    /// Health says up.
    pub up: bool,
    /// Channels in use and the limit (None: unlimited).
    pub channels_used: u32,
    pub channels_max: Option<u32>,
    /// Attempts in the last second and the limit (None: unlimited).
    pub cps_now: u32,
    pub cps_max: Option<u32>,
    /// Recent ASR, None when too few calls back it (e.g. [`Stats::asr_if`]): such a trunk
    /// gets the neutral prior, the mean ASR of the group's candidates that have one (or
    /// [`NEUTRAL_ASR`]), so a new or idle trunk is neither starved nor flooded and its ASR
    /// gets measured.
    pub asr: Option<f64>,
    /// Quality score 0..=100, None before any call (neutral prior as for `asr`, else
    /// [`NEUTRAL_QUALITY`]).
    pub quality: Option<f64>,
    /// The trunk's cost table, if it has one.
    pub costs: Option<Arc<CostTable>>,
}

/// A trunk left out of a plan, and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Skip {
    /// Index into the trunk slice.
    pub index: usize,
    /// [`FailoverCause::TrunkDown`], [`FailoverCause::ChannelsFull`] or
    /// [`FailoverCause::CpsFull`].
    pub cause: FailoverCause,
}

/// The order in which to try a group's trunks for one call.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// Indices into the trunk slice, first choice first; the call actor fails over along it.
    pub order: Vec<usize>,
    /// The trunks left out (down or full), in slice order, for the CDR and decision log.
    pub skipped: Vec<Skip>,
    /// Why the first choice was made, e.g. "least-cost: gw-b 0.0150/min (prefix 44)".
    pub reason: String,
}

impl Plan {
    /// The first trunk to try.
    pub fn first(&self) -> Option<usize> {
        self.order.first().copied()
    }
}

/// Round-robin memory of a route (smooth WRR's current weights), kept by the trunk group
/// between calls.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RrState {
    /// Trunk id → (current weight, last time it took part).
    current: HashMap<Arc<str>, (i64, u64)>,
}

/// A trunk that has not taken part in a round for this long (down, full or removed) starts
/// again from zero credit instead of bursting with the credit it had.
pub const RR_FORGET_MS: u64 = 60_000;

impl RrState {
    /// Fresh state.
    pub fn new() -> RrState {
        RrState::default()
    }
}

/// Orders `trunks` for a call to `dialled` under `policy`.
///
/// Trunks that are down, at their channel limit or at their CPS limit are left out (in
/// [`Plan::skipped`] with the cause, checked in that order). The others are ordered by the
/// policy; ties break by priority (lower first), then id. `rr` is only used (and updated) by
/// [`Policy::WeightedRoundRobin`]; `now_ms` ages its entries.
pub fn order(
    policy: Policy,
    trunks: &[TrunkView],
    dialled: &str,
    rr: &mut RrState,
    now_ms: u64,
) -> Plan {
    let mut skipped = Vec::new();
    let mut cands: Vec<usize> = Vec::with_capacity(trunks.len());
    for (index, t) in trunks.iter().enumerate() {
        let cause = if !t.up {
            Some(FailoverCause::TrunkDown)
        } else if t.channels_max.is_some_and(|m| t.channels_used >= m) {
            Some(FailoverCause::ChannelsFull)
        } else if t.cps_max.is_some_and(|m| t.cps_now >= m) {
            Some(FailoverCause::CpsFull)
        } else {
            None
        };
        match cause {
            Some(cause) => skipped.push(Skip { index, cause }),
            None => cands.push(index),
        }
    }
    let tie = |a: usize, b: usize| {
        let (ta, tb) = (&trunks[a], &trunks[b]);
        ta.priority
            .cmp(&tb.priority)
            .then_with(|| ta.id.cmp(&tb.id))
    };
    let label = policy.label();
    if cands.is_empty() {
        let reason = format!("{label}: no trunk available ({} skipped)", skipped.len());
        return Plan {
            order: cands,
            skipped,
            reason,
        };
    }

    let mut reason = String::new();
    match policy {
        Policy::Priority => {
            cands.sort_by(|&a, &b| tie(a, b));
            let t = &trunks[cands[0]];
            let _ = write!(reason, "{label}: {} priority {}", t.id, t.priority);
        }
        Policy::WeightedRoundRobin => {
            cands = smooth_wrr(trunks, cands, rr, now_ms, &tie);
            let t = &trunks[cands[0]];
            let _ = write!(reason, "{label}: {} weight {}", t.id, t.weight);
        }
        Policy::LeastCost => {
            let price = |i: usize| {
                trunks[i]
                    .costs
                    .as_ref()
                    .and_then(|c| c.lookup_prefix(dialled))
            };
            let costs: Vec<Option<f64>> = trunks
                .iter()
                .enumerate()
                .map(|(i, _)| price(i).map(|(_, r)| r.cost(REFERENCE_CALL_SECS)))
                .collect();
            cands.sort_by(|&a, &b| {
                match (costs[a], costs[b]) {
                    (Some(x), Some(y)) => x.total_cmp(&y),
                    (Some(_), None) => Ordering::Less,
                    (None, Some(_)) => Ordering::Greater,
                    (None, None) => Ordering::Equal,
                }
                .then_with(|| tie(a, b))
            });
            let t = &trunks[cands[0]];
            match price(cands[0]) {
                Some((prefix, r)) => {
                    let _ = write!(
                        reason,
                        "{label}: {} {:.4}/min (prefix {prefix:?}, {}/{})",
                        t.id,
                        r.per_minute,
                        if r.min_secs > 0 {
                            r.min_secs
                        } else {
                            r.increment_secs
                        },
                        r.increment_secs
                    );
                }
                None => {
                    let _ = write!(
                        reason,
                        "{label}: {} (no trunk has a rate for {dialled})",
                        t.id
                    );
                }
            }
        }
        Policy::AnswerRate => {
            let (asr, prior) = with_prior(trunks, &cands, |t| t.asr, NEUTRAL_ASR);
            cands.sort_by(|&a, &b| asr[b].total_cmp(&asr[a]).then_with(|| tie(a, b)));
            let t = &trunks[cands[0]];
            let _ = write!(reason, "{label}: {} asr {:.2}", t.id, asr[cands[0]]);
            if t.asr.is_none() {
                let _ = write!(reason, " (neutral prior {prior:.2})");
            }
        }
        Policy::Quality => {
            let (q, prior) = with_prior(trunks, &cands, |t| t.quality, NEUTRAL_QUALITY);
            cands.sort_by(|&a, &b| q[b].total_cmp(&q[a]).then_with(|| tie(a, b)));
            let t = &trunks[cands[0]];
            let _ = write!(reason, "{label}: {} quality {:.1}", t.id, q[cands[0]]);
            if t.quality.is_none() {
                let _ = write!(reason, " (neutral prior {prior:.1})");
            }
        }
        Policy::Weighted {
            asr: w_asr,
            quality: w_q,
            cost: w_cost,
        } => {
            let (asr, _) = with_prior(trunks, &cands, |t| t.asr, NEUTRAL_ASR);
            let (q, _) = with_prior(trunks, &cands, |t| t.quality, NEUTRAL_QUALITY);
            let costs: Vec<Option<f64>> = trunks
                .iter()
                .map(|t| {
                    t.costs
                        .as_ref()
                        .and_then(|c| c.cost(dialled, REFERENCE_CALL_SECS))
                })
                .collect();
            let priced = cands.iter().filter_map(|&i| costs[i]);
            let lo = priced.clone().fold(f64::INFINITY, f64::min);
            let hi = priced.fold(f64::NEG_INFINITY, f64::max);
            let cost_score = |i: usize| match costs[i] {
                None => 0.0,
                Some(_) if hi - lo <= f64::EPSILON => 1.0,
                Some(c) => (hi - c) / (hi - lo),
            };
            let mut score = vec![0.0; trunks.len()];
            for &i in &cands {
                score[i] = w_asr * asr[i] + w_q * q[i] / 100.0 + w_cost * cost_score(i);
            }
            cands.sort_by(|&a, &b| score[b].total_cmp(&score[a]).then_with(|| tie(a, b)));
            let i = cands[0];
            let _ = write!(
                reason,
                "{label}: {} score {:.3} (asr {:.2}, quality {:.1}, cost score {:.2})",
                trunks[i].id,
                score[i],
                asr[i],
                q[i],
                cost_score(i)
            );
        }
    }
    Plan {
        order: cands,
        skipped,
        reason,
    }
}

/// Each trunk's figure, the candidates' missing ones replaced by the neutral prior (mean of
/// the candidates' known figures, else `neutral`), indexed like `trunks`; and the prior.
fn with_prior(
    trunks: &[TrunkView],
    cands: &[usize],
    get: impl Fn(&TrunkView) -> Option<f64>,
    neutral: f64,
) -> (Vec<f64>, f64) {
    let known: Vec<f64> = cands
        .iter()
        .filter_map(|&i| get(&trunks[i]))
        .filter(|x| x.is_finite())
        .collect();
    let prior = if known.is_empty() {
        neutral
    } else {
        known.iter().sum::<f64>() / known.len() as f64
    };
    let values = trunks
        .iter()
        .map(|t| get(t).filter(|x| x.is_finite()).unwrap_or(prior))
        .collect();
    (values, prior)
}

/// Smooth weighted round-robin (nginx's): every weighted candidate gains its weight, the
/// one with the most credit is picked and pays the total. The rest follow by credit (who
/// would be picked next), then weight-0 trunks by priority.
fn smooth_wrr(
    trunks: &[TrunkView],
    cands: Vec<usize>,
    rr: &mut RrState,
    now_ms: u64,
    tie: &impl Fn(usize, usize) -> Ordering,
) -> Vec<usize> {
    rr.current
        .retain(|_, &mut (_, seen)| seen.saturating_add(RR_FORGET_MS) > now_ms);
    let (mut weighted, mut unweighted): (Vec<usize>, Vec<usize>) =
        cands.into_iter().partition(|&i| trunks[i].weight > 0);
    unweighted.sort_by(|&a, &b| tie(a, b));
    if weighted.is_empty() {
        return unweighted;
    }
    let total: i64 = weighted.iter().map(|&i| i64::from(trunks[i].weight)).sum();
    let mut credit = vec![0i64; trunks.len()];
    for &i in &weighted {
        let e = rr
            .current
            .entry(trunks[i].id.clone())
            .or_insert((0, now_ms));
        e.0 += i64::from(trunks[i].weight);
        e.1 = now_ms;
        credit[i] = e.0;
    }
    weighted.sort_by(|&a, &b| credit[b].cmp(&credit[a]).then_with(|| tie(a, b)));
    if let Some(e) = rr.current.get_mut(&trunks[weighted[0]].id) {
        e.0 -= total;
    }
    // The pick stays first (its credit was read before it paid); the fallbacks follow by
    // credit, i.e. in the order they would be picked next, then the weight-0 trunks.
    weighted.extend(unweighted);
    weighted
}

#[cfg(test)]
mod tests {
    use super::*;

    // ---- classify ----

    #[test]
    fn classify_table() {
        use FailoverCause as C;
        use Outcome::*;
        let table: &[(Option<u16>, bool, Outcome)] = &[
            (Some(200), false, Answered),
            (Some(202), true, Answered),
            (Some(302), false, CalleeFinal),
            (Some(404), false, CalleeFinal),
            (Some(484), false, CalleeFinal),
            (Some(486), false, CalleeFinal),
            (Some(487), false, CalleeFinal),
            (Some(480), false, CalleeFinal),
            (Some(403), false, CalleeFinal),
            (Some(488), false, CalleeFinal),
            (Some(600), false, CalleeFinal),
            (Some(603), false, CalleeFinal),
            (Some(606), false, CalleeFinal),
            (Some(408), false, Failover(C::RequestTimeout)),
            (Some(401), false, Failover(C::AuthRejected)),
            (Some(407), false, Failover(C::AuthRejected)),
            (Some(500), false, Failover(C::ServerInternalError)),
            (Some(502), false, Failover(C::BadGateway)),
            (Some(503), false, Failover(C::ServiceUnavailable)),
            (Some(503), true, Failover(C::ServiceUnavailable)),
            (Some(504), false, Failover(C::ServerTimeout)),
            (Some(501), false, Failover(C::OtherServerError)),
            (Some(580), false, Failover(C::OtherServerError)),
            (None, true, Failover(C::Timeout)),
            (None, false, Failover(C::NoResponse)),
            (Some(180), true, Failover(C::Timeout)),
            (Some(183), false, Failover(C::NoResponse)),
            (Some(700), false, Failover(C::InvalidResponse)),
        ];
        for &(status, timed_out, want) in table {
            assert_eq!(
                classify(status, timed_out),
                want,
                "status {status:?} timed_out {timed_out}"
            );
        }
    }

    #[test]
    fn cause_labels_and_kinds() {
        assert_eq!(FailoverCause::ServiceUnavailable.label(), "503");
        assert_eq!(FailoverCause::Timeout.label(), "timeout");
        assert!(FailoverCause::CpsFull.is_pre_send());
        assert!(FailoverCause::TrunkDown.is_pre_send());
        assert!(!FailoverCause::ServiceUnavailable.is_pre_send());
        assert!(FailoverCause::NoResponse.is_silence());
        assert!(!FailoverCause::RequestTimeout.is_silence());
        assert!(is_user_outcome(486) && is_user_outcome(603) && is_user_outcome(480));
        assert!(!is_user_outcome(404) && !is_user_outcome(503));
    }

    // ---- cost tables ----

    fn entry(prefix: &str, per_minute: f64, increment_secs: u32, min_secs: u32) -> CostEntry {
        CostEntry {
            prefix: prefix.to_string(),
            per_minute,
            increment_secs,
            min_secs,
        }
    }

    fn table(entries: &[(&str, f64, u32, u32)]) -> CostTable {
        CostTable::new(
            entries
                .iter()
                .map(|&(p, r, i, m)| entry(p, r, i, m))
                .collect(),
        )
        .unwrap()
    }

    #[test]
    fn cost_longest_prefix_wins() {
        let t = table(&[
            ("", 0.5, 60, 0),
            ("44", 0.02, 60, 0),
            ("447", 0.10, 60, 0),
            ("4479", 0.20, 60, 0),
            ("1", 0.01, 6, 0),
        ]);
        assert_eq!(t.len(), 5);
        assert_eq!(t.lookup("442071234567").unwrap().per_minute, 0.02);
        assert_eq!(t.lookup("447700900123").unwrap().per_minute, 0.10);
        assert_eq!(t.lookup("+447911123456").unwrap().per_minute, 0.20);
        assert_eq!(t.lookup_prefix("447911123456").unwrap().0, "4479");
        assert_eq!(t.lookup("12125550100").unwrap().per_minute, 0.01);
        // The empty prefix catches the rest.
        assert_eq!(t.lookup_prefix("33123").unwrap().0, "");
        // A number shorter than a prefix matches the shorter ones only.
        assert_eq!(t.lookup("447").unwrap().per_minute, 0.10);
        assert_eq!(t.lookup("4").unwrap().per_minute, 0.5);
        // Non-ASCII input neither panics nor matches a digit prefix.
        assert_eq!(t.lookup_prefix("4é4").unwrap().0, "");

        let no_default = table(&[("44", 0.02, 60, 0)]);
        assert!(no_default.lookup("33123").is_none());
        assert!(no_default.cost("33123", 60).is_none());
    }

    #[test]
    fn cost_applies_billing_increments() {
        let close = |a: f64, b: f64| (a - b).abs() < 1e-12;
        // 60/60: every started minute.
        let t = table(&[("44", 0.60, 60, 0)]);
        assert!(close(t.cost("441", 0).unwrap(), 0.0));
        assert!(close(t.cost("441", 1).unwrap(), 0.60));
        assert!(close(t.cost("441", 60).unwrap(), 0.60));
        assert!(close(t.cost("441", 61).unwrap(), 1.20));
        // 6/6.
        let t = table(&[("44", 0.60, 6, 0)]);
        assert!(close(t.cost("441", 1).unwrap(), 0.06));
        assert!(close(t.cost("441", 7).unwrap(), 0.12));
        // 1/1: exact seconds.
        let t = table(&[("44", 0.60, 1, 0)]);
        assert!(close(t.cost("441", 7).unwrap(), 0.07));
        // 30/6: a first block of 30 s, then 6 s steps.
        let r = Rate {
            per_minute: 0.60,
            increment_secs: 6,
            min_secs: 30,
        };
        assert_eq!(r.billable_secs(1), 30);
        assert_eq!(r.billable_secs(30), 30);
        assert_eq!(r.billable_secs(31), 36);
        assert_eq!(r.billable_secs(36), 36);
        assert_eq!(r.billable_secs(37), 42);
        assert!(close(r.cost(31), 0.36));
    }

    #[test]
    fn cost_table_validation_and_serde() {
        assert_eq!(
            CostTable::new(vec![entry("44a", 0.1, 60, 0)]),
            Err(CostError::BadPrefix("44a".into()))
        );
        assert_eq!(
            CostTable::new(vec![entry("44", 0.1, 60, 0), entry("+44", 0.2, 60, 0)]),
            Err(CostError::DuplicatePrefix("+44".into()))
        );
        assert_eq!(
            CostTable::new(vec![entry("44", -0.1, 60, 0)]),
            Err(CostError::BadRate("44".into()))
        );
        assert_eq!(
            CostTable::new(vec![entry("44", f64::NAN, 60, 0)]),
            Err(CostError::BadRate("44".into()))
        );
        assert_eq!(
            CostTable::new(vec![entry("44", 0.1, 0, 0)]),
            Err(CostError::ZeroIncrement("44".into()))
        );

        #[derive(serde::Deserialize)]
        struct Conf {
            costs: CostTable,
        }
        let c: Conf = toml::from_str(
            r#"costs = [
                { prefix = "44", per_minute = 0.02 },
                { prefix = "+1", per_minute = 0.01, increment_secs = 6, min_secs = 30 },
            ]"#,
        )
        .unwrap();
        let uk = c.costs.lookup("4420").unwrap();
        assert_eq!(uk.increment_secs, DEFAULT_INCREMENT_SECS);
        assert_eq!(uk.min_secs, 0);
        let us = c.costs.lookup("1212").unwrap();
        assert_eq!((us.increment_secs, us.min_secs), (6, 30));
        let bad: Result<Conf, _> =
            toml::from_str(r#"costs = [{ prefix = "x", per_minute = 1.0 }]"#);
        assert!(bad.is_err());
        let unknown: Result<Conf, _> =
            toml::from_str(r#"costs = [{ prefix = "1", per_minute = 1.0, rate = 2 }]"#);
        assert!(unknown.is_err());
    }

    // ---- windows ----

    fn answered(pdd_ms: u64, duration_ms: u64) -> CallRecord {
        CallRecord {
            outcome: Outcome::Answered,
            pdd_ms: Some(pdd_ms),
            duration_ms: Some(duration_ms),
            status: Some(200),
        }
    }

    fn final_status(status: u16, pdd_ms: Option<u64>) -> CallRecord {
        CallRecord {
            outcome: classify(Some(status), false),
            pdd_ms,
            duration_ms: None,
            status: Some(status),
        }
    }

    fn timeout() -> CallRecord {
        CallRecord {
            outcome: classify(None, true),
            pdd_ms: None,
            duration_ms: None,
            status: None,
        }
    }

    fn statuses(pairs: &[(u16, u64)]) -> BTreeMap<u16, u64> {
        pairs.iter().copied().collect()
    }

    fn close(a: Option<f64>, b: f64) -> bool {
        a.is_some_and(|a| (a - b).abs() < 1e-9)
    }

    #[test]
    fn window_figures_over_the_count_window() {
        let mut w = Window::new(WindowConfig::default());
        let t = 1_000_000;
        w.record_call(t, answered(2000, 5_000)); // short
        w.record_call(t, answered(4000, 65_000));
        w.record_call(t, final_status(486, Some(3000)));
        w.record_call(t, final_status(404, Some(1000)));
        w.record_call(t, final_status(503, None));
        w.record_call(t, timeout());
        let s = w.count_stats();
        assert_eq!(s.attempts, 6);
        assert_eq!(s.answered, 2);
        assert_eq!(s.callee_final, 2);
        assert_eq!(s.user_final, 1);
        assert_eq!(s.failovers, 2);
        assert_eq!(s.silent, 1);
        assert!(close(s.asr(), 2.0 / 6.0));
        // 2 answered + 486; the 404 is not effective.
        assert!(close(s.ner(), 3.0 / 6.0));
        assert!(close(s.mean_pdd_ms(), 2500.0));
        assert!(close(s.acd_ms(), 35_000.0));
        assert!(close(s.short_call_ratio(), 0.5));
        assert_eq!(
            s.statuses,
            statuses(&[(200, 2), (404, 1), (486, 1), (503, 1)])
        );
        assert_eq!(s.causes.get(&FailoverCause::ServiceUnavailable), Some(&1));
        assert_eq!(s.causes.get(&FailoverCause::Timeout), Some(&1));
        assert!(s.asr_if(7).is_none());
        assert!(s.asr_if(6).is_some());
        // The time window saw the same calls.
        assert_eq!(w.time_stats(t).clone(), w.count_stats().clone());
    }

    #[test]
    fn count_window_keeps_the_last_n_calls() {
        let cfg = WindowConfig {
            count_window: 4,
            ..WindowConfig::default()
        };
        let mut w = Window::new(cfg);
        for i in 0..4 {
            w.record_call(i, final_status(503, None));
        }
        assert_eq!(w.count_stats().failovers, 4);
        assert!(close(w.count_stats().asr(), 0.0));
        for i in 0..3 {
            w.record_call(10 + i, answered(1000, 30_000));
        }
        let s = w.count_stats();
        assert_eq!(s.attempts, 4);
        assert_eq!(s.answered, 3);
        assert_eq!(s.failovers, 1);
        assert_eq!(s.statuses, statuses(&[(200, 3), (503, 1)]));
        assert!(close(s.asr(), 0.75));
        assert!(close(s.mean_pdd_ms(), 1000.0));
        // The time window (5 min) still holds all seven.
        assert_eq!(w.time_stats(20).attempts, 7);
        assert_eq!(w.time_stats(20).failovers, 4);
    }

    #[test]
    fn time_window_expires_old_calls() {
        let cfg = WindowConfig {
            time_window_ms: 60_000,
            buckets: 6, // 10 s buckets
            ..WindowConfig::default()
        };
        let mut w = Window::new(cfg);
        let t0 = 1_000_000; // a bucket boundary
        w.record_call(t0, final_status(503, Some(9000)));
        w.record_call(t0 + 1000, final_status(503, Some(9000)));
        w.record_call(t0 + 30_000, answered(1000, 4000));
        w.record_call(t0 + 40_000, answered(3000, 20_000));
        let s = w.time_stats(t0 + 59_000);
        assert_eq!(s.attempts, 4);
        assert!(close(s.asr(), 0.5));
        // The first bucket [t0, t0+10s) leaves once all of it is older than 60 s.
        let s = w.time_stats(t0 + 70_000);
        assert_eq!(s.attempts, 2);
        assert_eq!(s.failovers, 0);
        assert!(s.causes.is_empty());
        assert_eq!(s.statuses, statuses(&[(200, 2)]));
        assert!(close(s.asr(), 1.0));
        assert!(close(s.mean_pdd_ms(), 2000.0));
        assert!(close(s.acd_ms(), 12_000.0));
        assert!(close(s.short_call_ratio(), 0.5));
        // The count window does not expire by time.
        assert_eq!(w.count_stats().attempts, 4);
        // Later, everything is gone and the figures are None, not 0.
        let s = w.time_stats(t0 + 200_000);
        assert_eq!(*s, Stats::default());
        assert!(s.asr().is_none() && s.mean_pdd_ms().is_none() && s.acd_ms().is_none());
        // Memory stays bounded: a day of calls at one per second keeps at most 7 buckets.
        for i in 0..86_400u64 {
            w.record_call(t0 + 300_000 + i * 1000, answered(1000, 1000));
        }
        assert!(w.buckets.len() <= 7, "{} buckets", w.buckets.len());
        assert_eq!(w.ring.len(), 100);
        let now = t0 + 300_000 + 86_399_000;
        let s = w.time_stats(now).attempts;
        assert!((60..=70).contains(&s), "{s} calls in a 60 s window");
    }

    #[test]
    fn recent_is_the_window_holding_fewer_calls() {
        let cfg = WindowConfig {
            time_window_ms: 60_000,
            buckets: 6,
            count_window: 10,
            ..WindowConfig::default()
        };
        let mut w = Window::new(cfg);
        // Busy: 20 calls in the time window; the count window (10) is more recent.
        for i in 0..10 {
            w.record_call(i, final_status(503, None));
        }
        for i in 10..20 {
            w.record_call(i, answered(1000, 30_000));
        }
        assert_eq!(w.recent(20).attempts, 10);
        assert!(close(w.recent(20).asr(), 1.0));
        // Quiet: much later only 2 calls are within the time window.
        w.record_call(500_000, final_status(503, None));
        w.record_call(500_001, final_status(503, None));
        assert_eq!(w.recent(500_002).attempts, 2);
        assert!(close(w.recent(500_002).asr(), 0.0));
    }

    #[test]
    fn pre_send_failovers_are_not_trunk_statistics() {
        let mut w = Window::new(WindowConfig::default());
        w.record_call(
            0,
            CallRecord {
                outcome: Outcome::Failover(FailoverCause::ChannelsFull),
                pdd_ms: None,
                duration_ms: None,
                status: None,
            },
        );
        assert_eq!(w.count_stats().attempts, 0);
        assert_eq!(w.time_stats(0).attempts, 0);
    }

    #[test]
    fn cps_counts_the_last_second() {
        let mut w = Window::new(WindowConfig::default());
        assert_eq!(w.cps(5_000), 0);
        for i in 0..10 {
            w.note_attempt(5_000 + i * 100); // 5000..=5900
        }
        assert_eq!(w.cps(5_900), 10);
        assert_eq!(w.cps(5_999), 10);
        assert_eq!(w.cps(6_000), 9); // the one at 5000 left
        assert_eq!(w.cps(6_550), 4); // 5600, 5700, 5800, 5900
        assert_eq!(w.cps(6_900), 0);
        // Noting prunes, so the log stays about one second long.
        w.note_attempt(10_000);
        assert_eq!(w.sent.len(), 1);
        assert_eq!(w.cps(10_000), 1);
        // And it is capped.
        let mut w = Window::new(WindowConfig {
            cps_cap: 5,
            ..WindowConfig::default()
        });
        for _ in 0..50 {
            w.note_attempt(1);
        }
        assert_eq!(w.cps(1), 5);
    }

    fn window_with(pdd_ms: u64, failures_in_10: u64) -> Window {
        let mut w = Window::new(WindowConfig::default());
        for i in 0..10 {
            if i < failures_in_10 {
                w.record_call(1000, final_status(503, None));
            } else {
                w.record_call(1000, answered(pdd_ms, 60_000));
            }
        }
        w
    }

    #[test]
    fn quality_orders_by_pdd_and_failures() {
        let q = |pdd, fails| window_with(pdd, fails).quality_score(1000).unwrap();
        assert!(q(1000, 0) > q(2000, 0));
        assert!(q(2000, 0) > q(5000, 0));
        assert!(q(1000, 0) > q(1000, 2));
        assert!(q(1000, 2) > q(1000, 5));
        // Formula spot-checks: PDD 2 s of 10 s → 80; no failure → 100; mean 90.
        assert!((q(2000, 0) - 90.0).abs() < 1e-9);
        // Timeouts weigh double: 1 timeout of 10 costs as much as 2 503s.
        let mut w = window_with(2000, 1);
        let mut t = Window::new(WindowConfig::default());
        t.record_call(1000, timeout());
        for _ in 0..9 {
            t.record_call(1000, answered(2000, 60_000));
        }
        let two_503 = window_with(2000, 2).quality_score(1000).unwrap();
        assert!((t.quality_score(1000).unwrap() - two_503).abs() < 1e-9);
        assert!(t.quality_score(1000).unwrap() < w.quality_score(1000).unwrap());
        for s in [q(0, 0), q(50_000, 10), q(3000, 3)] {
            assert!((0.0..=100.0).contains(&s));
        }
        assert!(Window::new(WindowConfig::default())
            .quality_score(0)
            .is_none());
        // Media: a good MOS keeps the score, a bad one drags it down.
        let base = w.quality_score(1000).unwrap();
        w.with_media(Some(MediaQuality {
            loss: 0.0,
            jitter_ms: 2.0,
            mos: 4.5,
        }));
        let good = w.quality_score(1000).unwrap();
        w.with_media(Some(MediaQuality {
            loss: 0.08,
            jitter_ms: 60.0,
            mos: 1.5,
        }));
        let bad = w.quality_score(1000).unwrap();
        assert!(good > base && base > bad, "{good} {base} {bad}");
        w.with_media(None);
        assert_eq!(w.quality_score(1000).unwrap(), base);
    }

    #[test]
    fn window_clone_is_a_checkpoint() {
        let mut w = window_with(1500, 3);
        w.note_attempt(1000);
        let mut c = w.clone();
        assert_eq!(c.count_stats(), w.count_stats());
        assert_eq!(c.time_stats(1000).clone(), w.time_stats(1000).clone());
        assert_eq!(c.cps(1000), 1);
        c.record_call(1001, answered(1000, 1000));
        assert_eq!(w.count_stats().attempts, 10); // the original is untouched
        assert_eq!(c.count_stats().attempts, 11);
        assert_eq!(c.time_stats(1001).attempts, 11);
    }

    // ---- health ----

    fn health() -> Health {
        Health::new(HealthConfig::default(), 0) // 3 probes down, 5 calls down, 3 probes up
    }

    #[test]
    fn health_goes_down_after_n_failed_probes_and_up_after_k_good() {
        let mut h = health();
        assert!(h.is_up());
        assert_eq!(h.probe_failed(1), None);
        assert_eq!(h.probe_failed(2), None);
        assert_eq!(
            h.probe_failed(3),
            Some(Transition::Down {
                reason: DownReason::FailedProbes(3),
                at_ms: 3
            })
        );
        assert_eq!(h.state(), HealthState::Down);
        assert_eq!(h.since_ms(), 3);
        assert_eq!(h.probe_failed(4), None);
        assert_eq!(h.probe_ok(5), None);
        assert_eq!(h.probe_ok(6), None);
        assert_eq!(h.good_probes(), 2);
        assert_eq!(
            h.probe_ok(7),
            Some(Transition::Up {
                good_probes: 3,
                down_ms: 4,
                at_ms: 7
            })
        );
        assert!(h.is_up());
    }

    #[test]
    fn health_failed_calls_take_it_down_and_a_good_call_resets() {
        let mut h = health();
        for i in 0..4 {
            assert_eq!(h.call_failed_failover(i), None);
        }
        assert_eq!(h.call_ok(4), None); // streak restarts
        for i in 5..9 {
            assert_eq!(h.call_failed_failover(i), None);
        }
        assert_eq!(
            h.call_failed_failover(9),
            Some(Transition::Down {
                reason: DownReason::FailedCalls(5),
                at_ms: 9
            })
        );
        // Late call results do not bring it back; probes do.
        assert_eq!(h.call_ok(10), None);
        assert!(!h.is_up());
        assert_eq!(h.call_failed_failover(11), None);
        h.probe_ok(12);
        h.probe_ok(13);
        assert!(matches!(h.probe_ok(14), Some(Transition::Up { .. })));
        // Counters were reset on the way up: 4 more failures are not enough.
        for i in 15..19 {
            assert_eq!(h.call_failed_failover(i), None);
        }
        assert!(h.is_up());
    }

    #[test]
    fn a_flapping_gateway_does_not_flip_on_every_probe() {
        let mut h = health();
        let mut transitions = 0;
        for i in 0..100u64 {
            let t = if i % 2 == 0 {
                h.probe_failed(i)
            } else {
                h.probe_ok(i)
            };
            transitions += usize::from(t.is_some());
        }
        assert_eq!(transitions, 0);
        assert!(h.is_up());
        // fail, fail, ok, fail, fail: still up.
        h.probe_failed(100);
        h.probe_failed(101);
        h.probe_ok(102);
        h.probe_failed(103);
        assert_eq!(h.probe_failed(104), None);
        assert!(h.is_up());
        // Down, then flapping again: stays down.
        assert!(h.probe_failed(105).is_some());
        for i in 106..206u64 {
            let t = if i % 2 == 0 {
                h.probe_ok(i)
            } else {
                h.probe_failed(i)
            };
            assert_eq!(t, None, "probe {i}");
        }
        assert!(!h.is_up());
        // Two good, one bad, two good: still down (the count restarts).
        h.probe_ok(300);
        h.probe_ok(301);
        h.probe_failed(302);
        h.probe_ok(303);
        assert_eq!(h.probe_ok(304), None);
        assert!(h.probe_ok(305).is_some());
    }

    #[test]
    fn health_config_reads_from_toml_with_defaults() {
        let c: HealthConfig = toml::from_str("down_after_failed_probes = 2").unwrap();
        assert_eq!(c.down_after_failed_probes, 2);
        assert_eq!(c.up_after_good_probes, 3);
        assert!(toml::from_str::<HealthConfig>("bogus = 1").is_err());
        // Zero thresholds act as 1.
        let mut h = Health::starting(
            HealthConfig {
                down_after_failed_probes: 0,
                down_after_failed_calls: 0,
                up_after_good_probes: 0,
            },
            HealthState::Down,
            0,
        );
        assert!(h.probe_ok(1).is_some());
        assert!(h.probe_failed(2).is_some());
    }

    // ---- alarms ----

    #[test]
    fn asr_alarm_fires_once_on_a_drop_and_clears_on_recovery() {
        let mut a = AsrAlarm::new(AsrAlarmConfig::default());
        let step = 10_000;
        // Too few calls: nothing learned, nothing raised.
        assert_eq!(a.check_asr(0, 0.1, 5), None);
        assert!(a.baseline().is_none());
        // An hour of 0.6 builds the baseline.
        let mut now = 0;
        for _ in 0..360 {
            now += step;
            assert_eq!(a.check_asr(now, 0.6, 100), None);
        }
        assert!((a.baseline().unwrap() - 0.6).abs() < 1e-9);
        // The drop to 0.3 raises once.
        let mut events = Vec::new();
        for _ in 0..60 {
            now += step;
            events.extend(a.check_asr(now, 0.3, 100));
        }
        assert_eq!(events.len(), 1, "{events:?}");
        assert!(
            matches!(events[0], AlarmEvent::AsrDeviation { asr, baseline, .. }
                if asr == 0.3 && (baseline - 0.6).abs() < 1e-9)
        );
        assert!(events[0].raised());
        assert_eq!(events[0].kind(), "asr-deviation");
        assert!(a.is_raised());
        // The baseline did not learn the excursion.
        assert!((a.baseline().unwrap() - 0.6).abs() < 1e-9);
        // Half-way back is not recovered (hysteresis), and does not raise again.
        now += step;
        assert_eq!(a.check_asr(now, 0.45, 100), None);
        now += step;
        assert_eq!(a.check_asr(now, 0.35, 100), None);
        // Recovery clears once.
        let mut events = Vec::new();
        for _ in 0..30 {
            now += step;
            events.extend(a.check_asr(now, 0.58, 100));
        }
        assert_eq!(events.len(), 1, "{events:?}");
        assert!(matches!(events[0], AlarmEvent::AsrRecovered { .. }));
        assert!(!events[0].raised());
        assert!(!a.is_raised());
        // A second excursion raises again.
        now += step;
        assert!(a.check_asr(now, 0.9, 100).is_some());
    }

    #[test]
    fn asr_baseline_follows_slow_drift() {
        let mut a = AsrAlarm::new(AsrAlarmConfig::default());
        // 0.6 falling by 0.01 per hour-tau: never an alarm, the baseline follows.
        let mut now = 0;
        let mut asr = 0.6;
        for _ in 0..40 {
            for _ in 0..360 {
                now += 10_000;
                assert_eq!(a.check_asr(now, asr, 100), None);
            }
            asr -= 0.01;
        }
        assert!((a.baseline().unwrap() - 0.21).abs() < 0.05);
    }

    #[test]
    fn failure_streak_alarm() {
        let mut a = FailureStreakAlarm::new(3);
        assert_eq!(a.on_call(1, true), None);
        assert_eq!(a.on_call(2, true), None);
        assert_eq!(
            a.on_call(3, true),
            Some(AlarmEvent::ConsecutiveFailures { count: 3, at_ms: 3 })
        );
        assert_eq!(a.on_call(4, true), None);
        assert_eq!(a.streak(), 4);
        assert_eq!(
            a.on_call(5, false),
            Some(AlarmEvent::FailuresCleared { at_ms: 5 })
        );
        assert_eq!(a.on_call(6, false), None);
        assert_eq!(a.on_call(7, true), None);
        assert_eq!(a.streak(), 1);
    }

    #[test]
    fn saturation_alarm_has_hysteresis() {
        let mut a = SaturationAlarm::new(Resource::Channels);
        assert_eq!(a.check(0, 9, 10), None);
        let e = a.check(1, 10, 10).unwrap();
        assert_eq!(e.kind(), "channels-saturated");
        assert!(e.raised());
        assert_eq!(a.check(2, 10, 10), None);
        assert_eq!(a.check(3, 9, 10), None); // 90 % is not clear yet
        assert_eq!(a.check(4, 10, 10), None); // so no second raise
        let e = a.check(5, 8, 10).unwrap();
        assert!(matches!(
            e,
            AlarmEvent::SaturationCleared {
                resource: Resource::Channels,
                used: 8,
                ..
            }
        ));
        assert!(!a.is_raised());
        let mut c = SaturationAlarm::with_clear_ratio(Resource::Cps, 0.5);
        assert_eq!(c.check(0, 100, 0), None); // unlimited
        assert_eq!(c.check(1, 20, 20).unwrap().kind(), "cps-saturated");
        assert_eq!(c.check(2, 11, 20), None);
        assert!(c.check(3, 10, 20).is_some());
    }

    // ---- policies ----

    fn view(id: &str, priority: u32, weight: u32) -> TrunkView {
        TrunkView {
            id: id.into(),
            priority,
            weight,
            up: true,
            channels_used: 0,
            channels_max: Some(100),
            cps_now: 0,
            cps_max: Some(10),
            asr: None,
            quality: None,
            costs: None,
        }
    }

    /// Three trunks: a (priority 1), b (priority 2), c (priority 3), with cost tables where
    /// each is cheapest somewhere: UK landlines on b, UK mobiles on a, US on c; only a
    /// prices France.
    fn three() -> Vec<TrunkView> {
        let mut a = view("a", 1, 1);
        a.costs = Some(Arc::new(table(&[
            ("44", 0.020, 60, 0),
            ("447", 0.080, 60, 0),
            ("1", 0.012, 60, 0),
            ("33", 0.030, 60, 0),
        ])));
        let mut b = view("b", 2, 1);
        b.costs = Some(Arc::new(table(&[
            ("44", 0.015, 60, 0),
            ("447", 0.120, 60, 0),
            ("1", 0.011, 60, 0),
        ])));
        let mut c = view("c", 3, 1);
        c.costs = Some(Arc::new(table(&[
            ("44", 0.025, 1, 0),
            ("447", 0.100, 1, 0),
            ("1", 0.008, 1, 0),
        ])));
        vec![a, b, c]
    }

    fn plan(policy: Policy, trunks: &[TrunkView], dialled: &str) -> Plan {
        order(policy, trunks, dialled, &mut RrState::new(), 0)
    }

    #[test]
    fn priority_orders_by_priority_then_id() {
        let mut t = three();
        t[0].priority = 5;
        t.push(view("a9", 2, 1)); // same priority as b, id sorts first
        let p = plan(Policy::Priority, &t, "4420");
        assert_eq!(p.order, vec![3, 1, 2, 0]);
        assert!(p.skipped.is_empty());
        assert_eq!(p.reason, "priority: a9 priority 2");
    }

    #[test]
    fn least_cost_picks_the_cheapest_trunk_per_destination() {
        let t = three();
        assert_eq!(
            plan(Policy::LeastCost, &t, "442071234567").order,
            vec![1, 0, 2]
        );
        assert_eq!(
            plan(Policy::LeastCost, &t, "+447700900123").order,
            vec![0, 2, 1]
        );
        assert_eq!(
            plan(Policy::LeastCost, &t, "12125550100").order,
            vec![2, 1, 0]
        );
        // Only a prices France: the others follow, by priority.
        let p = plan(Policy::LeastCost, &t, "33142");
        assert_eq!(p.order, vec![0, 1, 2]);
        assert!(
            p.reason.starts_with("least-cost: a 0.0300/min"),
            "{}",
            p.reason
        );
        // Nobody prices Japan: priority order, and the reason says so.
        let p = plan(Policy::LeastCost, &t, "8131234");
        assert_eq!(p.order, vec![0, 1, 2]);
        assert!(p.reason.contains("no trunk has a rate"), "{}", p.reason);
    }

    #[test]
    fn least_cost_counts_billing_increments() {
        // 0.010/min per started minute vs 0.0105/min per second, priced at 120 s: equal
        // whole minutes, so the per-minute one wins; at 0.0099/min per second it loses.
        let mut t = vec![view("minute", 1, 1), view("second", 2, 1)];
        t[0].costs = Some(Arc::new(table(&[("1", 0.010, 60, 0)])));
        t[1].costs = Some(Arc::new(table(&[("1", 0.0105, 1, 0)])));
        assert_eq!(plan(Policy::LeastCost, &t, "1212").order, vec![0, 1]);
        t[1].costs = Some(Arc::new(table(&[("1", 0.0099, 1, 0)])));
        assert_eq!(plan(Policy::LeastCost, &t, "1212").order, vec![1, 0]);
        // A 30 s first block prices a 120 s call no differently; a 180 s block does.
        t[1].costs = Some(Arc::new(table(&[("1", 0.0099, 1, 180)])));
        assert_eq!(plan(Policy::LeastCost, &t, "1212").order, vec![0, 1]);
    }

    /// Feeds a window 100 calls with `answered_pct` % answered (the rest 480s) and
    /// `pdd_ms`, at time `now`.
    fn feed(w: &mut Window, now: u64, answered_pct: u64, pdd_ms: u64) {
        for i in 0..100 {
            if i % 100 < answered_pct {
                w.record_call(now, answered(pdd_ms, 60_000));
            } else {
                w.record_call(now, final_status(480, Some(pdd_ms)));
            }
        }
    }

    fn refresh(t: &mut [TrunkView], ws: &mut [Window], now: u64) {
        for (v, w) in t.iter_mut().zip(ws.iter_mut()) {
            v.asr = w.recent(now).asr_if(20);
            v.quality = w.quality_score(now);
        }
    }

    #[test]
    fn answer_rate_first_moves_away_from_a_trunk_whose_asr_drops() {
        let mut t = three();
        let mut ws: Vec<Window> = (0..3)
            .map(|_| Window::new(WindowConfig::default()))
            .collect();
        let now = 1_000_000;
        feed(&mut ws[0], now, 70, 2000);
        feed(&mut ws[1], now, 60, 2000);
        feed(&mut ws[2], now, 50, 2000);
        refresh(&mut t, &mut ws, now);
        let p = plan(Policy::AnswerRate, &t, "4420");
        assert_eq!(p.order, vec![0, 1, 2]);
        assert_eq!(p.reason, "answer-rate: a asr 0.70");
        // Trunk a starts refusing 40 % of its calls (503) and answers only 20 %: within its
        // 100-call window its ASR drops to 0.2 and it moves to the back.
        let mut now = now + 1000;
        for i in 0..100u64 {
            now += 10;
            let rec = if i % 5 < 2 {
                final_status(503, None)
            } else if i % 5 == 2 {
                answered(2000, 60_000)
            } else {
                final_status(480, Some(2000))
            };
            ws[0].record_call(now, rec);
        }
        refresh(&mut t, &mut ws, now);
        assert!(close(t[0].asr, 0.2), "{:?}", t[0].asr);
        assert_eq!(plan(Policy::AnswerRate, &t, "4420").order, vec![1, 2, 0]);
    }

    #[test]
    fn answer_rate_gives_trunks_without_enough_calls_a_neutral_prior() {
        let mut t = three();
        t[0].asr = Some(0.8);
        t[1].asr = None; // too few calls: prior = mean(0.8, 0.4) = 0.6
        t[2].asr = Some(0.4);
        let p = plan(Policy::AnswerRate, &t, "1");
        assert_eq!(p.order, vec![0, 1, 2]);
        t[0].asr = Some(0.5); // prior 0.45: between c (0.4) and a (0.5)
        let p = plan(Policy::AnswerRate, &t, "1");
        assert_eq!(p.order, vec![0, 1, 2]);
        t[0].asr = Some(0.3); // prior 0.35: b now between c and a, so c, b, a
        assert_eq!(plan(Policy::AnswerRate, &t, "1").order, vec![2, 1, 0]);
        // Nobody known: NEUTRAL_ASR for all, priority decides.
        for v in &mut t {
            v.asr = None;
        }
        let p = plan(Policy::AnswerRate, &t, "1");
        assert_eq!(p.order, vec![0, 1, 2]);
        assert_eq!(p.reason, "answer-rate: a asr 0.50 (neutral prior 0.50)");
    }

    #[test]
    fn quality_first_prefers_the_lower_pdd_trunk() {
        let mut t = three();
        let mut ws: Vec<Window> = (0..3)
            .map(|_| Window::new(WindowConfig::default()))
            .collect();
        let now = 1_000_000;
        feed(&mut ws[0], now, 60, 4000);
        feed(&mut ws[1], now, 60, 1200);
        feed(&mut ws[2], now, 60, 2500);
        refresh(&mut t, &mut ws, now);
        let p = plan(Policy::Quality, &t, "4420");
        assert_eq!(p.order, vec![1, 2, 0]);
        assert!(p.reason.starts_with("quality: b quality"), "{}", p.reason);
        // A trunk with no calls yet gets the mean of the others.
        t[2].quality = None;
        let mean = (t[0].quality.unwrap() + t[1].quality.unwrap()) / 2.0;
        assert!(mean < t[1].quality.unwrap() && mean > t[0].quality.unwrap());
        assert_eq!(plan(Policy::Quality, &t, "4420").order, vec![1, 2, 0]);
    }

    #[test]
    fn weighted_score_combines_the_figures() {
        let mut t = three();
        t[0].asr = Some(0.4);
        t[1].asr = Some(0.6);
        t[2].asr = Some(0.5);
        t[0].quality = Some(90.0);
        t[1].quality = Some(40.0);
        t[2].quality = Some(60.0);
        let w = |asr, quality, cost| Policy::Weighted { asr, quality, cost };
        // One weight alone reproduces the single-figure policies.
        assert_eq!(plan(w(1.0, 0.0, 0.0), &t, "4420").order, vec![1, 2, 0]);
        assert_eq!(plan(w(0.0, 1.0, 0.0), &t, "4420").order, vec![0, 2, 1]);
        assert_eq!(
            plan(w(0.0, 0.0, 1.0), &t, "4420").order,
            plan(Policy::LeastCost, &t, "4420").order
        );
        // Mixed, for UK landlines (costs at 120 s: a 0.040, b 0.030, c 0.050 → cost
        // scores 0.5, 1, 0): a 0.4+0.9+0.5 = 1.8, b 0.6+0.4+1 = 2.0, c 0.5+0.6+0 = 1.1.
        let p = plan(w(1.0, 1.0, 1.0), &t, "4420");
        assert_eq!(p.order, vec![1, 0, 2]);
        assert!(
            p.reason.starts_with("weighted: b score 2.000"),
            "{}",
            p.reason
        );
    }

    #[test]
    fn weighted_round_robin_distributes_by_weight() {
        let mut t = three();
        t[0].weight = 3;
        t[1].weight = 1;
        t[2].up = false;
        let mut rr = RrState::new();
        let mut counts = [0usize; 3];
        let mut last = None;
        for i in 0..400 {
            let p = order(Policy::WeightedRoundRobin, &t, "4420", &mut rr, i);
            assert_eq!(p.order.len(), 2);
            let first = p.first().unwrap();
            counts[first] += 1;
            // Smooth: the weight-1 trunk is never picked twice in a row.
            assert!(!(first == 1 && last == Some(1)), "pick {i}");
            last = Some(first);
            // The other one follows as the fallback.
            assert_ne!(p.order[0], p.order[1]);
        }
        assert_eq!(counts, [300, 100, 0]);
    }

    #[test]
    fn weighted_round_robin_edge_cases() {
        let mut t = three();
        t[0].weight = 2;
        t[1].weight = 2;
        t[2].weight = 0; // fallback only
        let mut rr = RrState::new();
        let picks: Vec<usize> = (0..4)
            .map(|i| order(Policy::WeightedRoundRobin, &t, "1", &mut rr, i).order[0])
            .collect();
        // Equal weights alternate, starting with the tie-break winner.
        assert_eq!(picks, vec![0, 1, 0, 1]);
        let p = order(Policy::WeightedRoundRobin, &t, "1", &mut rr, 5);
        assert_eq!(p.order[2], 2);
        // All weights 0: priority order.
        for v in &mut t {
            v.weight = 0;
        }
        let p = order(Policy::WeightedRoundRobin, &t, "1", &mut rr, 6);
        assert_eq!(p.order, vec![0, 1, 2]);
        // Entries of trunks gone for a while are forgotten.
        let p = order(
            Policy::WeightedRoundRobin,
            &t,
            "1",
            &mut rr,
            6 + RR_FORGET_MS,
        );
        assert_eq!(p.order.len(), 3);
        assert!(rr.current.is_empty());
    }

    #[test]
    fn down_and_full_trunks_are_left_out_with_reasons() {
        let mut t = three();
        t.push(view("d", 4, 1));
        t[0].up = false;
        t[1].channels_used = 100; // at max
        t[2].cps_now = 10; // at max
        for policy in [
            Policy::Priority,
            Policy::WeightedRoundRobin,
            Policy::LeastCost,
            Policy::AnswerRate,
            Policy::Quality,
            Policy::Weighted {
                asr: 1.0,
                quality: 1.0,
                cost: 1.0,
            },
        ] {
            let p = plan(policy, &t, "4420");
            assert_eq!(p.order, vec![3], "{policy:?}");
            assert_eq!(
                p.skipped,
                vec![
                    Skip {
                        index: 0,
                        cause: FailoverCause::TrunkDown
                    },
                    Skip {
                        index: 1,
                        cause: FailoverCause::ChannelsFull
                    },
                    Skip {
                        index: 2,
                        cause: FailoverCause::CpsFull
                    },
                ],
                "{policy:?}"
            );
        }
        // Unlimited trunks are never full; below the limit is fine.
        t[1].channels_max = None;
        t[2].cps_now = 9;
        assert_eq!(plan(Policy::Priority, &t, "4420").order, vec![1, 2, 3]);
        // Nothing left.
        for v in &mut t {
            v.up = false;
        }
        let p = plan(Policy::LeastCost, &t, "4420");
        assert!(p.order.is_empty() && p.first().is_none());
        assert_eq!(p.skipped.len(), 4);
        assert_eq!(p.reason, "least-cost: no trunk available (4 skipped)");
    }

    #[test]
    fn policy_reads_from_toml() {
        #[derive(serde::Deserialize)]
        struct Route {
            policy: Policy,
        }
        let p = |s: &str| toml::from_str::<Route>(s).map(|r| r.policy);
        assert_eq!(p(r#"policy = "priority""#).unwrap(), Policy::Priority);
        assert_eq!(
            p(r#"policy = "weighted-round-robin""#).unwrap(),
            Policy::WeightedRoundRobin
        );
        assert_eq!(p(r#"policy = "least-cost""#).unwrap(), Policy::LeastCost);
        assert_eq!(p(r#"policy = "answer-rate""#).unwrap(), Policy::AnswerRate);
        assert_eq!(p(r#"policy = "quality""#).unwrap(), Policy::Quality);
        assert_eq!(
            p("policy = { weighted = { asr = 0.5, quality = 0.3, cost = 0.2 } }").unwrap(),
            Policy::Weighted {
                asr: 0.5,
                quality: 0.3,
                cost: 0.2
            }
        );
        assert!(p(r#"policy = "cheapest""#).is_err());
        assert_eq!(Policy::LeastCost.label(), "least-cost");
    }
}
