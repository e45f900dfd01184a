//! Supervisor tests with real ractor actors. A `Worker` reports its starts to a probe
//! channel; tests drive it with messages and assert through the wrapper functions.
//! Tests run on tokio's current-thread runtime, so every actor runs on the test's thread
//! and a thread-local metrics recorder sees their counters.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, ActorStatus};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::*;

// ---- test worker --------------------------------------------------------------------

#[derive(Debug)]
struct Started {
    id: String,
    generation: u32,
    restored: u32,
    at: Instant,
}

#[derive(Clone)]
struct Worker;

struct WorkerArgs {
    id: String,
    generation: u32,
    /// The value a restarted worker resumes from (a stand-in for a checkpoint).
    restored: u32,
    checkpoint: Arc<AtomicU32>,
    probe: mpsc::UnboundedSender<Started>,
    /// Stop (normally) right in `post_start`: a child that ends before its supervisor
    /// could have learnt about it.
    stop_at_once: bool,
    /// Panic in `post_start` while `generation` is at most this.
    panic_until_generation: u32,
}

enum WorkerMsg {
    Panic,
    Fail,
    Stop,
    Checkpoint(u32),
}
impl ractor::Message for WorkerMsg {}

impl Actor for Worker {
    type Msg = WorkerMsg;
    type State = WorkerArgs;
    type Arguments = WorkerArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<WorkerMsg>,
        args: WorkerArgs,
    ) -> Result<WorkerArgs, ActorProcessingErr> {
        let _ = args.probe.send(Started {
            id: args.id.clone(),
            generation: args.generation,
            restored: args.restored,
            at: Instant::now(),
        });
        Ok(args)
    }

    async fn post_start(
        &self,
        myself: ActorRef<WorkerMsg>,
        state: &mut WorkerArgs,
    ) -> Result<(), ActorProcessingErr> {
        if state.generation <= state.panic_until_generation {
            panic!("worker {} generation {} panics", state.id, state.generation);
        }
        if state.stop_at_once {
            myself.stop(None);
        }
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<WorkerMsg>,
        msg: WorkerMsg,
        state: &mut WorkerArgs,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            WorkerMsg::Panic => panic!("worker {} told to panic", state.id),
            WorkerMsg::Fail => return Err("told to fail".into()),
            WorkerMsg::Stop => myself.stop(Some("done".into())),
            WorkerMsg::Checkpoint(v) => state.checkpoint.store(v, Ordering::SeqCst),
        }
        Ok(())
    }
}

/// Builds worker specs sharing one probe and counting factory calls per id.
struct Harness {
    tx: mpsc::UnboundedSender<Started>,
    rx: mpsc::UnboundedReceiver<Started>,
    generations: Arc<Mutex<HashMap<String, Arc<AtomicU32>>>>,
}

impl Harness {
    fn new() -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        Self {
            tx,
            rx,
            generations: Arc::default(),
        }
    }

    fn spec_with(
        &self,
        id: &str,
        restart: Restart,
        stop_at_once: bool,
        panic_until: u32,
    ) -> ChildSpec {
        let generation = self
            .generations
            .lock()
            .unwrap()
            .entry(id.to_owned())
            .or_default()
            .clone();
        let checkpoint = Arc::new(AtomicU32::new(0));
        let probe = self.tx.clone();
        let owned = id.to_owned();
        ChildSpec::actor(id, "worker", restart, Worker, move || WorkerArgs {
            id: owned.clone(),
            generation: generation.fetch_add(1, Ordering::SeqCst) + 1,
            restored: checkpoint.load(Ordering::SeqCst),
            checkpoint: checkpoint.clone(),
            probe: probe.clone(),
            stop_at_once,
            panic_until_generation: panic_until,
        })
    }

    fn spec(&self, id: &str, restart: Restart) -> ChildSpec {
        self.spec_with(id, restart, false, 0)
    }

    /// How many times the factory of `id` has run.
    fn starts(&self, id: &str) -> u32 {
        self.generations
            .lock()
            .unwrap()
            .get(id)
            .map_or(0, |g| g.load(Ordering::SeqCst))
    }

    /// Next start reported by a worker, within 5 s.
    async fn next_start(&mut self) -> Started {
        tokio::time::timeout(Duration::from_secs(5), self.rx.recv())
            .await
            .expect("a worker start within 5 s")
            .expect("probe open")
    }

    /// Drain the starts reported so far.
    fn drain(&mut self) -> Vec<Started> {
        let mut v = Vec::new();
        while let Ok(s) = self.rx.try_recv() {
            v.push(s);
        }
        v
    }
}

