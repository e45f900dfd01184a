//! The one shared timer facility of the switch: no task per timer.
//!
//! At 10,000 calls there are tens of thousands of live timers (SIP transaction timers A–M,
//! no-answer and session timers, queue announcements), most of them cancelled before they
//! fire. A [`TimerService`] is a cheaply cloneable handle to ONE tokio task that owns every
//! timer scheduled through it; handles talk to the task over an unbounded channel, so
//! scheduling and cancelling never take a lock and never wait.
//!
//! Design choice: a binary heap of `(deadline, id)` with lazy deletion, plus a hash map from id
//! to the callback of each live timer, rather than a hierarchical timing wheel.
//! - Schedule is O(log n), cancel O(1) (remove from the map; the heap entry becomes a
//!   tombstone that is skipped when it reaches the top), firing O(log n). At the expected
//!   ~50,000 live timers and ~5,000 schedules/s this is a few microseconds per second of work;
//!   a wheel would only pay off at far higher rates and costs much more code (slots, levels,
//!   cascading, an intrusive list for O(1) removal).
//! - Tombstones do not grow without bound: when the heap holds more than twice the live
//!   timers plus [`PURGE_SLACK`] entries, it is rebuilt from the live ones (O(n), amortised
//!   O(1) per cancel). So memory stays under ~2x the live set even when every timer is
//!   cancelled long before its deadline (e.g. 32 s Timer B cancelled by the first 100 Trying).
//! - Resolution is tokio's timer (1 ms): the task sleeps until the earliest live deadline and
//!   then fires every timer that is due, in deadline order, ties in scheduling order.
//!
//! Delivery is a `FnOnce() + Send` callback run ON the timer task: it must be short and must
//! not block (send a message, set a flag). [`TimerService::schedule_cast`] wraps the common case
//! "cast message M to actor X at the deadline". A panicking callback is caught and logged so
//! one bad callback cannot stop every timer of the process.
//!
//! Cancelling is asynchronous: a timer whose callback already ran (or is running) is not
//! affected. Owners must therefore tolerate a fire that raced with its cancel, e.g. by tagging
//! the delivered message with the [`TimerId`] and ignoring ids they no longer wait for.
//!
//! The task ends when the last handle is dropped; timers still pending then are dropped
//! without running.

use std::cmp::Reverse;
use std::collections::hash_map::Entry;
use std::collections::{BinaryHeap, HashMap};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ractor::{ActorRef, Message};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Gauge: timers scheduled and neither fired nor cancelled (as of the last batch processed).
pub const TIMERS_ACTIVE: &str = "switchyard_timers_active";
/// Counter: timers whose callback ran.
pub const TIMERS_FIRED_TOTAL: &str = "switchyard_timers_fired_total";
/// Counter: timers cancelled before they fired.
pub const TIMERS_CANCELLED_TOTAL: &str = "switchyard_timers_cancelled_total";

/// Describe this module's metrics with the installed recorder.
pub fn describe() {
    metrics::describe_gauge!(
        TIMERS_ACTIVE,
        "Timers scheduled in the shared timer facility and not yet fired or cancelled"
    );
    metrics::describe_counter!(
        TIMERS_FIRED_TOTAL,
        "Timers of the shared timer facility whose callback ran"
    );
    metrics::describe_counter!(
        TIMERS_CANCELLED_TOTAL,
        "Timers of the shared timer facility cancelled before they fired"
    );
}

/// Tombstones tolerated on top of "as many as live timers" before the heap is rebuilt.
pub const PURGE_SLACK: usize = 4096;

/// Commands drained per wake-up before due timers are fired again, so that a burst of
/// schedules cannot delay fires by more than one batch.
const MAX_BATCH: usize = 1024;

/// A deadline so far away it never comes; used when a requested delay overflows `Instant`.
const FAR_FUTURE: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// The callback a timer runs when it fires.
type Callback = Box<dyn FnOnce() + Send + 'static>;

/// Identifies one scheduled timer of a [`TimerService`]; never reused within a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TimerId(u64);

impl TimerId {
    /// The raw id (for logs).
    pub fn as_u64(self) -> u64 {
        self.0
    }
}

enum Command {
    Schedule {
        id: u64,
        deadline: Instant,
        callback: Callback,
    },
    Cancel(u64),
}

