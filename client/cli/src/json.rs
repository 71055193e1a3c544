//! The JSON shapes of `-o json` output. They are a contract for scripts (docs/cli.md): add fields only,
//! never rename or remove one.

use std::borrow::Cow;

use ferry_client::v1::{PartitionInfo, TopicInfo};
use ferry_client::ConsumedRecord;
use serde::Serialize;

/// `ferry topic list`: one per line.
#[derive(Debug, Serialize)]
pub struct TopicSummary<'a> {
    pub name: &'a str,
    pub partitions: u32,
    pub replicas: u32,
}

impl<'a> From<&'a TopicInfo> for TopicSummary<'a> {
    fn from(info: &'a TopicInfo) -> Self {
        TopicSummary {
            name: &info.name,
            partitions: info.partitions,
            replicas: info.replicas,
        }
    }
}

/// `ferry topic describe` and `ferry topic create`.
#[derive(Debug, Serialize)]
pub struct Topic<'a> {
    pub name: &'a str,
    pub partitions: u32,
    pub replicas: u32,
    pub config: TopicConfig,
    pub partition_info: Vec<Partition<'a>>,
}

/// Per-topic settings; 0 means the broker's default.
#[derive(Debug, Serialize)]
pub struct TopicConfig {
    pub retention_bytes: u64,
    pub retention_ms: u64,
    pub segment_bytes: u64,
    pub segment_ms: u64,
}

/// One partition of a described topic.
#[derive(Debug, Serialize)]
pub struct Partition<'a> {
    pub partition: u32,
    /// Broker id of the leader; null while there is none.
    pub leader: Option<u64>,
    pub replicas: &'a [u64],
    pub in_sync: &'a [u64],
    pub high_watermark: u64,
    pub log_start_offset: u64,
    /// Why the partition is not served; null when healthy.
    pub error: Option<&'a str>,
}

impl<'a> From<&'a TopicInfo> for Topic<'a> {
    fn from(info: &'a TopicInfo) -> Self {
        let config = info.config.unwrap_or_default();
        let mut partition_info: Vec<Partition<'a>> =
            info.partition_info.iter().map(Partition::from).collect();
        partition_info.sort_by_key(|p| p.partition);
        Topic {
            name: &info.name,
            partitions: info.partitions,
            replicas: info.replicas,
            config: TopicConfig {
                retention_bytes: config.retention_bytes,
                retention_ms: config.retention_ms,
                segment_bytes: config.segment_bytes,
                segment_ms: config.segment_ms,
            },
            partition_info,
        }
    }
}

impl<'a> From<&'a PartitionInfo> for Partition<'a> {
    fn from(p: &'a PartitionInfo) -> Self {
        Partition {
            partition: p.partition,
            leader: (p.leader != 0).then_some(p.leader),
            replicas: &p.replicas,
            in_sync: &p.in_sync,
            high_watermark: p.high_watermark,
            log_start_offset: p.log_start_offset,
            error: (!p.error.is_empty()).then_some(p.error.as_str()),
        }
    }
}

/// `ferry topic delete`.
#[derive(Debug, Serialize)]
pub struct Deleted<'a> {
    pub deleted: &'a str,
}

/// `ferry cluster status`.
#[derive(Debug, Serialize)]
pub struct Cluster {
    /// Broker id of the controller; null when there is none.
    pub controller: Option<u64>,
    /// Broker id of the broker that answered.
    pub node_id: u64,
    pub brokers: Vec<Broker>,
    /// Partitions (over all topics) that have no leader.
    pub leaderless_partitions: u64,
    /// Partitions whose replicas are being moved (after adding or removing a broker).
    pub moving_partitions: u32,
}

/// One broker in `ferry cluster status`.
#[derive(Debug, Serialize)]
pub struct Broker {
    pub id: u64,
    pub address: String,
    pub up: bool,
    /// Partitions (over all topics) this broker leads.
    pub leaders: u64,
    /// "active", "joining" or "leaving".
    pub state: String,
    /// host:port of its peer listener.
    pub peer_address: String,
    /// Partitions with a replica on this broker.
    pub replicas: u32,
}

