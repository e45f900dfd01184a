//! Automatic call distribution: the pure decisions a queue actor makes. No tokio, no actors:
//! the queue actor ([`crate::actors::queue`]) holds a [`Waiting`] list and a [`Member`] view
//! of each of its agents, and asks [`rank`] which agents to offer the head caller to.
//! Time is passed in (milliseconds), so every rule is tested with a fixed clock.

use std::cmp::Reverse;
use std::fmt::Write as _;
use std::sync::Arc;

/// How a queue chooses among its available agents.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// The agent idle the longest (since the end of the last call or login).
    LongestIdle,
    /// The next agent after the one offered last, in member order (wraps around).
    RoundRobin,
    /// Every available agent at once; the first to answer gets the call.
    RingAll,
    /// The agent with the fewest calls answered.
    FewestCalls,
    /// The agent with the least total talk time.
    LeastTalkTime,
    /// Always from the first member in order (linear hunt).
    TopDown,
    /// Any available agent, uniformly.
    Random,
    /// The agent whose skills best exceed the caller's requirements (see [`Requirement`]).
    Skills,
}

impl Strategy {
    /// The strategy's name as written in the configuration (kebab-case).
    pub fn label(self) -> &'static str {
        match self {
            Strategy::LongestIdle => "longest-idle",
            Strategy::RoundRobin => "round-robin",
            Strategy::RingAll => "ring-all",
            Strategy::FewestCalls => "fewest-calls",
            Strategy::LeastTalkTime => "least-talk-time",
            Strategy::TopDown => "top-down",
            Strategy::Random => "random",
            Strategy::Skills => "skills",
        }
    }
}

/// A skill the caller needs, with the minimum level (1–10) an agent must have at first.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Requirement {
    pub skill: String,
    pub level: u8,
}

/// The queue's requirements with a caller's own on top: every skill of either, at the
/// higher level where both name it.
pub fn merge_requirements(queue: &[Requirement], caller: &[Requirement]) -> Vec<Requirement> {
    let mut all = queue.to_vec();
    for r in caller {
        match all.iter_mut().find(|q| q.skill == r.skill) {
            Some(q) => q.level = q.level.max(r.level),
            None => all.push(r.clone()),
        }
    }
    all
}

/// A relaxation step: once the caller has waited `after_secs`, every required level drops
/// by `by` (cumulative over the steps passed, never below 1), like Asterisk's queue rules.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Relax {
    pub after_secs: u64,
    pub by: u8,
}

/// The queue's view of one member agent, kept up to date by the agent's state reports.
#[derive(Clone, Debug, PartialEq)]
pub struct Member {
    /// Agent id within the tenant.
    pub id: Arc<str>,
    /// The tenant user whose phone the agent answers on (never offered a call its own
    /// phone placed).
    pub user: Option<Arc<str>>,
    /// Tier (lower first): higher tiers are only offered when no lower-tier agent is free.
    pub tier: u32,
    /// Penalty within a tier (lower first), like app_queue's penalty.
    pub penalty: u32,
    /// Position in the queue's member list (order of configuration), for top-down and
    /// round-robin.
    pub position: u32,
    /// Whether the agent can take an offer now (available, phone registered, not reserved).
    pub available: bool,
    /// When the agent became idle (unix ms).
    pub idle_since_ms: u64,
    /// Calls answered (since the agent actor started counting).
    pub calls: u64,
    /// Total talk time in ms.
    pub talk_ms: u64,
    /// Skills with levels 1–10, sorted by name.
    pub skills: Vec<(String, u8)>,
}

impl Member {
    /// The agent's level in `skill` (0 when it lacks it).
    pub fn level(&self, skill: &str) -> u8 {
        // A linear scan: agents have a handful of skills, where it is as fast as a binary
        // search, and it stays right if a caller ever hands over an unsorted list.
        self.skills
            .iter()
            .find(|(name, _)| name == skill)
            .map_or(0, |&(_, level)| level)
    }
}

/// The required level of each skill after `waited_ms` of waiting: the base level lowered by
/// the relaxation steps already passed, never below 1.
pub fn required_levels(reqs: &[Requirement], relax: &[Relax], waited_ms: u64) -> Vec<(String, u8)> {
    let drop = relaxed_by(relax, waited_ms);
    reqs.iter()
        .map(|r| (r.skill.clone(), relaxed_level(r.level, drop)))
        .collect()
}

/// The total drop of the relaxation steps already passed after `waited_ms` (steps need not
/// be sorted; the sum saturates, so absurd configurations cannot overflow).
fn relaxed_by(relax: &[Relax], waited_ms: u64) -> u32 {
    relax
        .iter()
        .filter(|r| r.after_secs.saturating_mul(1000) <= waited_ms)
        .fold(0u32, |total, r| total.saturating_add(u32::from(r.by)))
}

/// A base level lowered by `drop`, never below 1 (a requirement never vanishes: an agent
/// lacking the skill stays ineligible however long the caller waits).
fn relaxed_level(base: u8, drop: u32) -> u8 {
    let lowered = u32::from(base).saturating_sub(drop).max(1);
    // `lowered` <= max(base, 1) <= 255.
    lowered as u8
}

/// The ranking of one decision: candidates in offer order and why.
#[derive(Clone, Debug, PartialEq)]
pub struct Ranking {
    /// Indices into the member slice, best first. For ring-all: every eligible agent (all
    /// of them are offered at once); otherwise the queue offers to the first and falls back
    /// to the next ones if a reservation is refused.
    pub order: Vec<usize>,
    /// How many members were available and met the requirements.
    pub eligible: usize,
    /// A short human-readable reason for the first choice, e.g.
    /// "longest-idle: idle 42s (tier 1, penalty 0)" or "skills: english 7>=5, score 2".
    pub reason: String,
}