async fn child_cell(sup: &ActorRef<SupervisorMsg>, id: &str) -> Option<ActorCell> {
    which_children(sup)
        .await
        .unwrap()
        .into_iter()
        .find(|c| c.id == id)
        .and_then(|c| c.cell)
}

fn send(cell: &ActorCell, msg: WorkerMsg) {
    ActorRef::<WorkerMsg>::from(cell.clone())
        .cast(msg)
        .expect("worker alive");
}

/// Poll `check` every 5 ms for up to 5 s.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while std::time::Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("timed out waiting for: {what}");
}

async fn spawn_sup(args: SupervisorArgs) -> ActorRef<SupervisorMsg> {
    let (sup, _join) = Actor::spawn(None, Supervisor, args)
        .await
        .expect("supervisor starts");
    sup
}

/// Panic child `id`, wait until its factory has run `gen` times, then return the
/// factory-call counts of every id in `ids` once the supervisor has finished the restart
/// (a query is handled only after the whole group restart).
async fn crash_and_settle(
    h: &Harness,
    sup: &ActorRef<SupervisorMsg>,
    id: &str,
    ids: &[&str],
) -> Vec<u32> {
    let before = h.starts(id);
    send(&child_cell(sup, id).await.unwrap(), WorkerMsg::Panic);
    eventually("the crashed child restarted", || async {
        h.starts(id) > before
    })
    .await;
    let counts = count_children(sup).await.unwrap();
    assert_eq!(counts.active, ids.len(), "all children running again");
    ids.iter().map(|i| h.starts(i)).collect()
}

// ---- metrics capture ----------------------------------------------------------------

#[derive(Default)]
struct TestRecorder {
    counters: Mutex<HashMap<String, Arc<AtomicU64>>>,
}

impl TestRecorder {
    fn key(name: &str, label: &str, value: &str) -> String {
        format!("{name}{{{label}={value}}}")
    }

    fn get(&self, name: &str, label: &str, value: &str) -> u64 {
        self.counters
            .lock()
            .unwrap()
            .get(&Self::key(name, label, value))
            .map_or(0, |c| c.load(Ordering::SeqCst))
    }
}

impl Recorder for TestRecorder {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        let label = key.labels().next().expect("labelled counter");
        let k = Self::key(key.name(), label.key(), label.value());
        let c = self.counters.lock().unwrap().entry(k).or_default().clone();
        Counter::from_arc(c)
    }

    fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::noop()
    }

    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::noop()
    }
}

// ---- strategies -----------------------------------------------------------------------

fn three(h: &Harness, strategy: Strategy) -> SupervisorArgs {
    SupervisorArgs::new("test", strategy)
        .with_child(h.spec("a", Restart::Permanent))
        .with_child(h.spec("b", Restart::Permanent))
        .with_child(h.spec("c", Restart::Permanent))
}

#[tokio::test]
async fn one_for_one_restarts_only_the_failed_child() {
    let h = Harness::new();
    let sup = spawn_sup(three(&h, Strategy::OneForOne)).await;
    let a = child_cell(&sup, "a").await.unwrap();
    let counts = crash_and_settle(&h, &sup, "b", &["a", "b", "c"]).await;
    assert_eq!(counts, vec![1, 2, 1]);
    assert_eq!(child_cell(&sup, "a").await.unwrap().get_id(), a.get_id());
    sup.stop(None);
}

