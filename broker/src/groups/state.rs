//! One consumer group's state on its coordinator, pure: members, their target and owned partitions, the
//! generation, committed offsets. Time comes in as milliseconds; records to persist go out as values. The
//! coordinator (`broker::groups`, the broker's group coordinator) does the I/O.
//!
//! Assignment is incremental: a membership change recomputes each member's *target*; a member is handed a
//! partition of its target only once no other member owns it (reports it in its heartbeats, or was handed
//! it). A member whose target lost a partition keeps owning it until it reports it released (after
//! committing), or until its session expires. So no partition ever has two owners, and partitions that do
//! not have to move never stop.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::assign::{assign, Assignor, Subscriber, Tp};

/// Session timeout when a member names none (ms).
pub const SESSION_TIMEOUT_MS_DEFAULT: u64 = 10_000;
/// Session timeouts accepted (ms).
pub const SESSION_TIMEOUT_MS_MIN: u64 = 1_000;
pub const SESSION_TIMEOUT_MS_MAX: u64 = 300_000;
/// Members per group.
pub const MEMBERS_PER_GROUP_MAX: usize = 1_000;
/// Longest member id a heartbeat may carry (bytes): the coordinator's own ids are about 40.
pub const MEMBER_ID_LEN_MAX: usize = 255;
/// Longest static-membership instance id (bytes; Kafka's `group.instance.id` has the same bound).
pub const INSTANCE_ID_LEN_MAX: usize = 249;
/// Topics one member may subscribe to.
pub const TOPICS_PER_MEMBER_MAX: usize = 1_000;
/// Partitions one member may report owning in a heartbeat.
pub const OWNED_PER_MEMBER_MAX: usize = 10_000;

/// Why a group request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GroupError {
    #[error("member '{0}' is not in the group (its session expired or it left): join again")]
    UnknownMember(String),
    #[error("member '{member}' does not own {topic}-{partition}: commit refused")]
    NotOwner {
        member: String,
        topic: String,
        partition: u32,
    },
    #[error("generation {got} is older than the member's generation {current}: commit refused")]
    StaleGeneration { got: u64, current: u64 },
    #[error("group '{0}' has live members")]
    Live(String),
    #[error(
        "member '{member}' was replaced by a newer consumer with instance id '{instance}': this one is fenced \
         (two live consumers must not share an instance id)"
    )]
    Fenced { member: String, instance: String },
    #[error("{0}")]
    Invalid(String),
}

/// A member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub instance_id: Option<String>,
    pub topics: BTreeSet<String>,
    pub session_ms: u64,
    pub last_seen_ms: u64,
    /// Partitions it consumes (as it reported, plus those handed to it since).
    pub owned: BTreeSet<Tp>,
    /// Partitions the assignor gave it.
    pub target: BTreeSet<Tp>,
    /// Generation at which it joined (its commits must carry at least this).
    pub joined: u64,
    /// The member id a static member had before its instance came back under a new one: requests under
    /// it are fenced, not taken for a member to rejoin.
    pub replaced: Option<String>,
}

/// A member as persisted in a membership record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredMember {
    pub id: String,
    pub instance_id: Option<String>,
    pub topics: Vec<String>,
    pub session_ms: u64,
    pub target: Vec<Tp>,
    /// Target and owned partitions when this was written: what it may still be consuming.
    pub may_own: Vec<Tp>,
    pub joined: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaced: Option<String>,
}

/// What a coordinator writes to the group's partition of `__consumer_offsets` (one JSON record each).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum GroupRecord {
    /// Membership after a change.
    Members {
        group: String,
        generation: u64,
        assignor: Assignor,
        members: Vec<StoredMember>,
    },
    /// Committed offsets (the next offset to consume).
    Commit {
        group: String,
        offsets: Vec<(String, u32, u64)>,
    },
    /// The group and its offsets are gone.
    Delete { group: String },
}

