//! The trunk actor: one per carrier gateway (trunk), under the trunks supervisor. It owns the
//! trunk's health (OPTIONS probes and failed calls, with hysteresis), its sliding-window
//! statistics (answer rate, PDD, ACD, status distribution, quality) and its alarms, all
//! decided by the pure [`crate::routing::trunks`].
//!
//! The budgets a call must take before it is sent — channels and CPS — and the up/down flag
//! live in a [`TrunkShared`] table outside the actor: call actors take and give back
//! channels without a round trip, and a restarted trunk actor finds the channel count as it
//! was, so no limit is exceeded across a restart. Statistics and health are checkpointed
//! after each change and restored by a restarted actor.

use dashmap::DashMap;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::alarms::{Alarm, AlarmSink};
use super::call::CallContext;
use crate::config::{RouteTarget, TrunkConfig};
use crate::routing::trunks::{
    AlarmEvent, AsrAlarm, CallRecord, CostTable, FailoverCause, FailureStreakAlarm, Health,
    HealthConfig, HealthState, Outcome, Resource, SaturationAlarm, Transition, TrunkView, Window,
    WindowConfig,
};
use crate::sip::auth::Challenge;
use crate::sip::dialog::{new_branch, random_token};

mod registration;
use crate::sip::message::{HeaderName, Message, Method};
use crate::store::now_unix_ms;
use crate::timer::TimerId;
use crate::transport::Dest;
pub use registration::{
    parse_register_call_id, TRUNK_REGISTERED, TRUNK_REGISTERED_CALLS, TRUNK_REGISTRATIONS,
};

pub const TRUNK_UP: &str = "switchyard_trunk_up";
pub const TRUNK_CHANNELS: &str = "switchyard_trunk_channels";
pub const TRUNK_ATTEMPTS: &str = "switchyard_trunk_attempts_total";
pub const TRUNK_ANSWERS: &str = "switchyard_trunk_answers_total";
pub const TRUNK_FAILOVERS: &str = "switchyard_trunk_failovers_total";
pub const TRUNK_ASR: &str = "switchyard_trunk_asr_ratio";
pub const TRUNK_PDD: &str = "switchyard_trunk_pdd_seconds";
pub const TRUNK_QUALITY: &str = "switchyard_trunk_quality_score";
pub const TRUNK_ACD: &str = "switchyard_trunk_acd_seconds";
pub const TRUNK_CPS: &str = "switchyard_trunk_cps";
pub const TRUNK_PROBES: &str = "switchyard_trunk_probes_total";
pub const TRUNK_STATE_CHANGES: &str = "switchyard_trunk_state_changes_total";
pub const ROUTE_CHOICES: &str = "switchyard_route_trunk_choices_total";

/// Describes the trunk metrics (label `trunk`; route choices by route, trunk and policy).
pub fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_gauge!(TRUNK_UP, "1 while the trunk is up, 0 while down");
    describe_gauge!(TRUNK_CHANNELS, "Channels (calls) in use on the trunk");
    describe_counter!(
        TRUNK_ATTEMPTS,
        "Call attempts sent to the trunk (when sent)"
    );
    describe_counter!(
        TRUNK_ANSWERS,
        "Attempts the trunk's far end answered (when answered)"
    );
    describe_counter!(
        TRUNK_FAILOVERS,
        "Attempts that moved on to the next trunk, by cause (503, timeout, channels-full, ...)"
    );
    describe_gauge!(TRUNK_ASR, "Answer-seizure ratio over the recent window");
    describe_histogram!(
        TRUNK_PDD,
        Unit::Seconds,
        "Post-dial delay: INVITE sent to the first ringing response"
    );
    describe_gauge!(
        TRUNK_QUALITY,
        "Quality score 0-100 (PDD and failure causes)"
    );
    describe_gauge!(
        TRUNK_ACD,
        Unit::Seconds,
        "Average duration of answered calls over the recent window"
    );
    describe_gauge!(TRUNK_CPS, "Call attempts on the trunk in the last second");
    describe_counter!(TRUNK_PROBES, "OPTIONS probes, by result (ok, failed)");
    describe_counter!(TRUNK_STATE_CHANGES, "Trunk state changes, by new state");
    describe_counter!(
        ROUTE_CHOICES,
        "First-choice trunk of a route's plan, by route, trunk and policy"
    );
    registration::describe();
}

/// The registered name of a trunk's actor.
pub fn actor_name(trunk: &str, node: &str) -> String {
    format!("trunk/{trunk}@{node}")
}

/// Finds a trunk's actor by name.
pub fn lookup(trunk: &str, node: &str) -> Option<ActorRef<TrunkMsg>> {
    ractor::registry::where_is(actor_name(trunk, node)).map(Into::into)
}

/// What every call actor and the trunk actor share of one trunk: budgets, the up flag and
/// the figures policies read. Outlives any actor restart.
pub struct TrunkShared {
    pub id: Arc<str>,
    pub config: TrunkConfig,
    gateways: Vec<RouteTarget>,
    next_gateway: AtomicUsize,
    /// Shared with the trunk's replacements after a configuration change (see
    /// [`TrunkShared::replacing`]): calls that seized a channel under the old configuration
    /// give it back to the same count, so no limit is exceeded across the change.
    channels: Arc<AtomicU32>,
    cps: Mutex<(f64, Instant)>,
    /// This node's part of `max_channels` and `max_cps` in a cluster (the limits hold for
    /// the whole cluster); the configured limits themselves on a node alone.
    channel_cap: AtomicU32,
    cps_cap: AtomicU32,
    up: AtomicBool,
    /// Registered with the carrier (always, for a trunk that does not register): a trunk
    /// is up only when healthy and registered.
    registered: AtomicBool,
    /// Seizures refused for want of a channel / a CPS token since the trunk actor last
    /// looked (its saturation alarms read and reset them).
    refused_channels: AtomicU32,
    refused_cps: AtomicU32,
    /// Recent answer rate and quality score (None until enough calls), for policies.
    figures: Mutex<(Option<f64>, Option<f64>)>,
    pub costs: Option<Arc<CostTable>>,
    /// The durable part of the actor's checkpoint as it last published it (cluster mode
    /// writes it to etcd), and one read from etcd for the actor's next start.
    durable: Mutex<Option<TrunkDurable>>,
    /// Some(None): start from the configuration.
    restore: Mutex<Option<Option<TrunkDurable>>>,
}

