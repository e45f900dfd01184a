//! The call actor's side of the world: the [`Env`] the core reads (the relay engine and
//! the location service of this node), and the execution of the core's media commands and
//! messages to queues, agents and trunks.

use bytes::Bytes;
use std::sync::Arc;

use super::core::{
    Env, MediaOp, MediaPorts, MediaSettings, MixOp, Refusal, Seat, TargetError, Tell,
    TransferTarget,
};
use super::{CallContext, Fork};
use crate::media::prompts::{position_announcement, PromptLibrary};
use crate::media::quality::LegQuality;
use crate::media::relay::{MediaEngine, Playlist, Session, Side};

/// What calls share for media: the relay engine, the node-wide switches and the sounds.
pub struct MediaCtx {
    pub engine: MediaEngine,
    pub anchor_all: bool,
    pub record_all: bool,
    pub prompts: Arc<PromptLibrary>,
    pub music: Arc<[i16]>,
}

/// Where the relay's events go: DTMF digits and media timeouts to the call's actor,
/// recording index changes to the store writer (looked up per event: either may have
/// restarted).
pub fn event_sink(ctx: &Arc<CallContext>) -> crate::media::relay::EventSink {
    use crate::actors::store_writer;
    use crate::media::relay::MediaEvent;
    use crate::store::recordings::RecordingRow;
    let weak = Arc::downgrade(ctx);
    Arc::new(move |event| {
        let Some(ctx) = weak.upgrade() else { return };
        let store = || {
            let store = ctx.store();
            if store.is_none() {
                tracing::error!("store writer not running: recording index change lost");
            }
            store
        };
        match event {
            MediaEvent::Dtmf {
                call,
                side,
                digit,
                source,
            } => {
                if let Some(actor) = ctx.directory.lookup(&call) {
                    let _ = actor.cast(super::CallMsg::Dtmf {
                        side,
                        digit,
                        source,
                    });
                }
            }
            MediaEvent::MediaTimeout { call } => {
                if let Some(actor) = ctx.directory.lookup(&call) {
                    let _ = actor.cast(super::CallMsg::MediaTimeout);
                }
            }
            MediaEvent::RecordingStarted {
                id,
                call,
                tenant,
                key_id,
                path,
                started_ms,
            } => {
                let row = RecordingRow::started(
                    id,
                    Some(String::from_utf8_lossy(&call).into_owned()),
                    (!tenant.is_empty()).then_some(tenant),
                    started_ms,
                    &path,
                    &key_id,
                );
                if let Some(w) = store() {
                    let _ = store_writer::recording_started(&w, row);
                }
            }
            MediaEvent::RecordingFinished { id, finished, .. } => {
                tracing::info!(recording = %id, bytes = finished.size, ms = finished.duration_ms, "recording complete");
                if let Some(w) = store() {
                    let _ = store_writer::recording_finished(&w, id, &finished);
                }
            }
            MediaEvent::RecordingFailed { id, reason, .. } => {
                tracing::error!(recording = %id, %reason, "recording failed");
                if let Some(w) = store() {
                    let _ = store_writer::recording_failed(&w, id, reason);
                }
            }
        }
    })
}

/// The node as a call's core sees it.
pub struct NodeEnv {
    ctx: Arc<CallContext>,
}

impl NodeEnv {
    pub fn new(ctx: Arc<CallContext>) -> NodeEnv {
        NodeEnv { ctx }
    }
}

fn ports(session: &Session) -> MediaPorts {
    MediaPorts {
        address: session.address(),
        a: session.port(Side::A),
        b: session.port(Side::B),
    }
}

impl Env for NodeEnv {
    fn media(&self) -> Option<MediaSettings> {
        self.ctx.media.get().map(|m| MediaSettings {
            anchor_all: m.anchor_all,
            record_all: m.record_all,
            can_record: m.engine.can_record(),
            rtp_timeout: m.engine.rtp_timeout(),
        })
    }

    fn allocate_media(&mut self, call: &Bytes) -> Result<MediaPorts, String> {
        let m = self
            .ctx
            .media
            .get()
            .ok_or("media anchoring is not running")?;
        m.engine
            .allocate(call)
            .map(|s| ports(&s))
            .map_err(|e| e.to_string())
    }