impl GroupRecord {
    pub fn group(&self) -> &str {
        match self {
            GroupRecord::Members { group, .. }
            | GroupRecord::Commit { group, .. }
            | GroupRecord::Delete { group } => group,
        }
    }
}

/// A heartbeat, as the state machine takes it.
#[derive(Debug, Clone, Default)]
pub struct Beat {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub topics: BTreeSet<String>,
    pub session_ms: u64,
    pub owned: BTreeSet<Tp>,
    pub leave: bool,
    pub assignor: Assignor,
}

impl Beat {
    /// Bounds every identifier and list a client sends before any of it is stored or copied into a
    /// membership record (H8 in the durability audit).
    pub fn check(&self) -> Result<(), GroupError> {
        let too_long = |what: &str, len: usize, max: usize| {
            GroupError::Invalid(format!("{what} is {len} bytes; the limit is {max}"))
        };
        if self.member_id.len() > MEMBER_ID_LEN_MAX {
            return Err(too_long(
                "member id",
                self.member_id.len(),
                MEMBER_ID_LEN_MAX,
            ));
        }
        if let Some(i) = self
            .instance_id
            .as_ref()
            .filter(|i| i.len() > INSTANCE_ID_LEN_MAX)
        {
            return Err(too_long("instance id", i.len(), INSTANCE_ID_LEN_MAX));
        }
        if self.topics.len() > TOPICS_PER_MEMBER_MAX {
            return Err(GroupError::Invalid(format!(
                "{} topics; the limit is {TOPICS_PER_MEMBER_MAX} per member",
                self.topics.len()
            )));
        }
        if self.owned.len() > OWNED_PER_MEMBER_MAX {
            return Err(GroupError::Invalid(format!(
                "{} owned partitions; the limit is {OWNED_PER_MEMBER_MAX} per member",
                self.owned.len()
            )));
        }
        for t in self.topics.iter().chain(self.owned.iter().map(|(t, _)| t)) {
            ferry_protocol::topic::validate_topic_name(t)
                .map_err(|e| GroupError::Invalid(e.to_string()))?;
        }
        Ok(())
    }
}

/// The answer to a heartbeat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub member_id: String,
    pub generation: u64,
    pub assignment: BTreeSet<Tp>,
    /// Committed offsets of the assigned partitions that have one.
    pub committed: Vec<(Tp, u64)>,
}

/// One group.
#[derive(Debug, Clone, Default)]
pub struct Group {
    pub name: String,
    pub generation: u64,
    pub assignor: Assignor,
    pub members: BTreeMap<String, Member>,
    pub committed: BTreeMap<Tp, u64>,
}

impl Group {
    pub fn new(name: &str) -> Self {
        Group {
            name: name.to_owned(),
            ..Group::default()
        }
    }

    /// Applies a persisted record (replaying the log when a coordinator takes over). Members come back with
    /// a fresh session, owning what they may have owned.
    pub fn replay(&mut self, r: &GroupRecord, now_ms: u64) {
        match r {
            GroupRecord::Members {
                generation,
                assignor,
                members,
                ..
            } => {
                self.generation = *generation;
                self.assignor = *assignor;
                self.members = members
                    .iter()
                    .map(|m| {
                        let member = Member {
                            instance_id: m.instance_id.clone(),
                            topics: m.topics.iter().cloned().collect(),
                            session_ms: m.session_ms,
                            last_seen_ms: now_ms,
                            owned: m.may_own.iter().cloned().collect(),
                            target: m.target.iter().cloned().collect(),
                            joined: m.joined,
                            replaced: m.replaced.clone(),
                        };
                        (m.id.clone(), member)
                    })
                    .collect();
            }
            GroupRecord::Commit { offsets, .. } => {
                for (t, p, o) in offsets {
                    self.committed.insert((t.clone(), *p), *o);
                }
            }
            GroupRecord::Delete { .. } => {
                let name = std::mem::take(&mut self.name);
                *self = Group::new(&name);
            }
        }
    }

