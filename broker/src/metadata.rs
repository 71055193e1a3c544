//! Cluster metadata: topics, their settings and replica sets. It is the state machine of the controller Raft
//! group (group 0), whose log is an internal partition: each command is one JSON record in a batch, applied
//! in log order on every broker, so every broker derives the same metadata.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use ferry_protocol::batch::{self, BatchBuilder, Records};
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};

use crate::acl::{AclBinding, AclFilter, Acls};
use crate::replica::Apply;

/// Raft group id of the controller.
pub const CONTROLLER_GROUP: u64 = 0;
/// Bits of a partition group id that hold the partition number (the rest is the topic id).
const PARTITION_BITS: u32 = 16;

/// Per-topic settings; 0 means the broker default, [`TopicSettings::FOREVER`] (in the retention fields)
/// keeps data whatever the default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicSettings {
    pub retention_bytes: u64,
    pub retention_ms: u64,
    pub segment_bytes: u64,
    pub segment_ms: u64,
}

/// Smallest segment a topic may ask for (bytes): each segment holds a file descriptor and two index maps
/// for as long as it is kept, so tiny segments are a way to exhaust a broker (H7 in the durability audit).
pub const SEGMENT_BYTES_MIN: u64 = 64 * 1024;
/// Largest segment (bytes): positions inside a segment are 32-bit.
pub const SEGMENT_BYTES_MAX: u64 = 1 << 30;
/// Shortest roll interval a topic may ask for (ms): a roll per batch is the same exhaustion as tiny segments.
pub const SEGMENT_MS_MIN: u64 = 1_000;

impl TopicSettings {
    /// Retention "forever": never delete by this measure.
    pub const FOREVER: u64 = u64::MAX;

    /// Checks the settings a client asked for (0 is always the broker default).
    pub fn validate(&self) -> Result<(), String> {
        if self.segment_bytes != 0
            && !(SEGMENT_BYTES_MIN..=SEGMENT_BYTES_MAX).contains(&self.segment_bytes)
        {
            return Err(format!(
                "segment_bytes {} is outside {SEGMENT_BYTES_MIN}..={SEGMENT_BYTES_MAX} (0: the broker default)",
                self.segment_bytes
            ));
        }
        if self.segment_ms != 0 && self.segment_ms < SEGMENT_MS_MIN {
            return Err(format!(
                "segment_ms {} is below {SEGMENT_MS_MIN} (0: the broker default)",
                self.segment_ms
            ));
        }
        Ok(())
    }
}

/// One topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicMeta {
    pub id: u64,
    pub name: String,
    pub partitions: u32,
    /// Broker ids of each partition's replicas: the assignment the partition is moving to (or has). The
    /// first is the preferred leader.
    pub replica_sets: Vec<Vec<u64>>,
    pub settings: TopicSettings,
    /// Each partition's replicas at creation: the configuration a brand-new replica starts from (it then
    /// replays the group's configuration changes from the log, exactly as the first replicas did).
    #[serde(default)]
    pub initial_replica_sets: Vec<Vec<u64>>,
    /// Each partition's voters as its leader last reported them matching `replica_sets`. A broker keeps its
    /// replica while it is in either set: a replica being moved away serves until the move is finished.
    #[serde(default)]
    pub settled: Vec<Vec<u64>>,
}

impl TopicMeta {
    /// Raft group id of partition `p`.
    pub fn group_id(&self, p: u32) -> u64 {
        (self.id << PARTITION_BITS) | u64::from(p)
    }

    /// Whether broker `id` should run a replica of partition `p` (in its assignment or its settled voters).
    pub fn hosts(&self, p: u32, id: u64) -> bool {
        let p = p as usize;
        self.replica_sets.get(p).is_some_and(|s| s.contains(&id))
            || self.settled.get(p).is_some_and(|s| s.contains(&id))
    }