#[tokio::test]
async fn one_for_all_restarts_all_children() {
    let mut h = Harness::new();
    let sup = spawn_sup(three(&h, Strategy::OneForAll)).await;
    let a = child_cell(&sup, "a").await.unwrap();
    h.drain();
    let counts = crash_and_settle(&h, &sup, "b", &["a", "b", "c"]).await;
    assert_eq!(counts, vec![2, 2, 2]);
    assert_eq!(
        a.get_status(),
        ActorStatus::Stopped,
        "old sibling was stopped"
    );
    // Restarted in start order.
    let order: Vec<String> = h.drain().into_iter().map(|s| s.id).collect();
    assert_eq!(order, ["a", "b", "c"]);
    sup.stop(None);
}

#[tokio::test]
async fn rest_for_one_restarts_the_failed_and_later_children() {
    let h = Harness::new();
    let sup = spawn_sup(three(&h, Strategy::RestForOne)).await;
    let counts = crash_and_settle(&h, &sup, "b", &["a", "b", "c"]).await;
    assert_eq!(counts, vec![1, 2, 2]);
    let counts = crash_and_settle(&h, &sup, "c", &["a", "b", "c"]).await;
    assert_eq!(counts, vec![1, 2, 3]);
    let counts = crash_and_settle(&h, &sup, "a", &["a", "b", "c"]).await;
    assert_eq!(counts, vec![2, 3, 4]);
    sup.stop(None);
}

// ---- restart types --------------------------------------------------------------------

#[tokio::test]
async fn restart_types_on_normal_stop_and_on_failure() {
    let h = Harness::new();
    let sup = spawn_sup(
        SupervisorArgs::new("types", Strategy::OneForOne)
            .with_intensity(Intensity::new(100, Duration::from_secs(10)))
            .with_child(h.spec("perm", Restart::Permanent))
            .with_child(h.spec("trans", Restart::Transient))
            .with_child(h.spec("temp", Restart::Temporary)),
    )
    .await;

    // Permanent: restarted even after a normal stop.
    send(&child_cell(&sup, "perm").await.unwrap(), WorkerMsg::Stop);
    eventually("permanent restarted after stop", || async {
        h.starts("perm") == 2
    })
    .await;

    // Transient: restarted after a handler Err and after a panic ...
    send(&child_cell(&sup, "trans").await.unwrap(), WorkerMsg::Fail);
    eventually("transient restarted after Err", || async {
        h.starts("trans") == 2
    })
    .await;
    send(&child_cell(&sup, "trans").await.unwrap(), WorkerMsg::Panic);
    eventually("transient restarted after panic", || async {
        h.starts("trans") == 3
    })
    .await;
    // ... and after being killed ...
    child_cell(&sup, "trans").await.unwrap().kill();
    eventually("transient restarted after kill", || async {
        h.starts("trans") == 4
    })
    .await;
    // ... but not after a normal stop: it is forgotten.
    send(&child_cell(&sup, "trans").await.unwrap(), WorkerMsg::Stop);
    eventually("transient forgotten after stop", || async {
        !child_cell_exists(&sup, "trans").await
    })
    .await;
    assert_eq!(h.starts("trans"), 4);

    // Temporary: never restarted, even after a panic.
    send(&child_cell(&sup, "temp").await.unwrap(), WorkerMsg::Panic);
    eventually("temporary forgotten after panic", || async {
        !child_cell_exists(&sup, "temp").await
    })
    .await;
    assert_eq!(h.starts("temp"), 1);

    let c = count_children(&sup).await.unwrap();
    assert_eq!(
        c,
        ChildCounts {
            specs: 1,
            active: 1
        }
    );
    sup.stop(None);
}

