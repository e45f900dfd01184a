//! RFC 3261 §17 transaction state machines, with the changes of RFC 6026, as pure code.
//!
//! Four machines: [`ClientInvite`], [`ClientNonInvite`], [`ServerInvite`] and
//! [`ServerNonInvite`], plus the [`Transaction`] enum that wraps them. Each is created with
//! `start(..) -> (machine, Actions)` and driven with `step(&mut self, Event, &TimerConfig) ->
//! Actions` (the `&mut self` form of `step(state, event) -> (state, actions)`).
//!
//! The machines hold no message, read no clock and do no I/O. The owner (the call actor) keeps
//! the request and the last response, runs the timers, and executes the returned [`Action`]s in
//! order. This keeps the protocol logic testable without a runtime and lets the owner keep the
//! bytes. Transaction matching (branch keys) is not done here.
//!
//! Rules the owner follows:
//! - `StartTimer(name, d)` starts timer `name` to fire after `d`, replacing any running timer
//!   of that name in this transaction; `CancelTimer(name)` cancels it. A machine has at most one
//!   live timer per name. A `TimerFired` for a timer the machine does not consider running (a
//!   fire that raced with a cancel) is ignored, but the owner should still drop fires of
//!   timers it replaced (tag each scheduled timer, e.g. with its `TimerId`) because a stale
//!   fire of a replaced timer looks like the live one.
//! - Every `CancelTimer` for the live timers is emitted before `Terminated`, so an owner that
//!   executes the actions leaves no timer behind. After `Terminated` every event is ignored.
//! - Durations that RFC 3261 sets to zero on reliable transports (Timers D, I, J, K) are not
//!   scheduled: the machine goes to Terminated in the same step.
//!
//! Choices where the RFCs leave room (each is marked `Choice:` below):
//! - Client INVITE, 1xx in Calling: Timers A and B are cancelled. RFC 3261 §17.1.1.2 stops
//!   retransmissions in Proceeding and applies Timer B only in Calling, so no transaction timeout
//!   applies in Proceeding: the TU must run its own no-answer timer (RFC 3261 Timer C style).
//! - Timer D is `max(32 s, 64*T1)` on unreliable transports: RFC 3261 asks for "at least 32 s",
//!   enough to absorb the server's retransmissions, which last 64*T1 (Timer H).
//! - Server INVITE: `start` asks for a 100 Trying at once ([`Action::SendTrying`]); a B2BUA
//!   forwards the INVITE, so it rarely answers within the 200 ms that RFC 3261 allows.
//! - Responses and requests a state has no rule for are absorbed (no actions), as are status
//!   codes outside 100..=699 (the parser should have rejected them).

use std::fmt;
use std::ops::Deref;
use std::time::Duration;

/// RFC 3261 T1 default: round-trip time estimate.
pub const DEFAULT_T1: Duration = Duration::from_millis(500);
/// RFC 3261 T2 default: maximum retransmission interval for non-INVITE requests and INVITE
/// responses.
pub const DEFAULT_T2: Duration = Duration::from_secs(4);
/// RFC 3261 T4 default: maximum time a message stays in the network.
pub const DEFAULT_T4: Duration = Duration::from_secs(5);
/// RFC 3261 lower bound of Timer D on unreliable transports.
const TIMER_D_MIN: Duration = Duration::from_secs(32);

/// The base timer values from which every transaction timer is derived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimerConfig {
    /// T1: RTT estimate; first retransmission interval (default 500 ms).
    pub t1: Duration,
    /// T2: cap of the non-INVITE request and INVITE response retransmission interval (4 s).
    pub t2: Duration,
    /// T4: time a message stays in the network (5 s).
    pub t4: Duration,
}

impl Default for TimerConfig {
    fn default() -> Self {
        TimerConfig {
            t1: DEFAULT_T1,
            t2: DEFAULT_T2,
            t4: DEFAULT_T4,
        }
    }
}

impl TimerConfig {
    /// 64*T1: Timers B, F, H, L and M, and J on unreliable transports.
    pub fn t1_x64(&self) -> Duration {
        self.t1.saturating_mul(64)
    }

    /// The initial duration of `timer` for a transaction over a transport of `reliability`.
    ///
    /// The retransmission timers (A, E, G) start at T1 and are never started over a reliable
    /// transport (this returns zero for them there). D, I, J and K are zero over reliable
    /// transports, which the machines treat as "terminate at once".
    pub fn duration(&self, timer: TimerName, reliability: Reliability) -> Duration {
        let unreliable = !reliability.is_reliable();
        let if_unreliable = |d: Duration| if unreliable { d } else { Duration::ZERO };
        match timer {
            TimerName::A | TimerName::E | TimerName::G => if_unreliable(self.t1),
            TimerName::B | TimerName::F | TimerName::H | TimerName::L | TimerName::M => {
                self.t1_x64()
            }
            TimerName::D => if_unreliable(self.t1_x64().max(TIMER_D_MIN)),
            TimerName::I | TimerName::K => if_unreliable(self.t4),
            TimerName::J => if_unreliable(self.t1_x64()),
        }
    }

    /// Interval after the `n`-th retransmission (n = 1 for the first) by a doubling timer:
    /// T1 * 2^n, capped at T2 when `capped` (Timers E and G; Timer A is not capped).
    fn backoff(&self, n: u32, capped: bool) -> Duration {
        // 2^20 * T1 is already days: Timer B/F/H ends the transaction long before.
        let d = self.t1.saturating_mul(1u32 << n.min(20));
        if capped {
            d.min(self.t2)
        } else {
            d
        }
    }
}

/// Whether the transport retransmits for us (TCP, TLS, SCTP) or not (UDP).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reliability {
    /// UDP: the transaction retransmits (Timers A, E, G) and lingers (D, I, J, K).
    Unreliable,
    /// TCP, TLS: no retransmission timers; D, I, J and K are zero.
    Reliable,
}

impl Reliability {
    /// `true` for [`Reliability::Reliable`].
    pub fn is_reliable(self) -> bool {
        matches!(self, Reliability::Reliable)
    }
}

impl From<bool> for Reliability {
    /// `true` means reliable.
    fn from(reliable: bool) -> Self {
        if reliable {
            Reliability::Reliable
        } else {
            Reliability::Unreliable
        }
    }
}

/// Transaction timers, named as in RFC 3261 (A–K) and RFC 6026 (L, M).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TimerName {
    /// Client INVITE: request retransmission (UDP), doubling from T1, uncapped.
    A,
    /// Client INVITE: transaction timeout in Calling, 64*T1.
    B,
    /// Client INVITE: wait for final response retransmissions in Completed.
    D,
    /// Client non-INVITE: request retransmission (UDP), doubling from T1, capped at T2.
    E,
    /// Client non-INVITE: transaction timeout, 64*T1.
    F,
    /// Server INVITE: final response retransmission (UDP), doubling from T1, capped at T2.
    G,
    /// Server INVITE: wait for ACK in Completed, 64*T1.
    H,
    /// Server INVITE: absorb ACK retransmissions in Confirmed, T4.
    I,
    /// Server non-INVITE: absorb request retransmissions in Completed, 64*T1.
    J,
    /// Client non-INVITE: absorb response retransmissions in Completed, T4.
    K,
    /// Server INVITE (RFC 6026): linger in Accepted, 64*T1.
    L,
    /// Client INVITE (RFC 6026): linger in Accepted for 2xx retransmissions and forks, 64*T1.
    M,
}

impl TimerName {
    /// Every timer, in declaration order.
    pub const ALL: [TimerName; 12] = [
        TimerName::A,
        TimerName::B,
        TimerName::D,
        TimerName::E,
        TimerName::F,
        TimerName::G,
        TimerName::H,
        TimerName::I,
        TimerName::J,
        TimerName::K,
        TimerName::L,
        TimerName::M,
    ];

    fn bit(self) -> u16 {
        1 << (self as u16)
    }
}

/// An input to a transaction machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// Client: a response for this transaction arrived.
    ReceivedResponse {
        /// Its status code.
        status: u16,
    },
    /// Server: a retransmission of the request that created the transaction arrived.
    ReceivedRequest,
    /// Server INVITE: an ACK matching the transaction arrived.
    ReceivedAck,
    /// Server: the TU hands over a response. The machine answers [`Action::SendResponse`] if
    /// the state allows it; if not (e.g. a second final response), no action: the owner must
    /// not send it.
    TuResponse {
        /// Its status code.
        status: u16,
    },
    /// A timer started with [`Action::StartTimer`] fired.
    TimerFired(TimerName),
    /// The transport failed to send a message of this transaction.
    TransportError,
}

