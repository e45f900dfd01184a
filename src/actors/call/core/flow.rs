//! Call flows (IVR): a number with `target = "flow:<id>"` is answered by the switch, which
//! runs the tenant's flow ([`crate::config::flow`]) before the call goes anywhere: prompts
//! played, menus and digit collection driven by the caller's DTMF (RFC 4733, SIP INFO or
//! in-band, as the relay reports them), variables and priority set, and at the end a
//! queue, a user, a tenant number or a hangup.
//!
//! Everything here is pure like the rest of the core: a step plays a prompt through a
//! [`MediaOp::Prompts`] effect and waits on a call timer ([`CallTimer::Flow`]) whose length
//! is the prompt's (read through [`super::Env::prompt_ms`]) plus the step's input timeout;
//! a digit arrives as [`super::Event::Dtmf`]. The flow's position is part of the call's
//! checkpoint: a restarted call actor plays the current step again.

use std::collections::BTreeMap;

use super::*;
use crate::config::flow::{Action, Flow, ScheduleStatus};

/// Counter, labels `tenant`, `flow`, `result` (`answered`, `refused`): calls that entered
/// a flow.
pub const FLOW_CALLS: &str = "switchyard_flow_calls_total";
/// Counter, labels `tenant`, `flow`, `step` (the step's type: `play`, `menu`, `collect`,
/// `set`, `schedule`, `webhook`, `queue`, `user`, `number`, `hangup`): flow steps entered.
pub const FLOW_STEPS: &str = "switchyard_flow_steps_total";
/// Counter, label `input` (`choice`, `invalid`, `timeout`): what callers did at menus.
pub const FLOW_MENU_INPUTS: &str = "switchyard_flow_menu_inputs_total";
/// Counter: callers that left a queue by an exit key for a step of their flow.
pub const FLOW_QUEUE_EXITS: &str = "switchyard_flow_queue_exits_total";
/// Counter, label `status` (`open`, `closed`, `holiday`): what schedule steps found.
pub const FLOW_SCHEDULES: &str = "switchyard_flow_schedules_total";
/// Counter, label `result` (`ok`, `timeout`, `status`, `bad_answer`, `unknown_step`,
/// `failed`, `busy`, `late`): webhook steps' answers; all but `ok` (and `late`, which came
/// after the step had moved on) took the fallback step.
pub const FLOW_WEBHOOKS: &str = "switchyard_flow_webhooks_total";
/// Histogram (seconds): webhook round trips, answered or not (recorded by the call actor).
pub const FLOW_WEBHOOK_SECONDS: &str = "switchyard_flow_webhook_seconds";
/// The largest webhook answer read (bytes); a longer one is a bad answer.
pub const WEBHOOK_MAX_ANSWER: u64 = 64 * 1024;
/// Header names of a webhook request: when it was signed (Unix seconds) and the signature.
pub const WEBHOOK_TIMESTAMP_HEADER: &str = "X-Switchyard-Timestamp";
pub const WEBHOOK_SIGNATURE_HEADER: &str = "X-Switchyard-Signature";

/// The signature header's value for `body` signed at `timestamp` (Unix seconds):
/// `sha256=` and the hex HMAC-SHA256 of `"{timestamp}.{body}"` under the tenant's secret.
/// The receiver recomputes it and refuses old timestamps (replays).
pub fn webhook_signature(secret: &[u8], timestamp: u64, body: &[u8]) -> String {
    use hmac::{Hmac, Mac};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret).expect("HMAC takes any key");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let tag = mac.finalize().into_bytes();
    let mut hex = String::with_capacity(7 + 64);
    hex.push_str("sha256=");
    for b in tag {
        hex.push_str(&format!("{b:02x}"));
    }
    hex
}

/// Counter, label `outcome` (`queue`, `user`, `hangup`, `unreachable`): how flows
/// ended (a caller hanging up mid-flow is in the CDR).
pub const FLOW_OUTCOMES: &str = "switchyard_flow_outcomes_total";

/// Steps one event may run without waiting (validation refuses loops that wait for no
/// input; this bounds a flow changed under a running call all the same).
const MAX_STEPS_PER_EVENT: usize = 64;

