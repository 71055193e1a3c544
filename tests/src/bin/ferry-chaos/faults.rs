//! The faults `ferry-chaos` injects, and how: each [`Fault`] is injected on the running brokers by
//! [`inject`], held, and healed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ferry_tests::cluster::leaders;
use ferry_tests::{segment_files, Ferryd};

use crate::setup::{PARTITIONS, TOPIC};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
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
    pub const ALL: [Fault; 16] = [
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

    pub fn name(self) -> &'static str {
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

    pub fn parse(s: &str) -> Option<Fault> {
        Fault::ALL.into_iter().find(|f| f.name() == s)
    }
}

/// How long a fault waits for its partition to have a leader before it is skipped (and so counted as not
/// run, unless allowed).
const LEADER_WAIT: Duration = Duration::from_secs(10);
/// How long the brokers have to apply a fault file (they reread it every 100 ms).
const FAULT_FILE_APPLY_WAIT: Duration = Duration::from_secs(5);
/// How long a broker restarted in a rolling restart has to become ready before the next one goes down.
const ROLLING_READY_WAIT: Duration = Duration::from_secs(30);

/// The partition the next fault aims at: faults take the partitions in turn, so damage, tears and leader
/// faults are not all on partition 0.
fn next_partition() -> u32 {
    static TURN: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    TURN.fetch_add(1, Ordering::Relaxed) % PARTITIONS
}

