//! The call detail record and its mapping to the `cdrs` table.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::{narrow, req, SqlRow, StoreError, Value};

/// Who ended a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HangupBy {
    /// The calling party (A leg): BYE or CANCEL from the caller.
    Caller,
    /// The called party (B leg): BYE or a final error response from the callee side.
    Callee,
    /// The switch itself: timeouts, shutdown, admission, media failure.
    System,
}

impl HangupBy {
    /// The stored text form: `caller`, `callee` or `system`.
    pub fn as_str(self) -> &'static str {
        match self {
            HangupBy::Caller => "caller",
            HangupBy::Callee => "callee",
            HangupBy::System => "system",
        }
    }

    fn parse(s: &str) -> Option<HangupBy> {
        match s {
            "caller" => Some(HangupBy::Caller),
            "callee" => Some(HangupBy::Callee),
            "system" => Some(HangupBy::System),
            _ => None,
        }
    }
}

impl std::fmt::Display for HangupBy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One call detail record: written once, when the call has ended.
///
/// Times are Unix epoch milliseconds (UTC); durations are milliseconds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Cdr {
    /// Call-ID of the A (inbound) leg.
    pub a_call_id: String,
    /// Call-ID of the B (outbound) leg, if one was created.
    pub b_call_id: Option<String>,
    /// The caller: From user or URI of the A leg.
    pub caller: String,
    /// The callee: Request-URI user of the A leg.
    pub callee: String,
    /// The dial-plan route that matched (its prefix), if any.
    pub route: Option<String>,
    /// Where the call was sent (trunk, agent or contact URI), if anywhere.
    pub target: Option<String>,
    /// When the INVITE arrived.
    pub start_at: i64,
    /// When the first 180/183 was relayed, if ever.
    pub ringing_at: Option<i64>,
    /// When the call was answered (200 OK to the INVITE), if ever.
    pub answer_at: Option<i64>,
    /// When the call ended.
    pub end_at: i64,
    /// `end_at - start_at`.
    pub duration_ms: i64,
    /// `end_at - answer_at` for an answered call, 0 otherwise.
    pub billable_ms: i64,
    /// The final SIP status of the A leg's INVITE (200 for an answered call).
    pub final_status: u16,
    /// Who ended the call.
    pub hangup_by: HangupBy,
    /// Why it ended, in words (e.g. `BYE`, `CANCEL`, `486 Busy Here`, `timer B`).
    pub disconnect_reason: String,
    /// The queue the caller waited in (`<tenant>/<queue>`), for contact-centre calls.
    pub queue: Option<String>,
    /// The agent who answered.
    pub agent: Option<String>,
    /// Time from joining the queue to the agent's answer (or to leaving).
    pub wait_ms: Option<i64>,
    /// The caller hung up while waiting in the queue.
    pub abandoned: bool,
    /// The trunk that carried the call's last attempt.
    pub trunk: Option<String>,
    /// Trunk attempts in order with their causes, e.g. `a:503,b:timeout,c:answered`.
    pub attempts: Option<String>,
    /// DTMF digits detected during the call (both legs, in order).
    pub dtmf: Option<String>,
    /// The call's recording id (see the recording index).
    pub recording: Option<String>,
    /// Anchored calls: each leg's quality as the switch measured it (A: caller, B: callee).
    pub media: Option<CdrMedia>,
    /// Transfers carried out, in order: `kind:by>target` (e.g. `blind:B>user:1003`).
    pub transfers: Option<String>,
    /// The tenant the call belongs to (its number's, queue's or caller's), if any: what
    /// scopes `GET /cdrs` and the reports to a tenant's credentials.
    pub tenant: Option<String>,
    /// Who talked to whom: every leg that joined the call, in order (the `cdr_legs` table).
    /// Left out of listings (`GET /cdrs`), which read no legs.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub legs: Vec<CdrLeg>,
}

/// One leg of a call: who was on it, when it joined, was answered and left.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CdrLeg {
    /// The leg's SIP Call-ID.
    pub call_id: String,
    /// `caller`, `callee` or `transfer` (a leg that joined by a transfer).
    pub role: String,
    /// Who: the From URI of a caller, `user:<name>`, `agent:<id>`, `trunk:<id>` or a URI.
    pub party: String,
    pub start_at: i64,
    pub answer_at: Option<i64>,
    pub end_at: i64,
    /// Why it left (`bye`, `transferred`, `cancelled`, ...).
    pub end_reason: String,
}