pub fn describe() {
    use metrics::describe_counter;
    describe_counter!(
        FLOW_CALLS,
        "Calls that entered a call flow (IVR), by result"
    );
    describe_counter!(FLOW_STEPS, "Call flow steps entered, by step type");
    describe_counter!(
        FLOW_MENU_INPUTS,
        "Caller inputs at flow menus: a valid choice, an invalid digit, a timeout"
    );
    describe_counter!(
        FLOW_SCHEDULES,
        "Flow schedule steps by what they found: open, closed, holiday"
    );
    describe_counter!(
        FLOW_QUEUE_EXITS,
        "Callers that left a queue by an exit key for a step of their flow"
    );
    describe_counter!(
        FLOW_WEBHOOKS,
        "Flow webhook answers by result (all but ok and late took the fallback step)"
    );
    metrics::describe_histogram!(
        FLOW_WEBHOOK_SECONDS,
        metrics::Unit::Seconds,
        "Flow webhook round trips, answered or not"
    );
    describe_counter!(
        FLOW_OUTCOMES,
        "How call flows ended: queue, user, number, hangup, unreachable (target missing)"
    );
}

/// A call's place in its flow (part of the checkpoint).
#[derive(Clone, Debug)]
pub(super) struct FlowRun {
    flow: Arc<Flow>,
    step: usize,
    /// Timeouts and invalid digits so far at the current menu.
    tries: u32,
    /// Digits entered at the current step.
    digits: String,
    /// The flow's variables (collected digits, `set` values).
    vars: BTreeMap<String, String>,
    /// The caller's priority in the queue it joins.
    priority: u32,
    /// Skills the caller needs in the queue it joins.
    skills: Vec<crate::routing::acd::Requirement>,
    /// The current step's prompt is still playing (a digit stops it).
    playing: bool,
    /// The webhook request the current step waits for (answers to older ones are late).
    webhook_seq: u32,
    /// The caller waits in the queue of the current step (which has exit keys): the flow
    /// runs again only on one of them.
    parked: bool,
}

/// What a webhook may answer: the next step, and variables and a priority to set first.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct WebhookAnswer {
    next: String,
    #[serde(default)]
    vars: BTreeMap<String, String>,
    #[serde(default)]
    priority: Option<u32>,
}

impl CallCore {
    /// Whether the caller is in a flow's step (not parked in a queue).
    pub(super) fn in_flow(&self) -> bool {
        self.core
            .as_ref()
            .and_then(|c| c.flow.as_ref())
            .is_some_and(|f| !f.parked)
    }

    /// A digit of a caller waiting in a queue its flow sent it to: an exit key leaves the
    /// queue for its step (not while an agent's phone rings: the offer goes on).
    pub(super) fn queue_exit_digit(&mut self, digit: char) {
        let Some(run) = self.core.as_ref().and_then(|c| c.flow.as_ref()) else {
            return;
        };
        if !run.parked || !self.queue_waiting() || self.offering() {
            return;
        }
        let Some(Action::Queue { exits, .. }) = run.flow.step(run.step).map(|s| &s.action) else {
            return;
        };
        let Some(&(_, next)) = exits.iter().find(|e| e.0 == digit) else {
            return;
        };
        metrics::counter!(FLOW_QUEUE_EXITS).increment(1);
        if let Some(q) = self.core().queue.as_mut() {
            q.waiting = false;
        }
        self.leave_queue(false);
        if let Some(id) = self.announce.take() {
            self.cancel_timer(id);
        }
        self.core().queue = None;
        self.core().phase = Phase::Setup;
        let side = self.side_of(Leg::A);
        self.media_op(MediaOp::StopPlay(side));
        self.run().parked = false;
        self.enter_step(next);
    }

    /// The call's tenant and flow id (metric labels: bounded by the configured flows).
    fn flow_labels(&self) -> (String, String) {
        let core = self.core.as_ref();
        (
            core.and_then(|c| c.tenant.as_deref())
                .unwrap_or_default()
                .to_string(),
            core.and_then(|c| c.flow.as_ref())
                .map(|f| f.flow.id.clone())
                .unwrap_or_default(),
        )
    }

