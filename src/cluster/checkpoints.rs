//! Singleton checkpoints handed over across the cluster: a queue's statistics and a trunk's
//! health, hold-down and alarm edges outlive the node that ran them.
//!
//! On one node, queue and trunk actors checkpoint into memory after each change, so a
//! supervisor restart resumes. In cluster mode this module also keeps the durable part of
//! those checkpoints in etcd, NOT bound to a lease (they must outlive the node):
//! - `<prefix>/checkpoints/queue/<tenant>/<id>`: the queue's [`Counts`];
//! - `<prefix>/checkpoints/trunk/<id>`: the trunk's [`TrunkDurable`];
//!
//! each a JSON object with `"v": 1` and the writing time `at_ms` (Unix ms).
//!
//! - **Writing**: every second, the checkpoints of the singletons this node owns that changed
//!   since its last write, in transactions of at most [`TXN_OPS`] puts, each only while the
//!   singleton's owner key in etcd still names this node (a node that lost a singleton never
//!   overwrites its new owner's checkpoint). On give-away, the final checkpoint is written
//!   after the actor stopped and before the owner key is deleted, so the next owner resumes
//!   exactly; after a crash it resumes from at most a second (plus the lease) before.
//! - **Reading**: on claim, before the actor starts, within [`READ_LIMIT`] (a slow etcd must
//!   not hold a takeover past its 5 s target), into the node's in-memory checkpoints, where
//!   the actors' restore path finds them. A queue gets its statistics only: its waiting
//!   callers re-join from their call actors and its agents ask the calls that hold them. A
//!   missing, unreadable (bad JSON, another version) or late checkpoint starts the singleton
//!   from its configuration: counted and logged, never a refusal to start.
//!
//! - **Following**: every node watches `<prefix>/checkpoints/trunk/`; a trunk it does not run
//!   takes its owner's up/down and policy figures from each new checkpoint
//!   (`TrunkShared::follow`), so calls through any node skip a trunk its owner took down and
//!   rank trunks by the owner's answer rate and quality (within about a second). The attempts
//!   of those calls reach the owner's trunk actor through the inter-node port.
//!
//! Every time in a checkpoint is wall-clock Unix ms, as the actors' clocks are, so it means
//! the same on another node; the queue's are sums of durations.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, EventType, GetOptions, Txn, TxnOp, WatchOptions};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use super::Directory;
use crate::actors::queue::{self, CcContext, Counts, QueueCheckpoint};
use crate::actors::trunk::{LiveTrunks, TrunkDurable};
use crate::store::now_unix_ms;
use crate::supervision::catalog::Catalog;

/// Checkpoints written to etcd, by `kind` (`queue`, `trunk`).
pub const CHECKPOINTS_WRITTEN: &str = "switchyard_cluster_checkpoints_written_total";
/// Checkpoints looked up on claim, by `kind` and `outcome` (`restored`, `missing`,
/// `invalid`, `unavailable`: etcd did not answer in time).
pub const CHECKPOINTS_RESTORED: &str = "switchyard_cluster_checkpoints_restored_total";
/// Checkpoint writes that failed (etcd errors; a write refused because the singleton moved
/// is not one).
pub const CHECKPOINT_WRITE_ERRORS: &str = "switchyard_cluster_checkpoint_write_errors_total";

/// Trunk checkpoints of other owners taken in by this node (`outcome`: `applied`, `invalid`).
pub const TRUNK_FOLLOWED: &str = "switchyard_cluster_trunk_followed_total";

/// Describes the checkpoint metrics (called once by `metrics::describe_all`).
pub fn describe() {
    metrics::describe_counter!(
        TRUNK_FOLLOWED,
        "Trunk checkpoints of other owners applied to this node's view of the trunk, by outcome \
         (applied, invalid)."
    );
    metrics::describe_counter!(
        CHECKPOINTS_WRITTEN,
        "Singleton checkpoints written to etcd, by kind (queue, trunk)."
    );
    metrics::describe_counter!(
        CHECKPOINTS_RESTORED,
        "Singleton checkpoints looked up on claim, by kind and outcome \
         (restored, missing, invalid, unavailable)."
    );
    metrics::describe_counter!(
        CHECKPOINT_WRITE_ERRORS,
        "Singleton checkpoint writes to etcd that failed."
    );
}

/// The checkpoint format's version; another version is not read (the singleton starts from
/// its configuration).
pub const VERSION: u32 = 1;
/// How often changed checkpoints are written.
pub const WRITE_EVERY: Duration = Duration::from_secs(1);
/// The longest a claim waits for its checkpoints.
pub const READ_LIMIT: Duration = Duration::from_secs(1);
/// Puts per transaction (etcd's default `--max-txn-ops` is 128).
pub const TXN_OPS: usize = 128;