/// State shared between the handles and the task: id allocation and the figures the task
/// publishes after each batch.
#[derive(Default)]
struct Shared {
    next_id: AtomicU64,
    active: AtomicUsize,
    heap_entries: AtomicUsize,
}

/// Handle to a timer task. Clone it freely: every clone schedules on the same task, and the
/// task ends when the last clone is dropped.
#[derive(Clone)]
pub struct TimerService {
    tx: mpsc::UnboundedSender<Command>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for TimerService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TimerService")
            .field("active", &self.active())
            .finish()
    }
}

impl TimerService {
    /// Spawn the timer task on the current tokio runtime and return its handle.
    ///
    /// # Panics
    /// Outside a tokio runtime (like `tokio::spawn`).
    pub fn new() -> Self {
        Self::start().0
    }

    /// Like [`TimerService::new`], also returning the task's join handle (it completes when
    /// the last handle is dropped).
    pub fn start() -> (Self, JoinHandle<()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared::default());
        let task = tokio::spawn(run(rx, Arc::clone(&shared)));
        (TimerService { tx, shared }, task)
    }

    /// Run `callback` on the timer task once `after` has elapsed. A zero delay fires at once.
    pub fn schedule<F>(&self, after: Duration, callback: F) -> TimerId
    where
        F: FnOnce() + Send + 'static,
    {
        self.schedule_at(deadline_after(after), callback)
    }

    /// Run `callback` on the timer task at `deadline`; a deadline in the past fires at once.
    pub fn schedule_at<F>(&self, deadline: Instant, callback: F) -> TimerId
    where
        F: FnOnce() + Send + 'static,
    {
        let id = self.next_id();
        self.submit(id, deadline, Box::new(callback));
        id
    }

    /// Cast `message` to `actor` once `after` has elapsed. A send to an actor that has stopped
    /// meanwhile is dropped silently: a stopped actor has no use for its timers.
    pub fn schedule_cast<M: Message>(
        &self,
        after: Duration,
        actor: &ActorRef<M>,
        message: M,
    ) -> TimerId {
        let actor = actor.clone();
        self.schedule(after, move || {
            let _ = actor.send_message(message);
        })
    }

    /// Like [`TimerService::schedule_cast`], with the message built from the timer's own id,
    /// so that the owner can recognise (and drop) a fire of a timer it has since cancelled or
    /// replaced. `make` runs on the timer task when the timer fires.
    pub fn schedule_cast_with<M, F>(&self, after: Duration, actor: &ActorRef<M>, make: F) -> TimerId
    where
        M: Message,
        F: FnOnce(TimerId) -> M + Send + 'static,
    {
        let id = self.next_id();
        let actor = actor.clone();
        let callback = Box::new(move || {
            let _ = actor.send_message(make(id));
        });
        self.submit(id, deadline_after(after), callback);
        id
    }

    /// Cancel a timer. Unknown, fired or already cancelled ids are ignored. Takes effect when
    /// the task processes it, so a fire that is already under way still happens.
    pub fn cancel(&self, id: TimerId) {
        let _ = self.tx.send(Command::Cancel(id.0));
    }

    fn next_id(&self) -> TimerId {
        TimerId(self.shared.next_id.fetch_add(1, Ordering::Relaxed))
    }

    fn submit(&self, id: TimerId, deadline: Instant, callback: Callback) {
        let cmd = Command::Schedule {
            id: id.0,
            deadline,
            callback,
        };
        if self.tx.send(cmd).is_err() {
            // Only when the task is gone (runtime shutting down): nothing will fire any more.
            tracing::debug!(timer = id.0, "timer task gone; timer dropped");
        }
    }

    /// Live timers as of the last batch the task processed (what the gauge shows).
    pub fn active(&self) -> usize {
        self.shared.active.load(Ordering::Relaxed)
    }

    /// Heap entries, live timers plus tombstones of cancelled ones, as of the last batch
    /// processed; for tests and diagnostics.
    pub fn heap_entries(&self) -> usize {
        self.shared.heap_entries.load(Ordering::Relaxed)
    }
}

/// Now plus `after`, saturating at a deadline that never comes.
fn deadline_after(after: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(after)
        .or_else(|| now.checked_add(FAR_FUTURE))
        .unwrap_or(now)
}

