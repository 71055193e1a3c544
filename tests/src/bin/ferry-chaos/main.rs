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
//! - `lost`: acknowledged values missing from the log; `phantom`: values in the log no producer sent;
//! - `duplicated`: values stored at two offsets (zero with idempotent producers);
//! - `inconsistent`: an acknowledged or consumed offset holding another value than the log has there;
//! - `unseen`: acknowledged values the group never delivered (at-least-once);
//! - `commit_regressions` / `commit_beyond_end`: a group's committed offset going backwards, or past the
//!   partition's end (the drained log); `stale_end_views` counts describes whose end offset, a lower bound
//!   right after a failover, was below the committed offset (reported, not a violation);
//! - `stuck_membership`: a membership change that was refused or did not settle within 60 s, or a broker of
//!   a rolling restart that was not ready within 30 s;
//! - `not_run`: a fault of the schedule that never ran (skipped, and not allowed to be with `--allow-skip`):
//!   every fault runs at least once whatever `--duration-secs` says, so the schedule cannot shrink;
//! - `hung_stops`: a SIGTERM that did not stop a broker within 20 s (it is then killed -9, and counted);
//! - `died`: a broker found exited that the schedule had not stopped; `panics`: panic lines in a broker's
//!   stderr;
//! - `replica_disagreements`: after the final heal, a replica (read from its segment files) that misses or
//!   differs from the leader's log over the committed range;
//! - `unavailable_over_bound`: a fault whose unavailability passed `--unavailable-max-ms` (default: the
//!   fault's hold plus 10 s);
//! - `overlapping_owners`: two group members handing out records of one partition at overlapping times;
//!   `outside_ownership`: a record handed out by a member between no `Assigned` and `Revoked` of its
//!   partition; `poll_order` / `poll_skips`: within one ownership an offset not after the previous one or
//!   jumping past the next, or an ownership starting past everything handed out before it; the group's
//!   members crash (dropped mid-flight) and close in turn every `--consumer-churn-secs` (default 10), at
//!   least one crash per run (`order.rs`, `consumers.rs`);
//! - `send_order`: a producer's values stored out of the order it sent them, per partition;
//! - `--consumer-delay-ms N` makes every member spend N ms on each record, so the group lags behind the
//!   producers (commits then land mid-log, where a wrong one takes effect);
//! - per fault, the time from its start until every partition acknowledged a publish sent after it began.
//!
//! Prints one summary line, writes a JSON report (`--report`), and exits 1 on any violation.
//!
//!   cargo build --workspace --bins && target/debug/ferry-chaos --duration-secs 120 --report chaos.json
//!
//! `CHAOS_DUMP_ACKS=FILE` also writes one line per acknowledged publish (partition, sent and acknowledged
//! ms since the schedule began), for looking at throughput over time; `CHAOS_DUMP_DELIVERIES=FILE` one line per
//! group event (ms, member, partition, assigned / revoked / record OFFSET).
//!
//! `--list-faults` prints every fault's name, one per line.
//!
//! Files: `faults.rs` (what each fault does), `load.rs` (producers, the history), `consumers.rs` (the
//! group's members, crashing and closing in turn), `order.rs` (ownership and order oracles), `replicas.rs`
//! (every replica's log against the leader's), `check.rs` (the verdict).

mod check;
mod consumers;
mod faults;
mod load;
mod order;
mod replicas;
mod setup;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_client::{Client, ClientConfig};
use ferry_tests::cluster::{leaders, start_cluster, try_read_all};

use faults::{block, inject, mount_small_disk, restart_all, set_faults, Fault};
use ferry_tests::Ferryd;
use load::{produce, sample_commits, Shared};

use setup::{GROUP, PARTITIONS, TOPIC};

struct Args {
    duration: Duration,
    fault: Duration,
    heal: Duration,
    rate: u64,
    faults: Vec<Fault>,
    /// Faults the run may skip when this machine cannot inject them (anything else skipped fails it).
    allow_skip: Vec<Fault>,
    /// Longest unavailability a fault may cause (ms); by default the fault's hold plus
    /// [`UNAVAILABLE_AFTER_HOLD_MS_DEFAULT`].
    unavailable_max_ms: Option<u128>,
    /// How often a consumer of the group is replaced (crashes and closes in turn).
    consumer_churn: Duration,
    /// How long a consumer spends on each record it is handed (a slow consumer, so the group lags).
    consumer_delay: Duration,
    report: Option<String>,
}

