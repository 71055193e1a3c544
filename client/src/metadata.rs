//! The client's picture of the cluster: which brokers exist at which address, and for each topic how many
//! partitions it has and which broker leads each one. Pure bookkeeping, filled from `MetadataResponse`s by
//! [`Client`](crate::Client) and read to route every per-partition request.

use std::collections::HashMap;

use ferry_protocol::v1::{MetadataResponse, TopicInfo};

/// Broker id meaning "no leader right now" in `PartitionInfo.leader`.
pub const NO_LEADER: u64 = 0;

/// Routing facts about one topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicRoute {
    /// Leader broker id of each partition, indexed by partition; [`NO_LEADER`] when unknown.
    pub leaders: Vec<u64>,
}

impl TopicRoute {
    /// The route of `info`. Partitions missing from `partition_info` have no known leader.
    pub fn from_info(info: &TopicInfo) -> Self {
        let mut leaders = vec![NO_LEADER; info.partitions as usize];
        for p in &info.partition_info {
            if let Some(slot) = leaders.get_mut(p.partition as usize) {
                *slot = p.leader;
            }
        }
        TopicRoute { leaders }
    }

    /// Number of partitions.
    pub fn partitions(&self) -> u32 {
        self.leaders.len() as u32
    }
}

/// Brokers and topic routes as last reported by the cluster.
#[derive(Debug, Default)]
pub struct MetadataCache {
    /// Client listener address each broker advertises.
    advertised: HashMap<u64, String>,
    /// Address a broker was actually reached at, which wins over the advertised one: a broker behind NAT
    /// or port forwarding may advertise an address this client cannot use.
    reached: HashMap<u64, String>,
    controller: u64,
    /// Looked up for every record a producer sends: foldhash, keyed by the application's own topic names.
    topics: foldhash::HashMap<String, TopicRoute>,
}

impl MetadataCache {
    /// Takes in a metadata answer to a request for `requested` topics (empty: all topics). Requested
    /// topics missing from the answer no longer exist and are forgotten.
    pub fn apply(&mut self, response: &MetadataResponse, requested: &[&str]) {
        self.advertised = response
            .brokers
            .iter()
            .filter(|b| !b.address.is_empty())
            .map(|b| (b.id, b.address.clone()))
            .collect();
        self.controller = response.controller;
        if requested.is_empty() {
            self.topics.clear();
        } else {
            for name in requested {
                self.topics.remove(*name);
            }
        }
        for info in &response.topics {
            self.topics
                .insert(info.name.clone(), TopicRoute::from_info(info));
        }
    }

    /// Records that broker `id` answered at `address`.
    pub fn note_reached(&mut self, id: u64, address: &str) {
        if id != NO_LEADER {
            self.reached.insert(id, address.to_owned());
        }
    }

    /// Takes in a redirect: broker `leader`, at `address`, leads `partition` of `topic`.
    pub fn note_leader(&mut self, topic: &str, partition: u32, leader: u64, address: &str) {
        if leader == NO_LEADER {
            return;
        }
        self.advertised.insert(leader, address.to_owned());
        if let Some(slot) = self
            .topics
            .get_mut(topic)
            .and_then(|t| t.leaders.get_mut(partition as usize))
        {
            *slot = leader;
        }
    }

    /// Forgets a topic (after deleting it).
    pub fn forget_topic(&mut self, name: &str) {
        self.topics.remove(name);
    }

    /// The cached route of `topic`.
    pub fn topic(&self, topic: &str) -> Option<&TopicRoute> {
        self.topics.get(topic)
    }

    /// Where broker `id` can be reached, if known.
    pub fn address_of(&self, id: u64) -> Option<&str> {
        if id == NO_LEADER {
            return None;
        }
        self.reached
            .get(&id)
            .or_else(|| self.advertised.get(&id))
            .map(String::as_str)
    }

    /// Address of the leader of `partition` of `topic`, if the topic, its leader and the leader's address
    /// are all known.
    pub fn leader_address(&self, topic: &str, partition: u32) -> Option<&str> {
        let leader = *self.topics.get(topic)?.leaders.get(partition as usize)?;
        self.address_of(leader)
    }

    /// Address of the controller, if known.
    pub fn controller_address(&self) -> Option<&str> {
        self.address_of(self.controller)
    }

    /// Every known broker address (reached addresses replace advertised ones), sorted by broker id.
    pub fn broker_addresses(&self) -> Vec<String> {
        let mut ids: Vec<u64> = self
            .advertised
            .keys()
            .chain(self.reached.keys())
            .copied()
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids.into_iter()
            .filter_map(|id| self.address_of(id).map(str::to_owned))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_protocol::v1::{BrokerInfo, PartitionInfo};

    fn response() -> MetadataResponse {
        MetadataResponse {
            brokers: vec![
                BrokerInfo {
                    id: 1,
                    address: "b1:7400".into(),
                    up: true,
                    ..Default::default()
                },
                BrokerInfo {
                    id: 2,
                    address: "b2:7400".into(),
                    up: true,
                    ..Default::default()
                },
            ],
            topics: vec![TopicInfo {
                name: "t".into(),
                partitions: 3,
                replicas: 2,
                partition_info: vec![
                    PartitionInfo {
                        partition: 0,
                        leader: 2,
                        ..Default::default()
                    },
                    PartitionInfo {
                        partition: 2,
                        leader: 1,
                        ..Default::default()
                    },
                ],
                config: None,
            }],
            controller: 1,
        }
    }

    #[test]
    fn a_redirect_moves_the_leader_at_once() {
        let mut cache = MetadataCache::default();
        cache.apply(&response(), &[]);
        cache.note_leader("t", 0, 3, "b3:7400");
        assert_eq!(cache.leader_address("t", 0), Some("b3:7400"));
        cache.note_leader("t", 1, 0, "ignored:1");
        assert_eq!(
            cache.leader_address("t", 1),
            None,
            "no leader is no redirect"
        );
    }

    #[test]
    fn routes_by_leader_and_prefers_reached_address() {
        let mut cache = MetadataCache::default();
        cache.apply(&response(), &[]);
        assert_eq!(cache.topic("t").unwrap().partitions(), 3);
        assert_eq!(cache.leader_address("t", 0), Some("b2:7400"));
        assert_eq!(cache.leader_address("t", 1), None, "no leader known");
        assert_eq!(cache.leader_address("t", 3), None, "no such partition");
        cache.note_reached(1, "localhost:17400");
        assert_eq!(cache.leader_address("t", 2), Some("localhost:17400"));
        assert_eq!(cache.controller_address(), Some("localhost:17400"));
        assert_eq!(
            cache.broker_addresses(),
            vec!["localhost:17400".to_owned(), "b2:7400".to_owned()]
        );
    }

    #[test]
    fn requested_topics_missing_from_the_answer_are_forgotten() {
        let mut cache = MetadataCache::default();
        cache.apply(&response(), &[]);
        let mut empty = response();
        empty.topics.clear();
        cache.apply(&empty, &["other"]);
        assert!(cache.topic("t").is_some(), "not asked about, kept");
        cache.apply(&empty, &["t"]);
        assert!(cache.topic("t").is_none());
    }
}