impl TrunkShared {
    pub fn new(config: TrunkConfig) -> TrunkShared {
        let gateways = config
            .gateways
            .iter()
            .filter_map(|g| RouteTarget::parse(g).ok())
            .collect();
        let costs = CostTable::new(config.costs.clone())
            .ok()
            .filter(|c| !c.is_empty())
            .map(Arc::new);
        let id: Arc<str> = Arc::from(config.id.as_str());
        metrics::gauge!(TRUNK_UP, "trunk" => id.to_string()).set(if config.register {
            0.0
        } else {
            1.0
        });
        if config.register {
            metrics::gauge!(TRUNK_REGISTERED, "trunk" => id.to_string()).set(0.0);
        }
        TrunkShared {
            id,
            gateways,
            next_gateway: AtomicUsize::new(0),
            channels: Arc::new(AtomicU32::new(0)),
            cps: Mutex::new((f64::from(config.max_cps.max(1)), Instant::now())),
            channel_cap: AtomicU32::new(config.max_channels),
            cps_cap: AtomicU32::new(config.max_cps),
            up: AtomicBool::new(true),
            registered: AtomicBool::new(!config.register),
            refused_channels: AtomicU32::new(0),
            refused_cps: AtomicU32::new(0),
            figures: Mutex::new((None, None)),
            costs,
            config,
            durable: Mutex::new(None),
            restore: Mutex::new(None),
        }
    }

    /// The trunk with a new configuration (changed through the API) in place of `old`: the
    /// channel count is the same counter, so channels seized before the change are given
    /// back to it and count against the new limit; this node's part of the limits, the up
    /// flag and the recent figures carry over until the trunk actor (restarted with this)
    /// and, in a `cluster`, the next sharing of the limits decide; the actor's next start resumes from `old`'s
    /// checkpoint, rebuilt under the new configuration.
    pub fn replacing(config: TrunkConfig, old: &TrunkShared, cluster: bool) -> TrunkShared {
        let mut new = TrunkShared::new(config);
        new.channels = old.channels.clone();
        if cluster {
            // This node's part of a lowered limit is never above the limit; a trunk that
            // had no limit had no part (0) and takes none until the next sharing (within
            // half a second) gives it one.
            let keep = |part: &AtomicU32, limit: u32| part.load(Ordering::Relaxed).min(limit);
            new.set_caps(
                keep(&old.channel_cap, new.config.max_channels),
                keep(&old.cps_cap, new.config.max_cps),
            );
        }
        new.set_up(old.up.load(Ordering::Relaxed));
        if new.config.register && old.config.register {
            // Still registered until the new actor's first answer says otherwise.
            new.set_registered(old.registered.load(Ordering::Relaxed));
        }
        *new.figures.get_mut().unwrap_or_else(|e| e.into_inner()) =
            *old.figures.lock().unwrap_or_else(|e| e.into_inner());
        let handed = match old.durable() {
            Some(d) => Some(Some(d)),
            None => old
                .restore
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        };
        *new.restore.get_mut().unwrap_or_else(|e| e.into_inner()) = handed;
        new
    }

    /// The durable part of the trunk actor's checkpoint, as of its last message (None
    /// before its first start on this node).
    pub fn durable(&self) -> Option<TrunkDurable> {
        self.durable
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Hands the trunk actor's next start a checkpoint from another node (cluster mode, on
    /// claiming the trunk); None makes it start from its configuration. Either way the next
    /// start ignores this node's own, older checkpoint.
    pub fn restore_from(&self, d: Option<TrunkDurable>) {
        *self.restore.lock().unwrap_or_else(|e| e.into_inner()) = Some(d);
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed) && self.registered.load(Ordering::Relaxed)
    }

    /// Whether the carrier registration holds (true for a trunk that does not register).
    pub fn is_registered(&self) -> bool {
        self.registered.load(Ordering::Relaxed)
    }

    pub fn channels(&self) -> u32 {
        self.channels.load(Ordering::Relaxed)
    }

    /// Takes a channel and a CPS token, or says why not. Never exceeds `max_channels`, also
    /// under concurrent callers (compare-and-swap).
    pub fn seize(&self) -> Result<(), FailoverCause> {
        if !self.is_up() {
            return Err(FailoverCause::TrunkDown);
        }
        self.seize_last_resort()
    }

    /// [`TrunkShared::seize`] for a trunk marked down, tried as a last resort when every
    /// trunk that is up has failed the call: limits still hold.
    pub fn seize_last_resort(&self) -> Result<(), FailoverCause> {
        let unlimited = self.config.max_channels == 0;
        let cap = self.channel_cap.load(Ordering::Relaxed);
        let taken = self
            .channels
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |c| {
                (unlimited || c < cap).then_some(c + 1)
            });
        if taken.is_err() {
            self.refused_channels.fetch_add(1, Ordering::Relaxed);
            return Err(FailoverCause::ChannelsFull);
        }
        if self.config.max_cps > 0 {
            let rate = f64::from(self.cps_cap.load(Ordering::Relaxed));
            let mut b = self.cps.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            b.0 = (b.0 + now.duration_since(b.1).as_secs_f64() * rate).min(rate);
            b.1 = now;
            if b.0 < 1.0 {
                drop(b);
                self.release();
                self.refused_cps.fetch_add(1, Ordering::Relaxed);
                return Err(FailoverCause::CpsFull);
            }
            b.0 -= 1.0;
        }
        metrics::gauge!(TRUNK_CHANNELS, "trunk" => self.id.to_string()).increment(1.0);
        Ok(())
    }

    /// Sets this node's part of the trunk's limits (cluster mode; see `cluster::channels`).
    /// Calls already up keep their channels: a lowered cap only refuses new seizures.
    pub fn set_caps(&self, channels: u32, cps: u32) {
        self.channel_cap.store(channels, Ordering::Relaxed);
        self.cps_cap.store(cps, Ordering::Relaxed);
    }

    /// This node's channel cap (the configured `max_channels` on a node alone).
    pub fn channel_cap(&self) -> u32 {
        self.channel_cap.load(Ordering::Relaxed)
    }

    /// Gives a channel back.
    pub fn release(&self) {
        let _ = self
            .channels
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |c| c.checked_sub(1));
        metrics::gauge!(TRUNK_CHANNELS, "trunk" => self.id.to_string())
            .set(f64::from(self.channels()));
    }

    /// The next gateway (round robin over the trunk's addresses).
    pub fn gateway(&self) -> Option<RouteTarget> {
        if self.gateways.is_empty() {
            return None;
        }
        let i = self.next_gateway.fetch_add(1, Ordering::Relaxed) % self.gateways.len();
        Some(self.gateways[i].clone())
    }

    /// The number to send this carrier: strip, then prefix.
    pub fn rewrite(&self, dialled: &str) -> String {
        let rest = dialled
            .get(self.config.strip.min(dialled.len())..)
            .unwrap_or("");
        format!("{}{rest}", self.config.prefix)
    }

    /// What a route policy needs to know of this trunk now.
    /// A trunk not measured yet (too few calls in its window) is seen at its best: the
    /// answer-rate and quality policies then send it calls until it is measured, instead of
    /// starving it behind a measured trunk forever (optimism under uncertainty).
    pub fn view(&self) -> TrunkView {
        let (asr, quality) = *self.figures.lock().unwrap_or_else(|e| e.into_inner());
        let (asr, quality) = (asr.or(Some(1.0)), quality.or(Some(100.0)));
        let opt = |v: u32| (v > 0).then_some(v);
        TrunkView {
            id: self.id.clone(),
            priority: self.config.priority,
            weight: self.config.weight,
            up: self.is_up(),
            channels_used: self.channels(),
            channels_max: opt(self.config.max_channels),
            cps_now: 0,
            cps_max: None,
            asr,
            quality,
            costs: self.costs.clone(),
        }
    }

    /// Takes the owner's view of a trunk this node does not run (cluster mode, from the
    /// owner's checkpoint): up or down, and the figures the routing policies read, so this
    /// node's calls skip a trunk its owner took down and rank trunks as the owner does.
    pub fn follow(&self, d: &TrunkDurable, now: u64) {
        self.set_up(d.up);
        if let Some(w) = &d.window {
            let figures = policy_figures(&mut w.clone(), now);
            *self.figures.lock().unwrap_or_else(|e| e.into_inner()) = figures;
        }
    }

    fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::Relaxed);
        self.up_gauge();
    }

    fn set_registered(&self, registered: bool) {
        self.registered.store(registered, Ordering::Relaxed);
        metrics::gauge!(TRUNK_REGISTERED, "trunk" => self.id.to_string()).set(if registered {
            1.0
        } else {
            0.0
        });
        self.up_gauge();
    }

    fn up_gauge(&self) {
        let up = self.is_up();
        metrics::gauge!(TRUNK_UP, "trunk" => self.id.to_string()).set(if up { 1.0 } else { 0.0 });
    }
}