    /// Whether partition `p` is being moved (its voters do not match its assignment yet).
    pub fn moving(&self, p: u32) -> bool {
        let p = p as usize;
        match (self.replica_sets.get(p), self.settled.get(p)) {
            (Some(a), Some(b)) => !same_set(a, b),
            _ => false,
        }
    }

    /// Directory name of the topic under the data dir (the id keeps a re-created topic apart from remains
    /// of a deleted one).
    pub fn dir_name(&self) -> String {
        format!("{:08}-{}", self.id, self.name)
    }
}

/// A metadata command, as stored in the controller log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    CreateTopic {
        name: String,
        partitions: u32,
        replica_sets: Vec<Vec<u64>>,
        settings: TopicSettings,
    },
    DeleteTopic {
        name: String,
    },
    /// A broker announces (or changes) the address clients reach it at, and the incarnation of its data dir
    /// (0 from brokers older than identities: docs/operations.md, "Identity").
    RegisterBroker {
        id: u64,
        client_address: String,
        #[serde(default, skip_serializing_if = "is_zero")]
        incarnation: u64,
        /// Its named listeners' advertised addresses, by listener name (none from older brokers).
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        listeners: BTreeMap<String, String>,
    },
    /// The cluster's id, minted once by the first broker that finds none; a later one is ignored.
    ClusterId {
        id: String,
    },
    /// Changes nothing: the controller leader commits one to be sure it still leads before answering a
    /// read (a starting broker asking whether the cluster knows it).
    Barrier {},
    /// An operator adds a broker, reachable by peers at `peer_address`; it joins the controller and
    /// partitions move to it.
    AddBroker {
        id: u64,
        peer_address: String,
    },
    /// An operator removes a broker: it leaves once its replicas have moved to others.
    RemoveBroker {
        id: u64,
    },
    /// A removed broker has no replica left and is out of the controller: forget it.
    ForgetBroker {
        id: u64,
    },
    /// Move a partition to a new replica set (the controller's rebalancing).
    MoveReplicas {
        topic: String,
        partition: u32,
        replicas: Vec<u64>,
    },
    /// Allocates an idempotent producer id: the offset of this record in the controller log (the format of
    /// earlier versions; new brokers allocate blocks).
    AllocateProducerId {},
    /// Allocates a block of `count` producer ids: `offset × PRODUCER_ID_BLOCK + k` for `k < count`, where
    /// `offset` is this record's offset in the controller log.
    AllocateProducerIds {
        count: u32,
    },
    /// A partition's leader reports that its voters are `voters` (matching its assignment).
    SettleReplicas {
        topic: String,
        partition: u32,
        voters: Vec<u64>,
    },
    /// An operator allows or denies a principal an operation on resources (acl.rs).
    CreateAcl {
        binding: AclBinding,
    },
    /// An operator removes the ACLs `filter` names.
    DeleteAcls {
        filter: AclFilter,
    },
}