    fn find_media(&mut self, call: &Bytes) -> Option<MediaPorts> {
        let m = self.ctx.media.get()?;
        m.engine.get(call).map(|s| ports(&s))
    }

    fn release_media(&mut self, call: &Bytes) -> Option<[LegQuality; 2]> {
        let m = self.ctx.media.get()?;
        let session = m.engine.get(call)?;
        // The relay publishes once a second: the final figures come with the release (a
        // busy relay thread that does not answer in 10 ms leaves the last published ones).
        let stats = m
            .engine
            .release_with_stats(call, std::time::Duration::from_millis(10))
            .unwrap_or_else(|| [session.stats(Side::A), session.stats(Side::B)]);
        Some([stats[0].quality, stats[1].quality])
    }

    fn lookup_user(&self, tenant: &str, user: &str) -> Vec<Fork> {
        match self.ctx.cc.get().and_then(std::sync::Weak::upgrade) {
            Some(cc) => Fork::all(&cc.location.lookup(tenant, user)),
            None => Vec::new(),
        }
    }

    fn transfer_target(&self, tenant: &str, user: &str) -> Result<TransferTarget, TargetError> {
        use crate::config::CcTarget;
        // A tenant's number goes where a call to it would: its queue or user.
        let number = self.ctx.numbers.get().and_then(|n| n.get(user));
        let user = match number.as_deref() {
            Some(n) if &*n.tenant == tenant => match &n.target {
                CcTarget::Queue(q) => {
                    return Ok(TransferTarget::Queue {
                        tenant: n.tenant.clone(),
                        queue: Arc::from(q.as_str()),
                        priority: n.priority,
                    })
                }
                CcTarget::User(u) => u.clone(),
                _ => return Err(TargetError::NotFound),
            },
            // Another tenant's number: as if it did not exist.
            Some(_) => return Err(TargetError::NotFound),
            None => user.to_string(),
        };
        let Some(cc) = self.ctx.cc.get().and_then(std::sync::Weak::upgrade) else {
            return Err(TargetError::NotFound);
        };
        let tenant_id: Arc<str> = Arc::from(tenant);
        if let Some(agent) = cc.agents_by_user.get(&(tenant_id.clone(), user.clone())) {
            // An agent is reserved like for a queue's offer.
            return Ok(TransferTarget::Agent {
                tenant: tenant_id,
                agent: agent.value().clone(),
                user: Arc::from(user.as_str()),
            });
        }
        let forks = Fork::all(&cc.location.lookup(tenant, &user));
        if !forks.is_empty() {
            return Ok(TransferTarget::Phones {
                user: Arc::from(user.as_str()),
                forks,
            });
        }
        // An external number (a route or trunk) costs money: not a transfer target.
        if self
            .ctx
            .routes
            .get()
            .is_some_and(|r| r.lookup(user.as_bytes()).is_some())
        {
            return Err(TargetError::Forbidden);
        }
        Err(TargetError::Unavailable)
    }

    fn conference_join(&mut self, seat: Seat) -> Result<(), Refusal> {
        let m = self
            .ctx
            .media
            .get()
            .ok_or_else(|| Refusal::Media("media anchoring is not running".into()))?;
        self.ctx.conferences.join(
            &m.engine,
            &seat.tenant,
            &seat.id,
            &seat.call,
            &seat.session,
            seat.side,
            &seat.label,
            seat.via,
            seat.create,
            seat.now_ms,
        )
    }

    fn conference_leave(&mut self, tenant: &str, id: &str, call: &str) {
        let engine = self.ctx.media.get().map(|m| &m.engine);
        self.ctx.conferences.leave(engine, tenant, id, call);
    }

    fn supervises(&self, tenant: &str, queue: &str, user: &str) -> bool {
        let Some(cc) = self.ctx.cc.get().and_then(std::sync::Weak::upgrade) else {
            return false;
        };
        cc.supervisors
            .get(&(Arc::from(tenant), Arc::from(queue)))
            .is_some_and(|users| users.iter().any(|u| u == user))
    }