/// A queue's checkpoint in etcd.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QueueRecord {
    pub v: u32,
    /// When it was written (Unix ms).
    pub at_ms: u64,
    pub counts: Counts,
}

/// A trunk's checkpoint in etcd.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrunkRecord {
    pub v: u32,
    /// When it was written (Unix ms).
    pub at_ms: u64,
    pub trunk: TrunkDurable,
}

/// A queue's checkpoint as JSON.
pub fn encode_queue(counts: &Counts, at_ms: u64) -> String {
    let r = QueueRecord {
        v: VERSION,
        at_ms,
        counts: counts.clone(),
    };
    serde_json::to_string(&r).unwrap_or_default()
}

/// A trunk's checkpoint as JSON.
pub fn encode_trunk(trunk: &TrunkDurable, at_ms: u64) -> String {
    let r = TrunkRecord {
        v: VERSION,
        at_ms,
        trunk: trunk.clone(),
    };
    serde_json::to_string(&r).unwrap_or_default()
}

/// Reads a queue's checkpoint; Err says why it cannot be used.
pub fn decode_queue(bytes: &[u8]) -> Result<QueueRecord, String> {
    decode(bytes)
}

/// Reads a trunk's checkpoint; Err says why it cannot be used.
pub fn decode_trunk(bytes: &[u8]) -> Result<TrunkRecord, String> {
    decode(bytes)
}

/// The version is checked first, so a newer node's format is refused as such rather than
/// half-read.
fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    #[derive(Deserialize)]
    struct Head {
        v: Option<u32>,
    }
    let head: Head = serde_json::from_slice(bytes).map_err(|e| format!("not JSON: {e}"))?;
    match head.v {
        Some(VERSION) => serde_json::from_slice(bytes).map_err(|e| format!("bad checkpoint: {e}")),
        Some(v) => Err(format!("version {v}, this node reads {VERSION}")),
        None => Err("no version".to_string()),
    }
}

/// What a checkpoint key's payload was when last written (compared to skip unchanged ones).
#[derive(Clone, Debug, PartialEq)]
enum Payload {
    Queue(Counts),
    /// Boxed: a trunk's window of calls is a few kilobytes.
    Trunk(Box<TrunkDurable>),
}

impl Payload {
    fn encode(&self, at_ms: u64) -> String {
        match self {
            Payload::Queue(c) => encode_queue(c, at_ms),
            Payload::Trunk(t) => encode_trunk(t, at_ms),
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Payload::Queue(_) => "queue",
            Payload::Trunk(_) => "trunk",
        }
    }
}

/// The node's checkpoint keeper (cluster mode only). Cheap to clone.
#[derive(Clone)]
pub struct Checkpoints(Arc<Inner>);

struct Inner {
    client: Client,
    prefix: String,
    directory: Arc<Directory>,
    catalog: Catalog,
    cc: Arc<CcContext>,
    trunks: Arc<LiveTrunks>,
    /// What this node last wrote (or restored) per singleton key.
    written: Mutex<HashMap<String, Payload>>,
    /// One writer at a time: the final write of a give-away is never overtaken by an older
    /// periodic one.
    writing: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Checkpoints {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpoints")
            .field("prefix", &self.0.prefix)
            .finish()
    }
}

impl Checkpoints {
    /// A keeper writing under `prefix` with `client`; [`Checkpoints::spawn_writer`] starts
    /// its periodic writes.
    pub fn new(
        client: Client,
        prefix: &str,
        directory: Arc<Directory>,
        catalog: Catalog,
        cc: Arc<CcContext>,
        trunks: Arc<LiveTrunks>,
    ) -> Checkpoints {
        Checkpoints(Arc::new(Inner {
            client,
            prefix: prefix.to_string(),
            directory,
            catalog,
            cc,
            trunks,
            written: Mutex::new(HashMap::new()),
            writing: tokio::sync::Mutex::new(()),
        }))
    }