    fn run(&mut self) -> &mut FlowRun {
        self.core().flow.as_deref_mut().expect("in a flow")
    }

    /// Answers a call to a flow's number and runs its first step. Without an anchored
    /// session (no media engine, a delayed offer, no G.711) nothing can be played: 488.
    pub(super) fn start_flow(&mut self, flow: Arc<Flow>, priority: u32) {
        let start = flow.start;
        self.core().flow = Some(Box::new(FlowRun {
            flow,
            step: start,
            tries: 0,
            digits: String::new(),
            vars: BTreeMap::new(),
            priority,
            skills: Vec::new(),
            playing: false,
            webhook_seq: 0,
            parked: false,
        }));
        let Some(ok) = self.answer_first() else {
            self.core().flow = None;
            let (tenant, flow) = self.flow_labels();
            metrics::counter!(FLOW_CALLS, "tenant" => tenant, "flow" => flow, "result" => "refused")
                .increment(1);
            return self.refuse(488, "Not Acceptable Here (G.711 Offer Needed)");
        };
        let (tenant, flow) = self.flow_labels();
        metrics::counter!(FLOW_CALLS, "tenant" => tenant, "flow" => flow, "result" => "answered")
            .increment(1);
        self.answer_a(ok);
        if let Some(max) = self.cfg.max_duration {
            self.max_duration = Some(self.schedule_call_timer(CallTimer::MaxDuration, max));
        }
        let now = self.wall_ms;
        let cdr = &mut self.core().cdr;
        cdr.answer_ms = Some(now);
        cdr.final_status = 200;
        metrics::counter!(CALLS_ANSWERED).increment(1);
        self.enter_step(start);
    }

    /// A restarted call actor: the caller hears its current step again.
    pub(super) fn resume_flow(&mut self) {
        let step = self.run().step;
        self.enter_step(step);
    }

    /// The caller's digit while in the flow.
    pub(super) fn flow_digit(&mut self, digit: char) {
        if self.core.as_ref().is_none_or(|c| c.ended) {
            return;
        }
        let run = self.run();
        let Some(step) = run.flow.step(run.step).cloned() else {
            return;
        };
        match step.action {
            Action::Menu { choices, .. } => {
                self.stop_prompt();
                match choices.iter().find(|c| c.0 == digit) {
                    Some(&(_, next)) => {
                        metrics::counter!(FLOW_MENU_INPUTS, "input" => "choice").increment(1);
                        self.enter_step(next);
                    }
                    None => {
                        metrics::counter!(FLOW_MENU_INPUTS, "input" => "invalid").increment(1);
                        self.menu_retry(false);
                    }
                }
            }
            Action::Collect {
                var,
                max_digits,
                terminator,
                timeout,
                next,
                ..
            } => {
                self.stop_prompt();
                if Some(digit) == terminator {
                    return self.collected(&var, next);
                }
                let run = self.run();
                run.digits.push(digit);
                if run.digits.len() >= max_digits as usize {
                    return self.collected(&var, next);
                }
                // The next digit may take the step's timeout again.
                self.flow_wait(timeout);
            }
            // Digits during a prompt are only for the CDR.
            _ => {}
        }
    }

    /// The current step's timer: a prompt ended (play) or no input came in time.
    pub(super) fn on_flow_timer(&mut self, id: TimerKey) {
        if self.flow_timer != Some(id) {
            return;
        }
        self.flow_timer = None;
        if !self.in_flow() || self.core.as_ref().is_some_and(|c| c.ended) {
            return;
        }
        let run = self.run();
        let Some(step) = run.flow.step(run.step).cloned() else {
            return;
        };
        match step.action {
            Action::Play { next, .. } => self.enter_step(next),
            Action::Menu { .. } => {
                metrics::counter!(FLOW_MENU_INPUTS, "input" => "timeout").increment(1);
                self.menu_retry(true);
            }
            Action::Collect { var, next, .. } => self.collected(&var, next),
            Action::Webhook { fallback, .. } => {
                metrics::counter!(FLOW_WEBHOOKS, "result" => "timeout").increment(1);
                tracing::info!(flow = %step.id, "flow webhook timed out: fallback");
                self.enter_step(fallback);
            }
            _ => {}
        }
    }