impl Default for TimerService {
    fn default() -> Self {
        Self::new()
    }
}

/// The timer task's own state.
struct Wheel {
    /// Deadlines with their id; may hold tombstones (ids no longer in `live`).
    heap: BinaryHeap<Reverse<(Instant, u64)>>,
    live: HashMap<u64, Callback>,
    fired: u64,
    cancelled: u64,
    /// Live count last added to the gauge: the gauge moves by deltas so that several
    /// services (e.g. shards) add up instead of overwriting each other.
    published_live: usize,
}

impl Wheel {
    fn apply(&mut self, cmd: Command) {
        match cmd {
            Command::Schedule {
                id,
                deadline,
                callback,
            } => {
                self.heap.push(Reverse((deadline, id)));
                self.live.insert(id, callback);
            }
            Command::Cancel(id) => {
                if let Entry::Occupied(e) = self.live.entry(id) {
                    // Drop the callback (and whatever it holds) now, not at the deadline.
                    drop(e.remove());
                    self.cancelled += 1;
                }
            }
        }
    }

    /// Run every live timer due at `now`, in deadline order; then drop tombstones from the top
    /// so that the next deadline is a live one.
    fn fire_due(&mut self, now: Instant) {
        while let Some(&Reverse((deadline, id))) = self.heap.peek() {
            if deadline > now {
                break;
            }
            self.heap.pop();
            if let Some(callback) = self.live.remove(&id) {
                self.fired += 1;
                if catch_unwind(AssertUnwindSafe(callback)).is_err() {
                    tracing::error!(timer = id, "timer callback panicked");
                }
            }
        }
        while let Some(&Reverse((_, id))) = self.heap.peek() {
            if self.live.contains_key(&id) {
                break;
            }
            self.heap.pop();
        }
    }

    /// Rebuild the heap from the live timers when tombstones dominate.
    fn purge_if_needed(&mut self) {
        if self.heap.len() > 2 * self.live.len() + PURGE_SLACK {
            let live = &self.live;
            self.heap.retain(|Reverse((_, id))| live.contains_key(id));
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((d, _))| *d)
    }

    fn publish(&mut self, shared: &Shared) {
        shared.active.store(self.live.len(), Ordering::Relaxed);
        shared
            .heap_entries
            .store(self.heap.len(), Ordering::Relaxed);
        let live = self.live.len();
        if live != self.published_live {
            let delta = live as f64 - self.published_live as f64;
            metrics::gauge!(TIMERS_ACTIVE).increment(delta);
            self.published_live = live;
        }
        if self.fired > 0 {
            metrics::counter!(TIMERS_FIRED_TOTAL).increment(self.fired);
            self.fired = 0;
        }
        if self.cancelled > 0 {
            metrics::counter!(TIMERS_CANCELLED_TOTAL).increment(self.cancelled);
            self.cancelled = 0;
        }
    }
}