/// All trunks of a node, by id (one version of [`LiveTrunks`]).
pub type TrunkTable = std::collections::HashMap<Arc<str>, Arc<TrunkShared>>;

/// A fresh table of `configs` (a node's start; nothing carried over).
pub fn trunk_table(configs: &[TrunkConfig]) -> TrunkTable {
    configs
        .iter()
        .map(|c| {
            let shared = Arc::new(TrunkShared::new(c.clone()));
            (shared.id.clone(), shared)
        })
        .collect()
}

/// The node's trunks in force, replaced whole when trunks are added, changed or removed
/// through the API (`cluster::shared_config`). Readers take the current table or one trunk
/// (an owned `Arc`, so a replacement never pulls it from under them); a call's trunk plan
/// holds the trunks it was planned with.
#[derive(Debug, Default)]
pub struct LiveTrunks {
    table: std::sync::RwLock<Arc<TrunkTable>>,
    /// The edge's view of the gateways, kept current with the table (see
    /// [`LiveTrunks::keep_gateways`]).
    trust: std::sync::OnceLock<Arc<crate::security::trust::Trust>>,
    /// Some trunk registers with its carrier (the router looks for calls to its account
    /// only then: one load per INVITE otherwise).
    registering: AtomicBool,
}

fn any_registering(table: &TrunkTable) -> bool {
    table.values().any(|t| t.config.register)
}

impl LiveTrunks {
    /// The trunks of a node's start.
    pub fn new(table: TrunkTable) -> LiveTrunks {
        LiveTrunks {
            registering: AtomicBool::new(any_registering(&table)),
            table: std::sync::RwLock::new(Arc::new(table)),
            trust: std::sync::OnceLock::new(),
        }
    }

    /// Keeps `trust`'s trunk gateway addresses those of the trunks in force, now and on
    /// every [`LiveTrunks::replace`] (calls from them are a carrier's, not anonymous).
    pub fn keep_gateways(&self, trust: Arc<crate::security::trust::Trust>) {
        let _ = self.trust.set(trust);
        self.sync_gateways(&self.current());
    }

    fn sync_gateways(&self, table: &TrunkTable) {
        if let Some(trust) = self.trust.get() {
            trust.set_gateways(table.values().flat_map(|t| {
                t.gateways
                    .iter()
                    .map(|g| (g.addr.ip(), t.id.clone()))
                    .collect::<Vec<_>>()
            }));
        }
    }

    /// The table in force now.
    pub fn current(&self) -> Arc<TrunkTable> {
        self.table.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// One trunk of the table in force.
    /// Whether `user` is the account a registering trunk whose gateway is `from` registered
    /// (a carrier's call to the switch's Contact).
    pub fn registered_account(&self, from: std::net::IpAddr, user: &[u8]) -> bool {
        self.registering.load(Ordering::Relaxed)
            && !user.is_empty()
            && self.current().values().any(|t| {
                t.config.register
                    && t.config.auth_username.as_deref().map(str::as_bytes) == Some(user)
                    && t.gateways.iter().any(|g| g.addr.ip() == from)
            })
    }

    pub fn get(&self, id: &str) -> Option<Arc<TrunkShared>> {
        self.table
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned()
    }

    /// Puts `table` in force (and its gateways in the edge's view).
    pub fn replace(&self, table: TrunkTable) {
        self.sync_gateways(&table);
        self.registering
            .store(any_registering(&table), Ordering::Relaxed);
        *self.table.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(table);
    }
}

/// How one attempt on a trunk ended (sent by the call actor; JSON between nodes).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AttemptReport {
    pub outcome: Outcome,
    pub status: Option<u16>,
    pub pdd_ms: Option<u64>,
    pub duration_ms: Option<u64>,
    /// The carrier leg's measured quality when the call's media was anchored.
    pub media: Option<crate::routing::trunks::MediaQuality>,
}

/// Tells a trunk's actor how an attempt ended (a stopped actor loses one sample only). In a
/// cluster the trunk may run on another node: `remote` carries the report there, so every
/// node's calls feed the one window that judges the trunk.
pub fn report(
    trunk: &str,
    node: &str,
    r: AttemptReport,
    remote: Option<&Arc<dyn super::remote::Remote>>,
) {
    match lookup(trunk, node) {
        Some(t) => {
            let _ = t.cast(TrunkMsg::Attempt(r));
        }
        None => {
            if let Some(remote) = remote {
                remote.trunk(trunk, r);
            }
        }
    }
}