impl Command {
    /// Checks a command against the metadata it would apply to: every name a valid (path-safe) topic name,
    /// every count in range, every replica set as long as the partitions and made of distinct members. A
    /// command that fails is never applied (the controller log may hold one forwarded by a bad peer: M8 in
    /// the durability audit).
    pub fn check(&self, m: &Metadata) -> Result<(), String> {
        let name_ok = |n: &str| {
            ferry_protocol::topic::validate_topic_name(n).map_err(|e| format!("{e}: '{n}'"))
        };
        let set_ok = |s: &[u64]| {
            let mut u = s.to_vec();
            u.sort_unstable();
            u.dedup();
            if s.is_empty() || u.len() != s.len() || s.len() > REPLICATION_FACTOR_MAX {
                return Err(format!(
                    "replica set {s:?} is empty, repeats a broker or is too large"
                ));
            }
            if !m.members.is_empty() && s.iter().any(|id| !m.members.contains_key(id)) {
                return Err(format!(
                    "replica set {s:?} names a broker that is not a member"
                ));
            }
            Ok(())
        };
        let addr_ok = |a: &str| {
            let ok = a.len() <= ADDRESS_LEN_MAX
                && a.rsplit_once(':')
                    .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
            if ok {
                Ok(())
            } else {
                Err(format!("'{a}' is not HOST:PORT"))
            }
        };
        match self {
            Command::CreateTopic {
                name,
                partitions,
                replica_sets,
                settings,
            } => {
                name_ok(name)?;
                let max = ferry_protocol::limits::TOPIC_PARTITIONS_MAX;
                if *partitions == 0 || *partitions > max {
                    return Err(format!(
                        "a topic needs 1 to {max} partitions, not {partitions}"
                    ));
                }
                if replica_sets.len() != *partitions as usize {
                    return Err(format!(
                        "{} replica sets for {partitions} partitions",
                        replica_sets.len()
                    ));
                }
                replica_sets.iter().try_for_each(|s| set_ok(s))?;
                settings.validate()
            }
            Command::DeleteTopic { name } => name_ok(name),
            Command::RegisterBroker {
                id,
                client_address,
                listeners,
                ..
            } => {
                if *id == 0 {
                    return Err("broker ids start at 1".into());
                }
                addr_ok(client_address)?;
                if listeners.len() > LISTENERS_MAX {
                    return Err(format!("more than {LISTENERS_MAX} named listeners"));
                }
                for (name, address) in listeners {
                    if name.is_empty() || name.len() > LISTENER_NAME_LEN_MAX {
                        return Err(format!("listener name '{name}' is empty or too long"));
                    }
                    addr_ok(address)?;
                }
                Ok(())
            }
            Command::AddBroker { id, peer_address } => {
                if *id == 0 {
                    return Err("broker ids start at 1".into());
                }
                addr_ok(peer_address)
            }
            Command::RemoveBroker { .. } | Command::ForgetBroker { .. } | Command::Barrier {} => {
                Ok(())
            }
            Command::ClusterId { id } => crate::identity::check_cluster_id(id),
            Command::MoveReplicas {
                topic, replicas, ..
            }
            | Command::SettleReplicas {
                topic,
                voters: replicas,
                ..
            } => {
                name_ok(topic)?;
                set_ok(replicas)
            }
            Command::AllocateProducerId {} => Ok(()),
            Command::CreateAcl { binding } => {
                binding.check()?;
                if m.acls.len() >= crate::acl::ACLS_MAX {
                    return Err(format!(
                        "the cluster holds {} ACLs already",
                        crate::acl::ACLS_MAX
                    ));
                }
                Ok(())
            }
            Command::DeleteAcls { .. } => Ok(()),
            Command::AllocateProducerIds { count } => {
                if *count == 0 || *count > PRODUCER_ID_BLOCK {
                    return Err(format!(
                        "a producer id block holds 1 to {PRODUCER_ID_BLOCK} ids"
                    ));
                }
                Ok(())
            }
        }
    }
}

/// Most replicas of one partition.
pub const REPLICATION_FACTOR_MAX: usize = 7;
/// Most named client listeners one broker registers, besides its main one (the settings' bound too).
pub const LISTENERS_MAX: usize = 8;
/// Longest listener name (bytes).
pub const LISTENER_NAME_LEN_MAX: usize = 32;
/// Longest broker address in the metadata (bytes).
pub const ADDRESS_LEN_MAX: usize = 255;
/// Producer ids one allocation record hands out: id = record offset × this + k (M9 in the audit: one
/// controller record per thousand `InitProducer` calls, not per call).
pub const PRODUCER_ID_BLOCK: u32 = 1024;

/// Whether two id lists hold the same ids, order aside.
pub fn same_set(a: &[u64], b: &[u64]) -> bool {
    a.len() == b.len() && a.iter().all(|x| b.contains(x))
}

/// A member of the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// host:port of its peer listener.
    pub peer_address: String,
    /// Being removed: no new replicas; its replicas move away.
    pub leaving: bool,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Command {
    /// The command as a one-record batch stamped `now_ms`.
    pub fn to_batch(&self, now_ms: i64) -> Bytes {
        json_record_batch(None, self, now_ms)
    }
}

