//! `ferry-chaos`: a fault-injection run with a history checker (a port of the Jepsen queue checks).
//!
//! Starts three `ferryd` processes on 127.0.0.1, publishes unique values with idempotent producers and
//! consumes them with a consumer group, injects faults on a schedule (kill -9 of a leader, of a follower, of
//! every broker; SIGSTOP of a leader; the leader cut off from its peers, deaf to them (one-way), or the two
//! others cut apart (bridge), through the brokers' `FERRY_FAULT_FILE`; a torn tail; a bit flip in an old
//! segment; deleted indexes; a full disk; a rolling restart; delay, loss and duplication of peer traffic; a
//! broker's wall clock 5 minutes off (libfaketime); a
//! fourth broker joining and leaving, also with the controller's leader killed while each change is in
//! flight), heals, drains every partition from the beginning and checks the whole history:
//!
//! - `lost`: acknowledged values missing from the log;
//! - `duplicated`: values stored at two offsets (zero with idempotent producers);
//! - `inconsistent`: an acknowledged or consumed offset holding another value than the log has there;
//! - `unseen`: acknowledged values the group never delivered (at-least-once);
//! - `commit_regressions` / `commit_beyond_end`: a group's committed offset going backwards, or past the
//!   partition's end (the drained log); `stale_end_views` counts describes whose end offset, a lower bound
//!   right after a failover, was below the committed offset (reported, not a violation);
//! - `stuck_membership`: a membership change that was refused or did not settle within 60 s;
//! - per fault, the time from its start until every partition acknowledged a publish sent after it began.
//!
//! Prints one summary line, writes a JSON report (`--report`), and exits 1 on any violation.
//!
//!   cargo build --workspace --bins && target/debug/ferry-chaos --duration-secs 120 --report chaos.json

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_client::{
    Client, ClientConfig, GroupConfig, GroupConsumer, Producer, ProducerConfig, ProducerRecord,
};
use ferry_tests::cluster::{leaders, read_all, start_cluster};
use ferry_tests::{segment_files, Ferryd};
use parking_lot::Mutex;

const TOPIC: &str = "chaos";
const PARTITIONS: u32 = 3;
const GROUP: &str = "chaos-readers";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    KillLeader,
    KillFollower,
    KillAll,
    PauseLeader,
    TornTail,
    BitFlip,
    DeleteIndex,
    RollingRestart,
    PartitionLeader,
    OneWay,
    Bridge,
    DiskFull,
    Membership,
    MembershipKill,
    SlowNetwork,
    ClockSkew,
}

impl Fault {
    const ALL: [Fault; 16] = [
        Fault::KillLeader,
        Fault::PartitionLeader,
        Fault::PauseLeader,
        Fault::SlowNetwork,
        Fault::OneWay,
        Fault::ClockSkew,
        Fault::Bridge,
        Fault::TornTail,
        Fault::KillFollower,
        Fault::BitFlip,
        Fault::KillAll,
        Fault::DeleteIndex,
        Fault::RollingRestart,
        Fault::DiskFull,
        Fault::MembershipKill,
        Fault::Membership,
    ];

    fn name(self) -> &'static str {
        match self {
            Fault::KillLeader => "kill-leader",
            Fault::KillFollower => "kill-follower",
            Fault::KillAll => "kill-all",
            Fault::PauseLeader => "pause-leader",
            Fault::TornTail => "torn-tail",
            Fault::BitFlip => "bit-flip",
            Fault::DeleteIndex => "delete-index",
            Fault::RollingRestart => "rolling-restart",
            Fault::PartitionLeader => "partition-leader",
            Fault::OneWay => "one-way",
            Fault::Bridge => "bridge",
            Fault::DiskFull => "disk-full",
            Fault::Membership => "membership",
            Fault::MembershipKill => "membership-kill",
            Fault::SlowNetwork => "slow-network",
            Fault::ClockSkew => "clock-skew",
        }
    }

    fn parse(s: &str) -> Option<Fault> {
        Fault::ALL.into_iter().find(|f| f.name() == s)
    }
}