/// The media figures of an anchored call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct CdrMedia {
    pub mos_a: f64,
    pub mos_b: f64,
    /// Loss fractions 0..=1.
    pub loss_a: f64,
    pub loss_b: f64,
    pub jitter_a_ms: f64,
    pub jitter_b_ms: f64,
    /// Round-trip time from RTCP, if the phones sent reports.
    pub rtt_ms: Option<f64>,
    pub packets_a: i64,
    pub packets_b: i64,
}

/// Now as Unix epoch milliseconds, the unit of every [`Cdr`] timestamp.
pub fn now_unix_ms() -> i64 {
    // A clock before 1970 is a broken host; 0 keeps the CDR writable rather than panicking.
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

const COLUMNS: &str = "a_call_id, b_call_id, caller, callee, route, target, start_at, ringing_at, \
     answer_at, end_at, duration_ms, billable_ms, final_status, hangup_by, disconnect_reason, \
     queue, agent, wait_ms, abandoned, trunk, attempts, dtmf, recording, mos_a, mos_b, loss_a, \
     loss_b, jitter_a_ms, jitter_b_ms, rtt_ms, packets_a, packets_b, transfers, tenant";

pub(super) const INSERT_SQL: &str = "INSERT INTO cdrs (a_call_id, b_call_id, caller, callee, \
     route, target, start_at, ringing_at, answer_at, end_at, duration_ms, billable_ms, \
     final_status, hangup_by, disconnect_reason, queue, agent, wait_ms, abandoned, trunk, \
     attempts, dtmf, recording, mos_a, mos_b, loss_a, loss_b, jitter_a_ms, jitter_b_ms, rtt_ms, \
     packets_a, packets_b, transfers, tenant) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, \
     $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23, $24, $25, $26, $27, $28, $29, $30, \
     $31, $32, $33, $34) RETURNING id";

/// One leg of the CDR whose row id is `$1` (the `cdr_legs` table).
pub(super) const INSERT_LEG_SQL: &str = "INSERT INTO cdr_legs (cdr_id, seq, call_id, role, \
     party, start_at, answer_at, end_at, end_reason) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)";

/// The legs of the CDRs whose row ids are in `$1..=$2`, in order (a page of CDRs newest first
/// covers consecutive ids, so one range query fills the whole page).
pub(super) const LEGS_SQL: &str = "SELECT cdr_id, call_id, role, party, start_at, answer_at, \
     end_at, end_reason FROM cdr_legs WHERE cdr_id >= $1 AND cdr_id <= $2 ORDER BY cdr_id, seq";

pub(super) static LIST_SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!("SELECT {COLUMNS}, id FROM cdrs ORDER BY id DESC LIMIT $1")
});

pub(super) static BY_CALL_ID_SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!("SELECT {COLUMNS}, id FROM cdrs WHERE a_call_id = $1 ORDER BY id DESC LIMIT 1")
});

/// The values of [`INSERT_SQL`]'s placeholders for `c`, in order.
pub(super) fn values(c: &Cdr) -> [Value<'_>; 34] {
    let m = c.media;
    [
        c.a_call_id.as_str().into(),
        c.b_call_id.as_deref().into(),
        c.caller.as_str().into(),
        c.callee.as_str().into(),
        c.route.as_deref().into(),
        c.target.as_deref().into(),
        c.start_at.into(),
        c.ringing_at.into(),
        c.answer_at.into(),
        c.end_at.into(),
        c.duration_ms.into(),
        c.billable_ms.into(),
        i64::from(c.final_status).into(),
        c.hangup_by.as_str().into(),
        c.disconnect_reason.as_str().into(),
        c.queue.as_deref().into(),
        c.agent.as_deref().into(),
        c.wait_ms.into(),
        i64::from(c.abandoned).into(),
        c.trunk.as_deref().into(),
        c.attempts.as_deref().into(),
        c.dtmf.as_deref().into(),
        c.recording.as_deref().into(),
        m.map(|m| m.mos_a).into(),
        m.map(|m| m.mos_b).into(),
        m.map(|m| m.loss_a).into(),
        m.map(|m| m.loss_b).into(),
        m.map(|m| m.jitter_a_ms).into(),
        m.map(|m| m.jitter_b_ms).into(),
        m.and_then(|m| m.rtt_ms).into(),
        m.map(|m| m.packets_a).into(),
        m.map(|m| m.packets_b).into(),
        c.transfers.as_deref().into(),
        c.tenant.as_deref().into(),
    ]
}

