//! Multi-broker helpers: start a cluster of `ferryd` processes on 127.0.0.1, find partition leaders,
//! publish without retries (so nothing is written twice) and read a partition back.

use std::collections::HashMap;
use std::time::Duration;

use ferry_protocol::batch::{self, Records};
use ferry_protocol::v1::{self, publish_request::Payload};
use tonic::transport::Channel;

use crate::{batch_of, Ferryd};

pub type FerryClient = v1::ferry_client::FerryClient<Channel>;

pub use crate::ports::free_port;

/// Starts one broker per dir, brokers 1..=N, each listing all as `--peers`.
pub fn start_cluster(dirs: &[tempfile::TempDir]) -> Vec<Ferryd> {
    // Free ports are picked by binding port 0 and letting go, so another test may take one meanwhile:
    // then a broker exits before it listens, and the whole cluster starts again on new ports.
    for _ in 0..5 {
        if let Some(nodes) = try_start_cluster(dirs) {
            return nodes;
        }
    }
    panic!("could not start a three-broker cluster");
}

/// [`start_cluster`] with every broker on a fault-injecting disk whose power SIGUSR1 cuts (`FERRY_FAULT_DISK`,
/// the journal at [`power_cut_journal`]) and whose fsyncs wait up to 20 ms first (`FERRY_FAULT_FSYNC_DELAY_MS`).
pub fn start_cluster_on_faulty_disks(dirs: &[tempfile::TempDir]) -> Vec<Ferryd> {
    start_cluster_on_faulty_disks_with_flags(dirs, &[])
}

/// [`start_cluster_on_faulty_disks`] with `extra` flags for every broker.
pub fn start_cluster_on_faulty_disks_with_flags(
    dirs: &[tempfile::TempDir],
    extra: &[&str],
) -> Vec<Ferryd> {
    for _ in 0..5 {
        if let Some(nodes) = try_start_cluster_with_flags(dirs, true, extra) {
            return nodes;
        }
    }
    panic!("could not start a three-broker cluster");
}

/// Where the broker on `data_dir` journals a power cut.
pub fn power_cut_journal(data_dir: &std::path::Path) -> std::path::PathBuf {
    let name = data_dir
        .file_name()
        .map_or("ferryd".into(), |n| n.to_string_lossy().into_owned());
    data_dir.with_file_name(format!("{name}.power-cut"))
}

/// [`start_cluster`] with `extra` flags for every broker.
pub fn start_cluster_with_flags(dirs: &[tempfile::TempDir], extra: &[&str]) -> Vec<Ferryd> {
    for _ in 0..5 {
        if let Some(nodes) = try_start_cluster_with_flags(dirs, false, extra) {
            return nodes;
        }
    }
    panic!("could not start a three-broker cluster");
}

/// [`start_cluster`] with flags of its own for each broker (`per_broker(id)`: its certificate, say).
pub fn start_cluster_each(
    dirs: &[tempfile::TempDir],
    per_broker: impl Fn(u64) -> Vec<String>,
) -> Vec<Ferryd> {
    let flags: Vec<Vec<String>> = (1..=dirs.len() as u64).map(per_broker).collect();
    for _ in 0..5 {
        if let Some(nodes) = try_start_cluster_each(dirs, false, &flags) {
            return nodes;
        }
    }
    panic!("could not start a three-broker cluster");
}

/// One attempt at [`start_cluster`]; `None` when a picked port was taken meanwhile.
pub fn try_start_cluster(dirs: &[tempfile::TempDir]) -> Option<Vec<Ferryd>> {
    try_start_cluster_with(dirs, false)
}

fn try_start_cluster_with(dirs: &[tempfile::TempDir], faulty_disks: bool) -> Option<Vec<Ferryd>> {
    try_start_cluster_with_flags(dirs, faulty_disks, &[])
}

fn try_start_cluster_with_flags(
    dirs: &[tempfile::TempDir],
    faulty_disks: bool,
    extra: &[&str],
) -> Option<Vec<Ferryd>> {
    let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    try_start_cluster_each(dirs, faulty_disks, &vec![extra; dirs.len()])
}