/// A one-record batch whose value is `value` as JSON, stamped `now` (ms): how the broker writes its own
/// records (controller commands, consumer-group records).
pub fn json_record_batch(key: Option<&[u8]>, value: &impl Serialize, now: i64) -> Bytes {
    let json = serde_json::to_vec(value).expect("broker records serialize");
    let mut b = BatchBuilder::new(now);
    b.push(now, key, &json, &[]);
    b.finish()
}

/// The metadata every broker derives from the controller log.
#[derive(Debug, Default, Clone)]
pub struct Metadata {
    pub topics: BTreeMap<String, TopicMeta>,
    /// Client addresses (the main listener's) of the brokers that registered, by id.
    pub brokers: BTreeMap<u64, String>,
    /// Named listeners' client addresses of the brokers that registered, by id, then listener name.
    pub listeners: BTreeMap<u64, BTreeMap<String, String>>,
    /// The incarnation (data dir identity) each broker registered with, by id; brokers older than
    /// identities registered none.
    pub incarnations: BTreeMap<u64, u64>,
    /// The cluster's id, once minted (`Command::ClusterId`).
    pub cluster_id: Option<String>,
    /// The cluster's brokers by id: the initial voters (`--peers`) plus those added, minus those forgotten.
    pub members: BTreeMap<u64, Member>,
    pub next_topic_id: u64,
    /// Who may do what (acl.rs): enforced when the broker runs with `authorization`.
    pub acls: Acls,
    /// Raft index of the last applied command.
    pub applied_index: u64,
}

impl Metadata {
    /// Metadata before the first command: the initial voters (`--peers`, every broker is given the same).
    pub fn new(initial_peers: &BTreeMap<u64, String>) -> Self {
        let members = initial_peers
            .iter()
            .map(|(id, a)| {
                let m = Member {
                    peer_address: a.clone(),
                    leaving: false,
                };
                (*id, m)
            })
            .collect();
        Metadata {
            members,
            ..Metadata::default()
        }
    }

    /// Brokers that take new replicas, by id.
    pub fn active_members(&self) -> Vec<u64> {
        self.members
            .iter()
            .filter(|(_, m)| !m.leaving)
            .map(|(id, _)| *id)
            .collect()
    }

    /// Partitions (of any topic) with a replica on broker `id`, counting those being moved away.
    pub fn replicas_on(&self, id: u64) -> usize {
        self.topics
            .values()
            .map(|t| (0..t.partitions).filter(|p| t.hosts(*p, id)).count())
            .sum()
    }