async fn run(mut rx: mpsc::UnboundedReceiver<Command>, shared: Arc<Shared>) {
    let mut wheel = Wheel {
        heap: BinaryHeap::new(),
        live: HashMap::new(),
        fired: 0,
        cancelled: 0,
        published_live: 0,
    };
    // One Sleep, reset when the earliest deadline changes, instead of a new one per wake-up.
    let sleep = tokio::time::sleep(FAR_FUTURE);
    tokio::pin!(sleep);
    let mut armed: Option<Instant> = None;
    loop {
        wheel.fire_due(Instant::now());
        wheel.purge_if_needed();
        wheel.publish(&shared);
        let next = wheel.next_deadline();
        if next != armed {
            if let Some(deadline) = next {
                sleep.as_mut().reset(deadline);
            }
            armed = next;
        }
        tokio::select! {
            // Commands first: a cancel that is already queued must win over a fire that is
            // due at the same wake-up.
            biased;
            cmd = rx.recv() => {
                let Some(cmd) = cmd else { break };
                wheel.apply(cmd);
                for _ in 1..MAX_BATCH {
                    match rx.try_recv() {
                        Ok(cmd) => wheel.apply(cmd),
                        Err(_) => break,
                    }
                }
            }
            () = &mut sleep, if armed.is_some() => {
                // The loop head fires what is due; force a re-arm for the next deadline.
                armed = None;
            }
        }
    }
    // Last handle dropped: pending timers are dropped without running.
    let pending = wheel.live.len();
    wheel.live.clear();
    wheel.heap.clear();
    wheel.publish(&shared);
    tracing::debug!(pending, "timer service stopped");
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Wait (bounded) until `cond` holds, letting the timer task run.
    async fn until(mut cond: impl FnMut() -> bool) {
        for _ in 0..10_000 {
            if cond() {
                return;
            }
            tokio::task::yield_now().await;
        }
        panic!("condition not reached");
    }

    /// Wait until the task has processed every command sent so far: commands are handled in
    /// order, so when a zero-delay marker fires, all earlier ones are done, and the figures
    /// are published in the same wake-up, before this task can run again.
    async fn settle(svc: &TimerService) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        svc.schedule(Duration::ZERO, move || {
            let _ = tx.send(());
        });
        rx.await.expect("timer task gone");
    }

    type Log = Arc<Mutex<Vec<(u32, Instant)>>>;

    fn recorder(log: &Log, tag: u32) -> impl FnOnce() + Send + 'static {
        let log = Arc::clone(log);
        move || log.lock().unwrap().push((tag, Instant::now()))
    }

    fn tags(log: &Log) -> Vec<u32> {
        log.lock().unwrap().iter().map(|(t, _)| *t).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn fires_in_deadline_order_at_their_deadlines() {
        let svc = TimerService::new();
        let log: Log = Arc::default();
        let t0 = Instant::now();
        svc.schedule(Duration::from_millis(30), recorder(&log, 30));
        svc.schedule(Duration::from_millis(10), recorder(&log, 10));
        svc.schedule(Duration::from_millis(20), recorder(&log, 20));
        // Equal deadlines fire in scheduling order.
        svc.schedule(Duration::from_millis(20), recorder(&log, 21));
        until(|| svc.active() == 4).await;

        tokio::time::advance(Duration::from_millis(15)).await;
        until(|| tags(&log).len() == 1).await;
        assert_eq!(tags(&log), vec![10]);

        tokio::time::advance(Duration::from_millis(100)).await;
        until(|| tags(&log).len() == 4).await;
        assert_eq!(tags(&log), vec![10, 20, 21, 30]);
        let times: Vec<_> = log.lock().unwrap().iter().map(|(_, at)| *at - t0).collect();
        // Fired no earlier than their deadline, within the 1 ms resolution of the first
        // advance (10 ms fired at the 15 ms advance), the rest at the second one.
        assert!(times[0] >= Duration::from_millis(10) && times[0] <= Duration::from_millis(15));
        assert!(times[1..].iter().all(|t| *t >= Duration::from_millis(20)));
        until(|| svc.active() == 0).await;
    }

    #[tokio::test(start_paused = true)]
    async fn fires_at_the_deadline_with_auto_advance() {
        let svc = TimerService::new();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let t0 = Instant::now();
        for ms in [500u64, 1500, 3500] {
            let tx = tx.clone();
            svc.schedule(Duration::from_millis(ms), move || {
                let _ = tx.send((ms, Instant::now()));
            });
        }
        for expect in [500u64, 1500, 3500] {
            let (ms, at) = rx.recv().await.unwrap();
            assert_eq!(ms, expect);
            let elapsed = at - t0;
            assert!(
                elapsed >= Duration::from_millis(ms) && elapsed < Duration::from_millis(ms + 2),
                "{ms}: fired at {elapsed:?}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn cancel_before_fire() {
        let svc = TimerService::new();
        let log: Log = Arc::default();
        let a = svc.schedule(Duration::from_millis(10), recorder(&log, 1));
        svc.schedule(Duration::from_millis(20), recorder(&log, 2));
        let c = svc.schedule(Duration::from_millis(30), recorder(&log, 3));
        // Cancel through a clone: same task.
        svc.clone().cancel(a);
        svc.cancel(c);
        // Cancelling twice or an unknown id is harmless.
        svc.cancel(c);
        svc.cancel(TimerId(999_999));
        tokio::time::advance(Duration::from_millis(100)).await;
        settle(&svc).await;
        assert_eq!(svc.active(), 0);
        assert_eq!(tags(&log), vec![2]);
    }

    #[tokio::test(start_paused = true)]
    async fn cancelled_callback_is_dropped_at_once() {
        let svc = TimerService::new();
        let (tx, mut rx) = mpsc::unbounded_channel::<()>();
        let id = svc.schedule(Duration::from_secs(3600), move || {
            let _ = tx.send(());
        });
        svc.cancel(id);
        // The sender inside the callback is dropped on cancel, long before the deadline.
        let got = tokio::time::timeout(Duration::from_millis(10), rx.recv()).await;
        assert_eq!(got, Ok(None));
    }

    #[tokio::test(start_paused = true)]
    async fn fifty_thousand_scheduled_and_cancelled_leave_nothing() {
        let svc = TimerService::new();
        let fired = Arc::new(AtomicUsize::new(0));
        // A live timer due before all of them, so their tombstones are not at the heap top
        // (where they would be skipped anyway) and only the purge can remove them.
        let front = svc.schedule(Duration::from_secs(10), || {});
        let mut ids = Vec::with_capacity(50_000);
        for i in 0..50_000u64 {
            let fired = Arc::clone(&fired);
            let after = Duration::from_millis(32_000 + i % 1000);
            ids.push(svc.schedule(after, move || {
                fired.fetch_add(1, Ordering::Relaxed);
            }));
        }
        settle(&svc).await;
        assert_eq!(svc.active(), 50_001);
        for id in ids {
            svc.cancel(id);
        }
        settle(&svc).await;
        assert_eq!(svc.active(), 1);
        // Tombstones were purged, not kept until their deadlines.
        assert!(
            svc.heap_entries() <= 2 + PURGE_SLACK,
            "heap kept {} entries",
            svc.heap_entries()
        );
        svc.cancel(front);
        settle(&svc).await;
        assert_eq!(svc.active(), 0);
        assert_eq!(svc.heap_entries(), 0);
        tokio::time::advance(Duration::from_secs(40)).await;
        settle(&svc).await;
        assert_eq!(fired.load(Ordering::Relaxed), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn churn_keeps_heap_bounded() {
        // Like Timer B: scheduled for 32 s and cancelled soon after, continuously, with a
        // steady set of live timers alongside.
        let svc = TimerService::new();
        let mut keep = Vec::new();
        // Due before the churned timers, so their tombstones sit behind live entries.
        for _ in 0..1000 {
            keep.push(svc.schedule(Duration::from_secs(10), || {}));
        }
        for _round in 0..50 {
            let ids: Vec<_> = (0..1000)
                .map(|_| svc.schedule(Duration::from_secs(32), || {}))
                .collect();
            for id in ids {
                svc.cancel(id);
            }
            settle(&svc).await;
            assert_eq!(svc.active(), 1000);
            assert!(
                svc.heap_entries() <= 2 * 1000 + PURGE_SLACK + MAX_BATCH,
                "heap kept {} entries",
                svc.heap_entries()
            );
        }
        assert_eq!(keep.len(), 1000);
    }

    #[tokio::test(start_paused = true)]
    async fn past_and_zero_deadlines_fire_at_once() {
        let svc = TimerService::new();
        let log: Log = Arc::default();
        tokio::time::advance(Duration::from_secs(10)).await;
        let t0 = Instant::now();
        svc.schedule(Duration::ZERO, recorder(&log, 1));
        svc.schedule_at(t0 - Duration::from_secs(5), recorder(&log, 2));
        until(|| tags(&log).len() == 2).await;
        // The earlier deadline first; and no virtual time passed.
        assert_eq!(tags(&log), vec![2, 1]);
        assert!(log.lock().unwrap().iter().all(|(_, at)| *at == t0));
    }

    #[tokio::test(start_paused = true)]
    async fn huge_delay_does_not_panic() {
        let svc = TimerService::new();
        let id = svc.schedule(Duration::MAX, || panic!("must not fire"));
        settle(&svc).await;
        assert_eq!(svc.active(), 1);
        svc.cancel(id);
        settle(&svc).await;
        assert_eq!(svc.active(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn panicking_callback_does_not_stop_the_service() {
        let svc = TimerService::new();
        let log: Log = Arc::default();
        svc.schedule(Duration::from_millis(1), || {
            panic!("boom (expected by the test)")
        });
        svc.schedule(Duration::from_millis(2), recorder(&log, 2));
        tokio::time::advance(Duration::from_millis(5)).await;
        until(|| tags(&log) == vec![2]).await;
        svc.schedule(Duration::ZERO, recorder(&log, 3));
        until(|| tags(&log) == vec![2, 3]).await;
    }

    #[tokio::test(start_paused = true)]
    async fn dropping_the_last_handle_ends_the_task() {
        let (svc, task) = TimerService::start();
        let (tx, mut rx) = mpsc::unbounded_channel::<()>();
        svc.schedule(Duration::from_secs(5), move || {
            let _ = tx.send(());
        });
        let clone = svc.clone();
        drop(svc);
        // One handle left: still running.
        tokio::task::yield_now().await;
        assert!(!task.is_finished());
        drop(clone);
        tokio::time::timeout(Duration::from_secs(1), task)
            .await
            .expect("timer task did not end")
            .expect("timer task panicked");
        // The pending timer was dropped, not run.
        assert_eq!(rx.recv().await, None);
    }

    struct Probe;

    struct ProbeMsg(u32, mpsc::UnboundedSender<u32>);

    impl ractor::Message for ProbeMsg {}

    impl ractor::Actor for Probe {
        type Msg = ProbeMsg;
        type State = ();
        type Arguments = ();

        async fn pre_start(
            &self,
            _myself: ActorRef<Self::Msg>,
            _args: (),
        ) -> Result<(), ractor::ActorProcessingErr> {
            Ok(())
        }

        async fn handle(
            &self,
            _myself: ActorRef<Self::Msg>,
            ProbeMsg(n, reply): Self::Msg,
            _state: &mut (),
        ) -> Result<(), ractor::ActorProcessingErr> {
            let _ = reply.send(n);
            Ok(())
        }
    }

    #[tokio::test(start_paused = true)]
    async fn schedule_cast_delivers_to_an_actor() {
        let svc = TimerService::new();
        let (actor, handle) = ractor::Actor::spawn(None, Probe, ()).await.unwrap();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let t0 = Instant::now();
        svc.schedule_cast(Duration::from_millis(200), &actor, ProbeMsg(7, tx.clone()));
        let cancelled = svc.schedule_cast(Duration::from_millis(100), &actor, ProbeMsg(8, tx));
        svc.cancel(cancelled);
        assert_eq!(rx.recv().await, Some(7));
        assert!(Instant::now() - t0 >= Duration::from_millis(200));
        actor.stop(None);
        handle.await.unwrap();
        // A cast to a stopped actor is dropped silently.
        let (tx, _rx) = mpsc::unbounded_channel();
        svc.schedule_cast(Duration::ZERO, &actor, ProbeMsg(9, tx));
        settle(&svc).await;
        assert_eq!(svc.active(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn schedule_cast_with_passes_the_timer_id() {
        let svc = TimerService::new();
        let (actor, handle) = ractor::Actor::spawn(None, Probe, ()).await.unwrap();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let id = svc.schedule_cast_with(Duration::from_millis(50), &actor, move |id| {
            ProbeMsg(id.as_u64() as u32, tx)
        });
        assert_eq!(rx.recv().await, Some(id.as_u64() as u32));
        actor.stop(None);
        handle.await.unwrap();
    }

    #[test]
    fn metrics_are_recorded() {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        // The current-thread runtime runs the timer task on this thread, so a thread-local
        // recorder sees its metrics.
        let _guard = metrics::set_default_local_recorder(&recorder);
        describe();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        rt.block_on(async {
            let svc = TimerService::new();
            let a = svc.schedule(Duration::from_secs(1), || {});
            svc.schedule(Duration::from_millis(1), || {});
            svc.schedule(Duration::from_millis(2), || {});
            svc.schedule(Duration::from_secs(9), || {});
            svc.cancel(a);
            // A second service: the gauge is the sum over services.
            let other = TimerService::new();
            other.schedule(Duration::from_secs(9), || {});
            settle(&other).await;
            tokio::time::advance(Duration::from_millis(10)).await;
            settle(&svc).await;
            assert_eq!(svc.active(), 1);
        });
        let text = handle.render();
        // Two timers plus the two `settle` markers.
        assert!(text.contains("switchyard_timers_fired_total 4"), "{text}");
        assert!(
            text.contains("switchyard_timers_cancelled_total 1"),
            "{text}"
        );
        assert!(text.contains("switchyard_timers_active 2"), "{text}");
    }
}