    /// The answer to the current step's webhook: the step it names, or the fallback.
    pub(super) fn webhook_answered(&mut self, seq: u32, result: WebhookResult) {
        let late = || metrics::counter!(FLOW_WEBHOOKS, "result" => "late").increment(1);
        if !self.in_flow() || self.core.as_ref().is_some_and(|c| c.ended) {
            return late();
        }
        let run = self.run();
        let Some(Action::Webhook { fallback, .. }) =
            run.flow.step(run.step).map(|s| s.action.clone())
        else {
            return late();
        };
        if seq != run.webhook_seq {
            return late();
        }
        let flow = run.flow.clone();
        let outcome = match result {
            WebhookResult::Answer { status, body } if (200..300).contains(&status) => {
                match serde_json::from_slice::<WebhookAnswer>(&body) {
                    Ok(a) => match flow.index_of(&a.next) {
                        Some(next) => Ok((next, a)),
                        None => Err("unknown_step"),
                    },
                    Err(_) => Err("bad_answer"),
                }
            }
            WebhookResult::Answer { .. } => Err("status"),
            WebhookResult::Timeout => Err("timeout"),
            WebhookResult::Busy => Err("busy"),
            WebhookResult::Failed(_) => Err("failed"),
        };
        if let Some(id) = self.flow_timer.take() {
            self.cancel_timer(id);
        }
        match outcome {
            Ok((next, answer)) => {
                metrics::counter!(FLOW_WEBHOOKS, "result" => "ok").increment(1);
                let run = self.run();
                if let Some(p) = answer.priority {
                    run.priority = p;
                }
                // Bounded like the call's own variables.
                for (k, v) in answer.vars.into_iter().take(32) {
                    if run.vars.len() < 64 && k.len() <= 64 && v.len() <= 256 {
                        run.vars.insert(k, v);
                    }
                }
                self.enter_step(next);
            }
            Err(reason) => {
                metrics::counter!(FLOW_WEBHOOKS, "result" => reason).increment(1);
                tracing::info!(flow = %flow.id, reason, "flow webhook failed: fallback");
                self.enter_step(fallback);
            }
        }
    }

    /// The JSON a webhook step POSTs: the call, where it is in the flow, and its variables.
    fn webhook_body(&mut self) -> String {
        let core = self.core();
        let call_id = String::from_utf8_lossy(&core.a_call_id).into_owned();
        let (caller, called, digits) = (
            core.cdr.caller.clone(),
            core.cdr.callee.clone(),
            core.cdr.dtmf.clone(),
        );
        let tenant = core.tenant.as_deref().unwrap_or_default().to_string();
        let run = self.run();
        let step = run
            .flow
            .step(run.step)
            .map(|s| s.id.clone())
            .unwrap_or_default();
        serde_json::json!({
            "tenant": tenant,
            "flow": run.flow.id,
            "step": step,
            "call_id": call_id,
            "caller": caller,
            "called": called,
            "digits": digits,
            "priority": run.priority,
            "vars": run.vars,
        })
        .to_string()
    }

    /// A collect step is over: its digits go into its variable.
    fn collected(&mut self, var: &str, next: usize) {
        let run = self.run();
        let digits = std::mem::take(&mut run.digits);
        run.vars.insert(var.to_string(), digits);
        self.enter_step(next);
    }

    /// A timeout or an invalid digit at a menu: its own prompt and the menu again, or the
    /// menu's `fail` step once the retries are spent.
    fn menu_retry(&mut self, timeout: bool) {
        let run = self.run();
        let Some(Action::Menu {
            prompt,
            retries,
            timeout_prompt,
            invalid_prompt,
            timeout: wait,
            fail,
            ..
        }) = run.flow.step(run.step).map(|s| s.action.clone())
        else {
            return;
        };
        run.tries += 1;
        if run.tries > retries {
            return match fail {
                Some(step) => self.enter_step(step),
                None => self.flow_hangup("flow menu: no valid input"),
            };
        }
        let first = if timeout {
            timeout_prompt
        } else {
            invalid_prompt
        };
        let ids: Vec<String> = first.into_iter().chain([prompt]).collect();
        let ms = self.play_prompts(ids);
        self.flow_wait(Duration::from_millis(ms) + wait);
    }