    /// Applies one command. Commands that no longer make sense (creating an existing topic, deleting a
    /// missing one: a race between two admins) change nothing; the proposer checks the outcome. An invalid
    /// command ([`Command::check`]) changes nothing either.
    pub fn apply(&mut self, cmd: Command) {
        if let Err(why) = cmd.check(self) {
            tracing::error!(?cmd, "invalid controller command ignored: {why}");
            return;
        }
        match cmd {
            Command::CreateTopic {
                name,
                partitions,
                replica_sets,
                settings,
            } => {
                if self.topics.contains_key(&name) {
                    return;
                }
                self.next_topic_id += 1;
                let t = TopicMeta {
                    id: self.next_topic_id,
                    name: name.clone(),
                    partitions,
                    initial_replica_sets: replica_sets.clone(),
                    settled: replica_sets.clone(),
                    replica_sets,
                    settings,
                };
                self.topics.insert(name, t);
            }
            Command::DeleteTopic { name } => {
                self.topics.remove(&name);
            }
            Command::RegisterBroker {
                id,
                client_address,
                incarnation,
                listeners,
            } => {
                if self.members.is_empty() || self.members.contains_key(&id) {
                    self.brokers.insert(id, client_address);
                    if listeners.is_empty() {
                        self.listeners.remove(&id);
                    } else {
                        self.listeners.insert(id, listeners);
                    }
                    if incarnation != 0 {
                        self.incarnations.insert(id, incarnation);
                    }
                }
            }
            Command::ClusterId { id } => {
                self.cluster_id.get_or_insert(id);
            }
            Command::Barrier {} => {}
            Command::AddBroker { id, peer_address } => {
                let m = self.members.entry(id).or_insert(Member {
                    peer_address: peer_address.clone(),
                    leaving: false,
                });
                m.peer_address = peer_address;
                m.leaving = false;
            }
            Command::RemoveBroker { id } => {
                if let Some(m) = self.members.get_mut(&id) {
                    m.leaving = true;
                }
            }
            Command::ForgetBroker { id } => {
                if self.members.get(&id).is_some_and(|m| m.leaving) && self.replicas_on(id) == 0 {
                    self.members.remove(&id);
                    self.brokers.remove(&id);
                    self.listeners.remove(&id);
                    self.incarnations.remove(&id);
                }
            }
            Command::MoveReplicas {
                topic,
                partition,
                replicas,
            } => {
                if let Some(s) = self
                    .topics
                    .get_mut(&topic)
                    .and_then(|t| t.replica_sets.get_mut(partition as usize))
                {
                    *s = replicas;
                }
            }
            Command::AllocateProducerId {} | Command::AllocateProducerIds { .. } => {}
            Command::CreateAcl { binding } => {
                let _ = self.acls.add(binding);
            }
            Command::DeleteAcls { filter } => {
                self.acls.remove(&filter);
            }
            Command::SettleReplicas {
                topic,
                partition,
                voters,
            } => {
                if let Some(t) = self.topics.get_mut(&topic) {
                    let p = partition as usize;
                    // Only a report that matches the current assignment settles it (a late report of an
                    // earlier move changes nothing).
                    if t.replica_sets.get(p).is_some_and(|s| same_set(s, &voters)) {
                        if let Some(s) = t.settled.get_mut(p) {
                            *s = voters;
                        }
                    }
                }
            }
        }
    }
}

/// Replica sets for a new topic: partition `p` gets `replicas` consecutive brokers starting at
/// `(start + p) % brokers`, so replicas and (since the first replica is the preferred leader) leaders
/// spread evenly. `brokers` must hold at least `replicas` ids.
pub fn place(brokers: &[u64], partitions: u32, replicas: u32, start: u64) -> Vec<Vec<u64>> {
    assert!(
        replicas as usize <= brokers.len() && replicas > 0,
        "placement needs enough brokers"
    );
    let n = brokers.len() as u64;
    (0..u64::from(partitions))
        .map(|p| {
            (0..u64::from(replicas))
                .map(|i| brokers[((start + p + i) % n) as usize])
                .collect()
        })
        .collect()
}

/// The controller's [`Apply`]: decodes committed batches into commands and applies them.
#[derive(Debug, Clone)]
pub struct MetadataMachine {
    pub state: Arc<RwLock<Metadata>>,
}

impl MetadataMachine {
    /// A machine starting from the initial voters.
    pub fn new(initial_peers: &BTreeMap<u64, String>) -> Self {
        MetadataMachine {
            state: Arc::new(RwLock::new(Metadata::new(initial_peers))),
        }
    }

    /// Applies every record of a committed batch; a batch at or below the last applied index is ignored
    /// (a restarted controller replica is delivered entries its state machine already applied).
    pub fn apply_batch(&self, index: u64, data: &Bytes) {
        if index <= self.state.read().applied_index {
            return;
        }
        let h = match batch::validate(data) {
            Ok(h) if !h.is_control() => h,
            Ok(_) => return,
            Err(e) => {
                tracing::error!(index, "controller entry is not a valid batch: {e}");
                return;
            }
        };
        let mut state = self.state.write();
        for r in Records::new(data.clone(), h) {
            match r.map_err(|e| e.to_string()).and_then(|r| {
                serde_json::from_slice::<Command>(&r.value).map_err(|e| e.to_string())
            }) {
                Ok(cmd) => state.apply(cmd),
                Err(e) => tracing::error!(index, "undecodable controller command: {e}"),
            }
        }
        state.applied_index = index;
    }
}