/// What the owner must do, in order, after `start` or `step`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Client: transmit the request (the first time after `start`, then retransmissions).
    SendRequest,
    /// Client INVITE: build the ACK for the non-2xx final response just received and send it
    /// (also for each retransmission of that response).
    SendAck,
    /// Client: pass the response just received to the TU.
    PassResponseToTu,
    /// Server: pass the request that created the transaction to the TU.
    PassRequestToTu,
    /// Server INVITE in Accepted (RFC 6026): pass the ACK just received to the TU.
    PassAckToTu,
    /// Server INVITE: build a 100 Trying from the request, send it and keep it as the last
    /// response. An owner that answers within 200 ms may skip it; a later
    /// [`Action::ResendResponse`] with no response kept is then a no-op.
    SendTrying,
    /// Server: send the response the TU just handed over and keep it as the last response.
    SendResponse,
    /// Server: retransmit the last response kept.
    ResendResponse,
    /// Start (or restart, replacing the running one) this transaction's timer.
    StartTimer(TimerName, Duration),
    /// Cancel this transaction's timer.
    CancelTimer(TimerName),
    /// Tell the TU the transaction timed out (Timer B, F or H); a client TU synthesizes 408.
    Timeout,
    /// Tell the TU the transport failed; a client TU synthesizes 503 (RFC 3261 §8.1.3.1).
    TransportErrorToTu,
    /// The transaction is over: the owner drops it. Always the last action of its step.
    Terminated,
}

/// The actions of one step, in order, in a fixed-size buffer so that a step does not allocate.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Actions {
    buf: [Action; Actions::CAPACITY],
    len: u8,
}

impl Actions {
    /// The most actions one step returns (the busiest step returns 5).
    pub const CAPACITY: usize = 6;

    /// No actions.
    pub const fn new() -> Self {
        Actions {
            // Filler: slots at `len..` are never exposed.
            buf: [Action::Terminated; Actions::CAPACITY],
            len: 0,
        }
    }

    fn push(&mut self, action: Action) {
        // The machines are written so that no step exceeds the capacity; the tests drive
        // every transition, so an overflow is a bug in this file.
        assert!(
            (self.len as usize) < Self::CAPACITY,
            "transaction step produced more than {} actions",
            Self::CAPACITY
        );
        self.buf[self.len as usize] = action;
        self.len += 1;
    }

    /// The actions as a slice.
    pub fn as_slice(&self) -> &[Action] {
        &self.buf[..self.len as usize]
    }

    /// Whether the step ended the transaction.
    pub fn terminated(&self) -> bool {
        self.as_slice().last() == Some(&Action::Terminated)
    }
}

impl Default for Actions {
    fn default() -> Self {
        Actions::new()
    }
}

impl Deref for Actions {
    type Target = [Action];
    fn deref(&self) -> &[Action] {
        self.as_slice()
    }
}

impl fmt::Debug for Actions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.as_slice()).finish()
    }
}

impl<'a> IntoIterator for &'a Actions {
    type Item = &'a Action;
    type IntoIter = std::slice::Iter<'a, Action>;
    fn into_iter(self) -> Self::IntoIter {
        self.as_slice().iter()
    }
}

impl IntoIterator for Actions {
    type Item = Action;
    type IntoIter = ActionsIntoIter;
    fn into_iter(self) -> ActionsIntoIter {
        ActionsIntoIter {
            actions: self,
            pos: 0,
        }
    }
}

/// By-value iterator over [`Actions`].
#[derive(Debug, Clone)]
pub struct ActionsIntoIter {
    actions: Actions,
    pos: u8,
}

impl Iterator for ActionsIntoIter {
    type Item = Action;
    fn next(&mut self) -> Option<Action> {
        let a = self.actions.as_slice().get(self.pos as usize).copied()?;
        self.pos += 1;
        Some(a)
    }
}

/// Response class as the machines see it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Class {
    Provisional,
    Success,
    /// 300–699.
    Failure,
    Invalid,
}

fn classify(status: u16) -> Class {
    match status {
        100..=199 => Class::Provisional,
        200..=299 => Class::Success,
        300..=699 => Class::Failure,
        _ => Class::Invalid,
    }
}

/// Bookkeeping shared by the four machines: transport, live timers, retransmission count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Core {
    reliability: Reliability,
    /// Bit set of running timers (by `TimerName as u16`).
    running: u16,
    /// Retransmissions so far by the doubling timer (A, E or G).
    retransmits: u32,
}

impl Core {
    fn new(reliability: Reliability) -> Self {
        Core {
            reliability,
            running: 0,
            retransmits: 0,
        }
    }

    fn unreliable(&self) -> bool {
        !self.reliability.is_reliable()
    }

    fn start(&mut self, acts: &mut Actions, timer: TimerName, after: Duration) {
        self.running |= timer.bit();
        acts.push(Action::StartTimer(timer, after));
    }

    /// Start `timer` with its initial duration from the config.
    fn start_initial(&mut self, acts: &mut Actions, timer: TimerName, cfg: &TimerConfig) {
        let d = cfg.duration(timer, self.reliability);
        self.start(acts, timer, d);
    }

    fn cancel(&mut self, acts: &mut Actions, timer: TimerName) {
        if self.running & timer.bit() != 0 {
            self.running &= !timer.bit();
            acts.push(Action::CancelTimer(timer));
        }
    }

    /// Accept a fire of `timer`: true if it was running (it no longer is), false for a stale
    /// fire that must be ignored.
    fn take_fired(&mut self, timer: TimerName) -> bool {
        let was = self.running & timer.bit() != 0;
        self.running &= !timer.bit();
        was
    }

    /// Cancel every live timer, then `Terminated`.
    fn terminate(&mut self, acts: &mut Actions) {
        for t in TimerName::ALL {
            self.cancel(acts, t);
        }
        acts.push(Action::Terminated);
    }

    /// Enter a lingering state whose timer is zero over reliable transports (D, I, J, K):
    /// start it, or terminate at once. Returns whether it terminated.
    fn linger_or_terminate(
        &mut self,
        acts: &mut Actions,
        timer: TimerName,
        cfg: &TimerConfig,
    ) -> bool {
        let d = cfg.duration(timer, self.reliability);
        if d.is_zero() {
            self.terminate(acts);
            true
        } else {
            self.start(acts, timer, d);
            false
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Client INVITE (RFC 3261 §17.1.1, RFC 6026 §7.2, Figure 5)
// ---------------------------------------------------------------------------------------------

/// States of the INVITE client transaction (RFC 6026 Figure 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClientInviteState {
    /// INVITE sent, no response yet; retransmitting over UDP (Timer A), Timer B running.
    Calling,
    /// A provisional response arrived.
    Proceeding,
    /// A 300–699 final response arrived and was ACKed; absorbing retransmissions (Timer D).
    Completed,
    /// A 2xx arrived (RFC 6026); every further 2xx goes to the TU until Timer M.
    Accepted,
    /// Over.
    Terminated,
}

/// The INVITE client transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientInvite {
    state: ClientInviteState,
    core: Core,
}

impl ClientInvite {
    /// Create the transaction for an INVITE from the TU. The actions start with
    /// [`Action::SendRequest`], then Timer A (UDP only) and Timer B.
    pub fn start(reliability: Reliability, cfg: &TimerConfig) -> (Self, Actions) {
        let mut tx = ClientInvite {
            state: ClientInviteState::Calling,
            core: Core::new(reliability),
        };
        let mut acts = Actions::new();
        acts.push(Action::SendRequest);
        if tx.core.unreliable() {
            tx.core.start_initial(&mut acts, TimerName::A, cfg);
        }
        tx.core.start_initial(&mut acts, TimerName::B, cfg);
        (tx, acts)
    }

    /// The current state.
    pub fn state(&self) -> ClientInviteState {
        self.state
    }

    /// Whether the transaction is over.
    pub fn is_terminated(&self) -> bool {
        self.state == ClientInviteState::Terminated
    }