/// The values of [`INSERT_LEG_SQL`]'s placeholders for leg number `seq` of the CDR `cdr_id`.
pub(super) fn leg_values(cdr_id: i64, seq: i64, l: &CdrLeg) -> [Value<'_>; 9] {
    [
        cdr_id.into(),
        seq.into(),
        l.call_id.as_str().into(),
        l.role.as_str().into(),
        l.party.as_str().into(),
        l.start_at.into(),
        l.answer_at.into(),
        l.end_at.into(),
        l.end_reason.as_str().into(),
    ]
}

/// Read a row selected with [`LEGS_SQL`]: the CDR's row id and the leg.
pub(super) fn leg_from_row(r: &dyn SqlRow) -> Result<(i64, CdrLeg), StoreError> {
    let text = |i: usize| -> Result<String, StoreError> { req(r.text(i)?, i) };
    let int = |i: usize| -> Result<i64, StoreError> { req(r.int(i)?, i) };
    Ok((
        int(0)?,
        CdrLeg {
            call_id: text(1)?,
            role: text(2)?,
            party: text(3)?,
            start_at: int(4)?,
            answer_at: r.int(5)?,
            end_at: int(6)?,
            end_reason: text(7)?,
        },
    ))
}

/// Read a row selected with `COLUMNS, id`: the CDR (legs not filled) and its row id.
pub(super) fn from_row_with_id(r: &dyn SqlRow) -> Result<(i64, Cdr), StoreError> {
    let cdr = from_row(r)?;
    Ok((req(r.int(34)?, 34)?, cdr))
}

/// The columns of a CDR row in [`from_row_with_id`]'s order (`id` last), for queries of
/// other modules.
pub(super) fn select_columns() -> String {
    format!("{COLUMNS}, id")
}

/// Read a row selected with `COLUMNS`, in that order.
fn from_row(r: &dyn SqlRow) -> Result<Cdr, StoreError> {
    let text = |i: usize| -> Result<String, StoreError> { req(r.text(i)?, i) };
    let int = |i: usize| -> Result<i64, StoreError> { req(r.int(i)?, i) };
    let hangup_by = text(13)?;
    Ok(Cdr {
        a_call_id: text(0)?,
        b_call_id: r.text(1)?,
        caller: text(2)?,
        callee: text(3)?,
        route: r.text(4)?,
        target: r.text(5)?,
        start_at: int(6)?,
        ringing_at: r.int(7)?,
        answer_at: r.int(8)?,
        end_at: int(9)?,
        duration_ms: int(10)?,
        billable_ms: int(11)?,
        final_status: narrow(int(12)?, 12)?,
        hangup_by: HangupBy::parse(&hangup_by)
            .ok_or_else(|| StoreError::BadValue(format!("unknown hangup_by {hangup_by:?}")))?,
        disconnect_reason: text(14)?,
        queue: r.text(15)?,
        agent: r.text(16)?,
        wait_ms: r.int(17)?,
        abandoned: int(18)? != 0,
        trunk: r.text(19)?,
        attempts: r.text(20)?,
        dtmf: r.text(21)?,
        recording: r.text(22)?,
        media: match r.real(23)? {
            None => None,
            Some(mos_a) => Some(CdrMedia {
                mos_a,
                mos_b: r.real(24)?.unwrap_or(0.0),
                loss_a: r.real(25)?.unwrap_or(0.0),
                loss_b: r.real(26)?.unwrap_or(0.0),
                jitter_a_ms: r.real(27)?.unwrap_or(0.0),
                jitter_b_ms: r.real(28)?.unwrap_or(0.0),
                rtt_ms: r.real(29)?,
                packets_a: r.int(30)?.unwrap_or(0),
                packets_b: r.int(31)?.unwrap_or(0),
            }),
        },
        transfers: r.text(32)?,
        tenant: r.text(33)?,
        legs: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hangup_by_text_round_trip() {
        for h in [HangupBy::Caller, HangupBy::Callee, HangupBy::System] {
            assert_eq!(HangupBy::parse(h.as_str()), Some(h));
        }
        assert_eq!(HangupBy::parse("Caller"), None);
    }

    #[test]
    fn now_is_after_2020() {
        assert!(now_unix_ms() > 1_577_836_800_000);
    }
}