#[derive(Clone, Copy, Debug, Default)]
pub struct TrunkActor;

pub struct TrunkArgs {
    pub shared: Arc<TrunkShared>,
    pub ctx: Arc<CallContext>,
    pub checkpoints: Arc<DashMap<Arc<str>, TrunkCheckpoint>>,
    /// Where alarms go (log, metric, webhook).
    pub alarms: AlarmSink,
}

pub enum TrunkMsg {
    Attempt(AttemptReport),
    /// Time for the next OPTIONS probe (and to judge the last one).
    Probe,
    /// The answer to a probe (its Call-ID's sequence number).
    ProbeAnswered {
        seq: u64,
        status: u16,
    },
    /// With probes off: the hold-down after failed calls is over.
    HoldOver,
    /// Time to look at the carrier registration (an attempt's timeout, a refresh, a retry).
    RegisterTick,
    /// A final (or provisional) answer to one of our REGISTERs.
    RegisterAnswered(Box<Message>),
    /// Time to look at channel and CPS use (saturation alarms).
    CheckSaturation,
    GetInfo(RpcReplyPort<TrunkInfo>),
    InjectPanic,
}

// Local only: ractor's `cluster` feature (on for ractor_cluster) asks each message type to
// say whether it can cross nodes; this one never does (the cluster module carries what does).
impl ractor::Message for TrunkMsg {}

/// A trunk's figures (API, tests).
#[derive(Clone, Debug, serde::Serialize)]
pub struct TrunkInfo {
    pub id: String,
    pub up: bool,
    pub channels: u32,
    pub attempts: u64,
    pub answered: u64,
    pub asr: Option<f64>,
    pub mean_pdd_ms: Option<f64>,
    pub acd_ms: Option<f64>,
    pub quality: Option<f64>,
}

/// What survives a restart of the trunk actor (channels and the up flag are in
/// [`TrunkShared`]).
#[derive(Clone, Debug)]
pub struct TrunkCheckpoint {
    window: Window,
    health: Health,
    alarms: TrunkAlarms,
    /// After a down caused by failed calls, good probes do not count before this time: a
    /// gateway that answers OPTIONS but fails calls would otherwise come back after a few
    /// probes and fail calls again (flapping). The hold doubles each time the trunk falls
    /// again soon after coming back.
    hold_until_ms: u64,
    hold_ms: u64,
    up_since_ms: u64,
}

/// What a trunk's checkpoint carries to another node (cluster mode, JSON in etcd): health,
/// hold-down and alarm edges. Every time is wall-clock Unix ms (`now_unix_ms`), the clock
/// the actor runs on, so it means the same on another node (up to the nodes' clock offset).
///
/// The sliding window (answer rate, PDD, quality, media average) is carried whole, except its
/// last second of attempts (the CPS count is the new owner's own). Health's progress counters
/// towards down (failed probes and calls in a row while up) are private and start again at
/// zero; good probes while down are carried.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TrunkDurable {
    /// Up (calls may be sent) or down.
    pub up: bool,
    /// When the current health state began.
    pub since_ms: u64,
    /// Good probes in a row while down.
    pub good_probes: u32,
    /// Good probes do not count before this time (hold-down after failed calls).
    pub hold_until_ms: u64,
    /// The current hold-down length (doubles on flapping).
    pub hold_ms: u64,
    /// When the trunk last came up.
    pub up_since_ms: u64,
    /// The answer-rate alarm's learned baseline, and whether it is raised.
    pub asr_baseline: Option<f64>,
    pub asr_raised: bool,
    /// Failed-over calls in a row (the streak alarm is raised at its threshold).
    pub failure_streak: u32,
    /// Saturation alarms raised.
    pub channels_saturated: bool,
    pub cps_saturated: bool,
    /// The moving average of anchored calls' media quality: loss, jitter (ms), MOS.
    pub media: Option<(f64, f64, f64)>,
    /// The sliding window of calls (absent in checkpoints written before it was carried).
    #[serde(default)]
    pub window: Option<Window>,
}

impl TrunkCheckpoint {
    /// A trunk that starts from its configuration: up, empty window, no alarm.
    fn fresh(c: &TrunkConfig, alarms: &AlarmSink, now: u64) -> TrunkCheckpoint {
        TrunkCheckpoint {
            window: Window::new(WindowConfig::default()),
            health: Health::new(health_config(c), now),
            hold_until_ms: 0,
            hold_ms: 0,
            up_since_ms: now,
            alarms: TrunkAlarms {
                asr: AsrAlarm::new(alarms.asr_config()),
                streak: FailureStreakAlarm::new(alarms.config().failure_streak),
                channels: SaturationAlarm::new(Resource::Channels),
                cps: SaturationAlarm::new(Resource::Cps),
            },
        }
    }

    /// The part of this checkpoint that crosses nodes.
    pub fn durable(&self) -> TrunkDurable {
        TrunkDurable {
            up: self.health.is_up(),
            since_ms: self.health.since_ms(),
            good_probes: self.health.good_probes(),
            hold_until_ms: self.hold_until_ms,
            hold_ms: self.hold_ms,
            up_since_ms: self.up_since_ms,
            asr_baseline: self.alarms.asr.baseline(),
            asr_raised: self.alarms.asr.is_raised(),
            failure_streak: self.alarms.streak.streak(),
            channels_saturated: self.alarms.channels.is_raised(),
            cps_saturated: self.alarms.cps.is_raised(),
            media: self.window.media().map(|m| (m.loss, m.jitter_ms, m.mos)),
            window: Some(self.window.clone()),
        }
    }