/// `ferry consume`: one per line. Key and value are UTF-8, with invalid bytes replaced by U+FFFD.
#[derive(Debug, Serialize)]
pub struct Record<'a> {
    pub topic: &'a str,
    pub partition: u32,
    pub offset: u64,
    /// Milliseconds since the Unix epoch.
    pub timestamp: i64,
    pub key: Option<Cow<'a, str>>,
    pub value: Cow<'a, str>,
}

impl<'a> From<&'a ConsumedRecord> for Record<'a> {
    fn from(r: &'a ConsumedRecord) -> Self {
        Record {
            topic: &r.topic,
            partition: r.partition,
            offset: r.offset,
            timestamp: r.timestamp_ms,
            key: r.key.as_deref().map(String::from_utf8_lossy),
            value: String::from_utf8_lossy(&r.value),
        }
    }
}

/// `ferry bench produce`.
#[derive(Debug, Serialize)]
pub struct BenchReport {
    pub messages: u64,
    pub failed: u64,
    pub bytes: u64,
    pub seconds: f64,
    pub messages_per_sec: f64,
    pub mb_per_sec: f64,
    pub latency_ms: Latency,
}

/// `ferry bench consume`'s report.
#[derive(Debug, Serialize)]
pub struct BenchConsumeReport {
    pub messages: u64,
    /// Bytes of the batches read (headers and records, as stored).
    pub bytes: u64,
    pub partitions: u32,
    pub seconds: f64,
    pub messages_per_sec: f64,
    pub mb_per_sec: f64,
}

/// Acknowledgement latency percentiles (milliseconds).
#[derive(Debug, Serialize)]
pub struct Latency {
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn record_shape_is_exact() {
        let record = ConsumedRecord {
            topic: "t".into(),
            partition: 1,
            offset: 7,
            timestamp_ms: 1_700_000_000_000,
            key: None,
            value: Bytes::from_static(b"hi \xff"),
            headers: vec![],
        };
        let json = serde_json::to_string(&Record::from(&record)).unwrap();
        assert_eq!(
            json,
            r#"{"topic":"t","partition":1,"offset":7,"timestamp":1700000000000,"key":null,"value":"hi �"}"#
        );
    }

    #[test]
    fn topic_shape_is_exact() {
        let info = TopicInfo {
            name: "t".into(),
            partitions: 1,
            replicas: 1,
            partition_info: vec![PartitionInfo {
                partition: 0,
                leader: 1,
                replicas: vec![1],
                in_sync: vec![1],
                high_watermark: 5,
                log_start_offset: 0,
                error: String::new(),
            }],
            config: None,
        };
        let json = serde_json::to_string(&Topic::from(&info)).unwrap();
        assert_eq!(
            json,
            concat!(
                r#"{"name":"t","partitions":1,"replicas":1,"#,
                r#""config":{"retention_bytes":0,"retention_ms":0,"segment_bytes":0,"segment_ms":0},"#,
                r#""partition_info":[{"partition":0,"leader":1,"replicas":[1],"in_sync":[1],"#,
                r#""high_watermark":5,"log_start_offset":0,"error":null}]}"#
            )
        );
    }
}

/// `ferry group describe`.
#[derive(Debug, Serialize)]
pub struct Group {
    pub group: String,
    /// "stable", "rebalancing" or "empty".
    pub state: String,
    pub generation: u64,
    /// Broker id of the coordinator that answered.
    pub coordinator: u64,
    pub members: Vec<GroupMember>,
    pub partitions: Vec<GroupPartition>,
}

/// A partition by topic and number.
#[derive(Debug, Serialize)]
pub struct TopicPartition {
    pub topic: String,
    pub partition: u32,
}

/// One member in `ferry group describe`.
#[derive(Debug, Serialize)]
pub struct GroupMember {
    pub member_id: String,
    /// Null for a dynamic member.
    pub instance_id: Option<String>,
    /// Partitions the coordinator assigns it.
    pub assignment: Vec<TopicPartition>,
}

/// One partition in `ferry group describe`.
#[derive(Debug, Serialize)]
pub struct GroupPartition {
    pub topic: String,
    pub partition: u32,
    /// Null: nothing committed.
    pub committed: Option<u64>,
    /// Null: the partition's leader did not answer.
    pub end_offset: Option<u64>,
    /// end_offset - committed (the log start when nothing is committed); null when unknown.
    pub lag: Option<u64>,
    /// Member id of its owner; null: none.
    pub owner: Option<String>,
}