/// Ranks the available members for a caller that has waited `waited_ms`.
///
/// Rules common to all strategies: only `available` members whose skills meet
/// `required_levels(reqs, relax, waited_ms)` are eligible (with no requirements everyone
/// available is); candidates are grouped by tier (lowest first), then penalty (lowest
/// first), and the strategy orders within a group. Ties break by position.
/// - `rr_last`: the position offered last (round-robin starts after it, wrapping).
/// - `rand_seed`: the random strategy's source (the actor passes a fresh random u64; tests
///   a fixed one), so results are reproducible.
/// - Skills: score = sum over requirements of (agent level - required level); highest score
///   first, then longest idle.
#[allow(clippy::too_many_arguments)]
pub fn rank(
    strategy: Strategy,
    members: &[Member],
    reqs: &[Requirement],
    relax: &[Relax],
    waited_ms: u64,
    now_ms: u64,
    rr_last: Option<u32>,
    rand_seed: u64,
) -> Ranking {
    rank_top(
        strategy,
        members,
        reqs,
        relax,
        waited_ms,
        now_ms,
        rr_last,
        rand_seed,
        usize::MAX,
    )
}

/// [`rank`] for the best `limit` candidates only (`order` holds at most `limit`; `eligible`
/// still counts them all): what a queue offering one agent at a time needs, in linear time.
#[allow(clippy::too_many_arguments)]
pub fn rank_top(
    strategy: Strategy,
    members: &[Member],
    reqs: &[Requirement],
    relax: &[Relax],
    waited_ms: u64,
    now_ms: u64,
    rr_last: Option<u32>,
    rand_seed: u64,
    limit: usize,
) -> Ranking {
    use Strategy::*;
    let drop = relaxed_by(relax, waited_ms);
    // Borrowed names: no String per decision, let alone per member.
    let required: Vec<(&str, u8)> = reqs
        .iter()
        .map(|r| (r.skill.as_str(), relaxed_level(r.level, drop)))
        .collect();
    let mut rng = SplitMix64(rand_seed);
    let mut available = 0usize;
    let mut cands: Vec<Candidate> = Vec::new();
    for (idx, m) in members.iter().enumerate() {
        // Most members of a large queue are busy or logged out: drop them before anything else.
        if !m.available {
            continue;
        }
        available += 1;
        let Some(score) = skill_score(m, &required) else {
            continue;
        };
        let (first, second) = match strategy {
            LongestIdle => (m.idle_since_ms, 0),
            // Positions after the last one offered come first (0), then the wrap-around (1);
            // within each half, position order.
            RoundRobin => (u64::from(rr_last.is_some_and(|last| m.position <= last)), 0),
            RingAll | TopDown => (0, 0),
            FewestCalls => (m.calls, m.idle_since_ms),
            LeastTalkTime => (m.talk_ms, m.idle_since_ms),
            // Sorting by independent uniform keys gives a uniform permutation of each group.
            Random => (rng.next_u64(), 0),
            Skills => (u64::from(u32::MAX - score), m.idle_since_ms),
        };
        cands.push(Candidate {
            idx,
            tier: m.tier,
            penalty: m.penalty,
            first,
            second,
            position: m.position,
            score,
        });
    }
    // The index last makes the order total, so equal keys (duplicate positions) are still
    // ranked deterministically by an unstable sort.
    let key = |c: &Candidate| (c.tier, c.penalty, c.first, c.second, c.position, c.idx);
    let eligible = cands.len();
    // The reason is worded over every candidate (group sizes, counts), before any cut.
    let reason = match cands.iter().min_by_key(|c| key(c)) {
        Some(best) => chosen_reason(strategy, members, &cands, best, &required, now_ms, rr_last),
        None => no_eligible_reason(members.len(), available, reqs, &required, waited_ms),
    };
    if limit < cands.len() {
        // Only the best `limit` are wanted (a queue offers one agent at a time): select them
        // in linear time instead of sorting every available agent.
        let limit = limit.max(1);
        cands.select_nth_unstable_by_key(limit - 1, key);
        cands.truncate(limit);
    }
    cands.sort_unstable_by_key(key);
    Ranking {
        order: cands.iter().map(|c| c.idx).collect(),
        eligible,
        reason,
    }
}

/// One eligible member and its sort key, built once per decision.
struct Candidate {
    idx: usize,
    tier: u32,
    penalty: u32,
    /// The strategy's figure (lower first).
    first: u64,
    /// The strategy's tie-break (lower first), before position.
    second: u64,
    position: u32,
    /// Skill surplus over the (relaxed) requirements.
    score: u32,
}

/// The member's surplus over the required levels, or `None` when it misses one.
fn skill_score(m: &Member, required: &[(&str, u8)]) -> Option<u32> {
    let mut score = 0u32;
    for &(skill, need) in required {
        let have = m.level(skill);
        if have < need {
            return None;
        }
        score = score.saturating_add(u32::from(have - need));
    }
    Some(score)
}

/// Whole seconds, as operators read them.
fn secs(ms: u64) -> u64 {
    ms / 1000
}