async fn child_cell_exists(sup: &ActorRef<SupervisorMsg>, id: &str) -> bool {
    which_children(sup)
        .await
        .unwrap()
        .iter()
        .any(|c| c.id == id)
}

// ---- intensity and escalation ---------------------------------------------------------

#[tokio::test]
async fn intensity_exceeded_escalates_to_the_parent() {
    let rec = TestRecorder::default();
    let _guard = metrics::set_default_local_recorder(&rec);
    let h = Harness::new();
    // inner tolerates one restart per 10 s; the second failure makes it give up.
    let inner = SupervisorArgs::new("inner", Strategy::OneForOne)
        .with_intensity(Intensity::new(1, Duration::from_secs(10)))
        .with_child(h.spec("w", Restart::Permanent));
    let outer = spawn_sup(
        SupervisorArgs::new("outer", Strategy::OneForOne)
            .with_child(ChildSpec::supervisor("inner", inner)),
    )
    .await;
    let inner1 = child_cell(&outer, "inner").await.unwrap();
    let inner1_ref = ActorRef::<SupervisorMsg>::from(inner1.clone());
    let w1 = child_cell(&inner1_ref, "w").await.unwrap();

    send(&w1, WorkerMsg::Panic);
    eventually("first restart inside inner", || async {
        h.starts("w") == 2
    })
    .await;
    assert_eq!(
        inner1.get_status(),
        ActorStatus::Running,
        "one restart is tolerated"
    );

    let w2 = child_cell(&inner1_ref, "w").await.unwrap();
    send(&w2, WorkerMsg::Panic);
    // inner fails; outer restarts it, which starts w a third time.
    eventually("inner escalated and was restarted", || async {
        inner1.get_status() == ActorStatus::Stopped && h.starts("w") == 3
    })
    .await;
    let inner2 = child_cell(&outer, "inner").await.unwrap();
    assert_ne!(inner2.get_id(), inner1.get_id());
    assert_eq!(outer.get_status(), ActorStatus::Running);

    assert_eq!(
        rec.get(SUPERVISOR_ESCALATIONS_TOTAL, "supervisor", "inner"),
        1
    );
    assert_eq!(
        rec.get(SUPERVISOR_ESCALATIONS_TOTAL, "supervisor", "outer"),
        0
    );
    assert_eq!(rec.get(ACTOR_RESTARTS_TOTAL, "kind", "supervisor"), 1);
    assert_eq!(rec.get(ACTOR_RESTARTS_TOTAL, "kind", "worker"), 1);
    assert_eq!(rec.get(ACTOR_STARTS_TOTAL, "kind", "worker"), 3);
    assert_eq!(rec.get(ACTOR_STOPS_TOTAL, "kind", "worker"), 2);
    outer.stop(None);
}

#[tokio::test]
async fn top_level_supervisor_fails_when_intensity_exceeded() {
    let h = Harness::new();
    let (sup, join) = Actor::spawn(
        None,
        Supervisor,
        SupervisorArgs::new("top", Strategy::OneForOne)
            .with_intensity(Intensity::new(0, Duration::from_secs(10)))
            .with_child(h.spec("a", Restart::Permanent))
            .with_child(h.spec("b", Restart::Permanent)),
    )
    .await
    .unwrap();
    let b = child_cell(&sup, "b").await.unwrap();
    let a = child_cell(&sup, "a").await.unwrap();
    send(&a, WorkerMsg::Panic);
    tokio::time::timeout(Duration::from_secs(5), join)
        .await
        .expect("supervisor ends")
        .unwrap();
    assert_eq!(sup.get_status(), ActorStatus::Stopped);
    assert_eq!(
        b.get_status(),
        ActorStatus::Stopped,
        "children stopped on escalation"
    );
    assert_eq!(h.starts("a"), 1, "no restart with intensity 0");
}

