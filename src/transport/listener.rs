//! Listeners: the receive loops of the bound sockets (one per UDP socket, one accept loop
//! per TCP or TLS listen address), each run by a [`ListenerActor`] so that a supervisor
//! restarts a loop that ends (a panic outside the per-message isolation, a bug) on the same
//! socket, at the same address. Whether each loop runs is a flag `GET /health` reads.
//!
//! The socket belongs to the [`Listener`], not to the loop: a restarted loop receives on the
//! socket its predecessor had, so peers see the same address and port (even one bound with
//! port 0), and nothing queued in the kernel buffer meanwhile is lost.

use ractor::{Actor, ActorProcessingErr, ActorRef};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::net::{TcpListener, UdpSocket};
use tokio::task::AbortHandle;

use super::{ListenSpec, Protocol, Transports};

/// What a listener receives on.
pub(crate) enum Io {
    Udp(Arc<UdpSocket>),
    /// A TCP listen socket (plain TCP, or TLS when the spec says so).
    Stream(Arc<TcpListener>),
}

/// One bound socket and the state of its receive loop.
pub struct Listener {
    spec: ListenSpec,
    /// The socket's index among the UDP sockets of one address (SO_REUSEPORT workers).
    worker: Option<usize>,
    pub(crate) io: Io,
    up: AtomicBool,
    /// Fault injection: the loop panics, outside the per-message isolation, at its next
    /// datagram or accepted connection.
    fault: AtomicBool,
}

impl Listener {
    pub(crate) fn new(spec: ListenSpec, worker: Option<usize>, io: Io) -> Listener {
        Listener {
            spec,
            worker,
            io,
            up: AtomicBool::new(false),
            fault: AtomicBool::new(false),
        }
    }

    /// `udp:127.0.0.1:5060` (with `#N` for the second and later UDP workers of one address):
    /// its supervised child id and its `/health` check.
    pub fn name(&self) -> String {
        match self.worker {
            Some(n) if n > 0 => format!("{}#{n}", self.spec),
            _ => self.spec.to_string(),
        }
    }

    pub fn protocol(&self) -> Protocol {
        self.spec.protocol
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.spec.addr
    }

    /// Whether its receive loop runs.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Fault injection: makes the loop panic at its next event. Tests only (the node passes
    /// it on only with `Config::fault_injection`).
    pub(crate) fn break_next(&self) {
        self.fault.store(true, Ordering::Relaxed);
    }

    /// Called by the loops after each event: panics if a fault was injected.
    pub(crate) fn check_fault(&self) {
        if self.fault.swap(false, Ordering::Relaxed) {
            panic!("fault injection: listener {} broken", self.name());
        }
    }

    /// The receive loop; it returns only if the socket is gone.
    pub(crate) async fn run(self: Arc<Self>, transports: Transports) {
        match &self.io {
            Io::Udp(socket) => {
                super::udp::recv_loop(socket.clone(), self.clone(), transports).await;
            }
            Io::Stream(listener) => {
                let registry = transports.inner.tcp.clone();
                registry
                    .accept_loop(listener.clone(), self.clone(), self.spec.protocol)
                    .await;
            }
        }
    }

    /// Runs the loop as a plain task, unsupervised (the transports alone, in tests).
    pub(crate) fn spawn(self: &Arc<Self>, transports: Transports) -> AbortHandle {
        self.up.store(true, Ordering::Relaxed);
        let me = self.clone();
        tokio::spawn(async move {
            me.clone().run(transports).await;
            me.up.store(false, Ordering::Relaxed);
        })
        .abort_handle()
    }
}

/// Runs one [`Listener`]'s receive loop; stopped and restarted by its supervisor (the
/// node's `sip` supervisor in `supervision::tree`). The loop is a task of its own: when it
/// ends or panics, the actor fails, and its supervisor starts a new one on the same socket.
#[derive(Clone, Copy, Debug, Default)]
pub struct ListenerActor;

/// A listener actor's arguments: the listener, and the transports (the handler, the other
/// sockets for sending, the edge).
#[derive(Clone)]
pub struct ListenerArgs {
    pub listener: Arc<Listener>,
    pub transports: Transports,
}

/// A listener actor's messages.
#[derive(Debug)]
pub enum ListenerMsg {
    /// The receive loop ended (how, in words).
    LoopEnded(String),
}

impl ractor::Message for ListenerMsg {}

/// The running loop: aborted and marked down whenever the actor ends, however it ends.
pub struct ListenerState {
    listener: Arc<Listener>,
    task: AbortHandle,
}

impl Drop for ListenerState {
    fn drop(&mut self) {
        self.task.abort();
        self.listener.up.store(false, Ordering::Relaxed);
    }
}

impl Actor for ListenerActor {
    type Msg = ListenerMsg;
    type State = ListenerState;
    type Arguments = ListenerArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<ListenerMsg>,
        args: ListenerArgs,
    ) -> Result<ListenerState, ActorProcessingErr> {
        let ListenerArgs {
            listener,
            transports,
        } = args;
        let task = tokio::spawn(listener.clone().run(transports));
        let abort = task.abort_handle();
        // The watcher tells the actor how the loop ended; a loop aborted by the actor's own
        // end tells nobody.
        tokio::spawn(async move {
            let how = match task.await {
                Ok(()) => "ended".to_string(),
                Err(e) if e.is_panic() => {
                    let payload = e.into_panic();
                    let what = payload
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| payload.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "a panic without a message".into());
                    format!("panicked: {what}")
                }
                Err(_) => return,
            };
            let _ = myself.cast(ListenerMsg::LoopEnded(how));
        });
        listener.up.store(true, Ordering::Relaxed);
        tracing::debug!(listener = %listener.name(), "receive loop started");
        Ok(ListenerState {
            listener,
            task: abort,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<ListenerMsg>,
        msg: ListenerMsg,
        state: &mut ListenerState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ListenerMsg::LoopEnded(how) => {
                state.listener.up.store(false, Ordering::Relaxed);
                tracing::error!(
                    listener = %state.listener.name(),
                    how = %how,
                    "receive loop ended: its supervisor restarts it"
                );
                Err(format!("listener {} {how}", state.listener.name()).into())
            }
        }
    }
}