    /// The membership record to persist after a change.
    pub fn members_record(&self) -> GroupRecord {
        GroupRecord::Members {
            group: self.name.clone(),
            generation: self.generation,
            assignor: self.assignor,
            members: self
                .members
                .iter()
                .map(|(id, m)| StoredMember {
                    id: id.clone(),
                    instance_id: m.instance_id.clone(),
                    topics: m.topics.iter().cloned().collect(),
                    session_ms: m.session_ms,
                    target: m.target.iter().cloned().collect(),
                    may_own: m.target.union(&m.owned).cloned().collect(),
                    joined: m.joined,
                    replaced: m.replaced.clone(),
                })
                .collect(),
        }
    }

    /// Removes members whose session expired; true if membership changed (targets are recomputed).
    pub fn expire(&mut self, now_ms: u64, partitions: &BTreeMap<String, u32>) -> bool {
        let before = self.members.len();
        self.members
            .retain(|_, m| now_ms.saturating_sub(m.last_seen_ms) <= m.session_ms);
        let changed = self.members.len() != before;
        if changed {
            self.rebalance(partitions);
        }
        changed
    }

    /// Handles a heartbeat. Returns the answer and whether membership changed (persist
    /// [`Group::members_record`] before answering then).
    pub fn heartbeat(
        &mut self,
        beat: Beat,
        now_ms: u64,
        partitions: &BTreeMap<String, u32>,
    ) -> Result<(Answer, bool), GroupError> {
        beat.check()?;
        let session_ms = session_of(&beat)?;
        if beat.leave {
            return Ok(self.leave(beat.member_id, partitions));
        }
        let (id, mut changed, renamed) = self.admit(&beat, session_ms, now_ms)?;
        {
            let m = self.members.get_mut(&id).expect("member present");
            m.last_seen_ms = now_ms;
            m.session_ms = session_ms;
            // A member releases what it no longer reports, but cannot claim what it was never handed: what
            // it owns is what the coordinator gave it, as far as it still reports it (M4 in the audit).
            m.owned.retain(|tp| beat.owned.contains(tp));
            if m.topics != beat.topics && !beat.topics.is_empty() {
                m.topics = beat.topics.clone();
                changed = true;
            }
        }
        if changed {
            self.generation += u64::from(!beat.member_id.is_empty());
            self.rebalance(partitions);
        }
        // A static member's new id is persisted too, though nothing is rebalanced.
        Ok((self.hand_out(id), changed || renamed))
    }

    /// A member leaves: the others are rebalanced at once rather than after its session runs out.
    fn leave(&mut self, member_id: String, partitions: &BTreeMap<String, u32>) -> (Answer, bool) {
        let changed = self.members.remove(&member_id).is_some();
        if changed {
            self.rebalance(partitions);
        }
        let answer = Answer {
            member_id,
            generation: self.generation,
            assignment: BTreeSet::new(),
            committed: Vec::new(),
        };
        (answer, changed)
    }

