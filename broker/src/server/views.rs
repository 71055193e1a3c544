//! Other brokers' views of a topic. A broker knows the leader of the partitions it hosts; for the others
//! (with more brokers than replicas, not every broker hosts every partition) it asks a broker that does,
//! and only a partition's leader knows its in-sync replicas and current high watermark.

use ferry_protocol::v1;

use crate::broker::Broker;
use crate::metadata::TopicMeta;

/// How long a broker waits for another broker's view of a topic (ms).
const VIEW_TIMEOUT_MS: u64 = 2_000;

/// Broker `addr`'s own view of topic `name` (`None` if it does not answer in time).
async fn local_view(b: &Broker, addr: String, name: String) -> Option<v1::TopicInfo> {
    let channel = b.channel(&addr).ok()?;
    let ask = async {
        let mut c = v1::admin_client::AdminClient::new(channel);
        let req = v1::DescribeTopicRequest {
            name,
            local_only: true,
        };
        c.describe_topic(req)
            .await
            .ok()
            .map(tonic::Response::into_inner)
    };
    tokio::time::timeout(std::time::Duration::from_millis(VIEW_TIMEOUT_MS), ask)
        .await
        .ok()
        .flatten()
}

/// Asks each broker in `ask` once, concurrently; `take(partition, asked broker, its entry)` says whether
/// to replace ours with theirs.
async fn merge_from(
    b: &Broker,
    info: &mut v1::TopicInfo,
    ask: Vec<u64>,
    take: impl Fn(&v1::PartitionInfo, u64, &v1::PartitionInfo) -> bool,
) {
    let addresses = b.metadata().brokers;
    let asks = ask.into_iter().filter_map(|id| {
        let addr = addresses.get(&id)?.clone();
        let name = info.name.clone();
        Some(async move { (id, local_view(b, addr, name).await) })
    });
    for (id, theirs) in futures::future::join_all(asks).await {
        let Some(theirs) = theirs else { continue };
        for (mine, their) in info.partition_info.iter_mut().zip(theirs.partition_info) {
            if take(mine, id, &their) {
                *mine = their;
            }
        }
    }
}

/// Fills in what this broker does not know: the leader (and state) of partitions it does not host, from a
/// broker that hosts each; with `from_leaders`, then every partition led elsewhere from its leader.
pub async fn merge_views(b: &Broker, t: &TopicMeta, info: &mut v1::TopicInfo, from_leaders: bool) {
    let me = b.config.node_id;
    // Partitions not hosted here, or whose replica here is fenced (it knows no leader).
    let remote: Vec<u32> = (0..t.partitions)
        .filter(|p| {
            !t.hosts(*p, me)
                || b.partition(&t.name, *p)
                    .map_or(true, |r| r.failure().is_some())
        })
        .collect();
    if !remote.is_empty() {
        // Every other replica of each: one of them knows the leader even when the first is down.
        let mut ask: Vec<u64> = remote
            .iter()
            .flat_map(|p| t.replica_sets[*p as usize].iter().copied())
            .filter(|id| *id != me)
            .collect();
        ask.sort_unstable();
        ask.dedup();
        merge_from(b, info, ask, |mine, id, their| {
            remote.contains(&mine.partition)
                && t.hosts(mine.partition, id)
                && their.error.is_empty()
                && their.leader != 0
        })
        .await;
    }
    if from_leaders {
        let mut leaders: Vec<u64> = info
            .partition_info
            .iter()
            .map(|p| p.leader)
            .filter(|l| *l != 0 && *l != me)
            .collect();
        leaders.sort_unstable();
        leaders.dedup();
        merge_from(b, info, leaders, |mine, id, their| {
            mine.leader == id && their.leader == id
        })
        .await;
    }
}