    /// Feed one event; returns what the owner must do.
    pub fn step(&mut self, event: Event, cfg: &TimerConfig) -> Actions {
        use ClientInviteState as S;
        let mut acts = Actions::new();
        if self.state == S::Terminated {
            return acts;
        }
        if let Event::TimerFired(t) = event {
            if !self.core.take_fired(t) {
                return acts;
            }
        }
        match (self.state, event) {
            (S::Calling, Event::TimerFired(TimerName::A)) => {
                self.core.retransmits += 1;
                acts.push(Action::SendRequest);
                let next = cfg.backoff(self.core.retransmits, false);
                self.core.start(&mut acts, TimerName::A, next);
            }
            (S::Calling, Event::TimerFired(TimerName::B)) => {
                acts.push(Action::Timeout);
                self.terminate(&mut acts);
            }
            (S::Calling, Event::TransportError) => {
                acts.push(Action::TransportErrorToTu);
                self.terminate(&mut acts);
            }
            (S::Calling | S::Proceeding, Event::ReceivedResponse { status }) => {
                match classify(status) {
                    Class::Provisional => {
                        // Choice: A and B only apply in Calling (see module docs).
                        self.core.cancel(&mut acts, TimerName::A);
                        self.core.cancel(&mut acts, TimerName::B);
                        self.state = S::Proceeding;
                        acts.push(Action::PassResponseToTu);
                    }
                    Class::Success => {
                        self.core.cancel(&mut acts, TimerName::A);
                        self.core.cancel(&mut acts, TimerName::B);
                        acts.push(Action::PassResponseToTu);
                        self.state = S::Accepted;
                        self.core.start_initial(&mut acts, TimerName::M, cfg);
                    }
                    Class::Failure => {
                        self.core.cancel(&mut acts, TimerName::A);
                        self.core.cancel(&mut acts, TimerName::B);
                        acts.push(Action::PassResponseToTu);
                        acts.push(Action::SendAck);
                        self.state = S::Completed;
                        if self.core.linger_or_terminate(&mut acts, TimerName::D, cfg) {
                            self.state = S::Terminated;
                        }
                    }
                    Class::Invalid => {}
                }
            }
            // A retransmitted final response: ACK again, the TU has seen it already.
            (S::Completed, Event::ReceivedResponse { status })
                if classify(status) == Class::Failure =>
            {
                acts.push(Action::SendAck);
            }
            (S::Completed, Event::TransportError) => {
                acts.push(Action::TransportErrorToTu);
                self.terminate(&mut acts);
            }
            (S::Completed, Event::TimerFired(TimerName::D))
            | (S::Accepted, Event::TimerFired(TimerName::M)) => {
                self.terminate(&mut acts);
            }
            // RFC 6026: 2xx retransmissions and 2xx from other forks go to the TU, which ACKs
            // each; anything else is absorbed.
            (S::Accepted, Event::ReceivedResponse { status })
                if classify(status) == Class::Success =>
            {
                acts.push(Action::PassResponseToTu);
            }
            _ => {}
        }
        acts
    }

    fn terminate(&mut self, acts: &mut Actions) {
        self.core.terminate(acts);
        self.state = ClientInviteState::Terminated;
    }
}

// ---------------------------------------------------------------------------------------------
// Client non-INVITE (RFC 3261 §17.1.2, Figure 6)
// ---------------------------------------------------------------------------------------------

/// States of the non-INVITE client transaction (RFC 3261 Figure 6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClientNonInviteState {
    /// Request sent, no response yet; Timer E (UDP) doubles up to T2.
    Trying,
    /// A provisional response arrived; Timer E fires every T2.
    Proceeding,
    /// A final response arrived; absorbing retransmissions (Timer K).
    Completed,
    /// Over.
    Terminated,
}

/// The non-INVITE client transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientNonInvite {
    state: ClientNonInviteState,
    core: Core,
}

impl ClientNonInvite {
    /// Create the transaction for a non-INVITE request from the TU. The actions start with
    /// [`Action::SendRequest`], then Timer E (UDP only) and Timer F.
    pub fn start(reliability: Reliability, cfg: &TimerConfig) -> (Self, Actions) {
        let mut tx = ClientNonInvite {
            state: ClientNonInviteState::Trying,
            core: Core::new(reliability),
        };
        let mut acts = Actions::new();
        acts.push(Action::SendRequest);
        if tx.core.unreliable() {
            tx.core.start_initial(&mut acts, TimerName::E, cfg);
        }
        tx.core.start_initial(&mut acts, TimerName::F, cfg);
        (tx, acts)
    }

    /// The current state.
    pub fn state(&self) -> ClientNonInviteState {
        self.state
    }

    /// Whether the transaction is over.
    pub fn is_terminated(&self) -> bool {
        self.state == ClientNonInviteState::Terminated
    }

    /// Feed one event; returns what the owner must do.
    pub fn step(&mut self, event: Event, cfg: &TimerConfig) -> Actions {
        use ClientNonInviteState as S;
        let mut acts = Actions::new();
        if self.state == S::Terminated {
            return acts;
        }
        if let Event::TimerFired(t) = event {
            if !self.core.take_fired(t) {
                return acts;
            }
        }
        match (self.state, event) {
            (S::Trying | S::Proceeding, Event::TimerFired(TimerName::E)) => {
                self.core.retransmits += 1;
                acts.push(Action::SendRequest);
                // RFC 3261 §17.1.2.2: doubling up to T2 in Trying, T2 flat in Proceeding.
                let next = if self.state == S::Trying {
                    cfg.backoff(self.core.retransmits, true)
                } else {
                    cfg.t2
                };
                self.core.start(&mut acts, TimerName::E, next);
            }
            (S::Trying | S::Proceeding, Event::TimerFired(TimerName::F)) => {
                acts.push(Action::Timeout);
                self.terminate(&mut acts);
            }
            (S::Trying | S::Proceeding, Event::TransportError) => {
                acts.push(Action::TransportErrorToTu);
                self.terminate(&mut acts);
            }
            (S::Trying | S::Proceeding, Event::ReceivedResponse { status }) => {
                match classify(status) {
                    Class::Provisional => {
                        // Timer E keeps its current schedule; its next fire resets it to T2.
                        self.state = S::Proceeding;
                        acts.push(Action::PassResponseToTu);
                    }
                    Class::Success | Class::Failure => {
                        self.core.cancel(&mut acts, TimerName::E);
                        self.core.cancel(&mut acts, TimerName::F);
                        acts.push(Action::PassResponseToTu);
                        self.state = S::Completed;
                        if self.core.linger_or_terminate(&mut acts, TimerName::K, cfg) {
                            self.state = S::Terminated;
                        }
                    }
                    Class::Invalid => {}
                }
            }
            (S::Completed, Event::TimerFired(TimerName::K)) => {
                self.terminate(&mut acts);
            }
            // Completed absorbs response retransmissions.
            _ => {}
        }
        acts
    }

    fn terminate(&mut self, acts: &mut Actions) {
        self.core.terminate(acts);
        self.state = ClientNonInviteState::Terminated;
    }
}

// ---------------------------------------------------------------------------------------------
// Server INVITE (RFC 3261 §17.2.1, RFC 6026 §7.1, Figure 7)
// ---------------------------------------------------------------------------------------------

/// States of the INVITE server transaction (RFC 6026 Figure 7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ServerInviteState {
    /// INVITE received; the TU may send provisional responses.
    Proceeding,
    /// A 300–699 final response was sent; retransmitting it (Timer G, UDP) until ACK or Timer H.
    Completed,
    /// The ACK for the non-2xx arrived; absorbing ACK retransmissions (Timer I).
    Confirmed,
    /// A 2xx was sent (RFC 6026); the TU retransmits it through here until Timer L.
    Accepted,
    /// Over.
    Terminated,
}

/// The INVITE server transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerInvite {
    state: ServerInviteState,
    core: Core,
}

impl ServerInvite {
    /// Create the transaction for a received INVITE: [`Action::PassRequestToTu`] then
    /// [`Action::SendTrying`].
    pub fn start(reliability: Reliability, _cfg: &TimerConfig) -> (Self, Actions) {
        let tx = ServerInvite {
            state: ServerInviteState::Proceeding,
            core: Core::new(reliability),
        };
        let mut acts = Actions::new();
        acts.push(Action::PassRequestToTu);
        // Choice: 100 at once (see module docs).
        acts.push(Action::SendTrying);
        (tx, acts)
    }

    /// The current state.
    pub fn state(&self) -> ServerInviteState {
        self.state
    }

    /// Whether the transaction is over.
    pub fn is_terminated(&self) -> bool {
        self.state == ServerInviteState::Terminated
    }

    /// Feed one event; returns what the owner must do.
    pub fn step(&mut self, event: Event, cfg: &TimerConfig) -> Actions {
        use ServerInviteState as S;
        let mut acts = Actions::new();
        if self.state == S::Terminated {
            return acts;
        }
        if let Event::TimerFired(t) = event {
            if !self.core.take_fired(t) {
                return acts;
            }
        }
        match (self.state, event) {
            (S::Proceeding, Event::ReceivedRequest) => acts.push(Action::ResendResponse),
            (S::Proceeding, Event::TuResponse { status }) => match classify(status) {
                Class::Provisional => acts.push(Action::SendResponse),
                Class::Success => {
                    acts.push(Action::SendResponse);
                    self.state = S::Accepted;
                    self.core.start_initial(&mut acts, TimerName::L, cfg);
                }
                Class::Failure => {
                    acts.push(Action::SendResponse);
                    self.state = S::Completed;
                    if self.core.unreliable() {
                        self.core.start_initial(&mut acts, TimerName::G, cfg);
                    }
                    self.core.start_initial(&mut acts, TimerName::H, cfg);
                }
                Class::Invalid => {}
            },
            (S::Proceeding | S::Completed, Event::TransportError) => {
                acts.push(Action::TransportErrorToTu);
                self.terminate(&mut acts);
            }
            (S::Completed, Event::ReceivedRequest) => acts.push(Action::ResendResponse),
            (S::Completed, Event::TimerFired(TimerName::G)) => {
                self.core.retransmits += 1;
                acts.push(Action::ResendResponse);
                let next = cfg.backoff(self.core.retransmits, true);
                self.core.start(&mut acts, TimerName::G, next);
            }
            (S::Completed, Event::TimerFired(TimerName::H)) => {
                acts.push(Action::Timeout);
                self.terminate(&mut acts);
            }
            (S::Completed, Event::ReceivedAck) => {
                self.core.cancel(&mut acts, TimerName::G);
                self.core.cancel(&mut acts, TimerName::H);
                self.state = S::Confirmed;
                if self.core.linger_or_terminate(&mut acts, TimerName::I, cfg) {
                    self.state = S::Terminated;
                }
            }
            (S::Confirmed, Event::TimerFired(TimerName::I))
            | (S::Accepted, Event::TimerFired(TimerName::L)) => {
                self.terminate(&mut acts);
            }
            // RFC 6026: the ACK for a 2xx goes to the TU; INVITE retransmissions are absorbed.
            (S::Accepted, Event::ReceivedAck) => acts.push(Action::PassAckToTu),
            // RFC 6026: the TU's 2xx retransmissions pass through; anything else after a 2xx
            // is refused.
            (S::Accepted, Event::TuResponse { status }) if classify(status) == Class::Success => {
                acts.push(Action::SendResponse);
            }
            (S::Accepted, Event::TransportError) => {
                // RFC 6026 Figure 7: inform the TU and stay; the TU decides about the dialog.
                acts.push(Action::TransportErrorToTu);
            }
            // Confirmed absorbs ACK and INVITE retransmissions; refused TU responses.
            _ => {}
        }
        acts
    }