// ---- backoff --------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn backoff_delays_restarts_and_doubles() {
    let mut h = Harness::new();
    let backoff = Backoff {
        initial: Duration::from_millis(200),
        max: Duration::from_secs(5),
    };
    let sup = spawn_sup(
        SupervisorArgs::new("backoff", Strategy::OneForOne)
            .with_intensity(Intensity::new(10, Duration::from_secs(60)))
            .with_backoff(backoff)
            .with_child(h.spec("w", Restart::Permanent)),
    )
    .await;
    h.next_start().await;

    for expected in [200u64, 400, 800] {
        let cell = child_cell(&sup, "w").await.unwrap();
        let crashed_at = Instant::now();
        send(&cell, WorkerMsg::Panic);
        // While the delay runs the child is known but not running.
        eventually("child listed as pending", || async {
            count_children(&sup).await.unwrap()
                == ChildCounts {
                    specs: 1,
                    active: 0,
                }
        })
        .await;
        let s = h.next_start().await;
        let waited = s.at - crashed_at;
        assert!(
            waited >= Duration::from_millis(expected),
            "restart after {waited:?}, expected at least {expected} ms"
        );
        assert!(
            waited < Duration::from_millis(expected * 2),
            "{waited:?} too long"
        );
        eventually("child running again", || async {
            count_children(&sup).await.unwrap().active == 1
        })
        .await;
    }
    sup.stop(None);
}

// ---- restart factory ------------------------------------------------------------------

#[tokio::test]
async fn restart_reinvokes_the_factory_so_state_can_be_restored() {
    let mut h = Harness::new();
    let sup = spawn_sup(
        SupervisorArgs::new("ckpt", Strategy::OneForOne)
            .with_child(h.spec("w", Restart::Transient)),
    )
    .await;
    let first = h.next_start().await;
    assert_eq!((first.generation, first.restored), (1, 0));
    let cell = child_cell(&sup, "w").await.unwrap();
    send(&cell, WorkerMsg::Checkpoint(42));
    send(&cell, WorkerMsg::Panic);
    let second = h.next_start().await;
    assert_eq!(second.id, "w");
    assert_eq!(
        (second.generation, second.restored),
        (2, 42),
        "the factory ran again and read the checkpoint"
    );
    sup.stop(None);
}

// ---- dynamic children -------------------------------------------------------------------

#[tokio::test]
async fn thousands_of_dynamic_children_that_stop_themselves() {
    let rec = TestRecorder::default();
    let _guard = metrics::set_default_local_recorder(&rec);
    let h = Harness::new();
    let sup = spawn_sup(
        SupervisorArgs::new("calls", Strategy::OneForOne)
            .with_intensity(Intensity::new(100, Duration::from_secs(10))),
    )
    .await;
    const N: usize = 2000;
    let mut cells = Vec::with_capacity(N / 2);
    for i in 0..N {
        let id = format!("call-{i}");
        // Half end in their own post_start, before the supervisor can have read their
        // spec; the other half end when told to.
        let at_once = i % 2 == 0;
        let cell = start_child(&sup, h.spec_with(&id, Restart::Transient, at_once, 0))
            .await
            .expect("child starts");
        if !at_once {
            cells.push(cell);
        }
    }
    for cell in &cells {
        send(cell, WorkerMsg::Stop);
    }
    eventually("all dynamic children gone", || async {
        count_children(&sup).await.unwrap()
            == ChildCounts {
                specs: 0,
                active: 0,
            }
    })
    .await;
    assert_eq!(rec.get(ACTOR_STARTS_TOTAL, "kind", "worker"), N as u64);
    assert_eq!(rec.get(ACTOR_STOPS_TOTAL, "kind", "worker"), N as u64);
    assert_eq!(rec.get(ACTOR_RESTARTS_TOTAL, "kind", "worker"), 0);
    sup.stop(None);
}