fn fault_list(v: &str) -> Result<Vec<Fault>, String> {
    v.split(',')
        .filter(|f| !f.is_empty())
        .map(|f| Fault::parse(f).ok_or(format!("unknown fault {f}")))
        .collect()
}

fn args() -> Result<Args, String> {
    let mut a = Args {
        duration: Duration::from_secs(120),
        fault: Duration::from_secs(5),
        heal: Duration::from_secs(5),
        rate: 400,
        faults: Fault::ALL.to_vec(),
        allow_skip: Vec::new(),
        unavailable_max_ms: None,
        consumer_churn: Duration::from_secs(10),
        consumer_delay: Duration::ZERO,
        report: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--list-faults" {
            for f in Fault::ALL {
                println!("{}", f.name());
            }
            std::process::exit(0);
        }
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
            "--consumer-churn-secs" => {
                a.consumer_churn = secs(value()?)?.max(Duration::from_secs(1))
            }
            "--consumer-delay-ms" => {
                a.consumer_delay = Duration::from_millis(
                    value()?
                        .parse()
                        .map_err(|_| "--consumer-delay-ms is a number of ms")?,
                )
            }
            "--rate" => {
                a.rate = value()?
                    .parse()
                    .map_err(|_| "--rate is messages per second")?
            }
            "--faults" => a.faults = fault_list(&value()?)?,
            "--allow-skip" => a.allow_skip = fault_list(&value()?)?,
            "--unavailable-max-ms" => {
                a.unavailable_max_ms = Some(
                    value()?
                        .parse()
                        .map_err(|_| "--unavailable-max-ms is a number of ms")?,
                )
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

/// Unavailability a fault may cause beyond its hold when `--unavailable-max-ms` is not given (ms): an
/// election of 1-2 s (a paused leader is unavailable for the whole hold), a broker restart with its controller
/// catching up (kill-all: 3.4 s in the 20-minute runs), with room for a debug build on this shared 2-core
/// machine.
const UNAVAILABLE_AFTER_HOLD_MS_DEFAULT: u128 = 10_000;

/// Brokers that exited though the schedule did not stop them (a crash, a panic that took the process): each
/// is described, then started again so the run goes on.
fn reap_dead(nodes: &mut [Ferryd], after: &str) -> Vec<String> {
    let mut dead = Vec::new();
    for (i, n) in nodes.iter_mut().enumerate() {
        if let Ok(Some(status)) = n.child.try_wait() {
            dead.push(format!("broker {} exited ({status}) after {after}", i + 1));
            block(|| n.restart_in_place());
        }
    }
    for d in &dead {
        eprintln!("chaos: {d}");
    }
    dead
}

/// Every committed value of partition `p`, from its leader. Leadership may still move right after the
/// last heal (a repaired replica rejoining, leaders balancing back): a read that meets another leader starts
/// again from the current one, for at most a minute.
async fn drain(brokers: &[String], p: u32) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let routes = leaders(brokers, TOPIC).await;
        let read = match routes.get(&p) {
            Some(leader) => try_read_all(leader, TOPIC, p)
                .await
                .map_err(|e| e.to_string()),
            None => Err("no leader".into()),
        };
        match read {
            Ok(values) => return values,
            Err(e) if Instant::now() < deadline => {
                eprintln!("chaos: draining partition {p}: {e}; again");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("draining partition {p}: {e}"),
        }
    }
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
    let client = Client::connect_with(brokers.clone(), config.clone())
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
    let group = block(|| {
        consumers::Consumers::start(
            2,
            brokers.clone(),
            config.clone(),
            h.clone(),
            args.consumer_delay,
        )
    });
    let group = Arc::new(parking_lot::Mutex::new(Some(group)));
    let stop_churn = Arc::new(AtomicBool::new(false));
    let churn = tokio::spawn(consumers::churn(
        group.clone(),
        args.consumer_churn,
        stop_churn.clone(),
    ));
    let sampler = tokio::spawn(sample_commits(
        client.clone(),
        stop_consumers.clone(),
        h.clone(),
    ));

    // The schedule.
    let started = Instant::now();
    let mut events: Vec<(Fault, Instant, String)> = Vec::new();
    let mut stuck_changes = 0usize;
    let mut died = Vec::new();
    let mut k = 0;
    tokio::time::sleep(args.heal).await;
    // Every fault of the schedule at least once, whatever the duration (a schedule never shrinks), then
    // round again while time is left.
    while k < args.faults.len() || started.elapsed() + args.fault + args.heal < args.duration {
        let fault = args.faults[k % args.faults.len()];
        k += 1;
        let (what, at, was_stuck) = inject(fault, &mut nodes, args.fault).await;
        stuck_changes += usize::from(was_stuck);
        eprintln!("chaos: {} ({what}) at {:?}", fault.name(), at - started);
        events.push((fault, at, what));
        tokio::time::sleep(args.heal).await;
        died.extend(reap_dead(&mut nodes, fault.name()));
    }

    // Heal, stop the load, let the group catch up, drain.
    died.extend(reap_dead(&mut nodes, "the schedule"));
    died.extend(faults::DIED_BEFORE_STOP.lock().drain(..));
    block(|| {
        nodes.iter().for_each(Ferryd::resume);
        restart_all(&mut nodes);
        set_faults(&nodes, &vec![String::new(); nodes.len()]);
    });
    for n in &nodes {
        block(|| n.wait_ready());
    }
    stop_producers.store(true, Ordering::Relaxed);
    for p in producers {
        let _ = p.await;
    }
    stop_churn.store(true, Ordering::Relaxed);
    let _ = churn.await;
    // A minute to catch up, and with slow consumers (`--consumer-delay-ms`) time for one member to handle
    // every acknowledged record once more.
    let acked_so_far = h.lock().acked.len() as u32;
    let drained_by = Instant::now() + Duration::from_secs(60) + args.consumer_delay * acked_so_far;
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
    if let Some(g) = group.lock().take() {
        block(|| g.close_all());
    }
    let _ = sampler.await;
    let mut log: BTreeMap<u32, Vec<String>> = BTreeMap::new();
    for p in 0..PARTITIONS {
        log.insert(p, drain(&brokers, p).await);
    }
    let end = Instant::now();
    let disagreements = agree(&nodes, &log).await;
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
    if let Ok(path) = std::env::var("CHAOS_DUMP_DELIVERIES") {
        // Debugging aid: every member's events in order (ms since the start, member, partition, event).
        let text: String = h
            .lock()
            .deliveries
            .iter()
            .map(|d| {
                let what = match &d.what {
                    load::Seen::Assigned => "assigned".to_owned(),
                    load::Seen::Revoked => "revoked".to_owned(),
                    load::Seen::Record { offset, .. } => format!("record {offset}"),
                };
                let ms = d.at.saturating_duration_since(started).as_millis();
                format!("{ms} {} {} {what}\n", d.member, d.partition)
            })
            .collect();
        let _ = std::fs::write(path, text);
    }

    let run = check::Run {
        scheduled: &args.faults,
        allowed_skips: &args.allow_skip,
        stuck_changes,
        hung_stops: faults::HUNG_STOPS.load(Ordering::Relaxed),
        died: &died,
        panics: ferry_tests::broker_panics(),
        disagreements: &disagreements,
        unavailable_max_ms: args
            .unavailable_max_ms
            .unwrap_or(args.fault.as_millis() + UNAVAILABLE_AFTER_HOLD_MS_DEFAULT),
    };
    let verdict = check::check(&h.lock(), &log, &events, &run, started, end);
    println!("{}", verdict.line);
    if let Some(path) = &args.report {
        if let Err(e) = std::fs::write(
            path,
            serde_json::to_vec_pretty(&verdict.report).unwrap_or_default(),
        ) {
            eprintln!("error: writing {path}: {e}");
        }
    }
    drop(nodes);
    if small_disk {
        let _ = std::process::Command::new("umount")
            .arg(dirs[2].path())
            .status();
    }
    std::process::exit(i32::from(verdict.violations > 0));
}

/// Replica agreement over the committed range (the drained `log`), once every replica has caught up: read
/// from each broker's files. Disagreement may be a replica still repairing or catching up, so it is asked
/// again for a minute before it counts.
async fn agree(nodes: &[Ferryd], log: &BTreeMap<u32, Vec<String>>) -> Vec<String> {
    let dirs: Vec<std::path::PathBuf> = nodes.iter().map(|n| n.data_dir.clone()).collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let found: Vec<String> = log
            .iter()
            .flat_map(|(p, values)| replicas::disagreements(&dirs, TOPIC, *p, values))
            .collect();
        if found.is_empty() || Instant::now() > deadline {
            for f in &found {
                eprintln!("chaos: replica disagreement: {f}");
            }
            return found;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
