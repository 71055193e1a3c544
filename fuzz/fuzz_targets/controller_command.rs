//! Fuzzes controller commands (`ferry-broker`'s metadata state machine): arbitrary bytes as the JSON of a
//! command (what a peer's `Forward` or a damaged controller log could hold), applied to metadata that
//! already has members and a topic. Oracles (docs/fuzzing.md): applying never panics; a command that fails
//! `Command::check` changes nothing; after any command every topic is consistent (a valid, path-safe name,
//! 1 to 10,000 partitions, one non-empty replica set per partition, every replica a member), so the
//! metadata never holds what would panic a reader or escape the data dir.

#![no_main]

use std::collections::BTreeMap;

use ferry_broker::metadata::{Command, Metadata, TopicSettings};
use libfuzzer_sys::fuzz_target;

fn seeded() -> Metadata {
    let peers: BTreeMap<u64, String> =
        (1..=3).map(|i| (i, format!("10.0.0.{i}:7401"))).collect();
    let mut m = Metadata::new(&peers);
    m.apply(Command::CreateTopic {
        name: "orders".into(),
        partitions: 3,
        replica_sets: vec![vec![1, 2, 3], vec![2, 3, 1], vec![3, 1, 2]],
        settings: TopicSettings::default(),
    });
    m
}

fn consistent(m: &Metadata) {
    for (name, t) in &m.topics {
        assert_eq!(name, &t.name);
        ferry_protocol::topic::validate_topic_name(name).expect("a topic name is path-safe");
        assert!(t.partitions >= 1 && t.partitions <= ferry_protocol::limits::TOPIC_PARTITIONS_MAX);
        assert_eq!(t.replica_sets.len(), t.partitions as usize, "one replica set per partition");
        for s in &t.replica_sets {
            assert!(!s.is_empty());
            assert!(s.iter().all(|id| m.members.contains_key(id)), "replicas are members");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(cmd) = serde_json::from_slice::<Command>(data) else {
        return;
    };
    let mut m = seeded();
    let before = format!("{m:?}");
    let valid = cmd.check(&m).is_ok();
    m.apply(cmd);
    if !valid {
        assert_eq!(format!("{m:?}"), before, "an invalid command changed the metadata");
    }
    consistent(&m);
});