    /// A checkpoint rebuilt from another node's [`TrunkDurable`] at `now`. The pure types
    /// keep their fields private, so their state is rebuilt through their own API (the alarm
    /// edges they return are dropped: they were raised on the other node already). Start
    /// times from a node whose clock runs ahead are clamped to `now`; the hold-down end
    /// stays absolute, so the time it has left shrinks by the time the takeover took.
    pub fn from_durable(
        d: &TrunkDurable,
        c: &TrunkConfig,
        alarms: &AlarmSink,
        now: u64,
    ) -> TrunkCheckpoint {
        let mut cp = TrunkCheckpoint::fresh(c, alarms, now);
        let state = if d.up {
            HealthState::Up
        } else {
            HealthState::Down
        };
        cp.health = Health::starting(health_config(c), state, d.since_ms.min(now));
        if !d.up {
            // Below the threshold (else it would be up), so no transition happens here.
            let need = c.up_after_good_probes.max(1);
            for _ in 0..d.good_probes.min(need - 1) {
                let _ = cp.health.probe_ok(now);
            }
        }
        cp.hold_until_ms = d.hold_until_ms;
        cp.hold_ms = d.hold_ms;
        cp.up_since_ms = d.up_since_ms.min(now);
        if let Some(b) = d.asr_baseline.filter(|b| b.is_finite()) {
            let a = alarms.asr_config();
            let calls = a.min_calls.max(1);
            let _ = cp.alarms.asr.check_asr(now, b, calls);
            if d.asr_raised {
                // Any ASR further than the deviation from the baseline raises it.
                let _ = cp
                    .alarms
                    .asr
                    .check_asr(now, b + a.deviation.abs() + 1.0, calls);
            }
        }
        // The streak alarm is raised exactly when the streak reaches its threshold; the
        // replay stops there (a longer streak only counts on).
        let threshold = alarms.config().failure_streak.max(1);
        for _ in 0..d.failure_streak.min(threshold) {
            let _ = cp.alarms.streak.on_call(now, true);
        }
        if d.channels_saturated {
            let _ = cp.alarms.channels.check(now, 1, 1);
        }
        if d.cps_saturated {
            let _ = cp.alarms.cps.check(now, 1, 1);
        }
        if let Some(w) = &d.window {
            cp.window = w.clone();
        } else if let Some((loss, jitter_ms, mos)) = d.media {
            cp.window
                .with_media(Some(crate::routing::trunks::MediaQuality {
                    loss,
                    jitter_ms,
                    mos,
                }));
        }
        cp
    }
}

/// The figures the routing policies read from a trunk's window: its answer rate (once 20
/// calls are in the window) and its quality score.
fn policy_figures(w: &mut Window, now: u64) -> (Option<f64>, Option<f64>) {
    (w.recent(now).asr_if(20), w.quality_score(now))
}

fn health_config(c: &TrunkConfig) -> HealthConfig {
    HealthConfig {
        down_after_failed_probes: c.down_after_failed_probes,
        down_after_failed_calls: c.down_after_failed_calls,
        up_after_good_probes: c.up_after_good_probes,
    }
}

/// The trunk's alarm edges (in the checkpoint, so a restart neither re-raises nor forgets a
/// raised alarm).
#[derive(Clone, Debug)]
struct TrunkAlarms {
    asr: AsrAlarm,
    streak: FailureStreakAlarm,
    channels: SaturationAlarm,
    cps: SaturationAlarm,
}

/// How often channel and CPS use are checked against the limits.
const SATURATION_CHECK: Duration = Duration::from_secs(1);

pub struct TrunkState {
    shared: Arc<TrunkShared>,
    ctx: Arc<CallContext>,
    checkpoints: Arc<DashMap<Arc<str>, TrunkCheckpoint>>,
    alarms: AlarmSink,
    cp: TrunkCheckpoint,
    myself: ActorRef<TrunkMsg>,
    probe_seq: u64,
    /// The probe in flight (sequence number) and whether it was answered.
    probe_out: Option<(u64, bool)>,
    timer: Option<TimerId>,
    /// The pending saturation check.
    saturation_timer: Option<TimerId>,
    /// The carrier registration (`register = true`), and its digest nonce count.
    reg: Option<crate::routing::registration::Registration>,
    reg_nonce: String,
    reg_nc: u32,
}

impl Actor for TrunkActor {
    type Msg = TrunkMsg;
    type State = TrunkState;
    type Arguments = TrunkArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<TrunkMsg>,
        args: TrunkArgs,
    ) -> Result<TrunkState, ActorProcessingErr> {
        let c = &args.shared.config;
        let now = now_unix_ms() as u64;
        // A checkpoint from another node (handed over on claiming the trunk in cluster mode)
        // comes first: this node's own one, if any, is from before the trunk left it.
        let handed = args
            .shared
            .restore
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let cp = match handed {
            Some(Some(d)) => TrunkCheckpoint::from_durable(&d, c, &args.alarms, now),
            Some(None) => TrunkCheckpoint::fresh(c, &args.alarms, now),
            None => match args.checkpoints.get(&args.shared.id) {
                Some(cp) => cp.clone(),
                None => TrunkCheckpoint::fresh(c, &args.alarms, now),
            },
        };
        // The up flag outlives the actor on this node, but a trunk that moved here finds
        // this node's flag as it was (or up): the health it resumes decides.
        args.shared.set_up(cp.health.is_up());
        let mut state = TrunkState {
            shared: args.shared,
            ctx: args.ctx,
            checkpoints: args.checkpoints,
            alarms: args.alarms,
            cp,
            myself,
            probe_seq: 0,
            probe_out: None,
            timer: None,
            saturation_timer: None,
            reg: None,
            reg_nonce: String::new(),
            reg_nc: 0,
        };
        state.register_start(now);
        state.schedule_probe();
        state.schedule_saturation_check();
        if !state.cp.health.is_up() && state.shared.config.probe_interval_secs == 0 {
            // Without probes only the hold-down timer brings it back, and that timer was
            // the previous actor's.
            let left = state.cp.hold_until_ms.saturating_sub(now).max(1);
            state
                .ctx
                .timers
                .schedule_cast_with(Duration::from_millis(left), &state.myself, |_| {
                    TrunkMsg::HoldOver
                });
        }
        state.publish_durable();
        Ok(state)
    }

    async fn handle(
        &self,
        _myself: ActorRef<TrunkMsg>,
        msg: TrunkMsg,
        state: &mut TrunkState,
    ) -> Result<(), ActorProcessingErr> {
        let now = now_unix_ms() as u64;
        match msg {
            TrunkMsg::Attempt(r) => state.on_attempt(r, now),
            TrunkMsg::Probe => {
                state.judge_probe(now);
                state.send_probe();
                state.schedule_probe();
            }
            TrunkMsg::ProbeAnswered { seq, status } => {
                if let Some((s, answered)) = &mut state.probe_out {
                    if *s == seq && !*answered {
                        *answered = true;
                        // Any answer shows the gateway alive; a 5xx says it is not serving.
                        let ok = status < 500;
                        state.probe_result(ok, now);
                    }
                }
            }
            TrunkMsg::HoldOver => {
                if !state.shared.is_up() {
                    let t = state.cp.health.probe_ok(now);
                    let t = t.or_else(|| {
                        // Without probes the hold-down alone brings the trunk back.
                        let n = state.shared.config.up_after_good_probes;
                        (1..n).find_map(|_| state.cp.health.probe_ok(now))
                    });
                    state.transition(t);
                }
            }
            TrunkMsg::RegisterTick => state.register_tick(now),
            TrunkMsg::RegisterAnswered(resp) => state.register_answered(&resp, now),
            TrunkMsg::CheckSaturation => {
                state.check_saturation(now);
                state.schedule_saturation_check();
            }
            TrunkMsg::GetInfo(reply) => {
                let _ = reply.send(state.info(now));
            }
            TrunkMsg::InjectPanic => panic!("injected fault"),
        }
        state.publish(now);
        state
            .checkpoints
            .insert(state.shared.id.clone(), state.cp.clone());
        state.publish_durable();
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<TrunkMsg>,
        state: &mut TrunkState,
    ) -> Result<(), ActorProcessingErr> {
        for id in [state.timer.take(), state.saturation_timer.take()]
            .into_iter()
            .flatten()
        {
            state.ctx.timers.cancel(id);
        }
        Ok(())
    }
}