/// Why the first candidate was chosen: strategy, agent, the decisive figure, its group.
fn chosen_reason(
    strategy: Strategy,
    members: &[Member],
    cands: &[Candidate],
    best: &Candidate,
    required: &[(&str, u8)],
    now_ms: u64,
    rr_last: Option<u32>,
) -> String {
    let m = &members[best.idx];
    let id = &*m.id;
    let label = strategy.label();
    let idle_s = secs(now_ms.saturating_sub(m.idle_since_ms));
    let mut r = String::with_capacity(96);
    // Writing to a String cannot fail.
    let _ = match strategy {
        Strategy::LongestIdle => write!(r, "{label}: {id} idle {idle_s} s"),
        Strategy::RoundRobin => match rr_last {
            None => write!(
                r,
                "{label}: {id} at position {}, first in member order",
                m.position
            ),
            Some(last) if m.position > last => write!(
                r,
                "{label}: {id} at position {}, next after position {last}",
                m.position
            ),
            Some(last) => write!(
                r,
                "{label}: {id} at position {}, wrapped around after position {last}",
                m.position
            ),
        },
        Strategy::RingAll => write!(
            r,
            "{label}: all {} eligible rung at once, {id} first",
            cands.len()
        ),
        Strategy::FewestCalls => write!(r, "{label}: {id} with {} calls, idle {idle_s} s", m.calls),
        Strategy::LeastTalkTime => write!(
            r,
            "{label}: {id} talked {} s in total, idle {idle_s} s",
            secs(m.talk_ms)
        ),
        Strategy::TopDown => write!(r, "{label}: {id} first free at position {}", m.position),
        Strategy::Random => {
            let group = cands
                .iter()
                .take_while(|c| c.tier == best.tier && c.penalty == best.penalty)
                .count();
            write!(r, "{label}: {id} drawn among {group} in its group")
        }
        Strategy::Skills => {
            let _ = write!(r, "{label}: {id} score {} (", best.score);
            if required.is_empty() {
                r.push_str("no requirements");
            }
            for (i, &(skill, need)) in required.iter().enumerate() {
                let sep = if i == 0 { "" } else { ", " };
                let _ = write!(r, "{sep}{skill} {}>={need}", m.level(skill));
            }
            write!(r, "), idle {idle_s} s")
        }
    };
    let _ = write!(
        r,
        ", tier {} penalty {}, {} eligible",
        best.tier,
        best.penalty,
        cands.len()
    );
    r
}

/// Why nobody can be offered: no members, nobody available, or the requirements (with their
/// relaxation) that the available ones miss.
fn no_eligible_reason(
    total: usize,
    available: usize,
    reqs: &[Requirement],
    required: &[(&str, u8)],
    waited_ms: u64,
) -> String {
    if total == 0 {
        return "no agent: the queue has no members".to_string();
    }
    if available == 0 || required.is_empty() {
        return format!("no available agent: {available} of {total} members available");
    }
    let mut r = String::from("no available agent meets ");
    for (i, (req, &(skill, need))) in reqs.iter().zip(required).enumerate() {
        let sep = if i == 0 { "" } else { ", " };
        let _ = write!(r, "{sep}{skill}>={need}");
        if need < req.level {
            let _ = write!(
                r,
                " (after {} s relaxed from {})",
                secs(waited_ms),
                req.level
            );
        }
    }
    let _ = write!(r, "; {available} of {total} members available");
    r
}

/// splitmix64 (Steele, Lea, Flood): a tiny, well-mixed generator, enough to shuffle agents
/// reproducibly from one seed.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// A caller waiting in a queue.
#[derive(Clone, Debug, PartialEq)]
pub struct Caller {
    /// The caller's A-leg Call-ID (the key the call actor is found by).
    pub call_id: Arc<str>,
    /// Higher first.
    pub priority: u32,
    /// Arrival order (set by [`Waiting::push`]).
    pub seq: u64,
    /// When the caller joined (unix ms); kept across a queue actor restart.
    pub joined_ms: u64,
    /// Who called (From URI), for the API.
    pub from: String,
    /// The tenant user who called, when the caller authenticated as one: the agent who
    /// answers on that user's phone is not offered the call.
    pub user: Option<Arc<str>>,
    /// Agents currently offered this caller (empty while it waits for one).
    pub offered: Vec<Arc<str>>,
    /// Offers made so far.
    pub attempts: u32,
}

/// The waiting list: priority (higher first), then arrival order. Single writer: the queue
/// actor. Cloned as the queue's checkpoint after every change, so both maps are persistent
/// (`imbl`): a clone shares structure and costs O(1), not a copy of every waiting caller.
#[derive(Clone, Debug, Default)]
pub struct Waiting {
    by_order: imbl::OrdMap<WaitKey, Caller>,
    next_seq: u64,
    /// Call-ID to the caller's key in `by_order`, so lookups by Call-ID do not scan.
    index: imbl::HashMap<Arc<str>, WaitKey>,
}

/// A caller's place: priority (higher first), then arrival.
type WaitKey = (Reverse<u32>, u64);

impl Waiting {
    /// Adds a caller at its place (its `seq` is assigned here) and returns its position
    /// (1-based). A Call-ID already waiting (a repeated enqueue) is replaced by the new entry
    /// but keeps its arrival order, so a retry never sends a caller to the back.
    pub fn push(&mut self, mut caller: Caller) -> usize {
        let seq = match self.index.remove(&*caller.call_id) {
            Some(old) => {
                self.by_order.remove(&old);
                old.1
            }
            None => {
                let seq = self.next_seq;
                self.next_seq += 1;
                seq
            }
        };
        caller.seq = seq;
        let key = (Reverse(caller.priority), seq);
        self.index.insert(caller.call_id.clone(), key);
        self.by_order.insert(key, caller);
        self.by_order.range(..key).count() + 1
    }

    /// Removes a caller by Call-ID.
    pub fn remove(&mut self, call_id: &str) -> Option<Caller> {
        let key = self.index.remove(call_id)?;
        self.by_order.remove(&key)
    }

    /// A caller by Call-ID, to update its offers and attempts. Changing `call_id`,
    /// `priority` or `seq` through it does not move the caller: remove and push instead.
    pub fn get_mut(&mut self, call_id: &str) -> Option<&mut Caller> {
        let key = self.index.get(call_id)?;
        self.by_order.get_mut(key)
    }

    /// A caller by Call-ID.
    pub fn get(&self, call_id: &str) -> Option<&Caller> {
        let key = self.index.get(call_id)?;
        self.by_order.get(key)
    }

    /// Callers in order (highest priority, then earliest).
    pub fn iter(&self) -> impl Iterator<Item = &Caller> {
        self.by_order.values()
    }