fn try_start_cluster_each(
    dirs: &[tempfile::TempDir],
    faulty_disks: bool,
    flags: &[Vec<String>],
) -> Option<Vec<Ferryd>> {
    let ports: Vec<u16> = dirs.iter().map(|_| free_port()).collect();
    let peers: Vec<String> = ports
        .iter()
        .enumerate()
        .map(|(i, p)| format!("{}=127.0.0.1:{p}", i + 1))
        .collect();
    let peers = peers.join(",");
    // Start all at once: each waits for the controller, which needs a quorum.
    let handles: Vec<_> = dirs
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let (dir, peers, port) = (d.path().to_owned(), peers.clone(), ports[i]);
            let extra = flags[i].clone();
            std::thread::spawn(move || {
                let id = (i + 1).to_string();
                let listen = format!("127.0.0.1:{port}");
                let journal = power_cut_journal(&dir).display().to_string();
                // Slow, uneven fsyncs put the replicas out of step, so a power cut finds some behind.
                let env: &[(&str, &str)] = if faulty_disks {
                    &[
                        ("FERRY_FAULT_DISK", &journal),
                        ("FERRY_FAULT_FSYNC_DELAY_MS", "20"),
                    ]
                } else {
                    &[]
                };
                let mut flags = vec![
                    "--node-id",
                    &id,
                    "--peer-listen",
                    &listen,
                    "--peers",
                    &peers,
                ];
                flags.extend(extra.iter().map(String::as_str));
                Ferryd::try_start_with_env(&dir, &flags, env)
            })
        })
        .collect();
    let started: Vec<Result<Ferryd, String>> =
        handles.into_iter().map(|h| h.join().unwrap()).collect();
    if started.iter().any(Result::is_err) {
        return None; // the ones that started are killed on drop
    }
    Some(started.into_iter().map(Result::unwrap).collect())
}

/// A client of `addr`, if it answers.
pub async fn client(addr: &str) -> Option<FerryClient> {
    let ch = Channel::from_shared(format!("http://{addr}"))
        .ok()?
        .connect_timeout(Duration::from_millis(500));
    ch.connect().await.ok().map(FerryClient::new)
}

/// Leader address of every partition, from whichever broker answers.
pub async fn leaders(brokers: &[String], topic: &str) -> HashMap<u32, String> {
    for b in brokers {
        let Some(mut c) = client(b).await else {
            continue;
        };
        let Ok(m) = c
            .metadata(v1::MetadataRequest {
                topics: vec![topic.into()],
            })
            .await
        else {
            continue;
        };
        let m = m.into_inner();
        let addr: HashMap<u64, String> = m
            .brokers
            .iter()
            .map(|b| (b.id, b.address.clone()))
            .collect();
        return m.topics[0]
            .partition_info
            .iter()
            .filter_map(|p| addr.get(&p.leader).map(|a| (p.partition, a.clone())))
            .collect();
    }
    HashMap::new()
}

/// Publishes once to the partition's leader as known; no retry, so nothing is ever written twice.
pub async fn publish_once(
    pool: &mut HashMap<String, FerryClient>,
    leader: Option<&String>,
    topic: &str,
    p: u32,
    values: &[String],
) -> Option<u64> {
    let leader = leader?;
    if !pool.contains_key(leader) {
        pool.insert(leader.clone(), client(leader).await?);
    }
    let c = pool.get_mut(leader)?;
    let req = v1::PublishRequest {
        topic: topic.into(),
        partition: Some(p),
        acks: v1::Acks::All as i32,
        payload: Some(Payload::Batch(batch_of(values))),
        timeout_ms: 5_000,
    };
    match c.publish(req).await {
        Ok(r) => Some(r.into_inner().acks[0].base_offset),
        Err(_) => {
            pool.remove(leader);
            None
        }
    }
}

/// Every committed value of partition `p`, read from its leader.
pub async fn read_all(leader: &str, topic: &str, p: u32) -> Vec<String> {
    try_read_all(leader, topic, p).await.expect("fetch")
}