    /// Writes the changed checkpoints of what this node owns every [`WRITE_EVERY`], until
    /// the runtime stops.
    pub fn spawn_writer(&self) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(WRITE_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let keys = me.owned_here();
                me.write(&keys).await;
            }
        })
    }

    /// Follows the trunk checkpoints other owners write (see the module doc), until the
    /// runtime stops; a failed watch is counted and started again after a second.
    pub fn spawn_follower(&self) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            let mut client = me.0.client.clone();
            loop {
                if let Err(e) = me.follow(&mut client).await {
                    metrics::counter!(super::membership::CLUSTER_ETCD_ERRORS, "op" => "watch")
                        .increment(1);
                    tracing::warn!(error = %e, "trunk checkpoint watch failed; retrying");
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        })
    }

    /// Reads every trunk checkpoint, then applies each new one as it is written.
    async fn follow(&self, client: &mut Client) -> Result<(), String> {
        let prefix = self.key("trunk/");
        let resp = client
            .get(prefix.as_str(), Some(GetOptions::new().with_prefix()))
            .await
            .map_err(|e| e.to_string())?;
        let revision = resp.header().map_or(0, |h| h.revision());
        for kv in resp.kvs() {
            self.follow_one(&prefix, kv.key(), kv.value());
        }
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(revision + 1);
        let mut stream = client
            .watch(prefix.as_str(), Some(options))
            .await
            .map_err(|e| e.to_string())?;
        while let Some(resp) = stream.message().await.map_err(|e| e.to_string())? {
            if resp.canceled() || resp.compact_revision() > 0 {
                return Err("trunk checkpoint watch cancelled or compacted".into());
            }
            for ev in resp.events() {
                if let (EventType::Put, Some(kv)) = (ev.event_type(), ev.kv()) {
                    self.follow_one(&prefix, kv.key(), kv.value());
                }
            }
        }
        Err("trunk checkpoint watch ended".into())
    }

    /// Applies one trunk checkpoint, unless this node runs the trunk (its actor decides).
    fn follow_one(&self, prefix: &str, key: &[u8], value: &[u8]) {
        let Some(id) = std::str::from_utf8(key)
            .ok()
            .and_then(|k| k.strip_prefix(prefix))
        else {
            return;
        };
        if crate::actors::trunk::lookup(id, &self.0.cc.node).is_some() {
            return;
        }
        let Some(trunk) = self.0.trunks.get(id) else {
            return;
        };
        match decode_trunk(value) {
            Ok(r) => {
                trunk.follow(&r.trunk, now_unix_ms() as u64);
                metrics::counter!(TRUNK_FOLLOWED, "outcome" => "applied").increment(1);
            }
            Err(e) => {
                metrics::counter!(TRUNK_FOLLOWED, "outcome" => "invalid").increment(1);
                tracing::warn!(trunk = id, error = %e, "trunk checkpoint not understood");
            }
        }
    }

    /// `<prefix>/checkpoints/<singleton key>`.
    fn key(&self, singleton: &str) -> String {
        format!("{}/checkpoints/{singleton}", self.0.prefix)
    }

    fn owner_key(&self, singleton: &str) -> String {
        format!("{}/owners/{singleton}", self.0.prefix)
    }

    /// The queue and trunk keys this node owns, as its directory says.
    fn owned_here(&self) -> Vec<String> {
        let me = self.0.directory.me();
        self.0
            .directory
            .owners()
            .into_iter()
            .filter(|(k, o)| o == me && (k.starts_with("queue/") || k.starts_with("trunk/")))
            .map(|(k, _)| k)
            .collect()
    }

    /// The checkpointed keys a singleton stands for: a tenant's queues, a trunk itself.
    fn covered(&self, singleton: &str) -> Vec<String> {
        if singleton.starts_with("trunk/") {
            vec![singleton.to_string()]
        } else {
            self.0.catalog.also(singleton).to_vec()
        }
    }

    /// The current durable payload of a queue or trunk key on this node, if it has one.
    fn current(&self, key: &str) -> Option<Payload> {
        if let Some(id) = key.strip_prefix("trunk/") {
            let t = self.0.trunks.get(id)?;
            return t.durable().map(|d| Payload::Trunk(Box::new(d)));
        }
        let (tenant, q) = key.strip_prefix("queue/")?.split_once('/')?;
        let name = queue::actor_name(tenant, q, &self.0.cc.node);
        let cp = self.0.cc.queue_checkpoints.get(&name)?;
        Some(Payload::Queue(cp.counts().clone()))
    }

    /// The final write of singletons given away (after their actors stopped, before their
    /// owner keys are deleted).
    pub async fn write_final(&self, singletons: &[String]) {
        let keys: Vec<String> = singletons.iter().flat_map(|s| self.covered(s)).collect();
        self.write(&keys).await;
    }

    /// Writes the checkpoints of `keys` that changed since this node last wrote them, each
    /// only while its owner key names this node.
    async fn write(&self, keys: &[String]) {
        let _one = self.0.writing.lock().await;
        let changed: Vec<(String, Payload)> = {
            let written = self.0.written.lock().unwrap_or_else(|e| e.into_inner());
            keys.iter()
                .filter_map(|k| {
                    let p = self.current(k)?;
                    (written.get(k) != Some(&p)).then(|| (k.clone(), p))
                })
                .collect()
        };
        if changed.is_empty() {
            return;
        }
        let at = now_unix_ms() as u64;
        let me = self.0.directory.me().to_string();
        for batch in changed.chunks(TXN_OPS) {
            let txn = |batch: &[(String, Payload)]| {
                let when: Vec<Compare> = batch
                    .iter()
                    .map(|(k, _)| Compare::value(self.owner_key(k), CompareOp::Equal, me.clone()))
                    .collect();
                let puts: Vec<TxnOp> = batch
                    .iter()
                    .map(|(k, p)| TxnOp::put(self.key(k), p.encode(at), None))
                    .collect();
                Txn::new().when(when).and_then(puts)
            };
            match self.0.client.kv_client().txn(txn(batch)).await {
                Ok(r) if r.succeeded() => self.wrote(batch),
                Ok(_) => {
                    // Some singleton of the batch is no longer ours: the others go one by one.
                    for one in batch.chunks(1) {
                        match self.0.client.kv_client().txn(txn(one)).await {
                            Ok(r) if r.succeeded() => self.wrote(one),
                            Ok(_) => {}
                            Err(e) => self.write_failed(&one[0].0, &e),
                        }
                    }
                }
                Err(e) => self.write_failed(&batch[0].0, &e),
            }
        }
    }

    fn wrote(&self, batch: &[(String, Payload)]) {
        let mut written = self.0.written.lock().unwrap_or_else(|e| e.into_inner());
        for (k, p) in batch {
            metrics::counter!(CHECKPOINTS_WRITTEN, "kind" => p.kind()).increment(1);
            written.insert(k.clone(), p.clone());
        }
    }

    fn write_failed(&self, key: &str, e: &etcd_client::Error) {
        metrics::counter!(CHECKPOINT_WRITE_ERRORS).increment(1);
        tracing::warn!(key, error = %e, "checkpoint not written; retried in a second");
    }

    /// On claiming `singleton` (before its actor starts): reads its checkpoints from etcd
    /// (a tenant's: its queues') within [`READ_LIMIT`] and puts them where the actors'
    /// restore path finds them. Never fails: what cannot be read starts from the
    /// configuration.
    pub async fn restore(&self, singleton: &str) {
        let keys = self.covered(singleton);
        if keys.is_empty() {
            return;
        }
        // One request: the trunk's key, or the tenant's queue keys by prefix.
        let (get, opts) = match singleton.strip_prefix("tenant/") {
            Some(tenant) => (
                self.key(&format!("queue/{tenant}/")),
                Some(GetOptions::new().with_prefix()),
            ),
            None => (self.key(singleton), None),
        };
        let mut kv = self.0.client.kv_client();
        let found: Result<HashMap<String, Vec<u8>>, String> =
            match tokio::time::timeout(READ_LIMIT, kv.get(get, opts)).await {
                Ok(Ok(resp)) => Ok(resp
                    .kvs()
                    .iter()
                    .filter_map(|kv| Some((kv.key_str().ok()?.to_string(), kv.value().to_vec())))
                    .collect()),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err(format!("no answer within {READ_LIMIT:?}")),
            };
        for key in keys {
            let value = match &found {
                Ok(map) => Ok(map.get(&self.key(&key))),
                Err(e) => Err(e),
            };
            self.restore_one(&key, value);
        }
    }

    /// Restores one queue or trunk key from what etcd gave (`Err`: etcd did not answer).
    fn restore_one(&self, key: &str, value: Result<Option<&Vec<u8>>, &String>) {
        let trunk = key.strip_prefix("trunk/");
        let kind = if trunk.is_some() { "trunk" } else { "queue" };
        let payload: Result<Payload, (&'static str, String)> = match value {
            Err(e) => Err(("unavailable", e.clone())),
            Ok(None) => Err(("missing", String::new())),
            Ok(Some(bytes)) if trunk.is_some() => decode_trunk(bytes)
                .map(|r| Payload::Trunk(Box::new(r.trunk)))
                .map_err(|e| ("invalid", e)),
            Ok(Some(bytes)) => decode_queue(bytes)
                .map(|r| Payload::Queue(r.counts))
                .map_err(|e| ("invalid", e)),
        };
        let outcome = match &payload {
            Ok(_) => "restored",
            Err((o, _)) => o,
        };
        metrics::counter!(CHECKPOINTS_RESTORED, "kind" => kind, "outcome" => outcome).increment(1);
        match &payload {
            Ok(_) => tracing::info!(key, "checkpoint restored from etcd"),
            Err(("missing", _)) => {
                tracing::info!(key, "no checkpoint in etcd: starting from configuration")
            }
            Err((o, e)) => tracing::warn!(
                key,
                outcome = o,
                error = %e,
                "checkpoint not usable: starting from configuration"
            ),
        }
        let payload = payload.ok();
        // This node's own in-memory checkpoint, if any, dates from before the singleton left
        // it: it is replaced either way, so nothing stale (old counts, old callers) comes back.
        match (trunk, &payload) {
            (Some(id), p) => {
                if let Some(t) = self.0.trunks.get(id) {
                    let d = match p {
                        Some(Payload::Trunk(d)) => Some(TrunkDurable::clone(d)),
                        _ => None,
                    };
                    t.restore_from(d);
                }
            }
            (None, p) => {
                let Some((tenant, q)) = key
                    .strip_prefix("queue/")
                    .and_then(|rest| rest.split_once('/'))
                else {
                    return;
                };
                let name = queue::actor_name(tenant, q, &self.0.cc.node);
                match p {
                    Some(Payload::Queue(c)) => {
                        self.0
                            .cc
                            .queue_checkpoints
                            .insert(name, QueueCheckpoint::from_counts(c.clone()));
                    }
                    _ => {
                        self.0.cc.queue_checkpoints.remove(&name);
                    }
                }
            }
        }
        let mut written = self.0.written.lock().unwrap_or_else(|e| e.into_inner());
        match payload {
            // What etcd holds already: not written back until it changes.
            Some(p) => written.insert(key.to_string(), p),
            None => written.remove(key),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts() -> Counts {
        Counts {
            joined: 12,
            answered: 7,
            abandoned: 3,
            overflowed: 2,
            within_sl: 5,
            wait_answered_ms: 41_000,
            handled: 6,
            handle_ms: 360_000,
            offers: 15,
        }
    }

    fn durable() -> TrunkDurable {
        TrunkDurable {
            up: false,
            since_ms: 1_700_000_000_000,
            good_probes: 1,
            hold_until_ms: 1_700_000_030_000,
            hold_ms: 30_000,
            up_since_ms: 1_699_999_000_000,
            asr_baseline: Some(0.55),
            asr_raised: true,
            failure_streak: 7,
            channels_saturated: true,
            cps_saturated: false,
            media: Some((0.01, 12.5, 4.1)),
            window: Some(crate::routing::trunks::Window::new(Default::default())),
        }
    }

    #[test]
    fn queue_checkpoint_round_trips() {
        let json = encode_queue(&counts(), 1234);
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["v"], 1);
        assert_eq!(v["counts"]["abandoned"], 3);
        let r = decode_queue(json.as_bytes()).unwrap();
        assert_eq!((r.v, r.at_ms), (1, 1234));
        assert_eq!(r.counts, counts());
    }

    #[test]
    fn trunk_checkpoint_round_trips() {
        let json = encode_trunk(&durable(), 99);
        let r = decode_trunk(json.as_bytes()).unwrap();
        assert_eq!(r.trunk, durable());
        assert_eq!(r.at_ms, 99);
    }

    #[test]
    fn other_versions_and_bad_json_are_refused() {
        let json = encode_queue(&counts(), 1).replace("\"v\":1", "\"v\":2");
        let e = decode_queue(json.as_bytes()).unwrap_err();
        assert!(e.contains("version 2"), "{e}");
        assert!(decode_queue(b"{\"counts\":{}}")
            .unwrap_err()
            .contains("no version"));
        assert!(decode_queue(b"not json").unwrap_err().contains("not JSON"));
        // The right version with the wrong body (a trunk's record read as a queue's).
        let trunk = encode_trunk(&durable(), 1);
        assert!(decode_queue(trunk.as_bytes())
            .unwrap_err()
            .contains("bad checkpoint"));
    }

    #[test]
    fn payloads_compare_by_content_not_by_write_time() {
        let a = Payload::Queue(counts());
        let mut c = counts();
        assert_eq!(a, Payload::Queue(c.clone()));
        c.abandoned += 1;
        assert_ne!(a, Payload::Queue(c));
        assert_ne!(a.encode(1), a.encode(2));
        assert_eq!(a.kind(), "queue");
        assert_eq!(Payload::Trunk(Box::new(durable())).kind(), "trunk");
    }
}