    /// The first caller in order that has no offer out.
    pub fn next_unoffered(&self) -> Option<&Caller> {
        self.by_order.values().find(|c| c.offered.is_empty())
    }

    /// A caller's position (1-based) in order.
    pub fn position(&self, call_id: &str) -> Option<usize> {
        let key = self.index.get(call_id)?;
        Some(self.by_order.range(..*key).count() + 1)
    }

    /// How many callers wait.
    pub fn len(&self) -> usize {
        self.by_order.len()
    }

    /// Whether nobody waits.
    pub fn is_empty(&self) -> bool {
        self.by_order.is_empty()
    }

    /// The longest wait now, in ms.
    pub fn longest_wait_ms(&self, now_ms: u64) -> u64 {
        // The earliest joiner need not be at the head: a later high-priority caller may be.
        self.by_order
            .values()
            .map(|c| c.joined_ms)
            .min()
            .map_or(0, |joined| now_ms.saturating_sub(joined))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 10_000_000;

    #[allow(clippy::too_many_arguments)]
    fn member(
        id: &str,
        tier: u32,
        penalty: u32,
        position: u32,
        available: bool,
        idle_s: u64,
        calls: u64,
        talk_s: u64,
        skills: &[(&str, u8)],
    ) -> Member {
        let mut skills: Vec<(String, u8)> =
            skills.iter().map(|&(s, l)| (s.to_string(), l)).collect();
        skills.sort();
        Member {
            id: id.into(),
            user: None,
            tier,
            penalty,
            position,
            available,
            idle_since_ms: NOW - idle_s * 1000,
            calls,
            talk_ms: talk_s * 1000,
            skills,
        }
    }

    /// Seven members with distinct figures. Tier 1 penalty 0: a0, a1, a2, a4 (a3 is
    /// unavailable and best on every figure); a6 alone in tier 1 penalty 1 and a5 alone in
    /// tier 2, both better than everyone on every figure, so any order that ignores grouping
    /// puts them first.
    fn scenario() -> Vec<Member> {
        vec![
            member("a0", 1, 0, 30, true, 10, 5, 300, &[("english", 5)]),
            member("a1", 1, 0, 10, true, 50, 2, 400, &[("english", 8)]),
            member(
                "a2",
                1,
                0,
                40,
                true,
                30,
                9,
                100,
                &[("english", 6), ("french", 3)],
            ),
            member("a3", 1, 0, 20, false, 99, 0, 0, &[("english", 9)]),
            member("a4", 1, 0, 50, true, 20, 1, 200, &[("english", 3)]),
            member("a5", 2, 0, 0, true, 500, 0, 0, &[("english", 10)]),
            member("a6", 1, 1, 5, true, 400, 0, 0, &[("english", 10)]),
        ]
    }

    fn req(skill: &str, level: u8) -> Requirement {
        Requirement {
            skill: skill.to_string(),
            level,
        }
    }

    fn plain(strategy: Strategy, members: &[Member]) -> Ranking {
        rank(strategy, members, &[], &[], 0, NOW, None, 7)
    }

    #[test]
    fn level_reads_skills_and_defaults_to_zero() {
        let m = member(
            "a",
            1,
            0,
            0,
            true,
            0,
            0,
            0,
            &[("english", 7), ("french", 2)],
        );
        assert_eq!(m.level("english"), 7);
        assert_eq!(m.level("french"), 2);
        assert_eq!(m.level("german"), 0);
        assert_eq!(m.level(""), 0);
    }

    #[test]
    fn longest_idle_orders_by_idle_within_groups() {
        let r = plain(Strategy::LongestIdle, &scenario());
        assert_eq!(r.order, vec![1, 2, 4, 0, 6, 5]);
        assert_eq!(r.eligible, 6);
        assert_eq!(
            r.reason,
            "longest-idle: a1 idle 50 s, tier 1 penalty 0, 6 eligible"
        );
    }

    #[test]
    fn top_down_orders_by_position_within_groups() {
        let r = plain(Strategy::TopDown, &scenario());
        assert_eq!(r.order, vec![1, 0, 2, 4, 6, 5]);
        assert!(r.reason.starts_with("top-down: a1"), "{}", r.reason);
        assert!(r.reason.contains("position 10"), "{}", r.reason);
    }

    #[test]
    fn ring_all_returns_every_eligible_in_group_order() {
        let r = plain(Strategy::RingAll, &scenario());
        assert_eq!(r.order, vec![1, 0, 2, 4, 6, 5]);
        assert_eq!(r.eligible, 6);
        assert!(
            r.reason.starts_with("ring-all: all 6 eligible"),
            "{}",
            r.reason
        );
    }

    #[test]
    fn fewest_calls_orders_by_calls() {
        let r = plain(Strategy::FewestCalls, &scenario());
        assert_eq!(r.order, vec![4, 1, 0, 2, 6, 5]);
        assert!(r.reason.contains("a4 with 1 calls"), "{}", r.reason);
    }

    #[test]
    fn fewest_calls_ties_break_by_idle_then_position() {
        let ms = vec![
            member("x", 1, 0, 3, true, 10, 4, 0, &[]),
            member("y", 1, 0, 2, true, 30, 4, 0, &[]),
            member("z", 1, 0, 1, true, 10, 4, 0, &[]),
            member("w", 1, 0, 0, true, 99, 5, 0, &[]),
        ];
        // y idles longest; x and z tie on idle too, so position: z (1) before x (3).
        assert_eq!(plain(Strategy::FewestCalls, &ms).order, vec![1, 2, 0, 3]);
    }

    #[test]
    fn least_talk_time_orders_by_talk() {
        let r = plain(Strategy::LeastTalkTime, &scenario());
        assert_eq!(r.order, vec![2, 4, 0, 1, 6, 5]);
        assert!(r.reason.contains("a2 talked 100 s"), "{}", r.reason);
    }

    #[test]
    fn least_talk_time_ties_break_by_idle_then_position() {
        let ms = vec![
            member("x", 1, 0, 3, true, 10, 0, 60, &[]),
            member("y", 1, 0, 2, true, 30, 0, 60, &[]),
            member("z", 1, 0, 1, true, 10, 0, 60, &[]),
        ];
        assert_eq!(plain(Strategy::LeastTalkTime, &ms).order, vec![1, 2, 0]);
    }

    #[test]
    fn round_robin_starts_after_the_last_and_wraps() {
        let ms = scenario();
        let rr = |last| rank(Strategy::RoundRobin, &ms, &[], &[], 0, NOW, last, 7);
        // No memory: lowest position first.
        let r = rr(None);
        assert_eq!(r.order, vec![1, 0, 2, 4, 6, 5]);
        assert!(r.reason.contains("first in member order"), "{}", r.reason);
        // Group positions 10, 30, 40, 50 (a1, a0, a2, a4).
        assert_eq!(rr(Some(10)).order, vec![0, 2, 4, 1, 6, 5]);
        assert_eq!(rr(Some(30)).order, vec![2, 4, 1, 0, 6, 5]);
        assert_eq!(rr(Some(35)).order, vec![2, 4, 1, 0, 6, 5]);
        assert_eq!(rr(Some(45)).order, vec![4, 1, 0, 2, 6, 5]);
        let r = rr(Some(30));
        assert!(
            r.reason
                .contains("a2 at position 40, next after position 30"),
            "{}",
            r.reason
        );
        // Past the last position: wrap to the lowest.
        let r = rr(Some(50));
        assert_eq!(r.order, vec![1, 0, 2, 4, 6, 5]);
        assert!(
            r.reason.contains("wrapped around after position 50"),
            "{}",
            r.reason
        );
        // Strictly greater: the last one offered is not offered again first.
        assert_ne!(rr(Some(40)).order[0], 2);
    }

    #[test]
    fn round_robin_cycles_through_everyone() {
        let ms = scenario();
        let mut last = None;
        let mut seen = Vec::new();
        for _ in 0..8 {
            let r = rank(Strategy::RoundRobin, &ms, &[], &[], 0, NOW, last, 7);
            let first = r.order[0];
            seen.push(first);
            last = Some(ms[first].position);
        }
        // Only tier 1 penalty 0 is ever first; positions 10, 30, 40, 50, then around again.
        assert_eq!(seen, vec![1, 0, 2, 4, 1, 0, 2, 4]);
    }

    #[test]
    fn random_is_reproducible_and_a_permutation_within_groups() {
        let ms = scenario();
        let a = rank(Strategy::Random, &ms, &[], &[], 0, NOW, None, 42);
        let b = rank(Strategy::Random, &ms, &[], &[], 0, NOW, None, 42);
        assert_eq!(a, b);
        assert_eq!(a.eligible, 6);
        let mut head: Vec<usize> = a.order[..4].to_vec();
        head.sort();
        assert_eq!(head, vec![0, 1, 2, 4]);
        assert_eq!(&a.order[4..], &[6, 5]);
        assert!(
            a.reason.contains("drawn among 4 in its group"),
            "{}",
            a.reason
        );
        // Over many seeds every eligible first-group member comes first, and orders differ.
        let mut firsts = std::collections::HashSet::new();
        let mut orders = std::collections::HashSet::new();
        for seed in 0..200u64 {
            let r = rank(Strategy::Random, &ms, &[], &[], 0, NOW, None, seed);
            let mut head = r.order[..4].to_vec();
            firsts.insert(r.order[0]);
            orders.insert(r.order.clone());
            head.sort();
            assert_eq!(head, vec![0, 1, 2, 4], "seed {seed}");
            assert_eq!(&r.order[4..], &[6, 5], "seed {seed}");
        }
        assert_eq!(firsts.len(), 4);
        // 24 permutations of the group; 200 draws should see most of them.
        assert!(orders.len() >= 20, "only {} distinct orders", orders.len());
    }

    #[test]
    fn random_is_roughly_uniform() {
        let ms: Vec<Member> = (0..4)
            .map(|i| member("m", 1, 0, i, true, 0, 0, 0, &[]))
            .collect();
        let mut counts = [0u32; 4];
        for seed in 0..4000u64 {
            counts[rank(Strategy::Random, &ms, &[], &[], 0, NOW, None, seed).order[0]] += 1;
        }
        for c in counts {
            assert!((800..1200).contains(&c), "first-choice counts {counts:?}");
        }
    }

    #[test]
    fn skills_filters_and_orders_by_score() {
        let ms = scenario();
        let reqs = [req("english", 5)];
        let r = rank(Strategy::Skills, &ms, &reqs, &[], 0, NOW, None, 7);
        // a4 (english 3) is out; a1 8 (score 3), a2 6 (1), a0 5 (0); then a6, a5.
        assert_eq!(r.order, vec![1, 2, 0, 6, 5]);
        assert_eq!(r.eligible, 5);
        assert_eq!(
            r.reason,
            "skills: a1 score 3 (english 8>=5), idle 50 s, tier 1 penalty 0, 5 eligible"
        );
    }

    #[test]
    fn skills_score_sums_over_requirements() {
        let ms = scenario();
        let reqs = [req("english", 5), req("french", 1)];
        let r = rank(Strategy::Skills, &ms, &reqs, &[], 0, NOW, None, 7);
        // Only a2 has french: score (6-5)+(3-1) = 3.
        assert_eq!(r.order, vec![2]);
        assert!(
            r.reason.contains("score 3 (english 6>=5, french 3>=1)"),
            "{}",
            r.reason
        );
    }

    #[test]
    fn skills_ties_break_by_idle_then_position() {
        let ms = vec![
            member("x", 1, 0, 3, true, 10, 0, 0, &[("english", 6)]),
            member("y", 1, 0, 2, true, 30, 0, 0, &[("english", 6)]),
            member("z", 1, 0, 1, true, 10, 0, 0, &[("english", 6)]),
            member("w", 1, 0, 0, true, 99, 0, 0, &[("english", 5)]),
        ];
        let r = rank(
            Strategy::Skills,
            &ms,
            &[req("english", 5)],
            &[],
            0,
            NOW,
            None,
            7,
        );
        assert_eq!(r.order, vec![1, 2, 0, 3]);
    }

    #[test]
    fn skills_without_requirements_ranks_by_idle() {
        let r = plain(Strategy::Skills, &scenario());
        assert_eq!(r.order, vec![1, 2, 4, 0, 6, 5]);
        assert!(
            r.reason.contains("score 0 (no requirements)"),
            "{}",
            r.reason
        );
    }

    #[test]
    fn requirements_filter_every_strategy() {
        let ms = scenario();
        let reqs = [req("english", 5)];
        let r = rank(Strategy::LongestIdle, &ms, &reqs, &[], 0, NOW, None, 7);
        assert_eq!(r.order, vec![1, 2, 0, 6, 5]);
        for s in [
            Strategy::LongestIdle,
            Strategy::RoundRobin,
            Strategy::RingAll,
            Strategy::FewestCalls,
            Strategy::LeastTalkTime,
            Strategy::TopDown,
            Strategy::Random,
            Strategy::Skills,
        ] {
            let r = rank(s, &ms, &reqs, &[], 0, NOW, None, 7);
            assert_eq!(r.eligible, 5, "{s:?}");
            assert!(!r.order.contains(&4), "{s:?} offered a4 without the skill");
            assert!(!r.order.contains(&3), "{s:?} offered unavailable a3");
            assert!(r.reason.starts_with(s.label()), "{s:?}: {}", r.reason);
        }
    }

    #[test]
    fn tiers_then_penalties_group_every_strategy() {
        // Tier 2 and penalty 1 members are better on every figure and come first in member
        // order; they still come after the tier 1 penalty 0 ones, and tier before penalty.
        let ms = vec![
            member("t2p0", 2, 0, 0, true, 900, 0, 0, &[("english", 10)]),
            member("t1p5", 1, 5, 1, true, 800, 0, 0, &[("english", 10)]),
            member("t1p1", 1, 1, 2, true, 700, 0, 0, &[("english", 10)]),
            member("t1p0", 1, 0, 3, true, 1, 99, 9999, &[("english", 1)]),
            member("t0p9", 0, 9, 4, true, 1, 99, 9999, &[("english", 1)]),
        ];
        for s in [
            Strategy::LongestIdle,
            Strategy::RoundRobin,
            Strategy::RingAll,
            Strategy::FewestCalls,
            Strategy::LeastTalkTime,
            Strategy::TopDown,
            Strategy::Random,
            Strategy::Skills,
        ] {
            let r = rank(s, &ms, &[req("english", 1)], &[], 0, NOW, Some(0), 7);
            assert_eq!(r.order, vec![4, 3, 2, 1, 0], "{s:?}");
            assert!(r.reason.contains("tier 0 penalty 9"), "{s:?}: {}", r.reason);
        }
    }

    #[test]
    fn longest_idle_ties_break_by_position_not_index() {
        let ms = vec![
            member("x", 1, 0, 9, true, 10, 0, 0, &[]),
            member("y", 1, 0, 1, true, 10, 0, 0, &[]),
            member("z", 1, 0, 5, true, 10, 0, 0, &[]),
        ];
        assert_eq!(plain(Strategy::LongestIdle, &ms).order, vec![1, 2, 0]);
    }

    #[test]
    fn required_levels_relax_step_by_step() {
        let reqs = [req("english", 7), req("french", 4)];
        let relax = [
            Relax {
                after_secs: 60,
                by: 3,
            },
            Relax {
                after_secs: 30,
                by: 2,
            },
        ];
        let lv = |ms| required_levels(&reqs, &relax, ms);
        let pair = |e: u8, f: u8| vec![("english".to_string(), e), ("french".to_string(), f)];
        assert_eq!(lv(0), pair(7, 4));
        assert_eq!(lv(29_999), pair(7, 4));
        assert_eq!(lv(30_000), pair(5, 2));
        assert_eq!(lv(59_999), pair(5, 2));
        assert_eq!(lv(60_000), pair(2, 1));
        assert_eq!(lv(3_600_000), pair(2, 1));
        assert!(required_levels(&[], &relax, 60_000).is_empty());
        assert_eq!(required_levels(&reqs, &[], 1 << 40), pair(7, 4));
    }

    #[test]
    fn required_level_never_below_one() {
        let reqs = [req("english", 3), req("odd", 0)];
        let relax: Vec<Relax> = (0..10)
            .map(|i| Relax {
                after_secs: i,
                by: 200,
            })
            .collect();
        let lv = required_levels(&reqs, &relax, 1_000_000);
        assert_eq!(lv, vec![("english".to_string(), 1), ("odd".to_string(), 1)]);
        // after_secs near u64::MAX must not overflow into "already passed".
        let far = [Relax {
            after_secs: u64::MAX,
            by: 5,
        }];
        assert_eq!(required_levels(&reqs, &far, u64::MAX - 1)[0].1, 3);
        // A fully relaxed requirement still excludes agents lacking the skill.
        let ms = vec![
            member("has", 1, 0, 0, true, 1, 0, 0, &[("english", 1)]),
            member("lacks", 1, 0, 1, true, 99, 0, 0, &[("french", 9)]),
        ];
        let r = rank(
            Strategy::LongestIdle,
            &ms,
            &reqs[..1],
            &relax,
            1_000_000,
            NOW,
            None,
            7,
        );
        assert_eq!(r.order, vec![0]);
    }

    #[test]
    fn rank_follows_relaxation() {
        let ms = scenario();
        let reqs = [req("english", 9)];
        let relax = [
            Relax {
                after_secs: 30,
                by: 2,
            },
            Relax {
                after_secs: 60,
                by: 3,
            },
        ];
        let at = |waited| rank(Strategy::TopDown, &ms, &reqs, &relax, waited, NOW, None, 7);
        // >=9: a6, a5 only (a3 has 9 but is unavailable).
        assert_eq!(at(0).order, vec![6, 5]);
        assert_eq!(at(29_000).order, vec![6, 5]);
        // >=7: a1 joins.
        assert_eq!(at(30_000).order, vec![1, 6, 5]);
        // >=4: a0, a2 join; a4 (3) still out.
        assert_eq!(at(60_000).order, vec![1, 0, 2, 6, 5]);
    }

    #[test]
    fn no_eligible_reason_names_the_relaxed_requirement() {
        let ms = scenario();
        let reqs = [req("english", 7), req("german", 2)];
        let relax = [Relax {
            after_secs: 30,
            by: 2,
        }];
        let r = rank(
            Strategy::LongestIdle,
            &ms,
            &reqs,
            &relax,
            30_000,
            NOW,
            None,
            7,
        );
        assert!(r.order.is_empty());
        assert_eq!(r.eligible, 0);
        assert_eq!(
            r.reason,
            "no available agent meets english>=5 (after 30 s relaxed from 7), \
             german>=1 (after 30 s relaxed from 2); 6 of 7 members available"
        );
        let r = rank(
            Strategy::Skills,
            &ms,
            &[req("german", 3)],
            &[],
            0,
            NOW,
            None,
            7,
        );
        assert_eq!(
            r.reason,
            "no available agent meets german>=3; 6 of 7 members available"
        );
    }

    #[test]
    fn no_eligible_reason_when_nobody_is_available() {
        let mut ms = scenario();
        for m in &mut ms {
            m.available = false;
        }
        for s in [Strategy::RingAll, Strategy::Random, Strategy::RoundRobin] {
            let r = rank(s, &ms, &[], &[], 0, NOW, Some(3), 7);
            assert_eq!(r.order, Vec::<usize>::new());
            assert_eq!(r.eligible, 0);
            assert_eq!(r.reason, "no available agent: 0 of 7 members available");
        }
        let r = rank(Strategy::LongestIdle, &[], &[], &[], 0, NOW, None, 7);
        assert_eq!(r.eligible, 0);
        assert_eq!(r.reason, "no agent: the queue has no members");
    }

    #[test]
    fn large_queue_mostly_unavailable() {
        let ms: Vec<Member> = (0..12_000u32)
            .map(|i| {
                let mut m = member(
                    "m",
                    1 + i % 3,
                    0,
                    i,
                    i % 100 == 7,
                    u64::from(i % 1000),
                    0,
                    0,
                    &[],
                );
                m.id = format!("m{i}").into();
                m
            })
            .collect();
        let r = rank(Strategy::LongestIdle, &ms, &[], &[], 0, NOW, None, 7);
        assert_eq!(r.eligible, 120);
        assert!(r.order.iter().all(|&i| ms[i].available));
        // The first is tier 1 (i % 3 == 0) with the longest idle: i % 1000 == 907.
        assert_eq!(ms[r.order[0]].tier, 1);
        assert_eq!(ms[r.order[0]].idle_since_ms, NOW - 907_000);
        assert!(r.order.windows(2).all(|w| ms[w[0]].tier <= ms[w[1]].tier));
    }

    fn caller(id: &str, priority: u32, joined_ms: u64) -> Caller {
        Caller {
            call_id: id.into(),
            priority,
            seq: 999,
            joined_ms,
            from: format!("sip:{id}@example.com"),
            user: None,
            offered: Vec::new(),
            attempts: 0,
        }
    }

    fn ids(w: &Waiting) -> Vec<&str> {
        w.iter().map(|c| &*c.call_id).collect()
    }

    #[test]
    fn a_callers_requirements_add_to_the_queues_at_the_higher_level() {
        let r = |s: &str, l: u8| Requirement {
            skill: s.into(),
            level: l,
        };
        assert_eq!(
            merge_requirements(&[r("en", 3), r("sales", 5)], &[r("sales", 2), r("vip", 7)]),
            vec![r("en", 3), r("sales", 5), r("vip", 7)]
        );
    }

    #[test]
    fn waiting_orders_by_priority_then_arrival() {
        let mut w = Waiting::default();
        assert!(w.is_empty());
        assert_eq!(w.push(caller("a", 0, 100)), 1);
        assert_eq!(w.push(caller("b", 0, 200)), 2);
        assert_eq!(w.push(caller("c", 5, 300)), 1);
        assert_eq!(w.push(caller("d", 5, 400)), 2);
        assert_eq!(w.push(caller("e", 1, 500)), 3);
        assert_eq!(w.push(caller("f", 0, 600)), 6);
        assert_eq!(ids(&w), vec!["c", "d", "e", "a", "b", "f"]);
        assert_eq!(w.len(), 6);
        // seq is assigned by push, in arrival order.
        let seqs: Vec<u64> = ["a", "b", "c", "d", "e", "f"]
            .iter()
            .map(|id| w.get(id).unwrap().seq)
            .collect();
        assert_eq!(seqs, vec![0, 1, 2, 3, 4, 5]);
        assert_eq!(w.position("c"), Some(1));
        assert_eq!(w.position("a"), Some(4));
        assert_eq!(w.position("f"), Some(6));
        assert_eq!(w.position("zz"), None);
    }

    #[test]
    fn waiting_remove_updates_positions() {
        let mut w = Waiting::default();
        for (id, p) in [("a", 0), ("b", 0), ("c", 2), ("d", 0)] {
            w.push(caller(id, p, 0));
        }
        let c = w.remove("a").expect("a waits");
        assert_eq!(&*c.call_id, "a");
        assert_eq!(w.remove("a"), None);
        assert_eq!(w.remove("nobody"), None);
        assert_eq!(ids(&w), vec!["c", "b", "d"]);
        assert_eq!(w.position("b"), Some(2));
        assert_eq!(w.position("d"), Some(3));
        assert_eq!(w.position("a"), None);
        assert_eq!(w.len(), 3);
        // A new arrival after removals still goes behind its priority peers.
        assert_eq!(w.push(caller("e", 0, 0)), 4);
        // And the removed Call-ID can come back (a new call, at the back).
        assert_eq!(w.push(caller("a", 0, 0)), 5);
    }

    #[test]
    fn waiting_repeated_push_keeps_its_place() {
        let mut w = Waiting::default();
        w.push(caller("a", 0, 0));
        w.push(caller("b", 0, 0));
        w.push(caller("c", 0, 0));
        assert_eq!(w.push(caller("a", 0, 0)), 1);
        assert_eq!(w.len(), 3);
        assert_eq!(ids(&w), vec!["a", "b", "c"]);
        // A higher priority moves it up; the stale key is gone.
        assert_eq!(w.push(caller("c", 9, 0)), 1);
        assert_eq!(ids(&w), vec!["c", "a", "b"]);
        assert_eq!(w.len(), 3);
        assert!(w.remove("c").is_some());
        assert_eq!(ids(&w), vec!["a", "b"]);
    }

    #[test]
    fn waiting_next_unoffered_skips_callers_with_offers() {
        let mut w = Waiting::default();
        assert!(w.next_unoffered().is_none());
        w.push(caller("a", 0, 0));
        w.push(caller("b", 0, 0));
        w.push(caller("c", 3, 0));
        assert_eq!(&*w.next_unoffered().unwrap().call_id, "c");
        {
            let c = w.get_mut("c").unwrap();
            c.offered.push("agent1".into());
            c.attempts += 1;
        }
        assert_eq!(w.get("c").unwrap().attempts, 1);
        assert_eq!(&*w.next_unoffered().unwrap().call_id, "a");
        w.get_mut("a").unwrap().offered.push("agent2".into());
        assert_eq!(&*w.next_unoffered().unwrap().call_id, "b");
        w.get_mut("b").unwrap().offered.push("agent3".into());
        assert!(w.next_unoffered().is_none());
        w.get_mut("c").unwrap().offered.clear();
        assert_eq!(&*w.next_unoffered().unwrap().call_id, "c");
        assert!(w.get_mut("nobody").is_none());
    }

    #[test]
    fn waiting_longest_wait_uses_earliest_joiner() {
        let mut w = Waiting::default();
        assert_eq!(w.longest_wait_ms(5_000), 0);
        w.push(caller("late-vip", 9, 4_000));
        w.push(caller("early", 0, 1_000));
        w.push(caller("mid", 0, 2_500));
        // The head is late-vip, but early has waited longest.
        assert_eq!(w.longest_wait_ms(5_000), 4_000);
        w.remove("early");
        assert_eq!(w.longest_wait_ms(5_000), 2_500);
        // A clock behind a join time (restart on another node) does not underflow.
        assert_eq!(w.longest_wait_ms(100), 0);
    }

    #[test]
    fn waiting_clone_is_an_independent_checkpoint() {
        let mut w = Waiting::default();
        w.push(caller("a", 0, 0));
        w.push(caller("b", 0, 0));
        let snap = w.clone();
        w.remove("a");
        w.push(caller("c", 0, 0));
        assert_eq!(ids(&snap), vec!["a", "b"]);
        let mut restored = snap;
        // The restored list continues the arrival sequence where it was.
        restored.push(caller("d", 0, 0));
        assert_eq!(restored.get("d").unwrap().seq, 2);
        assert_eq!(restored.position("b"), Some(2));
    }

    #[test]
    fn strategy_deserializes_from_kebab_case() {
        #[derive(serde::Deserialize)]
        struct T {
            s: Vec<Strategy>,
        }
        let t: T = toml::from_str(
            r#"s = ["longest-idle", "round-robin", "ring-all", "fewest-calls",
                     "least-talk-time", "top-down", "random", "skills"]"#,
        )
        .unwrap();
        for s in &t.s {
            let again: T = toml::from_str(&format!("s = [\"{}\"]", s.label())).unwrap();
            assert_eq!(again.s, vec![*s]);
        }
        assert_eq!(t.s.len(), 8);
        assert!(toml::from_str::<T>(r#"s = ["fastest"]"#).is_err());
    }

    #[test]
    fn rank_top_picks_the_same_first_as_a_full_rank() {
        let members: Vec<Member> = (0..500u32)
            .map(|i| {
                member(
                    &format!("a{i}"),
                    1 + i % 3,
                    i % 2,
                    i,
                    i % 7 != 0,
                    u64::from((i * 37) % 101),
                    u64::from(i % 11),
                    u64::from(i % 13),
                    &[],
                )
            })
            .collect();
        for strategy in [
            Strategy::LongestIdle,
            Strategy::RoundRobin,
            Strategy::FewestCalls,
            Strategy::LeastTalkTime,
            Strategy::TopDown,
            Strategy::Random,
        ] {
            let full = rank(strategy, &members, &[], &[], 0, NOW, Some(100), 7);
            let top = rank_top(strategy, &members, &[], &[], 0, NOW, Some(100), 7, 1);
            assert_eq!(top.order, full.order[..1].to_vec(), "{strategy:?}");
            assert_eq!(top.eligible, full.eligible);
            assert_eq!(top.reason, full.reason);
        }
    }
}