#[tokio::test]
async fn dynamic_children_that_fail_before_they_are_known_are_restarted() {
    let h = Harness::new();
    let sup = spawn_sup(
        SupervisorArgs::new("calls", Strategy::OneForOne)
            .with_intensity(Intensity::new(1000, Duration::from_secs(10))),
    )
    .await;
    // Each panics in post_start of its first generation, so for many of them the failure
    // reaches the supervisor (supervision events overtake messages) before their
    // ChildSpawned message does; all must still be restarted exactly once.
    const N: usize = 200;
    for i in 0..N {
        start_child(
            &sup,
            h.spec_with(&format!("x{i}"), Restart::Transient, false, 1),
        )
        .await
        .unwrap();
    }
    eventually("all restarted and running", || async {
        count_children(&sup).await.unwrap()
            == ChildCounts {
                specs: N,
                active: N,
            }
    })
    .await;
    for i in 0..N {
        assert_eq!(h.starts(&format!("x{i}")), 2, "x{i} restarted once");
    }
    sup.stop(None);
}

#[tokio::test]
async fn start_child_sync_terminate_child_and_which_children() {
    let h = Harness::new();
    let sup = spawn_sup(
        SupervisorArgs::new("dyn", Strategy::RestForOne)
            .with_child(h.spec("first", Restart::Permanent)),
    )
    .await;
    let second = start_child_sync(&sup, h.spec("second", Restart::Permanent))
        .await
        .unwrap();
    start_child(&sup, h.spec("third", Restart::Permanent))
        .await
        .unwrap();
    let ids: Vec<String> = which_children(&sup)
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.id)
        .collect();
    assert_eq!(ids, ["first", "second", "third"], "start order");

    assert_eq!(terminate_child(&sup, "second").await.unwrap(), 1);
    assert_eq!(second.get_status(), ActorStatus::Stopped);
    assert_eq!(terminate_child(&sup, "nope").await.unwrap(), 0);
    // A terminated permanent child is not restarted.
    let c = count_children(&sup).await.unwrap();
    assert_eq!(
        c,
        ChildCounts {
            specs: 2,
            active: 2
        }
    );
    assert_eq!(h.starts("second"), 1);

    let third = child_cell(&sup, "third").await.unwrap();
    sup.stop(None);
    eventually("children stopped with the supervisor", || async {
        third.get_status() == ActorStatus::Stopped
    })
    .await;
}

#[tokio::test]
async fn failing_static_child_fails_the_supervisor_start() {
    let h = Harness::new();
    let bad = ChildSpec::new(
        "bad",
        "worker",
        Restart::Permanent,
        Arc::new(|_sup| {
            Box::pin(async { Err(ractor::SpawnErr::StartupFailed("no".into())) }) as StartFuture
        }),
    );
    let res = Actor::spawn(
        None,
        Supervisor,
        SupervisorArgs::new("s", Strategy::OneForOne)
            .with_child(h.spec("ok", Restart::Permanent))
            .with_child(bad),
    )
    .await;
    assert!(res.is_err());
    let dup = Actor::spawn(
        None,
        Supervisor,
        SupervisorArgs::new("s", Strategy::OneForOne)
            .with_child(h.spec("d", Restart::Permanent))
            .with_child(h.spec("d", Restart::Permanent)),
    )
    .await;
    assert!(dup.is_err(), "duplicate ids are rejected");
}