impl TrunkState {
    /// Shares the durable part of the checkpoint with the cluster's checkpoint writer (a
    /// small copy, only when it changed).
    fn publish_durable(&self) {
        let d = self.cp.durable();
        let mut slot = self
            .shared
            .durable
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if slot.as_ref() != Some(&d) {
            *slot = Some(d);
        }
    }

    fn labels(&self) -> [(&'static str, String); 1] {
        [("trunk", self.shared.id.to_string())]
    }

    fn on_attempt(&mut self, r: AttemptReport, now: u64) {
        let labels = self.labels();
        self.cp.window.note_attempt(now);
        if let Some(pdd) = r.pdd_ms {
            metrics::histogram!(TRUNK_PDD, &labels).record(pdd as f64 / 1000.0);
        }
        let failed_over = matches!(r.outcome, Outcome::Failover(c) if !c.is_pre_send());
        let transition = match r.outcome {
            Outcome::Answered => self.cp.health.call_ok(now),
            Outcome::CalleeFinal => self.cp.health.call_ok(now),
            Outcome::Failover(cause) => {
                metrics::counter!(TRUNK_FAILOVERS, "trunk" => self.shared.id.to_string(), "cause" => cause.label()).increment(1);
                self.cp.health.call_failed_failover(now)
            }
        };
        self.cp.window.record_call(
            now,
            CallRecord {
                outcome: r.outcome,
                pdd_ms: r.pdd_ms,
                duration_ms: r.duration_ms,
                status: r.status,
            },
        );
        if let Some(m) = r.media {
            // A moving average over anchored calls (one bad call moves it a fifth).
            let avg = match self.cp.window.media() {
                Some(old) => crate::routing::trunks::MediaQuality {
                    loss: 0.8 * old.loss + 0.2 * m.loss,
                    jitter_ms: 0.8 * old.jitter_ms + 0.2 * m.jitter_ms,
                    mos: 0.8 * old.mos + 0.2 * m.mos,
                },
                None => m,
            };
            self.cp.window.with_media(Some(avg));
        }
        let streak = self.cp.alarms.streak.on_call(now, failed_over);
        self.alarm(streak);
        let stats = self.cp.window.recent(now);
        if let Some(asr) = stats.asr() {
            let calls = stats.attempts;
            let asr = self.cp.alarms.asr.check_asr(now, asr, calls);
            self.alarm(asr);
        }
        self.transition(transition);
    }

    /// Hands an alarm edge of the pure alarms to the sink (log, metric, webhook).
    fn alarm(&self, ev: Option<AlarmEvent>) {
        if let Some(ev) = ev {
            self.alarms
                .raise(Alarm::from_event(self.shared.id.clone(), &ev));
        }
    }

    fn schedule_saturation_check(&mut self) {
        let c = &self.shared.config;
        if c.max_channels == 0 && c.max_cps == 0 {
            return;
        }
        let id = self
            .ctx
            .timers
            .schedule_cast_with(SATURATION_CHECK, &self.myself, |_| {
                TrunkMsg::CheckSaturation
            });
        self.saturation_timer = Some(id);
    }

    /// A limit counts as reached when a seizure was refused for it since the last check (a
    /// burst between checks is not missed), or when the channels in use stand at the limit.
    fn check_saturation(&mut self, now: u64) {
        let (max_ch, max_cps) = (self.shared.config.max_channels, self.shared.config.max_cps);
        let refused_ch = self.shared.refused_channels.swap(0, Ordering::Relaxed);
        let refused_cps = self.shared.refused_cps.swap(0, Ordering::Relaxed);
        let used_ch = if refused_ch > 0 {
            max_ch
        } else {
            self.shared.channels()
        };
        let ev = self.cp.alarms.channels.check(now, used_ch, max_ch);
        self.alarm(ev);
        let used_cps = if refused_cps > 0 { max_cps } else { 0 };
        let ev = self.cp.alarms.cps.check(now, used_cps, max_cps);
        self.alarm(ev);
    }

    fn transition(&mut self, t: Option<Transition>) {
        let Some(t) = t else { return };
        let up = matches!(t, Transition::Up { .. });
        self.shared.set_up(up);
        let state = if up { "up" } else { "down" };
        metrics::counter!(TRUNK_STATE_CHANGES, "trunk" => self.shared.id.to_string(), "state" => state).increment(1);
        match t {
            Transition::Down { reason, at_ms } => {
                if matches!(reason, crate::routing::trunks::DownReason::FailedCalls(_)) {
                    let base = self.shared.config.down_hold_secs.max(1) * 1000;
                    // Fell again within 5 minutes of coming back: hold twice as long (5 min
                    // at most); otherwise start from the configured hold.
                    self.cp.hold_ms = if at_ms.saturating_sub(self.cp.up_since_ms) < 300_000
                        && self.cp.hold_ms > 0
                    {
                        (self.cp.hold_ms * 2).min(300_000)
                    } else {
                        base
                    };
                    self.cp.hold_until_ms = at_ms + self.cp.hold_ms;
                }
                // The alarm is the log line (warn) as well.
                self.alarms.raise(Alarm::trunk_down(
                    self.shared.id.clone(),
                    reason.label(),
                    at_ms,
                ));
                if self.shared.config.probe_interval_secs == 0 {
                    let hold = Duration::from_secs(self.shared.config.down_hold_secs.max(1));
                    self.ctx
                        .timers
                        .schedule_cast_with(hold, &self.myself, |_| TrunkMsg::HoldOver);
                }
            }
            Transition::Up { down_ms, at_ms, .. } => {
                self.cp.up_since_ms = at_ms;
                self.alarms
                    .raise(Alarm::trunk_up(self.shared.id.clone(), down_ms, at_ms))
            }
        }
    }

    fn schedule_probe(&mut self) {
        let secs = self.shared.config.probe_interval_secs;
        if secs == 0 {
            return;
        }
        let id =
            self.ctx
                .timers
                .schedule_cast_with(Duration::from_secs(secs), &self.myself, |_| TrunkMsg::Probe);
        self.timer = Some(id);
    }

    /// The previous probe had its whole interval to be answered.
    fn judge_probe(&mut self, now: u64) {
        if let Some((_, false)) = self.probe_out.take() {
            self.probe_result(false, now);
        }
    }

    fn probe_result(&mut self, ok: bool, now: u64) {
        metrics::counter!(TRUNK_PROBES, "trunk" => self.shared.id.to_string(), "result" => if ok { "ok" } else { "failed" }).increment(1);
        let t = if ok {
            if now < self.cp.hold_until_ms {
                // Held down after failed calls: this probe does not count yet.
                return;
            }
            self.cp.health.probe_ok(now)
        } else {
            self.cp.health.probe_failed(now)
        };
        self.transition(t);
    }

    /// An OPTIONS to the next gateway, outside any transaction (one shot per interval: a
    /// lost probe is a failed probe). Its answer reaches us through the router by Call-ID.
    fn send_probe(&mut self) {
        if !self.ctx.ready() {
            return;
        }
        let Some(gw) = self.shared.gateway() else {
            return;
        };
        self.probe_seq += 1;
        let seq = self.probe_seq;
        let (host, _) = self.ctx.sent_by(gw.protocol);
        let call_id = probe_call_id(&self.shared.id, seq, &host);
        let m = self.gateway_request(
            Method::Options,
            format!("sip:{}", gw.addr),
            &gw,
            &format!("<sip:probe@{host}>"),
            format!("<sip:{}>", gw.addr),
            call_id,
            seq,
        );
        self.send_to_gateway(&gw, &m);
        self.probe_out = Some((seq, false));
    }

    /// A request of the switch's own to a gateway, outside any dialog (an OPTIONS probe, a
    /// REGISTER): Request-URI, a Via with a new branch and rport, Max-Forwards, From with a
    /// new tag, To, Call-ID, CSeq and User-Agent; the caller adds the rest.
    #[allow(clippy::too_many_arguments)]
    fn gateway_request(
        &self,
        method: Method,
        ruri: String,
        gw: &RouteTarget,
        from: &str,
        to: String,
        call_id: String,
        cseq: u64,
    ) -> Message {
        let (host, port) = self.ctx.sent_by(gw.protocol);
        let mut m = Message::request(method.clone(), format!("{ruri}{}", gw.protocol.uri_param()));
        m.push(
            HeaderName::Via,
            format!(
                "SIP/2.0/{} {host}:{port};branch={};rport",
                gw.protocol.as_str().to_ascii_uppercase(),
                String::from_utf8_lossy(&new_branch())
            ),
        );
        m.push(HeaderName::MaxForwards, "70");
        m.push(
            HeaderName::From,
            format!("{from};tag={}", String::from_utf8_lossy(&random_token(8))),
        );
        m.push(HeaderName::To, to);
        m.push(HeaderName::CallId, call_id);
        m.push(HeaderName::CSeq, format!("{cseq} {method}"));
        m.push(HeaderName::UserAgent, self.ctx.user_agent.clone());
        m
    }

    fn send_to_gateway(&self, gw: &RouteTarget, m: &Message) {
        self.ctx.transports().send_message(
            Dest {
                protocol: gw.protocol,
                addr: gw.addr,
                conn: None,
            },
            m,
        );
    }

    fn publish(&mut self, now: u64) {
        let labels = self.labels();
        if let Some(acd) = self.cp.window.recent(now).acd_ms() {
            metrics::gauge!(TRUNK_ACD, &labels).set(acd / 1000.0);
        }
        metrics::gauge!(TRUNK_CPS, &labels).set(f64::from(self.cp.window.cps(now)));
        let (asr, quality) = policy_figures(&mut self.cp.window, now);
        if let Some(a) = asr {
            metrics::gauge!(TRUNK_ASR, &labels).set(a);
        }
        if let Some(q) = quality {
            metrics::gauge!(TRUNK_QUALITY, &labels).set(q);
        }
        *self
            .shared
            .figures
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = (asr, quality);
    }

    fn info(&mut self, now: u64) -> TrunkInfo {
        let quality = self.cp.window.quality_score(now);
        let s = self.cp.window.recent(now);
        TrunkInfo {
            id: self.shared.id.to_string(),
            up: self.shared.is_up(),
            channels: self.shared.channels(),
            attempts: s.attempts,
            answered: s.answered,
            asr: s.asr(),
            mean_pdd_ms: s.mean_pdd_ms(),
            acd_ms: s.acd_ms(),
            quality,
        }
    }
}

/// Probe Call-IDs name their trunk, so the router can hand the answer back:
/// `sy-probe-<seq>-<trunk>@<host>`.
pub const PROBE_PREFIX: &str = "sy-probe-";

fn probe_call_id(trunk: &str, seq: u64, host: &str) -> String {
    format!("{PROBE_PREFIX}{seq}-{trunk}@{host}")
}

/// The trunk and sequence number of a probe's Call-ID.
pub fn parse_probe_call_id(call_id: &[u8]) -> Option<(String, u64)> {
    let s = std::str::from_utf8(call_id).ok()?;
    let rest = s.strip_prefix(PROBE_PREFIX)?;
    let (seq, rest) = rest.split_once('-')?;
    let (trunk, _) = rest.rsplit_once('@')?;
    Some((trunk.to_string(), seq.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(max_channels: u32) -> TrunkConfig {
        toml::from_str(&format!(
            "id = \"t1\"\ngateways = [\"sip:127.0.0.1:5070\", \"sip:127.0.0.1:5071;transport=tcp\"]\nmax_channels = {max_channels}\nstrip = 1\nprefix = \"00\"\n"
        ))
        .unwrap()
    }

    #[test]
    fn a_replaced_trunk_shares_its_channel_count_and_the_table_follows() {
        let old = Arc::new(TrunkShared::new(config(2)));
        old.seize().unwrap();
        let live = LiveTrunks::new([(old.id.clone(), old.clone())].into_iter().collect());
        let before = live.get("t1").unwrap();
        assert!(Arc::ptr_eq(&before, &old));
        let new = Arc::new(TrunkShared::replacing(config(1), &old, false));
        assert_eq!(new.channels(), 1, "the call from before counts");
        assert_eq!(new.seize(), Err(FailoverCause::ChannelsFull), "new limit 1");
        live.replace([(new.id.clone(), new.clone())].into_iter().collect());
        assert!(Arc::ptr_eq(&live.get("t1").unwrap(), &new));
        old.release(); // the old call ends through the trunk it seized
        assert_eq!(new.channels(), 0);
        assert_eq!(
            before.channels(),
            0,
            "a version taken before stays readable"
        );
        assert!(live.get("t2").is_none());
    }

    #[test]
    fn channels_never_exceed_the_limit_under_contention() {
        let t = Arc::new(TrunkShared::new(config(50)));
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let t = t.clone();
                std::thread::spawn(move || (0..100).filter(|_| t.seize().is_ok()).count())
            })
            .collect();
        let taken: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
        assert_eq!(taken, 50);
        assert_eq!(t.channels(), 50);
        assert_eq!(t.seize(), Err(FailoverCause::ChannelsFull));
        t.release();
        assert_eq!(t.seize(), Ok(()));
        t.set_up(false);
        assert_eq!(t.seize(), Err(FailoverCause::TrunkDown));
    }

    #[test]
    fn gateways_rotate_and_numbers_are_rewritten() {
        let t = TrunkShared::new(config(0));
        let a = t.gateway().unwrap();
        let b = t.gateway().unwrap();
        assert_ne!(a.addr, b.addr);
        assert_eq!(t.gateway().unwrap().addr, a.addr);
        assert_eq!(t.rewrite("9441234"), "00441234");
    }

    fn sink() -> AlarmSink {
        let c: crate::config::AlarmsConfig = toml::from_str("failure_streak = 3").unwrap();
        AlarmSink::log_only(&c, "n1")
    }

    /// A trunk that was down, held, alarmed and measured on one node.
    fn worn(now: u64) -> TrunkCheckpoint {
        let c = config(10);
        let alarms = sink();
        let mut cp = TrunkCheckpoint::fresh(&c, &alarms, now - 60_000);
        let asr = alarms.asr_config();
        cp.alarms.asr.check_asr(now - 50_000, 0.6, asr.min_calls);
        assert!(cp
            .alarms
            .asr
            .check_asr(now - 40_000, 0.1, asr.min_calls)
            .is_some());
        for _ in 0..5 {
            let _ = cp.alarms.streak.on_call(now - 30_000, true);
        }
        assert!(cp.alarms.channels.check(now - 30_000, 10, 10).is_some());
        let down = (0..c.down_after_failed_calls.max(1))
            .find_map(|_| cp.health.call_failed_failover(now - 20_000));
        assert!(down.is_some(), "the trunk goes down");
        let _ = cp.health.probe_ok(now - 10_000);
        cp.hold_until_ms = now + 30_000;
        cp.hold_ms = 40_000;
        cp.up_since_ms = now - 50_000;
        cp.window
            .with_media(Some(crate::routing::trunks::MediaQuality {
                loss: 0.02,
                jitter_ms: 8.0,
                mos: 4.0,
            }));
        cp
    }

    #[test]
    fn durable_part_survives_the_trip_to_another_node() {
        let now = 1_700_000_000_000;
        let cp = worn(now);
        let d = cp.durable();
        assert!(!d.up && d.asr_raised && d.channels_saturated && !d.cps_saturated);
        assert_eq!((d.failure_streak, d.good_probes), (5, 1));
        // Another node, 4 s later (the lease and the takeover).
        let later = now + 4_000;
        let back = TrunkCheckpoint::from_durable(&d, &config(10), &sink(), later);
        let again = back.durable();
        // The streak is replayed up to its threshold (3): the alarm is raised as before.
        assert_eq!(again.failure_streak, 3);
        assert!(back.alarms.streak.clone().on_call(later, false).is_some());
        assert_eq!(
            TrunkDurable {
                failure_streak: 5,
                ..again
            },
            d
        );
        assert!(!back.health.is_up());
        assert_eq!(back.alarms.asr.baseline(), Some(0.6));
    }

    #[test]
    fn the_window_of_calls_crosses_nodes_as_json() {
        use crate::routing::trunks::{CallRecord, FailoverCause, Outcome};
        let now = 1_700_000_000_000;
        let mut cp = worn(now);
        for i in 0..10u64 {
            let outcome = if i % 4 == 0 {
                Outcome::Failover(FailoverCause::ServiceUnavailable)
            } else {
                Outcome::Answered
            };
            let rec = CallRecord {
                outcome,
                pdd_ms: Some(800),
                duration_ms: Some(30_000),
                status: Some(if i % 4 == 0 { 503 } else { 200 }),
            };
            cp.window.record_call(now - 5_000 + i * 100, rec);
        }
        let before = cp.window.count_stats().clone();
        assert_eq!((before.attempts, before.answered), (10, 7));
        let json = serde_json::to_vec(&cp.durable()).unwrap();
        let d: TrunkDurable = serde_json::from_slice(&json).unwrap();
        let mut back = TrunkCheckpoint::from_durable(&d, &config(10), &sink(), now + 4_000);
        assert_eq!(back.window.count_stats(), &before);
        assert_eq!(back.window.time_stats(now + 4_000).answered, 7);
        // A checkpoint from before the window was carried still reads.
        let old: TrunkDurable = serde_json::from_str(r#"{"up":true,"since_ms":1,"good_probes":0,"hold_until_ms":0,"hold_ms":0,"up_since_ms":1,"asr_baseline":null,"asr_raised":false,"failure_streak":0,"channels_saturated":false,"cps_saturated":false,"media":null}"#).unwrap();
        assert!(old.window.is_none());
    }

    #[test]
    fn checkpoint_times_are_wall_clock_and_clamped_to_the_new_node() {
        let now = 1_700_000_000_000;
        let d = worn(now).durable();
        // Wall-clock Unix ms: the hold-down end is absolute, so the time left shrinks by
        // the time the move took.
        let later = now + 10_000;
        let back = TrunkCheckpoint::from_durable(&d, &config(10), &sink(), later);
        assert_eq!(back.hold_until_ms - later, 20_000);
        assert_eq!(back.health.since_ms(), d.since_ms);
        // A checkpoint from a node whose clock ran 5 s ahead: no start lies in the future.
        let behind = d.since_ms - 5_000;
        let back = TrunkCheckpoint::from_durable(&d, &config(10), &sink(), behind);
        assert_eq!(back.health.since_ms(), behind);
        assert!(back.up_since_ms <= behind);
    }

    #[test]
    fn probe_call_ids_round_trip() {
        let id = probe_call_id("carrier-a", 42, "10.0.0.1");
        assert_eq!(
            parse_probe_call_id(id.as_bytes()),
            Some(("carrier-a".into(), 42))
        );
        assert_eq!(parse_probe_call_id(b"abc@host"), None);
    }
}