/// [`read_all`], or the error that stopped it (an unreachable broker, one that no longer leads `p`).
pub async fn try_read_all(leader: &str, topic: &str, p: u32) -> Result<Vec<String>, tonic::Status> {
    let mut c = client(leader)
        .await
        .ok_or_else(|| tonic::Status::unavailable(format!("{leader} unreachable")))?;
    let mut out = Vec::new();
    let mut offset = 0;
    loop {
        let r = c
            .fetch(v1::FetchRequest {
                topic: topic.into(),
                partition: p,
                offset,
                max_bytes: 1 << 20,
                max_wait_ms: 0,
                format: v1::Format::Batches as i32,
            })
            .await?
            .into_inner();
        for b in &r.batches {
            let h = batch::validate(b).unwrap();
            for rec in Records::new(b.clone(), h) {
                let rec = rec.unwrap();
                if rec.offset >= offset {
                    out.push(String::from_utf8(rec.value.to_vec()).unwrap());
                }
            }
        }
        if r.next_offset >= r.high_watermark {
            return Ok(out);
        }
        offset = r.next_offset;
    }
}

/// [`describe`], or `None` when the CLI fails (no broker answered yet, an election in progress): for
/// conditions polled until a deadline, where a failed look is "not yet", not a failed test.
pub fn try_describe(brokers: &[String], topic: &str) -> Option<serde_json::Value> {
    let out = crate::run_ferry(
        &brokers.join(","),
        &["topic", "describe", topic, "-o", "json"],
        None,
    );
    if !out.status.success() {
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

/// `ferry topic describe -o json` through any of `brokers`.
pub fn describe(brokers: &[String], topic: &str) -> serde_json::Value {
    let out = crate::run_ferry(
        &brokers.join(","),
        &["topic", "describe", topic, "-o", "json"],
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Whether every partition has three in-sync replicas.
pub fn all_in_sync(d: &serde_json::Value) -> bool {
    d["partition_info"]
        .as_array()
        .unwrap()
        .iter()
        .all(|p| p["in_sync"].as_array().is_some_and(|s| s.len() == 3))
}

/// Leader of partition `p` in a `describe` answer (0: none).
pub fn leader_of(d: &serde_json::Value, p: usize) -> u64 {
    d["partition_info"][p]["leader"].as_u64().unwrap_or(0)
}

/// `ferry cluster status -o json` through the first of `brokers` that answers; `None` when none does.
pub fn cluster_status(brokers: &[String]) -> Option<serde_json::Value> {
    let out = crate::run_ferry(
        &brokers.join(","),
        &["cluster", "status", "-o", "json"],
        None,
    );
    serde_json::from_slice(&out.stdout).ok()
}

/// Whether a `cluster_status` answer shows exactly the brokers `ids` as members, all active, and no
/// partition moving.
pub fn members_settled(status: &serde_json::Value, ids: &[u64]) -> bool {
    let members: Vec<(u64, &str)> = status["brokers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|b| {
            (
                b["id"].as_u64().unwrap_or(0),
                b["state"].as_str().unwrap_or(""),
            )
        })
        .collect();
    members.len() == ids.len()
        && members
            .iter()
            .all(|(id, st)| ids.contains(id) && *st == "active")
        && status["moving_partitions"].as_u64() == Some(0)
}

/// Starts broker `id` on `dir` to join the cluster whose `--peers` list is `peers` (it is not in it), on a
/// free peer port. Returns the broker and its peer address (for `ferry cluster add-broker`), or `None` when
/// five tries all lost their port to another process.
pub fn start_joining_broker(
    dir: &std::path::Path,
    id: u64,
    peers: &str,
) -> Option<(Ferryd, String)> {
    (0..5).find_map(|_| {
        let listen = format!("127.0.0.1:{}", free_port());
        let args = [
            "--node-id",
            &id.to_string(),
            "--peer-listen",
            &listen,
            "--peers",
            peers,
        ];
        Ferryd::try_start(dir, &args).ok().map(|f| (f, listen))
    })
}