    /// Plays `ids` to the caller one after the other; their length in milliseconds.
    fn play_prompts(&mut self, ids: Vec<String>) -> u64 {
        let ms = ids
            .iter()
            .map(|id| self.env.prompt_ms(id).unwrap_or(0))
            .sum();
        let side = self.side_of(Leg::A);
        self.media_op(MediaOp::Prompts { side, ids });
        self.run().playing = true;
        ms
    }

    fn stop_prompt(&mut self) {
        if std::mem::replace(&mut self.run().playing, false) {
            let side = self.side_of(Leg::A);
            self.media_op(MediaOp::StopPlay(side));
        }
    }

    /// (Re)arms the step's timer.
    fn flow_wait(&mut self, after: Duration) {
        if let Some(id) = self.flow_timer.take() {
            self.cancel_timer(id);
        }
        self.flow_timer = Some(self.schedule_call_timer(CallTimer::Flow, after));
    }

    /// Runs steps from `step` until one waits (a prompt, a menu, a collect) or the flow
    /// ends.
    fn enter_step(&mut self, mut step: usize) {
        for _ in 0..MAX_STEPS_PER_EVENT {
            let run = self.run();
            let Some(s) = run.flow.step(step).cloned() else {
                return self.flow_hangup("flow step missing");
            };
            run.step = step;
            run.tries = 0;
            run.digits.clear();
            run.playing = false;
            tracing::debug!(flow = %run.flow.id, step = %s.id, "flow step");
            let (tenant, flow) = self.flow_labels();
            metrics::counter!(FLOW_STEPS, "tenant" => tenant, "flow" => flow, "step" => s.action.label())
                .increment(1);
            self.checkpoint();
            match s.action {
                Action::Play { prompt, .. } => {
                    let ms = self.play_prompts(vec![prompt]);
                    return self.flow_wait(Duration::from_millis(ms));
                }
                Action::Menu {
                    prompt, timeout, ..
                } => {
                    let ms = self.play_prompts(vec![prompt]);
                    return self.flow_wait(Duration::from_millis(ms) + timeout);
                }
                Action::Collect {
                    prompt, timeout, ..
                } => {
                    let ms = match prompt {
                        Some(p) => self.play_prompts(vec![p]),
                        None => 0,
                    };
                    return self.flow_wait(Duration::from_millis(ms) + timeout);
                }
                Action::Set {
                    priority,
                    vars,
                    skills,
                    next,
                } => {
                    let run = self.run();
                    if let Some(p) = priority {
                        run.priority = p;
                    }
                    run.skills = crate::routing::acd::merge_requirements(&run.skills, &skills);
                    for (k, v) in vars {
                        run.vars.insert(k, v);
                    }
                    step = next;
                }
                Action::Schedule {
                    hours,
                    open,
                    closed,
                    holiday,
                } => {
                    let now = self.wall_ms;
                    let status = self.run().flow.calendar.status(&hours, now);
                    metrics::counter!(FLOW_SCHEDULES, "status" => status.label()).increment(1);
                    step = match status {
                        ScheduleStatus::Open => open,
                        ScheduleStatus::Closed => closed,
                        ScheduleStatus::Holiday => holiday,
                    };
                }
                Action::Webhook { timeout, fallback } => {
                    let Some(target) = self.run().flow.webhook.clone() else {
                        // Validation refuses this; a flow changed under the call goes on.
                        step = fallback;
                        continue;
                    };
                    let body = self.webhook_body();
                    let run = self.run();
                    run.webhook_seq = run.webhook_seq.wrapping_add(1);
                    let seq = run.webhook_seq;
                    self.out.push(Effect::Webhook(Box::new(WebhookRequest {
                        target,
                        body,
                        timeout,
                        seq,
                    })));
                    return self.flow_wait(timeout);
                }
                Action::Queue { queue, exits } => {
                    return self.flow_to_queue(Arc::from(queue.as_str()), !exits.is_empty())
                }
                Action::User(user) => return self.flow_to_user(&user, format!("user:{user}")),
                Action::Number(number) => return self.flow_to_number(&number),
                Action::Hangup => {
                    metrics::counter!(FLOW_OUTCOMES, "outcome" => "hangup").increment(1);
                    return self.flow_hangup("flow hangup");
                }
            }
        }
        tracing::warn!("flow ran {MAX_STEPS_PER_EVENT} steps without waiting: hung up");
        self.flow_hangup("flow loop");
    }