/// The node leading `partition` (waited for up to [`LEADER_WAIT`]; `None` if none came), and one
/// following it.
async fn roles(nodes: &[Ferryd], partition: u32) -> (Option<usize>, usize) {
    let brokers: Vec<String> = nodes.iter().map(|n| n.addr.clone()).collect();
    let deadline = Instant::now() + LEADER_WAIT;
    let leader = loop {
        let routes = leaders(&brokers, TOPIC).await;
        let leader = routes
            .get(&partition)
            .and_then(|a| nodes.iter().position(|n| &n.addr == a));
        if leader.is_some() || Instant::now() >= deadline {
            break leader;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let follower = (0..nodes.len()).find(|i| Some(*i) != leader).unwrap_or(0);
    (leader, follower)
}

/// Writes each broker's network faults (`drop-to` / `drop-from` lines; empty heals) and waits until every
/// broker has applied its file (it echoes what it applied to `FILE.applied`). A fault file that cannot be
/// written, or is not applied in time, would silently leave a fault out (or in): the run stops.
pub fn set_faults(nodes: &[Ferryd], rules: &[String]) {
    for (n, r) in nodes.iter().zip(rules) {
        let path = ferry_tests::fault_file(&n.data_dir);
        if let Err(e) = std::fs::write(&path, r) {
            panic!("chaos: writing the fault file {}: {e}", path.display());
        }
    }
    let deadline = Instant::now() + FAULT_FILE_APPLY_WAIT;
    for (n, r) in nodes.iter().zip(rules) {
        let mut applied = ferry_tests::fault_file(&n.data_dir).into_os_string();
        applied.push(".applied");
        while std::fs::read_to_string(&applied).ok().as_deref() != Some(r.as_str()) {
            if matches!(n.child_exited(), Some(true)) {
                break; // a dead broker applies nothing; the checker counts it as died
            }
            assert!(
                Instant::now() < deadline,
                "chaos: the broker on {} did not apply its fault file within {FAULT_FILE_APPLY_WAIT:?}",
                n.data_dir.display()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Bytes a torn-tail fault cuts off the end of the last segment: 1 to 4,096, varying from run to run and
/// fault to fault (so it tears a batch's header, its records, or several batches).
fn torn_bytes() -> u64 {
    static STATE: AtomicU64 = AtomicU64::new(0);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64);
    // splitmix64 over a counter mixed with the clock.
    let mut z = STATE
        .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
        .wrapping_add(seed);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (z ^ (z >> 31)) % 4096 + 1
}

/// SIGTERMs that did not stop a broker within 20 s (it was then killed -9): each is a violation, not a
/// quiet kill -9.
pub static HUNG_STOPS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Brokers found already exited when the schedule came to stop them (a crash during a fault: a disk-full
/// fault once found a SIGBUS this way): `died`, not `hung_stops`.
pub static DIED_BEFORE_STOP: parking_lot::Mutex<Vec<String>> = parking_lot::Mutex::new(Vec::new());

/// Stops `node` with SIGTERM, counting a broker that did not stop in time, or had died before.
fn stop(node: &mut Ferryd) {
    if let Ok(Some(status)) = node.child.try_wait() {
        let what = format!(
            "broker on {} had exited ({status}) before the schedule stopped it",
            node.data_dir.display()
        );
        eprintln!("chaos: {what}");
        DIED_BEFORE_STOP.lock().push(what);
        return;
    }
    if !node.stop() {
        HUNG_STOPS.fetch_add(1, Ordering::Relaxed);
        eprintln!(
            "chaos: broker on {} did not stop cleanly on SIGTERM (a failed exit, or still running after 20 s and killed -9)",
            node.data_dir.display()
        );
    }
}

/// Cuts broker `a` off from `b` in both directions.
fn cut(rules: &mut [String], a: usize, b: usize) {
    rules[a].push_str(&format!("drop-to {}\ndrop-from {}\n", b + 1, b + 1));
    rules[b].push_str(&format!("drop-to {}\ndrop-from {}\n", a + 1, a + 1));
}

pub fn block<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

pub fn restart_all(nodes: &mut [Ferryd]) {
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
    ferry_tests::cluster::cluster_status(&addrs)
}

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

/// Where the multi-threaded libfaketime is: Debian's `libfaketime` package if installed, else a copy this
/// harness unpacked under `target/tools/` earlier, else one it unpacks there now from the package
/// (`apt-get download` and `dpkg -x`, which need no root). `Err` says in one line what is missing.
pub fn faketime_library() -> Result<std::path::PathBuf, String> {
    const SYSTEM: [&str; 3] = [
        "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1",
        "/usr/lib/aarch64-linux-gnu/faketime/libfaketimeMT.so.1",
        "/usr/lib/faketime/libfaketimeMT.so.1",
    ];
    if let Some(p) = SYSTEM.iter().map(std::path::Path::new).find(|p| p.exists()) {
        return Ok(p.to_owned());
    }
    let tools = ferry_tests::target_dir().join("tools").join("libfaketime");
    let unpacked = |root: &std::path::Path| {
        SYSTEM
            .iter()
            .map(|p| root.join(p.trim_start_matches('/')))
            .find(|p| p.exists())
    };
    if let Some(p) = unpacked(&tools) {
        return Ok(p);
    }
    let missing = "libfaketime is not installed and could not be unpacked from Debian's package \
        (install it with `apt-get install faketime`)";
    let work = tempfile::tempdir().map_err(|e| format!("{missing}: {e}"))?;
    let downloaded = std::process::Command::new("apt-get")
        .args(["download", "-qq", "libfaketime"])
        .current_dir(work.path())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let deb = std::fs::read_dir(work.path()).ok().and_then(|d| {
        d.flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|x| x == "deb"))
    });
    let (true, Some(deb)) = (downloaded, deb) else {
        return Err(missing.into());
    };
    let staging = tools.with_extension("tmp");
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging).map_err(|e| format!("{missing}: {e}"))?;
    let extracted = std::process::Command::new("dpkg")
        .arg("-x")
        .arg(&deb)
        .arg(&staging)
        .status()
        .is_ok_and(|s| s.success());
    if !extracted || std::fs::rename(&staging, &tools).is_err() {
        return Err(missing.into());
    }
    eprintln!("chaos: unpacked libfaketime into {}", tools.display());
    unpacked(&tools).ok_or_else(|| missing.into())
}

/// Waits (at most a minute) until the members are `ids`, all active, and no partition is moving.
fn wait_members(nodes: &[Ferryd], ids: &[u64]) -> bool {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if cluster_status(nodes).is_some_and(|s| ferry_tests::cluster::members_settled(&s, ids)) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    false
}

/// Size of the tmpfs broker 3 runs on, so its disk can be filled (bytes).
const SMALL_DISK_BYTES: u64 = 512 << 20;

/// Mounts a small tmpfs on `dir` (needs root); false when that is not possible.
pub fn mount_small_disk(dir: &std::path::Path) -> bool {
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

/// Injects `fault`, lets it last `hold`, heals it. Returns what was done, when the fault took effect, and whether a
/// membership change failed to settle within its deadline (a liveness violation).
pub async fn inject(fault: Fault, nodes: &mut [Ferryd], hold: Duration) -> (String, Instant, bool) {
    let mut stuck = false;
    let partition = next_partition();
    let (leader, follower) = roles(nodes, partition).await;
    let needs_leader = matches!(
        fault,
        Fault::KillLeader
            | Fault::PauseLeader
            | Fault::PartitionLeader
            | Fault::OneWay
            | Fault::Bridge
            | Fault::ClockSkew
    );
    let mut at = Instant::now();
    let leader = match leader {
        Some(l) => l,
        None if needs_leader => {
            let why = format!("skipped: partition {partition} had no leader for {LEADER_WAIT:?}");
            return (why, at, false);
        }
        None => 0, // not used by this fault
    };
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
            let cut = torn_bytes();
            let torn = match segment_files(&nodes[i].data_dir, TOPIC, partition).last() {
                None => Err("no segment to tear".to_owned()),
                Some(last) => std::fs::OpenOptions::new()
                    .write(true)
                    .open(last)
                    .and_then(|f| {
                        let len = f.metadata()?.len();
                        f.set_len(len.saturating_sub(cut))
                    })
                    .map_err(|e| format!("{}: {e}", last.display())),
            };
            tokio::time::sleep(hold).await;
            block(|| nodes[i].restart_in_place());
            match torn {
                Ok(()) => format!("broker {}, partition {partition}, {cut} bytes", i + 1),
                Err(why) => format!("skipped: broker {}: {why}", i + 1),
            }
        }
        Fault::BitFlip => {
            let i = follower;
            block(|| stop(&mut nodes[i]));
            let segs = segment_files(&nodes[i].data_dir, TOPIC, partition);
            let flipped = if segs.len() < 2 {
                Err("no sealed segment yet".to_owned())
            } else {
                std::fs::read(&segs[0])
                    .and_then(|mut b| {
                        let at = b.len() / 2;
                        if let Some(byte) = b.get_mut(at) {
                            *byte ^= 0x40;
                        }
                        std::fs::write(&segs[0], &b).map(|()| at)
                    })
                    .map_err(|e| format!("{}: {e}", segs[0].display()))
            };
            tokio::time::sleep(hold).await;
            block(|| nodes[i].restart_in_place());
            match flipped {
                Ok(at) => format!(
                    "broker {}, partition {partition}, {} byte {at}",
                    i + 1,
                    segs[0].display()
                ),
                Err(why) => format!("skipped: broker {}: {why}", i + 1),
            }
        }
        Fault::DeleteIndex => {
            let i = follower;
            block(|| stop(&mut nodes[i]));
            let mut removed = 0;
            if let Some(dir) = segment_files(&nodes[i].data_dir, TOPIC, partition)
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
            if removed == 0 {
                format!("skipped: broker {}: no index file to delete", i + 1)
            } else {
                format!("broker {}, {removed} index files", i + 1)
            }
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
            block(|| set_faults(nodes, &rules));
            at = Instant::now();
            tokio::time::sleep(hold).await;
            block(|| set_faults(nodes, &vec![String::new(); nodes.len()]));
            format!("{what} (partition {partition}'s leader)")
        }
        Fault::SlowNetwork => {
            // netem's `delay 100ms 50ms loss 5% duplicate 1%` on every broker's incoming peer traffic
            // (injected at the peer transport: this kernel has no netem qdisc).
            block(|| set_faults(nodes, &vec!["impair 100 50 5 1\n".to_string(); nodes.len()]));
            at = Instant::now();
            tokio::time::sleep(hold).await;
            block(|| set_faults(nodes, &vec![String::new(); nodes.len()]));
            "peer traffic delayed 100 ± 50 ms, 5% lost, 1% duplicated".into()
        }
        Fault::ClockSkew => {
            // A broker restarted under libfaketime with its wall clock 5 minutes ahead of its peers (then
            // behind, on the next turn; the leader and a follower in turn), held, then restarted on the
            // true clock: Raft and leases must not depend on wall clocks agreeing.
            static TURN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
            let lib = match faketime_library() {
                Ok(lib) => lib,
                Err(why) => return (format!("skipped: {why}"), at, false),
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
                stop(&mut nodes[i]);
                let lib = lib.to_string_lossy();
                nodes[i]
                    .restart_in_place_with_env(&[("LD_PRELOAD", lib.as_ref()), ("FAKETIME", skew)]);
            });
            at = Instant::now();
            tokio::time::sleep(hold).await;
            block(|| {
                stop(&mut nodes[i]);
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
            let filled = std::process::Command::new("fallocate")
                .args(["-l", &fill.to_string()])
                .arg(&filler)
                .status()
                .map_err(|e| e.to_string())
                .and_then(|s| s.success().then_some(()).ok_or(format!("fallocate: {s}")));
            at = Instant::now();
            tokio::time::sleep(hold).await;
            if let Err(e) = std::fs::remove_file(&filler) {
                if filled.is_ok() {
                    panic!("chaos: freeing the full disk ({}): {e}", filler.display());
                }
            }
            block(|| {
                stop(&mut nodes[i]);
                nodes[i].restart_in_place();
            });
            match filled {
                Ok(()) => format!("broker {}, {fill} bytes filled", i + 1),
                Err(why) => format!("skipped: broker {}: {why}", i + 1),
            }
        }
        Fault::Membership | Fault::MembershipKill => {
            // A fourth broker joins under load (partitions move to it), then leaves again. With
            // `membership-kill`, a broker is killed (-9) while each change is in flight and restarted after
            // the hold: the controller's leader, right after the join is accepted and again right after the
            // removal is.
            let dir = tempfile::tempdir().expect("temp dir");
            let peers = nodes[0].flag("--peers").unwrap_or_default();
            let joined =
                block(|| ferry_tests::cluster::start_joining_broker(dir.path(), 4, &peers));
            let Some((mut fourth, listen)) = joined else {
                return ("skipped: the fourth broker did not start".into(), at, false);
            };
            let addrs: Vec<String> = nodes.iter().map(|n| n.addr.clone()).collect();
            at = Instant::now();
            let outcome = block(|| {
                // One membership command through the CLI; its error line when it is refused.
                let run = |args: &[&str]| {
                    let out = ferry_tests::run_ferry(&addrs.join(","), args, None);
                    if out.status.success() {
                        return Ok(());
                    }
                    Err(format!(
                        "{} failed: {}",
                        args[1],
                        String::from_utf8_lossy(&out.stderr).trim()
                    ))
                };
                let mut step = |args: &[&str], members: &[u64]| {
                    run(args)?;
                    if fault == Fault::MembershipKill {
                        kill_in_flight(nodes, hold);
                    }
                    Ok::<bool, String>(wait_members(nodes, members))
                };
                let settled = step(&["cluster", "add-broker", "4", &listen], &[1, 2, 3, 4])
                    .and_then(|added| {
                        Ok((added, step(&["cluster", "remove-broker", "4"], &[1, 2, 3])?))
                    });
                match settled {
                    Ok((added, removed)) => {
                        stuck = !added || !removed;
                        format!(
                            "broker 4 added (settled: {added}) and removed (settled: {removed})"
                        )
                    }
                    Err(why) => {
                        stuck = true;
                        why
                    }
                }
            });
            block(|| stop(&mut fourth));
            outcome
        }
        Fault::RollingRestart => {
            // As Kubernetes rolls a StatefulSet: the next broker goes down once the last is ready again.
            let mut slow = Vec::new();
            for (i, node) in nodes.iter_mut().enumerate() {
                let ready = block(|| {
                    stop(node);
                    node.restart_in_place();
                    node.ready_within(ROLLING_READY_WAIT)
                });
                if !ready {
                    slow.push(i + 1);
                }
            }
            if slow.is_empty() {
                "brokers 1-3 in turn, each ready before the next".into()
            } else {
                stuck = true;
                format!("brokers 1-3 in turn; not ready within {ROLLING_READY_WAIT:?}: {slow:?}")
            }
        }
    };
    (what, at, stuck)
}