    /// The member a heartbeat is from: a known one, a static member coming back, or a new member (a new
    /// generation); also whether the membership changed (a rebalance), and whether a member was renamed.
    fn admit(
        &mut self,
        beat: &Beat,
        session_ms: u64,
        now_ms: u64,
    ) -> Result<(String, bool, bool), GroupError> {
        if !beat.member_id.is_empty() {
            if self.members.contains_key(&beat.member_id) {
                return Ok((beat.member_id.clone(), false, false));
            }
            self.check_not_fenced(&beat.member_id)?;
            return Err(GroupError::UnknownMember(beat.member_id.clone()));
        }
        let returning = beat.instance_id.as_ref().and_then(|i| {
            self.members
                .iter()
                .find(|(_, m)| m.instance_id.as_ref() == Some(i))
                .map(|(id, _)| id.clone())
        });
        // A static member back within its session: same partitions, same generation, nobody disturbed; but
        // a new member id, so the process it replaces (if that is still running) is fenced rather than
        // committing beside it.
        if let Some(old) = returning {
            let mut m = self.members.remove(&old).expect("found above");
            let instance = m.instance_id.clone().unwrap_or_default();
            let nonce: u64 = rand::random();
            let id = format!("{instance}-{}-{nonce:016x}", m.joined);
            m.replaced = Some(old);
            self.members.insert(id.clone(), m);
            return Ok((id, false, true));
        }
        if self.members.len() >= MEMBERS_PER_GROUP_MAX {
            return Err(GroupError::Invalid(format!(
                "group '{}' has {MEMBERS_PER_GROUP_MAX} members, the limit",
                self.name
            )));
        }
        self.generation += 1;
        // Unpredictable and never reused, even after the group is deleted and its generation starts over: a
        // zombie from an earlier membership can never pass as a new member.
        let nonce: u64 = rand::random();
        let id = match &beat.instance_id {
            Some(i) => format!("{i}-{}-{nonce:016x}", self.generation),
            None => format!("member-{}-{nonce:016x}", self.generation),
        };
        self.members.insert(
            id.clone(),
            Member {
                instance_id: beat.instance_id.clone(),
                topics: beat.topics.clone(),
                session_ms,
                last_seen_ms: now_ms,
                owned: BTreeSet::new(),
                target: BTreeSet::new(),
                joined: self.generation,
                replaced: None,
            },
        );
        if self.members.len() == 1 {
            self.assignor = beat.assignor;
        }
        Ok((id, true, false))
    }

    /// Hands member `id` each partition of its target that no other member owns (it keeps what it owns of
    /// its target), with the committed offsets of what it is handed.
    fn hand_out(&mut self, id: String) -> Answer {
        let target = self.members[&id].target.clone();
        let assignment: BTreeSet<Tp> = target
            .into_iter()
            .filter(|tp| {
                self.members
                    .iter()
                    .all(|(other, m)| *other == id || !m.owned.contains(tp))
            })
            .collect();
        let m = self.members.get_mut(&id).expect("member present");
        m.owned.extend(assignment.iter().cloned());
        let committed = assignment
            .iter()
            .filter_map(|tp| self.committed.get(tp).map(|o| (tp.clone(), *o)))
            .collect();
        Answer {
            member_id: id,
            generation: self.generation,
            assignment,
            committed,
        }
    }

    /// Recomputes every member's target.
    fn rebalance(&mut self, partitions: &BTreeMap<String, u32>) {
        let subs: BTreeMap<String, Subscriber> = self
            .members
            .iter()
            .map(|(id, m)| {
                let s = Subscriber {
                    topics: m.topics.clone(),
                    current: m.target.clone(),
                };
                (id.clone(), s)
            })
            .collect();
        let wanted: BTreeMap<String, u32> = partitions
            .iter()
            .filter(|(t, _)| self.members.values().any(|m| m.topics.contains(*t)))
            .map(|(t, n)| (t.clone(), *n))
            .collect();
        let targets = assign(self.assignor, &wanted, &subs);
        for (id, t) in targets {
            if let Some(m) = self.members.get_mut(&id) {
                m.target = t;
            }
        }
    }

    /// Checks a commit of `tps` by `member_id` at `generation`. An empty member id is an admin's reset,
    /// allowed only while the group has no members.
    pub fn check_commit(
        &self,
        member_id: &str,
        generation: u64,
        tps: &[Tp],
    ) -> Result<(), GroupError> {
        if member_id.is_empty() {
            if !self.members.is_empty() {
                return Err(GroupError::Live(self.name.clone()));
            }
            return Ok(());
        }
        let Some(m) = self.members.get(member_id) else {
            self.check_not_fenced(member_id)?;
            return Err(GroupError::UnknownMember(member_id.to_owned()));
        };
        if generation < m.joined {
            return Err(GroupError::StaleGeneration {
                got: generation,
                current: m.joined,
            });
        }
        if generation > self.generation {
            return Err(GroupError::Invalid(format!(
                "generation {generation} is past the group's generation {}: commit refused",
                self.generation
            )));
        }
        for tp in tps {
            if !m.owned.contains(tp) {
                return Err(GroupError::NotOwner {
                    member: member_id.to_owned(),
                    topic: tp.0.clone(),
                    partition: tp.1,
                });
            }
        }
        Ok(())
    }