    /// The flow is over (the call goes on elsewhere or ends): its timer stops.
    fn leave_flow(&mut self) {
        if let Some(id) = self.flow_timer.take() {
            self.cancel_timer(id);
        }
        self.stop_prompt();
        if let Some(run) = self.core().flow.take() {
            let vars: Vec<String> = run.vars.iter().map(|(k, v)| format!("{k}={v}")).collect();
            if !vars.is_empty() {
                tracing::debug!(flow = %run.flow.id, vars = %vars.join(","), "flow left");
            }
        }
    }

    fn flow_hangup(&mut self, why: &str) {
        self.leave_flow();
        self.hang_up_answered_caller(HangupBy::System, why);
    }

    /// The caller waits in the tenant's queue (with music), its place kept from now. With
    /// exit keys the flow stays, parked, for a digit that leaves the queue.
    fn flow_to_queue(&mut self, queue: Arc<str>, exits: bool) {
        let (priority, skills) = {
            let run = self.run();
            (run.priority, std::mem::take(&mut run.skills))
        };
        if exits {
            if let Some(id) = self.flow_timer.take() {
                self.cancel_timer(id);
            }
            self.stop_prompt();
            self.run().parked = true;
        } else {
            self.leave_flow();
        }
        let Some(tenant) = self.core().tenant.clone() else {
            metrics::counter!(FLOW_OUTCOMES, "outcome" => "unreachable").increment(1);
            return self.hang_up_answered_caller(HangupBy::System, "flow without tenant");
        };
        metrics::counter!(FLOW_OUTCOMES, "outcome" => "queue").increment(1);
        let now = self.wall_ms as u64;
        self.core().queue = Some(QueueLeg {
            tenant,
            queue: queue.clone(),
            priority,
            joined_ms: now,
            skills,
            agent: None,
            answered_offer: None,
            wait_ms: None,
            abandoned: false,
            waiting: true,
            released: false,
        });
        self.core().cdr.route = format!("queue:{queue}");
        self.core().phase = Phase::Queued;
        self.play_music(None);
        self.schedule_announcement(Duration::ZERO);
        self.checkpoint();
        self.join_queue();
    }

    /// The caller's call goes on to a tenant user's phones.
    fn flow_to_user(&mut self, user: &str, target: String) {
        self.leave_flow();
        let tenant = self.core().tenant.clone();
        let forks = match &tenant {
            Some(t) => self.env.lookup_user(t, user),
            None => Vec::new(),
        };
        if forks.is_empty() {
            metrics::counter!(FLOW_OUTCOMES, "outcome" => "unreachable").increment(1);
            return self.hang_up_answered_caller(HangupBy::System, "flow user not registered");
        }
        metrics::counter!(FLOW_OUTCOMES, "outcome" => "user").increment(1);
        self.place_b_leg(&forks, Bytes::from(user.to_string()), target, None);
        self.no_answer = Some(self.schedule_call_timer(CallTimer::NoAnswer, self.cfg.no_answer));
        self.set_phase(Phase::Setup);
    }

    /// The call goes where a call to the tenant's `number` (or user name) would.
    fn flow_to_number(&mut self, number: &str) {
        let tenant = self.core().tenant.clone().unwrap_or_else(|| Arc::from(""));
        match self.env.transfer_target(&tenant, number) {
            Ok(TransferTarget::Queue { queue, .. }) => self.flow_to_queue(queue, false),
            Ok(TransferTarget::Phones { user, .. } | TransferTarget::Agent { user, .. }) => {
                self.flow_to_user(&user, format!("number:{number}"))
            }
            Err(_) => {
                self.leave_flow();
                metrics::counter!(FLOW_OUTCOMES, "outcome" => "unreachable").increment(1);
                self.hang_up_answered_caller(HangupBy::System, "flow number unresolved");
            }
        }
    }
}