#[tokio::test]
async fn named_child_is_found_again_after_restart() {
    let h = Harness::new();
    let gen = Arc::new(AtomicU32::new(0));
    let probe = h.tx.clone();
    let g = gen.clone();
    let spec = ChildSpec::named_actor(
        "test/named-worker",
        "worker",
        Restart::Permanent,
        Worker,
        move || WorkerArgs {
            id: "named".into(),
            generation: g.fetch_add(1, Ordering::SeqCst) + 1,
            restored: 0,
            checkpoint: Arc::default(),
            probe: probe.clone(),
            stop_at_once: false,
            panic_until_generation: 0,
        },
    );
    let sup = spawn_sup(SupervisorArgs::new("named", Strategy::OneForOne).with_child(spec)).await;
    let first = ractor::registry::where_is("test/named-worker".into()).expect("registered");
    send(&first, WorkerMsg::Panic);
    eventually("restarted under the same name", || async {
        ractor::registry::where_is("test/named-worker".into())
            .is_some_and(|c| c.get_id() != first.get_id())
    })
    .await;
    assert_eq!(gen.load(Ordering::SeqCst), 2);
    sup.stop(None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamic_children_on_the_multi_thread_runtime() {
    // The production runtime: factories, children and the supervisor run in parallel, so
    // exits and ChildSpawned messages race for real.
    let h = Harness::new();
    let sup = spawn_sup(
        SupervisorArgs::new("calls", Strategy::OneForOne)
            .with_intensity(Intensity::new(1000, Duration::from_secs(10))),
    )
    .await;
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..4 {
        let sup = sup.clone();
        let specs: Vec<ChildSpec> = (0..500)
            .map(|i| {
                let id = format!("t{t}-{i}");
                if i % 10 == 0 {
                    // Fails once in post_start, then lives: must end up running.
                    h.spec_with(&id, Restart::Transient, false, 1)
                } else {
                    h.spec_with(&id, Restart::Transient, true, 0)
                }
            })
            .collect();
        tasks.spawn(async move {
            for spec in specs {
                start_child(&sup, spec).await.expect("child starts");
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    eventually("only the restarted ones remain", || async {
        count_children(&sup).await.unwrap()
            == ChildCounts {
                specs: 200,
                active: 200,
            }
    })
    .await;
    for t in 0..4 {
        for i in (0..500).step_by(10) {
            assert_eq!(h.starts(&format!("t{t}-{i}")), 2);
        }
    }
    sup.stop(None);
}

#[tokio::test]
async fn failed_restart_is_retried_and_persistent_failure_escalates() {
    let h = Harness::new();
    // A factory that fails on its calls listed in `fail_on` (1-based), else starts a worker.
    let flaky = |id: &str, fail_on: Vec<u32>| {
        let inner = h.spec(id, Restart::Permanent).start;
        let calls = Arc::new(AtomicU32::new(0));
        let start: StartFn = Arc::new(move |sup| {
            let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
            if fail_on.contains(&n) {
                Box::pin(async { Err(ractor::SpawnErr::StartupFailed("flaky".into())) })
            } else {
                inner(sup)
            }
        });
        ChildSpec::new(id, "worker", Restart::Permanent, start)
    };

    // Restart #1 fails, the retry works.
    let sup = spawn_sup(
        SupervisorArgs::new("retry", Strategy::OneForOne).with_child(flaky("f", vec![2])),
    )
    .await;
    send(&child_cell(&sup, "f").await.unwrap(), WorkerMsg::Panic);
    eventually("running after a failed restart", || async {
        count_children(&sup).await.unwrap().active == 1
    })
    .await;
    assert_eq!(
        h.starts("f"),
        2,
        "worker started twice; the failed call spawned nothing"
    );
    sup.stop(None);

    // Every restart fails: bounded by intensity, then the supervisor fails.
    let (sup, join) = Actor::spawn(
        None,
        Supervisor,
        SupervisorArgs::new("giveup", Strategy::OneForOne)
            .with_intensity(Intensity::new(3, Duration::from_secs(10)))
            .with_child(flaky("g", (2..100).collect())),
    )
    .await
    .unwrap();
    send(&child_cell(&sup, "g").await.unwrap(), WorkerMsg::Panic);
    tokio::time::timeout(Duration::from_secs(5), join)
        .await
        .expect("supervisor gives up")
        .unwrap();
    assert_eq!(sup.get_status(), ActorStatus::Stopped);
}