    fn prompt_ms(&self, id: &str) -> Option<u64> {
        let m = self.ctx.media.get()?;
        // 8 samples per millisecond at 8 kHz.
        m.prompts.get(id).map(|p| p.len() as u64 / 8)
    }
}

/// Carries a core's mix command to the relay: the call's mix (named by its A-leg Call-ID)
/// is made to hold exactly the legs named, with the relation asked for.
pub(super) fn mix(ctx: &CallContext, call: &Bytes, op: MixOp) {
    let Some(m) = ctx.media.get() else { return };
    let engine = &m.engine;
    let name = String::from_utf8_lossy(call);
    match op {
        MixOp::Set { legs, apart } => {
            let mix = engine.mix(&name);
            // Legs of the mix that are not asked for any more leave it.
            for (session, side) in mix.members() {
                if !legs.iter().any(|l| l.session == session && l.side == side) {
                    if let Some(s) = engine.get(&session) {
                        engine.leave_mix(&s, side);
                    }
                }
            }
            for l in &legs {
                let Some(s) = engine.get(&l.session) else {
                    tracing::warn!(call_id = %name, "mix: a leg's relay session is gone");
                    continue;
                };
                if let Err(e) = engine.join_mix(&mix, &s, l.side) {
                    tracing::warn!(call_id = %name, error = %e, "mix: a leg could not join");
                }
            }
            for (i, l) in legs.iter().enumerate() {
                for (j, s) in legs.iter().enumerate() {
                    if i != j {
                        let on = !apart.contains(&(i, j));
                        mix.set_hears((&l.session, l.side), (&s.session, s.side), on);
                    }
                }
            }
        }
        MixOp::End => {
            let Some(mix) = engine.find_mix(&name) else {
                return;
            };
            for (session, side) in mix.members() {
                if let Some(s) = engine.get(&session) {
                    engine.leave_mix(&s, side);
                }
            }
        }
    }
}

/// Carries a core's message to a queue, an agent or a trunk (dropped when the node runs no
/// contact centre).
pub(super) fn tell(ctx: &CallContext, tell: Tell) {
    use crate::actors::{agent, queue, trunk};
    let Some(cc) = ctx.cc.get().and_then(std::sync::Weak::upgrade) else {
        return;
    };
    match tell {
        Tell::Queue {
            tenant,
            queue: q,
            msg,
        } => {
            let join = matches!(msg, queue::QueueMsg::Join(_));
            if !queue::tell(&cc, &tenant, &q, msg) && join {
                tracing::warn!(queue = %q, "queue not running: caller waits for its restart");
            }
        }
        Tell::Agent {
            tenant,
            agent: a,
            msg,
        } => {
            agent::tell(&cc, &tenant, &a, msg);
        }
        Tell::NoteAgentCall {
            tenant,
            agent: a,
            call,
        } => agent::note_call(&cc.agent_calls, &tenant, &a, call),
        Tell::ForgetAgentCall {
            tenant,
            agent: a,
            call_id,
        } => agent::forget_call(&cc.agent_calls, &tenant, &a, &call_id),
        Tell::TrunkAttempt { trunk: t, report } => {
            trunk::report(&t, &cc.node, report, cc.remote.get())
        }
    }
}

