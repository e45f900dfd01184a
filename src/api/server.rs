//! The API server as a supervised actor: it serves on a socket bound before the node
//! starts (so the address is known, and stays the same across restarts), and fails when its
//! server task ends or panics, so that its supervisor starts it again on the same socket.

use ractor::{Actor, ActorProcessingErr, ActorRef};
use std::sync::Arc;
use tokio::sync::oneshot;

use super::ApiState;

/// Serves the API; a child of the node's root supervisor (`supervision::tree`).
#[derive(Clone, Copy, Debug, Default)]
pub struct ApiServerActor;

/// What the API server serves and where.
#[derive(Clone)]
pub struct ApiServerArgs {
    /// The bound listen socket; each start serves a duplicate of it.
    pub listener: Arc<std::net::TcpListener>,
    pub state: ApiState,
    /// HTTPS when set.
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

/// The API server's messages.
#[derive(Debug)]
pub enum ApiServerMsg {
    /// The server task ended (how, in words).
    Ended(String),
}

impl ractor::Message for ApiServerMsg {}

/// The running server: told to stop (finishing requests in flight) when the actor ends.
pub struct ApiServerState {
    stop: Option<oneshot::Sender<()>>,
}

impl Drop for ApiServerState {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

impl Actor for ApiServerActor {
    type Msg = ApiServerMsg;
    type State = ApiServerState;
    type Arguments = ApiServerArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<ApiServerMsg>,
        args: ApiServerArgs,
    ) -> Result<ApiServerState, ActorProcessingErr> {
        let std_listener = args.listener.try_clone()?;
        std_listener.set_nonblocking(true)?;
        let listener = tokio::net::TcpListener::from_std(std_listener)?;
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let stop = async move {
            let _ = stop_rx.await;
        };
        let (state, tls) = (args.state, args.tls);
        let task = tokio::spawn(async move {
            match tls {
                Some(tls) => match super::tls::TlsListener::new(listener, tls) {
                    Ok(l) => super::serve(l, state, stop).await,
                    Err(e) => Err(e),
                },
                None => super::serve(listener, state, stop).await,
            }
        });
        tokio::spawn(async move {
            let how = match task.await {
                Ok(Ok(())) => return, // stopped on request
                Ok(Err(e)) => format!("failed: {e}"),
                Err(e) if e.is_panic() => "panicked".to_string(),
                Err(_) => return,
            };
            let _ = myself.cast(ApiServerMsg::Ended(how));
        });
        Ok(ApiServerState {
            stop: Some(stop_tx),
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<ApiServerMsg>,
        msg: ApiServerMsg,
        _state: &mut ApiServerState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ApiServerMsg::Ended(how) => {
                tracing::error!(how = %how, "HTTP API server ended: its supervisor restarts it");
                Err(format!("HTTP API server {how}").into())
            }
        }
    }
}