struct Args {
    duration: Duration,
    fault: Duration,
    heal: Duration,
    rate: u64,
    faults: Vec<Fault>,
    report: Option<String>,
}

fn args() -> Result<Args, String> {
    let mut a = Args {
        duration: Duration::from_secs(120),
        fault: Duration::from_secs(5),
        heal: Duration::from_secs(5),
        rate: 400,
        faults: Fault::ALL.to_vec(),
        report: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        let secs = |v: String| {
            v.parse::<u64>()
                .map(Duration::from_secs)
                .map_err(|_| format!("{v} is not a number of seconds"))
        };
        match flag.as_str() {
            "--duration-secs" => a.duration = secs(value()?)?,
            "--fault-secs" => a.fault = secs(value()?)?,
            "--heal-secs" => a.heal = secs(value()?)?,
            "--rate" => {
                a.rate = value()?
                    .parse()
                    .map_err(|_| "--rate is messages per second")?
            }
            "--faults" => {
                a.faults = value()?
                    .split(',')
                    .map(|f| Fault::parse(f).ok_or(format!("unknown fault {f}")))
                    .collect::<Result<_, _>>()?
            }
            "--report" => a.report = Some(value()?),
            other => {
                return Err(format!(
                    "unknown flag {other}; see the file header for usage"
                ))
            }
        }
    }
    Ok(a)
}

/// Everything observed, for the checker.
#[derive(Default)]
struct History {
    /// value → (partition, offset, sent at, acknowledged at).
    acked: HashMap<String, (u32, u64, Instant, Instant)>,
    failed: HashSet<String>,
    /// (member, partition, offset, value), in delivery order per member.
    polled: Vec<(usize, u32, u64, String)>,
    /// (partition, committed, end) samples of the group, in time order.
    commits: Vec<(u32, i64, i64)>,
}

type Shared = Arc<Mutex<History>>;

async fn produce(id: usize, client: Client, rate: u64, stop: Arc<AtomicBool>, h: Shared) {
    let config = ProducerConfig {
        linger_ms: 5,
        ..ProducerConfig::default()
    };
    let producer = Producer::new(client, config).expect("producer");
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate.max(1)));
    let mut pending = futures::stream::FuturesUnordered::new();
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        tokio::select! {
            _ = tick.tick() => {
                let value = format!("p{id}-{n}");
                n += 1;
                let r = ProducerRecord::new(TOPIC, value.clone()).with_key(format!("k{}", n % 31));
                let sent = Instant::now();
                let d = producer.send(r).await;
                pending.push(async move { (value, sent, d.await) });
            }
            Some((value, sent, result)) = futures::StreamExt::next(&mut pending), if !pending.is_empty() => {
                record(&h, value, sent, result);
            }
        }
    }
    producer.flush().await;
    while let Some((value, sent, result)) = futures::StreamExt::next(&mut pending).await {
        record(&h, value, sent, result);
    }
    producer.close().await;
}

fn record(
    h: &Shared,
    value: String,
    sent: Instant,
    result: Result<(u32, u64), ferry_client::ClientError>,
) {
    let mut h = h.lock();
    match result {
        Ok((p, o)) => {
            h.acked.insert(value, (p, o, sent, Instant::now()));
        }
        Err(_) => {
            h.failed.insert(value);
        }
    }
}

async fn consume(member: usize, client: Client, stop: Arc<AtomicBool>, h: Shared) {
    let mut config = GroupConfig::new(GROUP, vec![TOPIC.into()]);
    config.session_timeout_ms = 6_000;
    let mut c = match GroupConsumer::join(client, config).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("chaos: consumer {member} could not join: {e}");
            return;
        }
    };
    while !stop.load(Ordering::Relaxed) {
        match tokio::time::timeout(Duration::from_millis(200), c.next_record()).await {
            Ok(Some(Ok(r))) => {
                let value = String::from_utf8_lossy(&r.value).into_owned();
                h.lock().polled.push((member, r.partition, r.offset, value));
            }
            Ok(Some(Err(e))) => eprintln!("chaos: consumer {member}: {e}"),
            Ok(None) => return,
            Err(_) => {}
        }
    }
    c.close().await;
}