impl Apply for MetadataMachine {
    fn apply(&mut self, index: u64, batch: &Bytes) {
        self.apply_batch(index, batch);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placement_spreads_replicas_and_preferred_leaders() {
        let sets = place(&[1, 2, 3], 6, 3, 0);
        assert_eq!(sets[0], vec![1, 2, 3]);
        assert_eq!(sets[1], vec![2, 3, 1]);
        let mut leaders = [0; 4];
        for s in &sets {
            leaders[s[0] as usize] += 1;
            let mut u = s.clone();
            u.sort_unstable();
            u.dedup();
            assert_eq!(u.len(), 3, "distinct replicas");
        }
        assert_eq!(&leaders[1..], &[2, 2, 2]);
        assert_eq!(place(&[1, 2, 3, 4], 4, 2, 1)[0], vec![2, 3]);
    }

    #[test]
    fn commands_round_trip_through_batches() {
        let m = MetadataMachine::new(&BTreeMap::new());
        let create = Command::CreateTopic {
            name: "orders".into(),
            partitions: 3,
            replica_sets: vec![vec![1]; 3],
            settings: TopicSettings::default(),
        };
        m.apply_batch(1, &create.to_batch(0));
        m.apply_batch(2, &create.to_batch(0)); // duplicate create: no change
        let s = m.state.read().clone();
        assert_eq!(s.topics.len(), 1);
        assert_eq!(s.topics["orders"].id, 1);
        assert_eq!(s.topics["orders"].group_id(2), (1 << 16) | 2);
        drop(s);
        m.apply_batch(
            3,
            &Command::DeleteTopic {
                name: "orders".into(),
            }
            .to_batch(0),
        );
        assert!(m.state.read().topics.is_empty());
        assert_eq!(m.state.read().applied_index, 3);
        m.apply_batch(4, &create.to_batch(0));
        assert_eq!(
            m.state.read().topics["orders"].id,
            2,
            "a re-created topic gets a new id"
        );
    }

    #[test]
    fn a_broker_registers_its_named_listeners_within_bounds() {
        let register = |listeners: BTreeMap<String, String>| Command::RegisterBroker {
            id: 1,
            client_address: "10.0.0.1:7400".into(),
            incarnation: 7,
            listeners,
        };
        let m = MetadataMachine::new(&BTreeMap::new());
        let named =
            BTreeMap::from([("external".to_owned(), "ferry-0.example.com:9400".to_owned())]);
        let cmd = register(named.clone());
        assert_eq!(cmd.check(&m.state.read()), Ok(()));
        m.apply_batch(1, &cmd.to_batch(0));
        assert_eq!(m.state.read().listeners[&1], named);
        // Registering again without listeners forgets them.
        m.apply_batch(2, &register(BTreeMap::new()).to_batch(0));
        assert!(m.state.read().listeners.is_empty());
        // An older broker's command (no `listeners` field) still reads.
        let old = r#"{"RegisterBroker":{"id":1,"client_address":"a:1"}}"#;
        assert!(matches!(
            serde_json::from_str::<Command>(old),
            Ok(Command::RegisterBroker { listeners, .. }) if listeners.is_empty()
        ));
        let too_many = (0..=LISTENERS_MAX)
            .map(|i| (format!("l{i}"), "h:1".to_owned()))
            .collect();
        let bad = [
            too_many,
            BTreeMap::from([("x".to_owned(), "no-port".to_owned())]),
            BTreeMap::from([("x".repeat(LISTENER_NAME_LEN_MAX + 1), "h:1".to_owned())]),
            BTreeMap::from([(String::new(), "h:1".to_owned())]),
        ];
        for l in bad {
            assert!(register(l.clone()).check(&m.state.read()).is_err(), "{l:?}");
        }
    }
}