    fn terminate(&mut self, acts: &mut Actions) {
        self.core.terminate(acts);
        self.state = ServerInviteState::Terminated;
    }
}

// ---------------------------------------------------------------------------------------------
// Server non-INVITE (RFC 3261 §17.2.2, Figure 8)
// ---------------------------------------------------------------------------------------------

/// States of the non-INVITE server transaction (RFC 3261 Figure 8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ServerNonInviteState {
    /// Request received, nothing sent yet; retransmissions are absorbed.
    Trying,
    /// A provisional response was sent; retransmissions get it again.
    Proceeding,
    /// A final response was sent; retransmissions get it again until Timer J.
    Completed,
    /// Over.
    Terminated,
}

/// The non-INVITE server transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerNonInvite {
    state: ServerNonInviteState,
    core: Core,
}

impl ServerNonInvite {
    /// Create the transaction for a received non-INVITE request: [`Action::PassRequestToTu`].
    pub fn start(reliability: Reliability, _cfg: &TimerConfig) -> (Self, Actions) {
        let tx = ServerNonInvite {
            state: ServerNonInviteState::Trying,
            core: Core::new(reliability),
        };
        let mut acts = Actions::new();
        acts.push(Action::PassRequestToTu);
        (tx, acts)
    }

    /// The current state.
    pub fn state(&self) -> ServerNonInviteState {
        self.state
    }

    /// Whether the transaction is over.
    pub fn is_terminated(&self) -> bool {
        self.state == ServerNonInviteState::Terminated
    }

    /// Feed one event; returns what the owner must do.
    pub fn step(&mut self, event: Event, cfg: &TimerConfig) -> Actions {
        use ServerNonInviteState as S;
        let mut acts = Actions::new();
        if self.state == S::Terminated {
            return acts;
        }
        if let Event::TimerFired(t) = event {
            if !self.core.take_fired(t) {
                return acts;
            }
        }
        match (self.state, event) {
            (S::Trying | S::Proceeding, Event::TuResponse { status }) => match classify(status) {
                Class::Provisional => {
                    acts.push(Action::SendResponse);
                    self.state = S::Proceeding;
                }
                Class::Success | Class::Failure => {
                    acts.push(Action::SendResponse);
                    self.state = S::Completed;
                    if self.core.linger_or_terminate(&mut acts, TimerName::J, cfg) {
                        self.state = S::Terminated;
                    }
                }
                Class::Invalid => {}
            },
            (S::Proceeding | S::Completed, Event::ReceivedRequest) => {
                acts.push(Action::ResendResponse)
            }
            (S::Proceeding | S::Completed, Event::TransportError) => {
                acts.push(Action::TransportErrorToTu);
                self.terminate(&mut acts);
            }
            (S::Completed, Event::TimerFired(TimerName::J)) => self.terminate(&mut acts),
            // Trying absorbs retransmissions (nothing to resend yet); Completed discards
            // further TU responses (RFC 3261 §17.2.2).
            _ => {}
        }
        acts
    }

    fn terminate(&mut self, acts: &mut Actions) {
        self.core.terminate(acts);
        self.state = ServerNonInviteState::Terminated;
    }
}

// ---------------------------------------------------------------------------------------------
// Any of the four
// ---------------------------------------------------------------------------------------------

/// Which of the four machines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// INVITE client transaction.
    ClientInvite,
    /// Non-INVITE client transaction.
    ClientNonInvite,
    /// INVITE server transaction.
    ServerInvite,
    /// Non-INVITE server transaction.
    ServerNonInvite,
}

/// Any transaction, for owners that keep them in one map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transaction {
    /// INVITE client transaction.
    ClientInvite(ClientInvite),
    /// Non-INVITE client transaction.
    ClientNonInvite(ClientNonInvite),
    /// INVITE server transaction.
    ServerInvite(ServerInvite),
    /// Non-INVITE server transaction.
    ServerNonInvite(ServerNonInvite),
}

impl Transaction {
    /// Create a transaction of `kind` (see each machine's `start`).
    pub fn start(kind: Kind, reliability: Reliability, cfg: &TimerConfig) -> (Self, Actions) {
        match kind {
            Kind::ClientInvite => {
                let (t, a) = ClientInvite::start(reliability, cfg);
                (Transaction::ClientInvite(t), a)
            }
            Kind::ClientNonInvite => {
                let (t, a) = ClientNonInvite::start(reliability, cfg);
                (Transaction::ClientNonInvite(t), a)
            }
            Kind::ServerInvite => {
                let (t, a) = ServerInvite::start(reliability, cfg);
                (Transaction::ServerInvite(t), a)
            }
            Kind::ServerNonInvite => {
                let (t, a) = ServerNonInvite::start(reliability, cfg);
                (Transaction::ServerNonInvite(t), a)
            }
        }
    }

    /// Feed one event; returns what the owner must do.
    pub fn step(&mut self, event: Event, cfg: &TimerConfig) -> Actions {
        match self {
            Transaction::ClientInvite(t) => t.step(event, cfg),
            Transaction::ClientNonInvite(t) => t.step(event, cfg),
            Transaction::ServerInvite(t) => t.step(event, cfg),
            Transaction::ServerNonInvite(t) => t.step(event, cfg),
        }
    }

    /// Which machine this is.
    pub fn kind(&self) -> Kind {
        match self {
            Transaction::ClientInvite(_) => Kind::ClientInvite,
            Transaction::ClientNonInvite(_) => Kind::ClientNonInvite,
            Transaction::ServerInvite(_) => Kind::ServerInvite,
            Transaction::ServerNonInvite(_) => Kind::ServerNonInvite,
        }
    }

    /// Whether the transaction is over.
    pub fn is_terminated(&self) -> bool {
        match self {
            Transaction::ClientInvite(t) => t.is_terminated(),
            Transaction::ClientNonInvite(t) => t.is_terminated(),
            Transaction::ServerInvite(t) => t.is_terminated(),
            Transaction::ServerNonInvite(t) => t.is_terminated(),
        }
    }