/// Carries a core's command to the call's relay session.
pub(super) fn media(ctx: &CallContext, call: &Bytes, op: MediaOp) {
    let Some(m) = ctx.media.get() else { return };
    if let MediaOp::DtmfFromSignalling { side, digit } = op {
        return m.engine.dtmf_from_signalling(call, side, digit);
    }
    let Some(session) = m.engine.get(call) else {
        return;
    };
    match op {
        MediaOp::SetRemote {
            side,
            addr,
            codec,
            te,
        } => session.set_remote(side, addr, codec, te),
        MediaOp::SetRemoteCodec { side, codec } => session.set_remote_codec(side, codec),
        MediaOp::SetDirection { side, direction } => session.set_direction(side, direction),
        MediaOp::SetSignalling { side, ip } => session.set_signalling(side, ip),
        MediaOp::Bridge(on) => session.bridge(on),
        MediaOp::Music { side, announce } => {
            let first = announce.map(|(position, wait)| {
                Arc::from(
                    m.prompts
                        .compose(&position_announcement(position, wait), 150),
                )
            });
            session.play(
                side,
                Playlist {
                    items: first.into_iter().collect(),
                    then_loop: Some(m.music.clone()),
                },
            );
        }
        MediaOp::StopPlay(side) => session.stop_play(side),
        MediaOp::Prompts { side, ids } => session.play(
            side,
            Playlist {
                items: ids.iter().filter_map(|id| m.prompts.get(id)).collect(),
                then_loop: None,
            },
        ),
        MediaOp::Echo(side) => session.echo(side),
        MediaOp::Record { id, tenant } => session.record(id, tenant),
        MediaOp::PauseRecording(paused) => session.pause_recording(paused),
        MediaOp::StopRecording => session.stop_recording(),
        MediaOp::DtmfFromSignalling { .. } => {}
    }
}

/// Webhooks in flight on this node at most: beyond, a webhook step takes its fallback at
/// once (counted `busy`), so a flood of calls into webhook steps holds no more threads.
const WEBHOOKS_IN_FLIGHT: usize = 128;

static WEBHOOK_PERMITS: tokio::sync::Semaphore =
    tokio::sync::Semaphore::const_new(WEBHOOKS_IN_FLIGHT);

/// POSTs a call flow's webhook (ureq, on a blocking thread, bounded by the step's timeout)
/// and hands the answer back to the call as [`super::CallMsg::WebhookAnswered`].
pub(super) fn webhook(me: ractor::ActorRef<super::CallMsg>, req: super::core::WebhookRequest) {
    use super::core::WebhookResult;
    let seq = req.seq;
    let Ok(permit) = WEBHOOK_PERMITS.try_acquire() else {
        let _ = me.cast(super::CallMsg::WebhookAnswered {
            seq,
            result: WebhookResult::Busy,
        });
        return;
    };
    tokio::spawn(async move {
        let started = std::time::Instant::now();
        let result = tokio::task::spawn_blocking(move || post_webhook(&req))
            .await
            .unwrap_or_else(|e| WebhookResult::Failed(e.to_string()));
        drop(permit);
        metrics::histogram!(super::core::flow::FLOW_WEBHOOK_SECONDS)
            .record(started.elapsed().as_secs_f64());
        let _ = me.cast(super::CallMsg::WebhookAnswered { seq, result });
    });
}

fn post_webhook(req: &super::core::WebhookRequest) -> super::core::WebhookResult {
    use super::core::flow::{
        webhook_signature, WEBHOOK_MAX_ANSWER, WEBHOOK_SIGNATURE_HEADER, WEBHOOK_TIMESTAMP_HEADER,
    };
    use super::core::WebhookResult;
    crate::transport::tls::install_crypto_provider();
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(req.timeout))
        .http_status_as_error(false)
        .max_redirects(0)
        .user_agent("switchyard")
        .build()
        .into();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let signature = webhook_signature(req.target.secret.as_bytes(), now, req.body.as_bytes());
    let sent = agent
        .post(&req.target.url)
        .header("Content-Type", "application/json")
        .header(WEBHOOK_TIMESTAMP_HEADER, &now.to_string())
        .header(WEBHOOK_SIGNATURE_HEADER, &signature)
        .send(req.body.as_bytes());
    let mut resp = match sent {
        Ok(r) => r,
        Err(ureq::Error::Timeout(_)) => return WebhookResult::Timeout,
        Err(e) => return WebhookResult::Failed(e.to_string()),
    };
    let status = resp.status().as_u16();
    match resp
        .body_mut()
        .with_config()
        .limit(WEBHOOK_MAX_ANSWER)
        .read_to_vec()
    {
        Ok(body) => WebhookResult::Answer {
            status,
            body: Bytes::from(body),
        },
        Err(ureq::Error::Timeout(_)) => WebhookResult::Timeout,
        Err(e) => WebhookResult::Failed(e.to_string()),
    }
}