async fn sample_commits(client: Client, stop: Arc<AtomicBool>, h: Shared) {
    while !stop.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if let Ok(d) = client.describe_group(GROUP).await {
            let mut h = h.lock();
            for p in d.partitions {
                h.commits.push((p.partition, p.committed, p.end_offset));
            }
        }
    }
}

/// The node leading partition 0, and one following it.
async fn roles(nodes: &[Ferryd]) -> (Option<usize>, usize) {
    let brokers: Vec<String> = nodes.iter().map(|n| n.addr.clone()).collect();
    let routes = leaders(&brokers, TOPIC).await;
    let leader = routes
        .get(&0)
        .and_then(|a| nodes.iter().position(|n| &n.addr == a));
    let follower = (0..nodes.len()).find(|i| Some(*i) != leader).unwrap_or(0);
    (leader, follower)
}

/// Writes each broker's network faults (`drop-to` / `drop-from` lines; empty heals).
fn set_faults(nodes: &[Ferryd], rules: &[String]) {
    for (n, r) in nodes.iter().zip(rules) {
        let _ = std::fs::write(ferry_tests::fault_file(&n.data_dir), r);
    }
}

/// Cuts broker `a` off from `b` in both directions.
fn cut(rules: &mut [String], a: usize, b: usize) {
    rules[a].push_str(&format!("drop-to {}\ndrop-from {}\n", b + 1, b + 1));
    rules[b].push_str(&format!("drop-to {}\ndrop-from {}\n", a + 1, a + 1));
}

fn block<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

fn restart_all(nodes: &mut [Ferryd]) {
    std::thread::scope(|s| {
        for n in nodes.iter_mut() {
            s.spawn(move || {
                if matches!(n.child.try_wait(), Ok(Some(_))) {
                    n.restart_in_place();
                }
            });
        }
    });
}

/// `ferry cluster status -o json` through the first broker that answers.
fn cluster_status(nodes: &[Ferryd]) -> Option<serde_json::Value> {
    let addrs: Vec<String> = nodes.iter().map(|n| n.addr.clone()).collect();
    let out = ferry_tests::run_ferry(&addrs.join(","), &["cluster", "status", "-o", "json"], None);
    serde_json::from_slice(&out.stdout).ok()
}

/// Waits (at most a minute) until the members are `ids`, all active, and no partition is moving.
/// Kills (-9) the controller leader (or broker 1 when none is known) while a membership change is in flight,
/// holds, and restarts it.
fn kill_in_flight(nodes: &mut [Ferryd], hold: Duration) {
    let leader = cluster_status(nodes)
        .and_then(|s| s["controller"].as_u64())
        .filter(|id| (1..=nodes.len() as u64).contains(id))
        .map_or(0, |id| id as usize - 1);
    nodes[leader].kill9();
    std::thread::sleep(hold);
    nodes[leader].restart_in_place();
}

/// Where Debian's `faketime` package puts the multi-threaded libfaketime, if it is installed.
fn faketime_library() -> Option<&'static str> {
    [
        "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1",
        "/usr/lib/aarch64-linux-gnu/faketime/libfaketimeMT.so.1",
        "/usr/lib/faketime/libfaketimeMT.so.1",
    ]
    .into_iter()
    .find(|p| std::path::Path::new(p).exists())
}