    /// Refuses `member_id` if a static member that came back replaced it.
    fn check_not_fenced(&self, member_id: &str) -> Result<(), GroupError> {
        match self
            .members
            .values()
            .find(|m| m.replaced.as_deref() == Some(member_id))
        {
            Some(m) => Err(GroupError::Fenced {
                member: member_id.to_owned(),
                instance: m.instance_id.clone().unwrap_or_default(),
            }),
            None => Ok(()),
        }
    }

    /// Whether a partition waits for its old owner to release it.
    pub fn rebalancing(&self) -> bool {
        self.members.iter().any(|(id, m)| {
            m.target.iter().any(|tp| {
                self.members
                    .iter()
                    .any(|(o, om)| o != id && om.owned.contains(tp))
            })
        })
    }
}

/// The session timeout a heartbeat asks for (the default when it names none), within the allowed range.
fn session_of(beat: &Beat) -> Result<u64, GroupError> {
    match beat.session_ms {
        0 => Ok(SESSION_TIMEOUT_MS_DEFAULT),
        s if (SESSION_TIMEOUT_MS_MIN..=SESSION_TIMEOUT_MS_MAX).contains(&s) => Ok(s),
        s => Err(GroupError::Invalid(format!(
            "session timeout {s} ms is outside {SESSION_TIMEOUT_MS_MIN}..={SESSION_TIMEOUT_MS_MAX}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts() -> BTreeMap<String, u32> {
        [("t".to_owned(), 6)].into()
    }

    fn beat(id: &str, owned: &BTreeSet<Tp>) -> Beat {
        Beat {
            member_id: id.to_owned(),
            topics: ["t".to_owned()].into(),
            owned: owned.clone(),
            ..Beat::default()
        }
    }

    /// Heartbeats every member until nothing changes; returns each member's owned set.
    fn settle(g: &mut Group, ids: &[String], now: u64) -> BTreeMap<String, BTreeSet<Tp>> {
        let mut owned: BTreeMap<String, BTreeSet<Tp>> = BTreeMap::new();
        for _ in 0..6 {
            for id in ids {
                let mine = owned.get(id).cloned().unwrap_or_default();
                let (a, _) = g.heartbeat(beat(id, &mine), now, &parts()).unwrap();
                // The member adopts the answer: keeps what is assigned, releases the rest.
                owned.insert(id.clone(), a.assignment);
                // No partition is ever owned twice.
                let all: Vec<&Tp> = owned.values().flatten().collect();
                let uniq: BTreeSet<&Tp> = all.iter().copied().collect();
                assert_eq!(all.len(), uniq.len(), "a partition with two owners");
            }
        }
        owned
    }

    /// M4 in the durability audit: the coordinator adopted whatever a member reported owning, so a member
    /// could claim another's partition and commit for it; member ids were predictable and came back after
    /// a group was deleted.
    #[test]
    fn a_member_cannot_claim_what_it_was_not_handed() {
        let mut g = Group::new("g");
        let (a, _) = g
            .heartbeat(beat("", &BTreeSet::new()), 0, &parts())
            .unwrap();
        let (b, _) = g
            .heartbeat(beat("", &BTreeSet::new()), 1, &parts())
            .unwrap();
        let stolen: Tp = ("t".into(), 0);
        assert!(a.assignment.contains(&stolen));
        let claim: BTreeSet<Tp> = [stolen.clone()].into();
        let (answer, _) = g
            .heartbeat(beat(&b.member_id, &claim), 2, &parts())
            .unwrap();
        assert!(!answer.assignment.contains(&stolen));
        assert!(!g.members[&b.member_id].owned.contains(&stolen));
        assert!(matches!(
            g.check_commit(&b.member_id, b.generation, std::slice::from_ref(&stolen)),
            Err(GroupError::NotOwner { .. })
        ));
        assert!(g
            .check_commit(&a.member_id, a.generation, &[stolen])
            .is_ok());
        assert!(
            g.check_commit(&a.member_id, g.generation + 1, &[]).is_err(),
            "a generation from the future"
        );
        // Ids are not reused: the same join after a delete gets a different id.
        g.replay(&GroupRecord::Delete { group: "g".into() }, 3);
        let (again, _) = g
            .heartbeat(beat("", &BTreeSet::new()), 4, &parts())
            .unwrap();
        assert_ne!(again.member_id, a.member_id);
        assert!(matches!(
            g.check_commit(&a.member_id, a.generation, &[]),
            Err(GroupError::UnknownMember(_))
        ));
    }

    #[test]
    fn oversized_identifiers_are_refused_before_anything_is_stored() {
        let mut g = Group::new("g");
        let mut b = beat("", &BTreeSet::new());
        b.instance_id = Some("x".repeat(INSTANCE_ID_LEN_MAX + 1));
        assert!(matches!(
            g.heartbeat(b, 0, &parts()),
            Err(GroupError::Invalid(_))
        ));
        let mut b = beat(&"m".repeat(MEMBER_ID_LEN_MAX + 1), &BTreeSet::new());
        b.topics = ["t".to_owned()].into();
        assert!(matches!(
            g.heartbeat(b, 0, &parts()),
            Err(GroupError::Invalid(_))
        ));
        let owned: BTreeSet<Tp> = (0..=OWNED_PER_MEMBER_MAX as u32)
            .map(|p| ("t".to_owned(), p))
            .collect();
        assert!(matches!(
            g.heartbeat(beat("", &owned), 0, &parts()),
            Err(GroupError::Invalid(_))
        ));
        let mut b = beat("", &BTreeSet::new());
        b.topics = ["../x".to_owned()].into();
        assert!(matches!(
            g.heartbeat(b, 0, &parts()),
            Err(GroupError::Invalid(_))
        ));
        assert!(g.members.is_empty());
    }

    #[test]
    fn members_split_partitions_without_ever_sharing_one() {
        let mut g = Group::new("g");
        let (a, changed) = g
            .heartbeat(beat("", &BTreeSet::new()), 0, &parts())
            .unwrap();
        assert!(changed);
        assert_eq!(a.assignment.len(), 6);
        let first = a.member_id.clone();
        let (b, _) = g
            .heartbeat(beat("", &BTreeSet::new()), 1, &parts())
            .unwrap();
        assert!(
            b.assignment.is_empty(),
            "nothing is free until the first member releases"
        );
        let ids = vec![first.clone(), b.member_id.clone()];
        let owned = settle(&mut g, &ids, 2);
        assert_eq!((owned[&ids[0]].len(), owned[&ids[1]].len()), (3, 3));
        assert!(!g.rebalancing());
        // The second member's session expires: the first gets everything back.
        g.heartbeat(beat(&ids[0], &owned[&ids[0]]), 11_000, &parts())
            .unwrap();
        assert!(g.expire(11_000, &parts()));
        let (a, _) = g
            .heartbeat(beat(&ids[0], &owned[&ids[0]]), 11_001, &parts())
            .unwrap();
        assert_eq!(a.assignment.len(), 6);
        assert!(matches!(
            g.heartbeat(beat(&ids[1], &BTreeSet::new()), 11_002, &parts()),
            Err(GroupError::UnknownMember(_))
        ));
    }

    #[test]
    fn a_static_member_comes_back_to_its_partitions() {
        let mut g = Group::new("g");
        let join = |instance: &str, g: &mut Group| {
            let mut b = beat("", &BTreeSet::new());
            b.instance_id = Some(instance.to_owned());
            g.heartbeat(b, 0, &parts()).unwrap().0.member_id
        };
        let a = join("pod-a", &mut g);
        let b = join("pod-b", &mut g);
        let owned = settle(&mut g, &[a.clone(), b.clone()], 1);
        let generation = g.generation;
        // pod-b restarts: it rejoins with no member id and owns nothing yet.
        let mut back = beat("", &BTreeSet::new());
        back.instance_id = Some("pod-b".into());
        let (ans, persist) = g.heartbeat(back, 2, &parts()).unwrap();
        assert!(persist, "its new member id is persisted");
        assert_eq!(ans.assignment, owned[&b], "same partitions back");
        assert_eq!(g.generation, generation, "nobody else is disturbed");
        assert_eq!(g.members[&a].target, owned[&a]);
        // Under a new member id: the process it replaced, if still running, is fenced, in heartbeats and
        // commits, also after a coordinator takes the group over from its log.
        let new = ans.member_id;
        assert_ne!(new, b);
        let tp = owned[&b].iter().next().unwrap().clone();
        let fenced = |g: &mut Group| {
            assert!(matches!(
                g.heartbeat(beat(&b, &owned[&b]), 3, &parts()),
                Err(GroupError::Fenced { .. })
            ));
            assert!(matches!(
                g.check_commit(&b, generation, std::slice::from_ref(&tp)),
                Err(GroupError::Fenced { .. })
            ));
        };
        fenced(&mut g);
        assert_eq!(
            g.check_commit(&new, generation, std::slice::from_ref(&tp)),
            Ok(())
        );
        let mut taken_over = Group::new("g");
        taken_over.replay(&g.members_record(), 4);
        fenced(&mut taken_over);
        assert_eq!(taken_over.members[&new].target, owned[&b]);
    }

    #[test]
    fn commits_are_fenced() {
        let mut g = Group::new("g");
        let (a, _) = g
            .heartbeat(beat("", &BTreeSet::new()), 0, &parts())
            .unwrap();
        let tp = ("t".to_owned(), 0);
        assert_eq!(
            g.check_commit(&a.member_id, a.generation, std::slice::from_ref(&tp)),
            Ok(())
        );
        assert!(matches!(
            g.check_commit("ghost", 9, std::slice::from_ref(&tp)),
            Err(GroupError::UnknownMember(_))
        ));
        assert!(matches!(
            g.check_commit(&a.member_id, 0, std::slice::from_ref(&tp)),
            Err(GroupError::StaleGeneration { .. })
        ));
        assert!(matches!(
            g.check_commit("", 0, std::slice::from_ref(&tp)),
            Err(GroupError::Live(_))
        ));
        let (_, changed) = g
            .heartbeat(
                Beat {
                    leave: true,
                    ..beat(&a.member_id, &BTreeSet::new())
                },
                1,
                &parts(),
            )
            .unwrap();
        assert!(changed);
        assert_eq!(
            g.check_commit("", 0, &[tp]),
            Ok(()),
            "admin reset of an empty group"
        );
    }

    #[test]
    fn replay_restores_members_and_offsets() {
        let mut g = Group::new("g");
        let (a, _) = g
            .heartbeat(beat("", &BTreeSet::new()), 0, &parts())
            .unwrap();
        let members = g.members_record();
        let mut h = Group::new("g");
        h.replay(&members, 100);
        h.replay(
            &GroupRecord::Commit {
                group: "g".into(),
                offsets: vec![("t".into(), 1, 42)],
            },
            100,
        );
        assert_eq!(h.generation, g.generation);
        assert_eq!(
            h.members[&a.member_id].owned.len(),
            6,
            "may still own its partitions"
        );
        assert_eq!(h.committed[&("t".to_owned(), 1)], 42);
        h.replay(&GroupRecord::Delete { group: "g".into() }, 100);
        assert!(h.members.is_empty() && h.committed.is_empty());
    }
}