    /// The reliability the transaction was created with.
    pub fn reliability(&self) -> Reliability {
        match self {
            Transaction::ClientInvite(t) => t.core.reliability,
            Transaction::ClientNonInvite(t) => t.core.reliability,
            Transaction::ServerInvite(t) => t.core.reliability,
            Transaction::ServerNonInvite(t) => t.core.reliability,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cmp::Reverse;
    use std::collections::{BinaryHeap, HashMap};
    use Action::*;
    use TimerName as T;

    fn cfg() -> TimerConfig {
        TimerConfig::default()
    }
    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }
    fn s(n: u64) -> Duration {
        Duration::from_secs(n)
    }
    const UDP: Reliability = Reliability::Unreliable;
    const TCP: Reliability = Reliability::Reliable;
    fn resp(status: u16) -> Event {
        Event::ReceivedResponse { status }
    }
    fn tu(status: u16) -> Event {
        Event::TuResponse { status }
    }
    fn fire(t: TimerName) -> Event {
        Event::TimerFired(t)
    }

    /// A simulated clock: a deadline heap that fires the machine's timers in time order and
    /// records every action with the time it was produced.
    struct Sim {
        tx: Transaction,
        cfg: TimerConfig,
        now: Duration,
        seq: u64,
        heap: BinaryHeap<Reverse<(Duration, u64, TimerName)>>,
        live: HashMap<TimerName, u64>,
        log: Vec<(Duration, Action)>,
    }

    impl Sim {
        fn start(kind: Kind, rel: Reliability, cfg: TimerConfig) -> Sim {
            let (tx, acts) = Transaction::start(kind, rel, &cfg);
            let mut sim = Sim {
                tx,
                cfg,
                now: Duration::ZERO,
                seq: 0,
                heap: BinaryHeap::new(),
                live: HashMap::new(),
                log: Vec::new(),
            };
            sim.apply(acts);
            sim
        }

        fn apply(&mut self, acts: Actions) {
            for a in acts {
                self.log.push((self.now, a));
                match a {
                    StartTimer(t, d) => {
                        self.seq += 1;
                        self.heap.push(Reverse((self.now + d, self.seq, t)));
                        self.live.insert(t, self.seq);
                    }
                    CancelTimer(t) => {
                        assert!(self.live.remove(&t).is_some(), "cancel of idle {t:?}");
                    }
                    _ => {}
                }
            }
        }

        /// Run the clock to `until`, then feed `ev` (if any) at that time.
        fn at(&mut self, until: Duration, ev: Option<Event>) {
            while let Some(Reverse((when, seq, t))) = self.heap.peek().copied() {
                if when > until {
                    break;
                }
                self.heap.pop();
                if self.live.get(&t) == Some(&seq) {
                    self.live.remove(&t);
                    self.now = when;
                    let acts = self.tx.step(Event::TimerFired(t), &self.cfg);
                    self.apply(acts);
                }
            }
            self.now = until;
            if let Some(ev) = ev {
                let acts = self.tx.step(ev, &self.cfg);
                self.apply(acts);
            }
        }

        fn times(&self, action: Action) -> Vec<Duration> {
            self.log
                .iter()
                .filter(|(_, a)| *a == action)
                .map(|(t, _)| *t)
                .collect()
        }

        /// At the end no timer may be left live: every timer was fired or cancelled.
        fn assert_clean(&self) {
            assert!(self.tx.is_terminated(), "not terminated: {:?}", self.tx);
            assert!(self.live.is_empty(), "timers left: {:?}", self.live);
        }
    }

    fn secs_f(v: &[f64]) -> Vec<Duration> {
        v.iter().map(|x| Duration::from_secs_f64(*x)).collect()
    }

    // ------------------------------------------------------------------ config and container

    #[test]
    fn timer_durations_follow_rfc_defaults() {
        let c = cfg();
        assert_eq!(c.t1, ms(500));
        assert_eq!(c.t2, s(4));
        assert_eq!(c.t4, s(5));
        for t in [T::B, T::F, T::H, T::L, T::M] {
            assert_eq!(c.duration(t, UDP), s(32), "{t:?}");
            assert_eq!(c.duration(t, TCP), s(32), "{t:?}");
        }
        for t in [T::A, T::E, T::G] {
            assert_eq!(c.duration(t, UDP), ms(500));
            assert_eq!(c.duration(t, TCP), Duration::ZERO);
        }
        assert_eq!(c.duration(T::D, UDP), s(32));
        assert_eq!(c.duration(T::I, UDP), s(5));
        assert_eq!(c.duration(T::J, UDP), s(32));
        assert_eq!(c.duration(T::K, UDP), s(5));
        for t in [T::D, T::I, T::J, T::K] {
            assert_eq!(c.duration(t, TCP), Duration::ZERO, "{t:?}");
        }
    }

    #[test]
    fn timer_d_is_at_least_64_t1() {
        let c = TimerConfig { t1: s(1), ..cfg() };
        assert_eq!(c.duration(T::D, UDP), s(64));
        let c = TimerConfig {
            t1: ms(100),
            ..cfg()
        };
        assert_eq!(c.duration(T::D, UDP), s(32));
        assert_eq!(c.duration(T::B, UDP), ms(6400));
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let c = cfg();
        let a: Vec<_> = (1..=6).map(|n| c.backoff(n, false)).collect();
        assert_eq!(
            a,
            [ms(1000), ms(2000), ms(4000), ms(8000), ms(16000), ms(32000)]
        );
        let e: Vec<_> = (1..=5).map(|n| c.backoff(n, true)).collect();
        assert_eq!(e, [ms(1000), ms(2000), ms(4000), ms(4000), ms(4000)]);
        // No overflow panic for absurd counts.
        assert_eq!(c.backoff(1000, true), s(4));
    }

    #[test]
    fn reliability_from_bool() {
        assert_eq!(Reliability::from(true), TCP);
        assert_eq!(Reliability::from(false), UDP);
        assert!(TCP.is_reliable());
        assert!(!UDP.is_reliable());
    }

    #[test]
    fn actions_container() {
        let mut a = Actions::new();
        assert!(a.is_empty());
        a.push(SendRequest);
        a.push(Terminated);
        assert_eq!(a.len(), 2);
        assert_eq!(a.as_slice(), &[SendRequest, Terminated]);
        assert!(a.terminated());
        assert!(a.contains(&SendRequest));
        assert_eq!(
            a.into_iter().collect::<Vec<_>>(),
            vec![SendRequest, Terminated]
        );
        assert_eq!((&a).into_iter().count(), 2);
        assert_eq!(format!("{a:?}"), "[SendRequest, Terminated]");
        assert_eq!(Actions::default(), Actions::new());
    }

    #[test]
    #[should_panic(expected = "more than")]
    fn actions_overflow_is_a_bug() {
        let mut a = Actions::new();
        for _ in 0..=Actions::CAPACITY {
            a.push(SendRequest);
        }
    }

    // ------------------------------------------------------------------ client INVITE

    #[test]
    fn client_invite_start() {
        let (tx, a) = ClientInvite::start(UDP, &cfg());
        assert_eq!(tx.state(), ClientInviteState::Calling);
        assert_eq!(
            a.as_slice(),
            &[
                SendRequest,
                StartTimer(T::A, ms(500)),
                StartTimer(T::B, s(32))
            ]
        );
        let (tx, a) = ClientInvite::start(TCP, &cfg());
        assert_eq!(tx.state(), ClientInviteState::Calling);
        assert_eq!(a.as_slice(), &[SendRequest, StartTimer(T::B, s(32))]);
    }

    #[test]
    fn client_invite_timer_a_doubles_uncapped() {
        let c = cfg();
        let (mut tx, _) = ClientInvite::start(UDP, &c);
        let mut next = vec![];
        for _ in 0..6 {
            let a = tx.step(fire(T::A), &c);
            assert_eq!(a[0], SendRequest);
            next.push(a[1]);
            assert_eq!(a.len(), 2);
        }
        assert_eq!(
            next,
            [1000, 2000, 4000, 8000, 16000, 32000].map(|m| StartTimer(T::A, ms(m)))
        );
        assert_eq!(tx.state(), ClientInviteState::Calling);
    }

    #[test]
    fn client_invite_unanswered_udp_schedule() {
        let mut sim = Sim::start(Kind::ClientInvite, UDP, cfg());
        sim.at(s(100), None);
        assert_eq!(
            sim.times(SendRequest),
            secs_f(&[0.0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5])
        );
        assert_eq!(sim.times(Timeout), vec![s(32)]);
        assert_eq!(sim.times(Terminated), vec![s(32)]);
        // A is cancelled with the timeout.
        assert_eq!(sim.times(CancelTimer(T::A)), vec![s(32)]);
        sim.assert_clean();
    }

    #[test]
    fn client_invite_unanswered_tcp_sends_once() {
        let mut sim = Sim::start(Kind::ClientInvite, TCP, cfg());
        sim.at(s(100), None);
        assert_eq!(sim.times(SendRequest), vec![s(0)]);
        assert_eq!(sim.times(Timeout), vec![s(32)]);
        sim.assert_clean();
    }

    #[test]
    fn client_invite_timer_b_in_calling() {
        let c = cfg();
        let (mut tx, _) = ClientInvite::start(TCP, &c);
        assert_eq!(tx.step(fire(T::B), &c).as_slice(), &[Timeout, Terminated]);
        assert!(tx.is_terminated());
    }

    #[test]
    fn client_invite_1xx_to_proceeding_stops_a_and_b() {
        let c = cfg();
        let (mut tx, _) = ClientInvite::start(UDP, &c);
        let a = tx.step(resp(100), &c);
        assert_eq!(
            a.as_slice(),
            &[CancelTimer(T::A), CancelTimer(T::B), PassResponseToTu]
        );
        assert_eq!(tx.state(), ClientInviteState::Proceeding);
        // Further provisionals go to the TU.
        assert_eq!(tx.step(resp(180), &c).as_slice(), &[PassResponseToTu]);
        assert_eq!(tx.step(resp(183), &c).as_slice(), &[PassResponseToTu]);
        // Fires that raced with the cancel are ignored.
        assert!(tx.step(fire(T::A), &c).is_empty());
        assert!(tx.step(fire(T::B), &c).is_empty());
        // Transport errors: nothing is sent in Proceeding.
        assert!(tx.step(Event::TransportError, &c).is_empty());
        assert_eq!(tx.state(), ClientInviteState::Proceeding);
    }

    #[test]
    fn client_invite_1xx_over_tcp() {
        let c = cfg();
        let (mut tx, _) = ClientInvite::start(TCP, &c);
        assert_eq!(
            tx.step(resp(180), &c).as_slice(),
            &[CancelTimer(T::B), PassResponseToTu]
        );
    }

    #[test]
    fn client_invite_2xx_in_calling_to_accepted() {
        let c = cfg();
        let (mut tx, _) = ClientInvite::start(UDP, &c);
        let a = tx.step(resp(200), &c);
        assert_eq!(
            a.as_slice(),
            &[
                CancelTimer(T::A),
                CancelTimer(T::B),
                PassResponseToTu,
                StartTimer(T::M, s(32))
            ]
        );
        assert_eq!(tx.state(), ClientInviteState::Accepted);
    }

    #[test]
    fn client_invite_accepted_passes_every_2xx_until_timer_m() {
        let c = cfg();
        let (mut tx, _) = ClientInvite::start(TCP, &c);
        tx.step(resp(180), &c);
        let a = tx.step(resp(200), &c);
        assert_eq!(a.as_slice(), &[PassResponseToTu, StartTimer(T::M, s(32))]);
        assert_eq!(tx.state(), ClientInviteState::Accepted);
        // Retransmitted 2xx and a 2xx from another fork: to the TU.
        assert_eq!(tx.step(resp(200), &c).as_slice(), &[PassResponseToTu]);
        assert_eq!(tx.step(resp(202), &c).as_slice(), &[PassResponseToTu]);
        // Anything else is absorbed.
        assert!(tx.step(resp(180), &c).is_empty());
        assert!(tx.step(resp(486), &c).is_empty());
        assert!(tx.step(Event::TransportError, &c).is_empty());
        assert!(tx.step(fire(T::D), &c).is_empty());
        assert_eq!(tx.state(), ClientInviteState::Accepted);
        assert_eq!(tx.step(fire(T::M), &c).as_slice(), &[Terminated]);
        assert!(tx.is_terminated());
        assert!(tx.step(resp(200), &c).is_empty());
    }

    #[test]
    fn client_invite_accepted_schedule_udp() {
        let mut sim = Sim::start(Kind::ClientInvite, UDP, cfg());
        sim.at(ms(700), Some(resp(200)));
        sim.at(s(10), Some(resp(200)));
        sim.at(s(60), None);
        assert_eq!(sim.times(SendRequest), secs_f(&[0.0, 0.5]));
        assert_eq!(sim.times(PassResponseToTu), secs_f(&[0.7, 10.0]));
        assert_eq!(sim.times(Terminated), secs_f(&[32.7]));
        sim.assert_clean();
    }

    #[test]
    fn client_invite_failure_in_calling_udp() {
        let c = cfg();
        let (mut tx, _) = ClientInvite::start(UDP, &c);
        let a = tx.step(resp(486), &c);
        assert_eq!(
            a.as_slice(),
            &[
                CancelTimer(T::A),
                CancelTimer(T::B),
                PassResponseToTu,
                SendAck,
                StartTimer(T::D, s(32))
            ]
        );
        assert_eq!(tx.state(), ClientInviteState::Completed);
        // Retransmissions of the final response: ACK again, not to the TU.
        assert_eq!(tx.step(resp(486), &c).as_slice(), &[SendAck]);
        // Other responses are absorbed.
        assert!(tx.step(resp(180), &c).is_empty());
        assert!(tx.step(resp(200), &c).is_empty());
        assert_eq!(tx.step(fire(T::D), &c).as_slice(), &[Terminated]);
        assert!(tx.is_terminated());
    }

    #[test]
    fn client_invite_failure_in_proceeding() {
        let c = cfg();
        let (mut tx, _) = ClientInvite::start(UDP, &c);
        tx.step(resp(180), &c);
        let a = tx.step(resp(603), &c);
        assert_eq!(
            a.as_slice(),
            &[PassResponseToTu, SendAck, StartTimer(T::D, s(32))]
        );
        assert_eq!(tx.state(), ClientInviteState::Completed);
    }

    #[test]
    fn client_invite_failure_over_tcp_terminates_at_once() {
        let c = cfg();
        let (mut tx, _) = ClientInvite::start(TCP, &c);
        let a = tx.step(resp(404), &c);
        assert_eq!(
            a.as_slice(),
            &[CancelTimer(T::B), PassResponseToTu, SendAck, Terminated]
        );
        assert!(tx.is_terminated());
        assert!(a.terminated());
    }

    #[test]
    fn client_invite_transport_errors() {
        let c = cfg();
        let (mut tx, _) = ClientInvite::start(UDP, &c);
        let a = tx.step(Event::TransportError, &c);
        assert_eq!(
            a.as_slice(),
            &[
                TransportErrorToTu,
                CancelTimer(T::A),
                CancelTimer(T::B),
                Terminated
            ]
        );
        assert!(tx.is_terminated());

        // Completed: the ACK could not be sent.
        let (mut tx, _) = ClientInvite::start(UDP, &c);
        tx.step(resp(500), &c);
        let a = tx.step(Event::TransportError, &c);
        assert_eq!(
            a.as_slice(),
            &[TransportErrorToTu, CancelTimer(T::D), Terminated]
        );
        assert!(tx.is_terminated());
    }

    #[test]
    fn client_invite_ignores_invalid_and_foreign_events() {
        let c = cfg();
        let (mut tx, _) = ClientInvite::start(UDP, &c);
        for ev in [
            resp(99),
            resp(700),
            Event::ReceivedRequest,
            Event::ReceivedAck,
            tu(200),
            fire(T::E),
            fire(T::M),
        ] {
            assert!(tx.step(ev, &c).is_empty(), "{ev:?}");
        }
        assert_eq!(tx.state(), ClientInviteState::Calling);
    }

    #[test]
    fn client_invite_terminated_ignores_everything() {
        let c = cfg();
        let (mut tx, _) = ClientInvite::start(UDP, &c);
        tx.step(Event::TransportError, &c);
        for ev in [
            resp(200),
            resp(486),
            fire(T::A),
            fire(T::B),
            Event::TransportError,
        ] {
            assert!(tx.step(ev, &c).is_empty());
        }
    }

    // ------------------------------------------------------------------ client non-INVITE

    #[test]
    fn client_non_invite_start() {
        let (tx, a) = ClientNonInvite::start(UDP, &cfg());
        assert_eq!(tx.state(), ClientNonInviteState::Trying);
        assert_eq!(
            a.as_slice(),
            &[
                SendRequest,
                StartTimer(T::E, ms(500)),
                StartTimer(T::F, s(32))
            ]
        );
        let (_, a) = ClientNonInvite::start(TCP, &cfg());
        assert_eq!(a.as_slice(), &[SendRequest, StartTimer(T::F, s(32))]);
    }

    #[test]
    fn client_non_invite_unanswered_udp_schedule_caps_at_t2() {
        let mut sim = Sim::start(Kind::ClientNonInvite, UDP, cfg());
        sim.at(s(100), None);
        assert_eq!(
            sim.times(SendRequest),
            secs_f(&[0.0, 0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5])
        );
        assert_eq!(sim.times(Timeout), vec![s(32)]);
        assert_eq!(sim.times(Terminated), vec![s(32)]);
        sim.assert_clean();
    }

    #[test]
    fn client_non_invite_unanswered_tcp() {
        let mut sim = Sim::start(Kind::ClientNonInvite, TCP, cfg());
        sim.at(s(100), None);
        assert_eq!(sim.times(SendRequest), vec![s(0)]);
        assert_eq!(sim.times(Timeout), vec![s(32)]);
        sim.assert_clean();
    }

    #[test]
    fn client_non_invite_proceeding_retransmits_every_t2() {
        let mut sim = Sim::start(Kind::ClientNonInvite, UDP, cfg());
        // 100 Trying at 1 s: E (due at 1.5 s) keeps its schedule, then runs at T2.
        sim.at(s(1), Some(resp(100)));
        sim.at(s(14), Some(resp(200)));
        sim.at(s(60), None);
        assert_eq!(
            sim.times(SendRequest),
            secs_f(&[0.0, 0.5, 1.5, 5.5, 9.5, 13.5])
        );
        assert_eq!(sim.times(PassResponseToTu), vec![s(1), s(14)]);
        // Completed: Timer K (T4) then Terminated.
        assert_eq!(sim.times(StartTimer(T::K, s(5))), vec![s(14)]);
        assert_eq!(sim.times(Terminated), vec![s(19)]);
        assert!(sim.times(Timeout).is_empty());
        sim.assert_clean();
    }

    #[test]
    fn client_non_invite_timer_e_in_proceeding_is_t2() {
        let c = cfg();
        let (mut tx, _) = ClientNonInvite::start(UDP, &c);
        assert_eq!(tx.step(resp(100), &c).as_slice(), &[PassResponseToTu]);
        assert_eq!(tx.state(), ClientNonInviteState::Proceeding);
        assert_eq!(tx.step(resp(183), &c).as_slice(), &[PassResponseToTu]);
        assert_eq!(
            tx.step(fire(T::E), &c).as_slice(),
            &[SendRequest, StartTimer(T::E, s(4))]
        );
    }

    #[test]
    fn client_non_invite_final_in_trying_udp() {
        let c = cfg();
        let (mut tx, _) = ClientNonInvite::start(UDP, &c);
        let a = tx.step(resp(200), &c);
        assert_eq!(
            a.as_slice(),
            &[
                CancelTimer(T::E),
                CancelTimer(T::F),
                PassResponseToTu,
                StartTimer(T::K, s(5))
            ]
        );
        assert_eq!(tx.state(), ClientNonInviteState::Completed);
        // Retransmissions absorbed; stale E/F fires ignored.
        assert!(tx.step(resp(200), &c).is_empty());
        assert!(tx.step(resp(100), &c).is_empty());
        assert!(tx.step(fire(T::E), &c).is_empty());
        assert!(tx.step(fire(T::F), &c).is_empty());
        assert!(tx.step(Event::TransportError, &c).is_empty());
        assert_eq!(tx.step(fire(T::K), &c).as_slice(), &[Terminated]);
        assert!(tx.is_terminated());
        assert!(tx.step(resp(200), &c).is_empty());
    }

    #[test]
    fn client_non_invite_final_in_proceeding() {
        let c = cfg();
        let (mut tx, _) = ClientNonInvite::start(UDP, &c);
        tx.step(resp(100), &c);
        let a = tx.step(resp(404), &c);
        assert_eq!(
            a.as_slice(),
            &[
                CancelTimer(T::E),
                CancelTimer(T::F),
                PassResponseToTu,
                StartTimer(T::K, s(5))
            ]
        );
        assert_eq!(tx.state(), ClientNonInviteState::Completed);
    }

    #[test]
    fn client_non_invite_final_over_tcp_terminates_at_once() {
        let c = cfg();
        let (mut tx, _) = ClientNonInvite::start(TCP, &c);
        let a = tx.step(resp(481), &c);
        assert_eq!(
            a.as_slice(),
            &[CancelTimer(T::F), PassResponseToTu, Terminated]
        );
        assert!(tx.is_terminated());
    }

    #[test]
    fn client_non_invite_timer_f_in_trying_and_proceeding() {
        let c = cfg();
        let (mut tx, _) = ClientNonInvite::start(UDP, &c);
        assert_eq!(
            tx.step(fire(T::F), &c).as_slice(),
            &[Timeout, CancelTimer(T::E), Terminated]
        );
        assert!(tx.is_terminated());
        let (mut tx, _) = ClientNonInvite::start(UDP, &c);
        tx.step(resp(100), &c);
        assert_eq!(
            tx.step(fire(T::F), &c).as_slice(),
            &[Timeout, CancelTimer(T::E), Terminated]
        );
        assert!(tx.is_terminated());
    }

    #[test]
    fn client_non_invite_transport_errors() {
        let c = cfg();
        let (mut tx, _) = ClientNonInvite::start(TCP, &c);
        assert_eq!(
            tx.step(Event::TransportError, &c).as_slice(),
            &[TransportErrorToTu, CancelTimer(T::F), Terminated]
        );
        let (mut tx, _) = ClientNonInvite::start(UDP, &c);
        tx.step(resp(100), &c);
        assert_eq!(
            tx.step(Event::TransportError, &c).as_slice(),
            &[
                TransportErrorToTu,
                CancelTimer(T::E),
                CancelTimer(T::F),
                Terminated
            ]
        );
        assert!(tx.is_terminated());
    }

    #[test]
    fn client_non_invite_ignores_invalid_and_foreign_events() {
        let c = cfg();
        let (mut tx, _) = ClientNonInvite::start(UDP, &c);
        for ev in [
            resp(0),
            resp(1000),
            Event::ReceivedAck,
            Event::ReceivedRequest,
            tu(200),
            fire(T::A),
        ] {
            assert!(tx.step(ev, &c).is_empty(), "{ev:?}");
        }
        assert_eq!(tx.state(), ClientNonInviteState::Trying);
    }

    // ------------------------------------------------------------------ server INVITE

    #[test]
    fn server_invite_start_and_proceeding() {
        let c = cfg();
        let (mut tx, a) = ServerInvite::start(UDP, &c);
        assert_eq!(a.as_slice(), &[PassRequestToTu, SendTrying]);
        assert_eq!(tx.state(), ServerInviteState::Proceeding);
        // Retransmitted INVITE: resend the last provisional (the 100).
        assert_eq!(
            tx.step(Event::ReceivedRequest, &c).as_slice(),
            &[ResendResponse]
        );
        // TU 1xx: send, stay.
        assert_eq!(tx.step(tu(180), &c).as_slice(), &[SendResponse]);
        assert_eq!(tx.state(), ServerInviteState::Proceeding);
        assert_eq!(
            tx.step(Event::ReceivedRequest, &c).as_slice(),
            &[ResendResponse]
        );
        // Nothing for ACK, invalid codes, stray timers in Proceeding.
        assert!(tx.step(Event::ReceivedAck, &c).is_empty());
        assert!(tx.step(tu(99), &c).is_empty());
        assert!(tx.step(tu(700), &c).is_empty());
        assert!(tx.step(fire(T::G), &c).is_empty());
        assert!(tx.step(resp(200), &c).is_empty());
        assert_eq!(tx.state(), ServerInviteState::Proceeding);
    }

    #[test]
    fn server_invite_2xx_to_accepted_until_timer_l() {
        let c = cfg();
        let (mut tx, _) = ServerInvite::start(UDP, &c);
        assert_eq!(
            tx.step(tu(200), &c).as_slice(),
            &[SendResponse, StartTimer(T::L, s(32))]
        );
        assert_eq!(tx.state(), ServerInviteState::Accepted);
        // INVITE retransmissions absorbed.
        assert!(tx.step(Event::ReceivedRequest, &c).is_empty());
        // ACK for the 2xx to the TU (each one).
        assert_eq!(tx.step(Event::ReceivedAck, &c).as_slice(), &[PassAckToTu]);
        assert_eq!(tx.step(Event::ReceivedAck, &c).as_slice(), &[PassAckToTu]);
        // The TU's 2xx retransmissions pass through; other responses are refused.
        assert_eq!(tx.step(tu(200), &c).as_slice(), &[SendResponse]);
        assert!(tx.step(tu(486), &c).is_empty());
        assert!(tx.step(tu(180), &c).is_empty());
        // Transport error: inform the TU, stay in Accepted (RFC 6026).
        assert_eq!(
            tx.step(Event::TransportError, &c).as_slice(),
            &[TransportErrorToTu]
        );
        assert_eq!(tx.state(), ServerInviteState::Accepted);
        assert_eq!(tx.step(fire(T::L), &c).as_slice(), &[Terminated]);
        assert!(tx.is_terminated());
        assert!(tx.step(tu(200), &c).is_empty());
        assert!(tx.step(Event::ReceivedAck, &c).is_empty());
    }

    #[test]
    fn server_invite_2xx_over_tcp_still_lingers_for_timer_l() {
        let c = cfg();
        let (mut tx, _) = ServerInvite::start(TCP, &c);
        assert_eq!(
            tx.step(tu(200), &c).as_slice(),
            &[SendResponse, StartTimer(T::L, s(32))]
        );
    }

    #[test]
    fn server_invite_failure_udp_completed_confirmed_terminated() {
        let c = cfg();
        let (mut tx, _) = ServerInvite::start(UDP, &c);
        assert_eq!(
            tx.step(tu(486), &c).as_slice(),
            &[
                SendResponse,
                StartTimer(T::G, ms(500)),
                StartTimer(T::H, s(32))
            ]
        );
        assert_eq!(tx.state(), ServerInviteState::Completed);
        assert_eq!(
            tx.step(Event::ReceivedRequest, &c).as_slice(),
            &[ResendResponse]
        );
        assert_eq!(
            tx.step(fire(T::G), &c).as_slice(),
            &[ResendResponse, StartTimer(T::G, s(1))]
        );
        // Further TU responses are refused.
        assert!(tx.step(tu(200), &c).is_empty());
        assert!(tx.step(tu(500), &c).is_empty());
        // ACK: absorbed, G and H stop, Timer I.
        assert_eq!(
            tx.step(Event::ReceivedAck, &c).as_slice(),
            &[CancelTimer(T::G), CancelTimer(T::H), StartTimer(T::I, s(5))]
        );
        assert_eq!(tx.state(), ServerInviteState::Confirmed);
        // Confirmed absorbs ACK and INVITE retransmissions; stale G/H fires ignored.
        assert!(tx.step(Event::ReceivedAck, &c).is_empty());
        assert!(tx.step(Event::ReceivedRequest, &c).is_empty());
        assert!(tx.step(fire(T::G), &c).is_empty());
        assert!(tx.step(fire(T::H), &c).is_empty());
        assert!(tx.step(Event::TransportError, &c).is_empty());
        assert_eq!(tx.step(fire(T::I), &c).as_slice(), &[Terminated]);
        assert!(tx.is_terminated());
    }

    #[test]
    fn server_invite_failure_tcp_no_g_and_ack_terminates() {
        let c = cfg();
        let (mut tx, _) = ServerInvite::start(TCP, &c);
        assert_eq!(
            tx.step(tu(603), &c).as_slice(),
            &[SendResponse, StartTimer(T::H, s(32))]
        );
        assert_eq!(
            tx.step(Event::ReceivedAck, &c).as_slice(),
            &[CancelTimer(T::H), Terminated]
        );
        assert!(tx.is_terminated());
    }

    #[test]
    fn server_invite_no_ack_udp_schedule_caps_g_then_h() {
        let mut sim = Sim::start(Kind::ServerInvite, UDP, cfg());
        sim.at(s(0), Some(tu(486)));
        sim.at(s(100), None);
        assert_eq!(sim.times(SendResponse), vec![s(0)]);
        assert_eq!(
            sim.times(ResendResponse),
            secs_f(&[0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5])
        );
        assert_eq!(sim.times(Timeout), vec![s(32)]);
        assert_eq!(sim.times(Terminated), vec![s(32)]);
        sim.assert_clean();
    }

    #[test]
    fn server_invite_no_ack_tcp_times_out_without_resending() {
        let mut sim = Sim::start(Kind::ServerInvite, TCP, cfg());
        sim.at(s(1), Some(tu(480)));
        sim.at(s(100), None);
        assert!(sim.times(ResendResponse).is_empty());
        assert_eq!(sim.times(Timeout), vec![s(33)]);
        sim.assert_clean();
    }

    #[test]
    fn server_invite_ack_after_retransmissions_udp() {
        let mut sim = Sim::start(Kind::ServerInvite, UDP, cfg());
        sim.at(s(0), Some(tu(404)));
        sim.at(s(2), Some(Event::ReceivedAck));
        sim.at(s(100), None);
        assert_eq!(sim.times(ResendResponse), secs_f(&[0.5, 1.5]));
        assert_eq!(sim.times(Terminated), vec![s(7)]);
        assert!(sim.times(Timeout).is_empty());
        sim.assert_clean();
    }

    #[test]
    fn server_invite_timer_h_terminates_with_timeout() {
        let c = cfg();
        let (mut tx, _) = ServerInvite::start(UDP, &c);
        tx.step(tu(500), &c);
        assert_eq!(
            tx.step(fire(T::H), &c).as_slice(),
            &[Timeout, CancelTimer(T::G), Terminated]
        );
        assert!(tx.is_terminated());
    }

    #[test]
    fn server_invite_transport_errors() {
        let c = cfg();
        let (mut tx, _) = ServerInvite::start(UDP, &c);
        assert_eq!(
            tx.step(Event::TransportError, &c).as_slice(),
            &[TransportErrorToTu, Terminated]
        );
        assert!(tx.is_terminated());
        let (mut tx, _) = ServerInvite::start(UDP, &c);
        tx.step(tu(486), &c);
        assert_eq!(
            tx.step(Event::TransportError, &c).as_slice(),
            &[
                TransportErrorToTu,
                CancelTimer(T::G),
                CancelTimer(T::H),
                Terminated
            ]
        );
        assert!(tx.is_terminated());
    }

    // ------------------------------------------------------------------ server non-INVITE

    #[test]
    fn server_non_invite_full_path_udp() {
        let c = cfg();
        let (mut tx, a) = ServerNonInvite::start(UDP, &c);
        assert_eq!(a.as_slice(), &[PassRequestToTu]);
        assert_eq!(tx.state(), ServerNonInviteState::Trying);
        // Trying: nothing to resend yet.
        assert!(tx.step(Event::ReceivedRequest, &c).is_empty());
        assert!(tx.step(Event::TransportError, &c).is_empty());
        assert_eq!(tx.step(tu(100), &c).as_slice(), &[SendResponse]);
        assert_eq!(tx.state(), ServerNonInviteState::Proceeding);
        assert_eq!(
            tx.step(Event::ReceivedRequest, &c).as_slice(),
            &[ResendResponse]
        );
        assert_eq!(tx.step(tu(183), &c).as_slice(), &[SendResponse]);
        assert_eq!(tx.state(), ServerNonInviteState::Proceeding);
        assert_eq!(
            tx.step(tu(200), &c).as_slice(),
            &[SendResponse, StartTimer(T::J, s(32))]
        );
        assert_eq!(tx.state(), ServerNonInviteState::Completed);
        assert_eq!(
            tx.step(Event::ReceivedRequest, &c).as_slice(),
            &[ResendResponse]
        );
        // Further TU responses are discarded.
        assert!(tx.step(tu(500), &c).is_empty());
        assert!(tx.step(tu(180), &c).is_empty());
        assert!(tx.step(Event::ReceivedAck, &c).is_empty());
        assert_eq!(tx.step(fire(T::J), &c).as_slice(), &[Terminated]);
        assert!(tx.is_terminated());
        assert!(tx.step(Event::ReceivedRequest, &c).is_empty());
    }

    #[test]
    fn server_non_invite_final_from_trying() {
        let c = cfg();
        let (mut tx, _) = ServerNonInvite::start(UDP, &c);
        assert_eq!(
            tx.step(tu(404), &c).as_slice(),
            &[SendResponse, StartTimer(T::J, s(32))]
        );
        assert_eq!(tx.state(), ServerNonInviteState::Completed);
        assert!(tx.step(tu(99), &c).is_empty());
    }

    #[test]
    fn server_non_invite_final_over_tcp_terminates_at_once() {
        let c = cfg();
        let (mut tx, _) = ServerNonInvite::start(TCP, &c);
        assert_eq!(tx.step(tu(200), &c).as_slice(), &[SendResponse, Terminated]);
        assert!(tx.is_terminated());
    }

    #[test]
    fn server_non_invite_timer_j_schedule() {
        let mut sim = Sim::start(Kind::ServerNonInvite, UDP, cfg());
        sim.at(ms(10), Some(tu(200)));
        sim.at(s(5), Some(Event::ReceivedRequest));
        sim.at(s(100), None);
        assert_eq!(sim.times(ResendResponse), vec![s(5)]);
        assert_eq!(sim.times(Terminated), vec![ms(32_010)]);
        sim.assert_clean();
    }

    #[test]
    fn server_non_invite_transport_errors() {
        let c = cfg();
        let (mut tx, _) = ServerNonInvite::start(UDP, &c);
        tx.step(tu(100), &c);
        assert_eq!(
            tx.step(Event::TransportError, &c).as_slice(),
            &[TransportErrorToTu, Terminated]
        );
        assert!(tx.is_terminated());
        let (mut tx, _) = ServerNonInvite::start(UDP, &c);
        tx.step(tu(200), &c);
        assert_eq!(
            tx.step(Event::TransportError, &c).as_slice(),
            &[TransportErrorToTu, CancelTimer(T::J), Terminated]
        );
        assert!(tx.is_terminated());
    }

    // ------------------------------------------------------------------ wrapper

    #[test]
    fn transaction_wrapper_dispatches() {
        let c = cfg();
        for (kind, rel) in [
            (Kind::ClientInvite, UDP),
            (Kind::ClientNonInvite, TCP),
            (Kind::ServerInvite, UDP),
            (Kind::ServerNonInvite, TCP),
        ] {
            let (mut tx, a) = Transaction::start(kind, rel, &c);
            assert_eq!(tx.kind(), kind);
            assert_eq!(tx.reliability(), rel);
            assert!(!a.is_empty());
            assert!(!tx.is_terminated());
            let a = tx.step(Event::TransportError, &c);
            // Every kind but a server in Trying/before sending ends on a transport error.
            if kind == Kind::ServerNonInvite {
                assert!(a.is_empty());
            } else {
                assert!(a.terminated(), "{kind:?}: {a:?}");
                assert!(tx.is_terminated());
            }
        }
    }

    #[test]
    fn custom_t1_scales_the_schedule() {
        let c = TimerConfig {
            t1: ms(100),
            t2: ms(400),
            t4: s(1),
        };
        let mut sim = Sim::start(Kind::ClientNonInvite, UDP, c);
        sim.at(s(100), None);
        // E: 0.1, 0.2, 0.4 (cap) ... until F at 6.4 s.
        let sends = sim.times(SendRequest);
        assert_eq!(&sends[..5], &secs_f(&[0.0, 0.1, 0.3, 0.7, 1.1])[..]);
        assert_eq!(sim.times(Timeout), vec![ms(6400)]);
        sim.assert_clean();
    }
}