fn wait_members(nodes: &[Ferryd], ids: &[u64]) -> bool {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if let Some(s) = cluster_status(nodes) {
            let members: Vec<(u64, String)> = s["brokers"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|b| {
                    (
                        b["id"].as_u64().unwrap_or(0),
                        b["state"].as_str().unwrap_or("").to_owned(),
                    )
                })
                .collect();
            let ok = members.len() == ids.len()
                && members
                    .iter()
                    .all(|(id, st)| ids.contains(id) && st == "active")
                && s["moving_partitions"].as_u64() == Some(0);
            if ok {
                return true;
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    false
}

/// Size of the tmpfs broker 3 runs on, so its disk can be filled (bytes).
const SMALL_DISK_BYTES: u64 = 512 << 20;

/// Mounts a small tmpfs on `dir` (needs root); false when that is not possible.
fn mount_small_disk(dir: &std::path::Path) -> bool {
    std::process::Command::new("mount")
        .args([
            "-t",
            "tmpfs",
            "-o",
            &format!("size={SMALL_DISK_BYTES}"),
            "tmpfs",
        ])
        .arg(dir)
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Free bytes of the filesystem holding `dir`.
fn free_bytes(dir: &std::path::Path) -> u64 {
    let out = std::process::Command::new("df")
        .args(["--output=avail", "-B1"])
        .arg(dir)
        .output();
    out.ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|t| t.lines().nth(1).and_then(|l| l.trim().parse().ok()))
        .unwrap_or(0)
}

/// Injects `fault`, lets it last `hold`, heals. Returns a description and when the fault took effect.
/// Injects `fault` and heals it. Returns what was done, when the fault took effect, and whether a
/// membership change failed to settle within its deadline (a liveness violation).
async fn inject(fault: Fault, nodes: &mut [Ferryd], hold: Duration) -> (String, Instant, bool) {
    let mut stuck = false;
    let (leader, follower) = roles(nodes).await;
    let leader = leader.unwrap_or(0);
    let mut at = Instant::now();
    let what = match fault {
        Fault::KillLeader | Fault::KillFollower => {
            let i = if fault == Fault::KillLeader {
                leader
            } else {
                follower
            };
            block(|| nodes[i].kill9());
            at = Instant::now();
            tokio::time::sleep(hold).await;
            block(|| nodes[i].restart_in_place());
            format!("broker {}", i + 1)
        }
        Fault::KillAll => {
            block(|| nodes.iter_mut().for_each(Ferryd::kill9));
            at = Instant::now();
            tokio::time::sleep(hold.min(Duration::from_secs(2))).await;
            block(|| restart_all(nodes));
            "every broker".into()
        }
        Fault::PauseLeader => {
            nodes[leader].pause();
            at = Instant::now();
            tokio::time::sleep(hold.max(Duration::from_secs(3))).await;
            nodes[leader].resume();
            format!("broker {}", leader + 1)
        }
        Fault::TornTail => {
            let i = follower;
            block(|| nodes[i].kill9());
            at = Instant::now();
            let cut = (Instant::now().elapsed().subsec_nanos() % 200 + 1) as u64;
            if let Some(last) = segment_files(&nodes[i].data_dir, TOPIC, 0).last() {
                if let Ok(f) = std::fs::OpenOptions::new().write(true).open(last) {
                    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
                    let _ = f.set_len(len.saturating_sub(cut));
                }
            }
            tokio::time::sleep(hold).await;
            block(|| nodes[i].restart_in_place());
            format!("broker {}, {cut} bytes", i + 1)
        }
        Fault::BitFlip => {
            let i = follower;
            block(|| nodes[i].stop());
            let segs = segment_files(&nodes[i].data_dir, TOPIC, 0);
            let mut what = "no sealed segment yet".to_owned();
            if segs.len() > 1 {
                if let Ok(mut b) = std::fs::read(&segs[0]) {
                    if !b.is_empty() {
                        let at = b.len() / 2;
                        b[at] ^= 0x40;
                        let _ = std::fs::write(&segs[0], &b);
                        what = format!("{} byte {at}", segs[0].display());
                    }
                }
            }
            tokio::time::sleep(hold).await;
            block(|| nodes[i].restart_in_place());
            format!("broker {}, {what}", i + 1)
        }
        Fault::DeleteIndex => {
            let i = follower;
            block(|| nodes[i].stop());
            let mut removed = 0;
            if let Some(dir) = segment_files(&nodes[i].data_dir, TOPIC, 0)
                .first()
                .and_then(|p| p.parent())
            {
                for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                    if e.path().extension().is_some_and(|x| x == "index") {
                        removed += usize::from(std::fs::remove_file(e.path()).is_ok());
                    }
                }
            }
            tokio::time::sleep(hold).await;
            block(|| nodes[i].restart_in_place());
            format!("broker {}, {removed} index files", i + 1)
        }
        Fault::PartitionLeader | Fault::OneWay | Fault::Bridge => {
            let mut rules = vec![String::new(); nodes.len()];
            let others: Vec<usize> = (0..nodes.len()).filter(|i| *i != leader).collect();
            let what = match fault {
                Fault::PartitionLeader => {
                    for &o in &others {
                        cut(&mut rules, leader, o);
                    }
                    format!("broker {} isolated from its peers", leader + 1)
                }
                Fault::OneWay => {
                    for &o in &others {
                        rules[leader].push_str(&format!("drop-from {}\n", o + 1));
                    }
                    format!("broker {} hears no peer", leader + 1)
                }
                _ => {
                    cut(&mut rules, others[0], others[1]);
                    format!(
                        "brokers {} and {} cut apart, both see {}",
                        others[0] + 1,
                        others[1] + 1,
                        leader + 1
                    )
                }
            };
            set_faults(nodes, &rules);
            // The brokers reread their fault files every 100 ms.
            tokio::time::sleep(Duration::from_millis(150)).await;
            at = Instant::now();
            tokio::time::sleep(hold).await;
            set_faults(nodes, &vec![String::new(); nodes.len()]);
            what
        }
        Fault::SlowNetwork => {
            // netem's `delay 100ms 50ms loss 5% duplicate 1%` on every broker's incoming peer traffic
            // (injected at the peer transport: this kernel has no netem qdisc).
            set_faults(nodes, &vec!["impair 100 50 5 1\n".to_string(); nodes.len()]);
            tokio::time::sleep(Duration::from_millis(150)).await;
            at = Instant::now();
            tokio::time::sleep(hold).await;
            set_faults(nodes, &vec![String::new(); nodes.len()]);
            "peer traffic delayed 100 ± 50 ms, 5% lost, 1% duplicated".into()
        }
        Fault::ClockSkew => {
            // A broker restarted under libfaketime with its wall clock 5 minutes ahead of its peers (then
            // behind, on the next turn; the leader and a follower in turn), held, then restarted on the
            // true clock: Raft and leases must not depend on wall clocks agreeing.
            static TURN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
            let Some(lib) = faketime_library() else {
                return (
                    "skipped: libfaketime is not installed (apt-get install faketime)".into(),
                    at,
                    false,
                );
            };
            let turn = TURN.fetch_add(1, Ordering::Relaxed);
            let i = if turn.is_multiple_of(2) {
                leader
            } else {
                follower
            };
            let skew = if turn.is_multiple_of(2) {
                "+300s"
            } else {
                "-300s"
            };
            block(|| {
                nodes[i].stop();
                nodes[i].restart_in_place_with_env(&[("LD_PRELOAD", lib), ("FAKETIME", skew)]);
            });
            at = Instant::now();
            tokio::time::sleep(hold).await;
            block(|| {
                nodes[i].stop();
                nodes[i].restart_in_place();
            });
            format!("broker {} ran with its clock at {skew}", i + 1)
        }
        Fault::DiskFull => {
            // Broker 3's data dir is a small tmpfs (when the run could mount one): fill it, hold, free it,
            // restart the broker (replicas that hit the full disk are fenced until then).
            let i = 2;
            let filler = nodes[i].data_dir.join("filler");
            let free = free_bytes(&nodes[i].data_dir);
            if free == 0 || free > SMALL_DISK_BYTES {
                return (
                    "skipped: no small disk (mounting a tmpfs needs root)".into(),
                    at,
                    false,
                );
            }
            let fill = free.saturating_sub(64 << 10);
            let _ = std::process::Command::new("fallocate")
                .args(["-l", &fill.to_string()])
                .arg(&filler)
                .status();
            at = Instant::now();
            tokio::time::sleep(hold).await;
            let _ = std::fs::remove_file(&filler);
            block(|| {
                nodes[i].stop();
                nodes[i].restart_in_place();
            });
            format!("broker {}, {fill} bytes filled", i + 1)
        }
        Fault::Membership | Fault::MembershipKill => {
            // A fourth broker joins under load (partitions move to it), then leaves again. With
            // `membership-kill`, a broker is killed (-9) while each change is in flight and restarted after
            // the hold: the controller's leader, right after the join is accepted and again right after the
            // removal is.
            let dir = tempfile::tempdir().expect("temp dir");
            let peers = nodes[0].flag("--peers").unwrap_or_default();
            let listen = format!("127.0.0.1:{}", ferry_tests::cluster::free_port());
            let fourth = block(|| {
                Ferryd::try_start(
                    dir.path(),
                    &[
                        "--node-id",
                        "4",
                        "--peer-listen",
                        &listen,
                        "--peers",
                        &peers,
                    ],
                )
            });
            let Ok(mut fourth) = fourth else {
                return ("skipped: the fourth broker did not start".into(), at, false);
            };
            let addrs: Vec<String> = nodes.iter().map(|n| n.addr.clone()).collect();
            at = Instant::now();
            let outcome = block(|| {
                let add = ferry_tests::run_ferry(
                    &addrs.join(","),
                    &["cluster", "add-broker", "4", &listen],
                    None,
                );
                if !add.status.success() {
                    stuck = true;
                    return format!(
                        "add-broker failed: {}",
                        String::from_utf8_lossy(&add.stderr).trim()
                    );
                }
                if fault == Fault::MembershipKill {
                    kill_in_flight(nodes, hold);
                }
                let added = wait_members(nodes, &[1, 2, 3, 4]);
                let remove = ferry_tests::run_ferry(
                    &addrs.join(","),
                    &["cluster", "remove-broker", "4"],
                    None,
                );
                if !remove.status.success() {
                    stuck = true;
                    return format!(
                        "remove-broker failed: {}",
                        String::from_utf8_lossy(&remove.stderr).trim()
                    );
                }
                if fault == Fault::MembershipKill {
                    kill_in_flight(nodes, hold);
                }
                let removed = wait_members(nodes, &[1, 2, 3]);
                stuck = !added || !removed;
                format!("broker 4 added (settled: {added}) and removed (settled: {removed})")
            });
            block(|| fourth.stop());
            outcome
        }
        Fault::RollingRestart => {
            for node in nodes.iter_mut() {
                block(|| {
                    node.stop();
                    node.restart_in_place();
                });
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            "brokers 1-3 in turn".into()
        }
    };
    (what, at, stuck)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() {
    let args = match args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    let dirs: Vec<_> = (0..3)
        .map(|_| tempfile::tempdir().expect("temp dir"))
        .collect();
    let small_disk = args.faults.contains(&Fault::DiskFull) && mount_small_disk(dirs[2].path());
    if !small_disk && args.faults.contains(&Fault::DiskFull) {
        eprintln!("chaos: disk-full is skipped: mounting a tmpfs needs root");
    }
    let mut nodes = block(|| start_cluster(&dirs));
    let brokers: Vec<String> = nodes.iter().map(|n| n.addr.clone()).collect();
    let config = ClientConfig {
        retries_max: 1_000,
        retry_backoff_ms_max: 200,
        ..ClientConfig::default()
    };
    let client = Client::connect_with(brokers.clone(), config)
        .await
        .expect("connect");
    let mut admin = nodes[0].admin().await;
    admin
        .create_topic(ferry_client::v1::CreateTopicRequest {
            name: TOPIC.into(),
            partitions: PARTITIONS,
            replicas: 3,
            config: Some(ferry_client::v1::TopicConfig {
                segment_bytes: 256 * 1024,
                ..Default::default()
            }),
        })
        .await
        .expect("create topic");
    let h: Shared = Default::default();
    let stop_producers = Arc::new(AtomicBool::new(false));
    let stop_consumers = Arc::new(AtomicBool::new(false));
    let mut producers = Vec::new();
    for id in 0..2 {
        producers.push(tokio::spawn(produce(
            id,
            client.clone(),
            args.rate / 2,
            stop_producers.clone(),
            h.clone(),
        )));
    }
    let mut consumers = Vec::new();
    for m in 0..2 {
        consumers.push(tokio::spawn(consume(
            m,
            client.clone(),
            stop_consumers.clone(),
            h.clone(),
        )));
    }
    let sampler = tokio::spawn(sample_commits(
        client.clone(),
        stop_consumers.clone(),
        h.clone(),
    ));

    // The schedule.
    let started = Instant::now();
    let mut events: Vec<(Fault, Instant, String)> = Vec::new();
    let mut stuck_changes = 0usize;
    let mut k = 0;
    tokio::time::sleep(args.heal).await;
    while started.elapsed() + args.fault + args.heal < args.duration {
        let fault = args.faults[k % args.faults.len()];
        k += 1;
        let (what, at, was_stuck) = inject(fault, &mut nodes, args.fault).await;
        stuck_changes += usize::from(was_stuck);
        eprintln!("chaos: {} ({what}) at {:?}", fault.name(), at - started);
        events.push((fault, at, what));
        tokio::time::sleep(args.heal).await;
    }

    // Heal, stop the load, let the group catch up, drain.
    set_faults(&nodes, &vec![String::new(); nodes.len()]);
    block(|| {
        nodes.iter().for_each(Ferryd::resume);
        restart_all(&mut nodes);
    });
    for n in &nodes {
        block(|| n.wait_ready());
    }
    stop_producers.store(true, Ordering::Relaxed);
    for p in producers {
        let _ = p.await;
    }
    let drained_by = Instant::now() + Duration::from_secs(60);
    loop {
        let lagging = match client.describe_group(GROUP).await {
            Ok(d) => d.partitions.iter().map(|p| p.lag).sum::<i64>(),
            Err(_) => 1,
        };
        if lagging == 0 || Instant::now() > drained_by {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    stop_consumers.store(true, Ordering::Relaxed);
    for c in consumers {
        let _ = c.await;
    }
    let _ = sampler.await;
    let routes = leaders(&brokers, TOPIC).await;
    let mut log: BTreeMap<u32, Vec<String>> = BTreeMap::new();
    for p in 0..PARTITIONS {
        log.insert(p, read_all(&routes[&p], TOPIC, p).await);
    }
    let end = Instant::now();
    if let Ok(path) = std::env::var("CHAOS_DUMP_ACKS") {
        // Debugging aid: one line per acknowledged publish (partition, sent ms, acked ms since the start).
        let mut lines: Vec<(u128, u32, u128)> = h
            .lock()
            .acked
            .values()
            .map(|(p, _, sent, acked)| {
                (
                    (*sent - started).as_millis(),
                    *p,
                    (*acked - started).as_millis(),
                )
            })
            .collect();
        lines.sort_unstable();
        let text: String = lines
            .iter()
            .map(|(s, p, a)| format!("{p} {s} {a}\n"))
            .collect();
        let _ = std::fs::write(path, text);
    }

    // Check.
    let h = h.lock();
    let mut at: HashMap<&str, Vec<(u32, u64)>> = HashMap::new();
    for (p, values) in &log {
        for (o, v) in values.iter().enumerate() {
            at.entry(v.as_str()).or_default().push((*p, o as u64));
        }
    }
    let lost: Vec<&String> = h
        .acked
        .keys()
        .filter(|v| !at.contains_key(v.as_str()))
        .collect();
    let duplicated = at.values().filter(|places| places.len() > 1).count();
    let mut inconsistent = 0;
    for (v, (p, o, _, _)) in &h.acked {
        if log[p].get(*o as usize) != Some(v) {
            inconsistent += 1;
        }
    }
    for (_, p, o, v) in &h.polled {
        if log.get(p).and_then(|l| l.get(*o as usize)) != Some(v) {
            inconsistent += 1;
        }
    }
    let seen: HashSet<&str> = h.polled.iter().map(|(_, _, _, v)| v.as_str()).collect();
    let unseen = h
        .acked
        .keys()
        .filter(|v| !seen.contains(v.as_str()))
        .count();
    let mut last_commit: HashMap<u32, i64> = HashMap::new();
    let (mut regressions, mut beyond, mut stale_views) = (0, 0, 0);
    for (p, committed, end_offset) in &h.commits {
        if let Some(prev) = last_commit.get(p) {
            if committed < prev {
                regressions += 1;
            }
        }
        // Past the end of what the partition ever held: the drained log is the whole partition.
        if *committed > log.get(p).map_or(0, |l| l.len() as i64) {
            beyond += 1;
        }
        // A describe's end offset is the high watermark as the replica it asked knew it, a lower bound: a
        // leader elected a moment ago learns the commit index only when it commits in its own term. A
        // commit past it is counted, not a violation (commits are checked against such a lower bound).
        if *end_offset >= 0 && committed > end_offset {
            stale_views += 1;
        }
        last_commit.insert(*p, *committed);
    }
    // Unavailability: per fault, until every partition acknowledged a publish sent after the fault began.
    let mut per_fault: BTreeMap<&str, u128> = BTreeMap::new();
    let mut report_faults = Vec::new();
    for (fault, start, what) in &events {
        let mut worst = 0u128;
        for p in 0..PARTITIONS {
            let first = h
                .acked
                .values()
                .filter(|(q, _, sent, _)| *q == p && sent >= start)
                .map(|(_, _, _, acked)| *acked)
                .min()
                .unwrap_or(end);
            worst = worst.max((first - *start).as_millis());
        }
        let e = per_fault.entry(fault.name()).or_default();
        *e = (*e).max(worst);
        report_faults.push(
            serde_json::json!({"fault": fault.name(), "what": what, "unavailable_ms": worst}),
        );
    }
    let max_unavailable = per_fault.values().copied().max().unwrap_or(0);
    let failed_visible = h
        .failed
        .iter()
        .filter(|v| at.contains_key(v.as_str()))
        .count();
    let violations =
        lost.len() + duplicated + inconsistent + unseen + regressions + beyond + stuck_changes;
    println!(
        "lost={} duplicated={duplicated} inconsistent={inconsistent} unseen={unseen} commit_regressions={regressions} commit_beyond_end={beyond} stuck_membership={stuck_changes} stale_end_views={stale_views} acked={} failed={} failed_visible={failed_visible} polled={} faults={} max_unavailable_ms={max_unavailable}",
        lost.len(),
        h.acked.len(),
        h.failed.len(),
        h.polled.len(),
        events.len(),
    );
    let report = serde_json::json!({
        "lost": lost.len(), "lost_examples": lost.iter().take(10).collect::<Vec<_>>(),
        "duplicated": duplicated, "inconsistent": inconsistent, "unseen": unseen,
        "commit_regressions": regressions, "commit_beyond_end": beyond, "stuck_membership": stuck_changes, "stale_end_views": stale_views,
        "acked": h.acked.len(), "failed": h.failed.len(), "failed_visible": failed_visible,
        "polled": h.polled.len(), "max_unavailable_ms": max_unavailable,
        "max_unavailable_ms_per_fault": per_fault, "faults": report_faults,
        "duration_ms": (end - started).as_millis(),
    });
    if let Some(path) = &args.report {
        if let Err(e) = std::fs::write(path, serde_json::to_vec_pretty(&report).unwrap_or_default())
        {
            eprintln!("error: writing {path}: {e}");
        }
    }
    drop(h);
    drop(nodes);
    if small_disk {
        let _ = std::process::Command::new("umount")
            .arg(dirs[2].path())
            .status();
    }
    std::process::exit(i32::from(violations > 0));
}
