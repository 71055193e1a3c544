//! The fault-location test, in the spirit of Protocol-Aware Recovery (Alagappan et al., FAST'18), which
//! injected a fault at every location of every on-disk structure: three brokers in this process (real
//! peer transport on 127.0.0.1, 20 ms ticks), one partition replicated three ways. For each case, one
//! broker is stopped, one field of one on-disk structure is damaged (a bit flip, a zeroed sector, a
//! truncation, or an unreadable block through the storage seam), the broker is started again, more traffic
//! and a leader change follow, and the test checks:
//! - nothing acknowledged is lost (every acknowledged value is read back once, at its offset);
//! - nothing damaged is served (every batch read is whole and checked, and every replica's committed log
//!   is byte-identical to the leader's);
//! - the damaged replica is repaired (its log equals the others') or fenced visibly (a failure or a repair
//!   state the broker reports), and never silently shortened: right after the restart, a replica that is
//!   neither repairing nor fenced still holds every entry it held before.
//!
//! `FERRY_FAULT_LOCATIONS=full` runs every field with every fault kind (docs/reliability.md has the matrix
//! and a long run's results); the default is a bounded subset covering every structure and field.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ferry_broker::metadata::TopicSettings;
use ferry_broker::storage::Faults;
use ferry_protocol::batch::{self, HEADER_LEN};

const TOPIC: &str = "f";
/// Longest any wait of one case takes.
const CASE_DEADLINE: Duration = Duration::from_secs(30);

/// One broker of the test cluster.
mod support;
use support::Cluster;

/// A kind of damage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Flip,
    ZeroSector,
    Truncate,
    Unreadable,
}

/// Where: a file of the partition directory and a byte offset in it.
#[derive(Debug, Clone, Copy)]
enum Place {
    /// Batch `n` (from 0) of the first (sealed) segment, at `field` bytes into it.
    Sealed {
        n: usize,
        field: usize,
    },
    /// Batch `n` of the active segment.
    Active {
        n: usize,
        field: usize,
    },
    OffsetIndex {
        entry: usize,
        field: usize,
    },
    TimeIndex {
        entry: usize,
        field: usize,
    },
    File {
        name: &'static str,
        at: usize,
    },
}

#[derive(Debug, Clone, Copy)]
struct Case {
    what: &'static str,
    place: Place,
    kind: Kind,
    /// Stop the broker with a clean shutdown (else its checkpoint is left unclean, as by a crash).
    clean: bool,
}

/// Header fields of a batch (name, offset).
const HEADER_FIELDS: [(&str, usize); 15] = [
    ("base_offset", 0),
    ("raft_term", 8),
    ("stamp_crc", 12),
    ("raft_index", 16),
    ("batch_len", 24),
    ("crc", 28),
    ("magic", 32),
    ("attributes", 34),
    ("record_count", 36),
    ("base_timestamp", 40),
    ("max_timestamp", 48),
    ("producer_id", 56),
    ("producer_epoch", 64),
    ("base_sequence", 66),
    ("payload", HEADER_LEN + 10),
];

fn cases(full: bool) -> Vec<Case> {
    let mut out = Vec::new();
    let kinds = [
        Kind::Flip,
        Kind::ZeroSector,
        Kind::Truncate,
        Kind::Unreadable,
    ];
    for (i, (what, field)) in HEADER_FIELDS.iter().enumerate() {
        for seg in 0..2 {
            for (k, kind) in kinds.iter().enumerate() {
                // Bounded: every field flipped in both segments, the position-based kinds at three places.
                let picked = full
                    || *kind == Kind::Flip
                    || (matches!(*what, "base_offset" | "crc" | "payload") && (k + seg) % 2 == 0);
                if !picked {
                    continue;
                }
                let place = if seg == 0 {
                    Place::Sealed {
                        n: 3,
                        field: *field,
                    }
                } else {
                    Place::Active {
                        n: 3,
                        field: *field,
                    }
                };
                out.push(Case {
                    what,
                    place,
                    kind: *kind,
                    clean: (i + k + seg) % 2 == 0,
                });
            }
        }
    }
    for (what, entry, field) in [
        ("index.rel_offset", 1, 0),
        ("index.rel_raft_index", 1, 4),
        ("index.position", 1, 8),
    ] {
        for kind in [Kind::Flip, Kind::ZeroSector, Kind::Truncate] {
            if full || kind == Kind::Flip || field == 0 {
                let place = Place::OffsetIndex { entry, field };
                out.push(Case {
                    what,
                    place,
                    kind,
                    clean: true,
                });
            }
        }
    }
    for (what, field) in [("timeindex.timestamp", 0), ("timeindex.rel_offset", 8)] {
        for kind in [Kind::Flip, Kind::Truncate] {
            let place = Place::TimeIndex { entry: 1, field };
            out.push(Case {
                what,
                place,
                kind,
                clean: true,
            });
        }
    }
    let files: [(&str, &[(&str, usize)]); 4] = [
        (
            "checkpoint",
            &[
                ("magic", 0),
                ("version", 4),
                ("active_base_offset", 8),
                ("clean_len", 16),
                ("clean", 20),
                ("crc", 21),
            ],
        ),
        (
            "raft-state",
            &[
                ("magic", 0),
                ("version", 4),
                ("term", 8),
                ("vote", 16),
                ("commit", 24),
                ("marker_index", 32),
                ("marker_term", 40),
                ("marker_offset", 48),
                ("conf_len", 56),
                ("conf", 60),
            ],
        ),
        (
            "durable",
            &[
                ("magic", 0),
                ("version", 4),
                ("base_offset", 8),
                ("len", 16),
                ("flags", 20),
                ("raft_index", 24),
                ("crc", 32),
            ],
        ),
        ("repair", &[("until", 0), ("crc", 8)]),
    ];
    for (name, fields) in files {
        for (j, (_, at)) in fields.iter().enumerate() {
            for kind in [Kind::Flip, Kind::Truncate, Kind::Unreadable] {
                if full || kind == Kind::Flip || (j == 0 && kind == Kind::Truncate) {
                    out.push(Case {
                        what: name,
                        place: Place::File { name, at: *at },
                        kind,
                        clean: j % 2 == 0,
                    });
                }
            }
        }
    }
    out
}

/// The `.log` files of a partition directory, oldest first.
fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut logs: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    logs.sort();
    logs
}

/// Batches in a segment file (walking the intact length fields).
fn batch_count(path: &Path) -> usize {
    let b = std::fs::read(path).unwrap();
    let (mut pos, mut n) = (0, 0);
    while pos + HEADER_LEN <= b.len() {
        let len = u32::from_le_bytes(b[pos + 24..pos + 28].try_into().unwrap()) as usize;
        if len < HEADER_LEN {
            break;
        }
        pos += len;
        n += 1;
    }
    n
}

/// Position of batch `n` in a segment file (walking the intact length fields).
fn batch_position(path: &Path, n: usize) -> usize {
    let b = std::fs::read(path).unwrap();
    let mut pos = 0;
    for _ in 0..n {
        pos += u32::from_le_bytes(b[pos + 24..pos + 28].try_into().unwrap()) as usize;
    }
    assert!(
        pos + HEADER_LEN <= b.len(),
        "{} has batch {n}",
        path.display()
    );
    pos
}

/// The file and byte offset a case damages.
fn locate(dir: &Path, place: Place) -> (PathBuf, usize) {
    let segs = segments(dir);
    match place {
        Place::Sealed { n, field } => (segs[0].clone(), batch_position(&segs[0], n) + field),
        Place::Active { n, field } => {
            let p = segs.last().unwrap().clone();
            (p.clone(), batch_position(&p, n) + field)
        }
        Place::OffsetIndex { entry, field } => {
            (segs[0].with_extension("index"), entry * 12 + field)
        }
        Place::TimeIndex { entry, field } => {
            (segs[0].with_extension("timeindex"), entry * 12 + field)
        }
        Place::File { name, at } => (dir.join(name), at),
    }
}

fn damage(path: &Path, at: usize, kind: Kind, faults: &Faults) {
    let mut b = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(
        at < b.len(),
        "{} is {} bytes, no byte {at}",
        path.display(),
        b.len()
    );
    match kind {
        Kind::Flip => {
            b[at] ^= 0x10;
            std::fs::write(path, &b).unwrap();
        }
        Kind::ZeroSector => {
            let start = at & !511;
            let end = (start + 512).min(b.len());
            b[start..end].fill(0);
            std::fs::write(path, &b).unwrap();
        }
        Kind::Truncate => {
            std::fs::OpenOptions::new()
                .write(true)
                .open(path)
                .unwrap()
                .set_len(at as u64)
                .unwrap();
        }
        Kind::Unreadable => {
            let start = (at & !511) as u64;
            faults.make_unreadable(path, start..start + 512);
        }
    }
}

/// Marks a clean stop as a crash: the active segment is then scanned at the next open.
fn make_unclean(dir: &Path) {
    let p = dir.join("checkpoint");
    let Ok(mut b) = std::fs::read(&p) else { return };
    if b.len() == 25 && b[20] == 1 {
        b[20] = 0;
        let crc = crc32fast::hash(&b[..21]);
        b[21..25].copy_from_slice(&crc.to_le_bytes());
        std::fs::write(&p, b).unwrap();
    }
}

/// What must be identical on every replica: data batches byte for byte (stamp included); control batches
/// (Raft's own entries) by stamp and payload, since each replica writes their timestamp itself.
fn comparable(batches: &[Bytes]) -> Vec<Bytes> {
    batches
        .iter()
        .map(|b| {
            let h = batch::BatchHeader::parse(b).unwrap();
            if h.is_control() {
                let (t, payload) = batch::control_payload(b).unwrap();
                // Offset, term and index (the stamp checksum covers the locally written CRC).
                let mut key = b[..12].to_vec();
                key.extend_from_slice(&b[16..24]);
                key.push(t);
                key.extend_from_slice(&payload);
                Bytes::from(key)
            } else {
                b.clone()
            }
        })
        .collect()
}

/// Whether every running replica's committed log holds the same entries as the leader's.
fn replicas_agree(c: &Cluster, leader: usize, skip: Option<u64>) -> Result<(), String> {
    let lead = c.nodes[leader].broker().partition(TOPIC, 0).unwrap();
    let commit = lead.committed_raft_index();
    let read = |r: &ferry_broker::replica::Replica| -> Result<Vec<Bytes>, String> {
        let mut out = Vec::new();
        let mut next = r.first_raft_index();
        while next <= commit {
            let b = r
                .stored_batches(next, commit + 1, 4 << 20)
                .map_err(|e| e.to_string())?;
            if b.is_empty() {
                return Err(format!(
                    "nothing at raft index {next} of {commit} (log holds {}..={})",
                    r.first_raft_index(),
                    r.last_raft_index()
                ));
            }
            next += b.len() as u64;
            out.extend(b);
        }
        Ok(out)
    };
    let want = read(&lead)?;
    for n in c.running().filter(|n| Some(n.id) != skip) {
        let Ok(r) = n.broker().partition(TOPIC, 0) else {
            continue; // cannot open: fenced, reported by readiness
        };
        if r.trouble().is_some() || r.committed_raft_index() < commit {
            return Err(format!("broker {} not caught up yet", n.id));
        }
        let got = read(&r)?;
        if comparable(&got) != comparable(&want) {
            return Err(format!(
                "broker {}'s committed log differs from the leader's",
                n.id
            ));
        }
    }
    Ok(())
}

async fn run_case(case: Case) -> String {
    let mut c = Cluster::start().await;
    c.publish(90).await; // about 90 KiB: the 64 KiB first segment is sealed
    let leader = c.leader().await;
    let victim = (leader + 1) % 3; // a follower
                                   // A quorum acknowledged every batch, which need not include this follower: wait until it holds all of
                                   // them, or the damage below may aim past what it has written (a follower lagging under load left its
                                   // first segment unsealed and its index empty).
    let last = |i: usize| {
        c.nodes[i]
            .broker()
            .partition(TOPIC, 0)
            .unwrap()
            .last_raft_index()
    };
    let deadline = Instant::now() + CASE_DEADLINE;
    while last(victim) < last(leader) {
        assert!(
            Instant::now() < deadline,
            "follower {} stays at raft index {} of {}",
            c.nodes[victim].id,
            last(victim),
            last(leader)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let before = c.nodes[victim]
        .broker()
        .partition(TOPIC, 0)
        .unwrap()
        .last_raft_index();
    let dir = c.nodes[victim].partition_dir();
    if std::env::var("FERRY_TEST_LOG").is_ok() {
        eprintln!(
            "case {case:?}: leader {} victim {}",
            c.nodes[leader].id, c.nodes[victim].id
        );
    }
    c.nodes[victim].stop().await;
    if !case.clean {
        make_unclean(&dir);
    }
    if let Place::File { name: "repair", .. } = case.place {
        // A replica stopped in the middle of a repair (its marker says how far it must get again).
        let until = before.to_le_bytes();
        let mut b = until.to_vec();
        b.extend_from_slice(&crc32fast::hash(&until).to_le_bytes());
        std::fs::write(dir.join("repair"), b).unwrap();
    }
    let (path, at) = locate(&dir, case.place);
    damage(&path, at, case.kind, &c.nodes[victim].faults);
    let peers = c.peers.clone();
    c.nodes[victim].start(&peers).await;
    // Never silently shortened.
    let outcome = match c.nodes[victim].broker().partition(TOPIC, 0) {
        Err(e) => format!("down ({e})"),
        Ok(r) => match r.trouble() {
            Some(t) => format!("reported ({})", t.split(':').next().unwrap_or_default()),
            None => {
                assert!(
                    r.last_raft_index() >= before,
                    "{case:?}: the replica holds {} of its {before} entries, and neither repairs nor is fenced",
                    r.last_raft_index()
                );
                "intact".into()
            }
        },
    };
    c.publish(15).await;
    c.change_leader(c.nodes[victim].id).await;
    c.publish(15).await;
    // Every replica that runs catches up to the same committed log (the damaged one repaired from its
    // peers); one that cannot open, or whose repair state itself is damaged, stays fenced and says so.
    let fenced_for_good = matches!(
        case.place,
        Place::File {
            name: "raft-state" | "repair",
            ..
        }
    );
    let deadline = Instant::now() + CASE_DEADLINE;
    let mut repaired_later = false;
    loop {
        let leader = c.leader().await;
        let skip = fenced_for_good.then_some(c.nodes[victim].id);
        if let Ok(r) = c.nodes[victim].broker().partition(TOPIC, 0) {
            repaired_later |= r.trouble().is_some();
        }
        match replicas_agree(&c, leader, skip) {
            Ok(()) => break,
            Err(why) => {
                assert!(Instant::now() < deadline, "{case:?}: {why}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    let outcome = match (outcome.as_str(), repaired_later) {
        ("intact", true) => "found-later (scrub or read, repaired)".to_owned(),
        _ => outcome,
    };
    let raft_state = matches!(
        case.place,
        Place::File {
            name: "raft-state",
            ..
        }
    );
    if fenced_for_good && !raft_state {
        let b = c.nodes[victim].broker();
        let visible =
            !b.troubles().is_empty() || b.partition(TOPIC, 0).is_ok_and(|r| r.trouble().is_some());
        assert!(visible, "{case:?}: the fenced replica is not reported");
    }
    if raft_state {
        // A replica that cannot open its hard state is named by what `/readyz` serves (fault 15 of
        // docs/reliability.md): the broker is ready, it serves its other partitions, with a `down:` line
        // naming this one.
        let b = c.nodes[victim].broker();
        let ready = b
            .readiness()
            .unwrap_or_else(|why| panic!("{case:?}: the broker is not ready: {why}"));
        let named = format!("partition {TOPIC}-0 ");
        assert!(
            ready.down.iter().any(|d| d.starts_with(&named)),
            "{case:?}: readiness does not name the fenced replica: {:?}",
            ready.down
        );
    }
    // Nothing acknowledged lost, nothing served twice or out of place.
    let all = c.read_all().await;
    let got: HashMap<u64, &String> = all.iter().map(|(o, v)| (*o, v)).collect();
    for (o, v) in &c.acked {
        assert_eq!(
            got.get(o),
            Some(&v),
            "{case:?}: acknowledged offset {o} lost or changed"
        );
    }
    let mut seen = std::collections::HashSet::new();
    for (_, v) in &all {
        assert!(seen.insert(v), "{case:?}: {} served twice", &v[..7]);
    }
    for n in &mut c.nodes {
        n.stop().await;
    }
    outcome
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_field_of_every_on_disk_structure() {
    if std::env::var("FERRY_TEST_LOG").is_ok() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(std::env::var("FERRY_TEST_LOG").unwrap())
            .try_init();
    }
    let full = std::env::var("FERRY_FAULT_LOCATIONS").is_ok_and(|v| v == "full");
    let mut cases = cases(full);
    // One case by its number in the list (as the output numbers them), to look at it alone.
    if let Some(n) = std::env::var("FERRY_FAULT_CASE")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
    {
        cases = vec![cases[n - 1]];
    }
    let started = Instant::now();
    let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
    for (i, case) in cases.iter().enumerate() {
        let t = Instant::now();
        let outcome = run_case(*case).await;
        eprintln!(
            "fault-locations {}/{}: {} {:?} {:?} clean={} -> {outcome} ({} ms)",
            i + 1,
            cases.len(),
            case.what,
            case.place,
            case.kind,
            case.clean,
            t.elapsed().as_millis()
        );
        *outcomes
            .entry(outcome.split(' ').next().unwrap_or_default().to_owned())
            .or_default() += 1;
    }
    eprintln!(
        "fault-locations: {} cases in {:?}: {outcomes:?}",
        cases.len(),
        started.elapsed()
    );
}

/// M6 in the durability audit: damage in the controller's log made `Broker::start` refuse to start, and
/// the scrub never looked at that log. Now the controller replica is cut for repair at open (or by the
/// scrub), takes the commands back from its peers, and the broker serves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damage_in_the_controller_log_is_repaired_from_peers() {
    let mut c = Cluster::start().await;
    c.publish(10).await;
    let victim = (c.leader().await + 1) % 3;
    // The controller log holds at least three batches on the victim before it stops (how many broker
    // registrations it holds by now is a race): one more command, and wait for the victim to commit it.
    let pad = c.nodes[victim]
        .broker()
        .create_topic("pad", 1, 3, TopicSettings::default())
        .await;
    assert!(pad.is_ok(), "{pad:?}");
    let deadline = Instant::now() + CASE_DEADLINE;
    while c.nodes[victim].broker().controller().committed_raft_index() < 3 {
        assert!(
            Instant::now() < deadline,
            "the victim's controller commits three entries"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let dir = c.nodes[victim].dir.join("__cluster");
    c.nodes[victim].stop().await;
    make_unclean(&dir);
    let log = segments(&dir).pop().unwrap();
    assert!(
        batch_count(&log) > 2,
        "{} holds three batches",
        log.display()
    );
    let at = batch_position(&log, 2) + HEADER_LEN + 5;
    damage(&log, at, Kind::Flip, &c.nodes[victim].faults);
    let peers = c.peers.clone();
    c.nodes[victim].start(&peers).await; // starts: damage is no longer a refusal
    let deadline = Instant::now() + CASE_DEADLINE;
    loop {
        let ctl = c.nodes[victim].broker().controller();
        let others = c.nodes[(victim + 1) % 3].broker().controller();
        if ctl.trouble().is_none()
            && ctl.committed_raft_index() >= others.committed_raft_index()
            && c.nodes[victim].broker().topic(TOPIC).is_ok()
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the controller replica did not repair"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The repaired controller takes part in new commands.
    let t = c.nodes[victim]
        .broker()
        .create_topic("after", 1, 3, TopicSettings::default())
        .await;
    assert!(t.is_ok(), "{t:?}");
    c.publish(5).await;
    for n in &mut c.nodes {
        n.stop().await;
    }
}

/// M2: a replica task that panicked was a zombie forever. Supervision restarts it from its files, and the
/// partition serves on with nothing acknowledged lost.
#[cfg(feature = "fault-injection")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicked_replica_is_restarted_by_supervision() {
    let mut c = Cluster::start().await;
    c.publish(20).await;
    let leader = c.leader().await;
    let panicked = c.nodes[leader].broker().partition(TOPIC, 0).unwrap();
    panicked.inject_panic().await;
    let deadline = Instant::now() + CASE_DEADLINE;
    while !panicked.has_stopped() {
        assert!(Instant::now() < deadline, "the task did not end");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!panicked.is_serving() && panicked.leader() == 0);
    loop {
        // While supervision swaps the replica, the partition is briefly not in the broker's map.
        let now = c.nodes[leader].broker().partition(TOPIC, 0);
        if now.is_ok_and(|now| !now.has_stopped() && now.failure().is_none() && now.leader() != 0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "supervision did not restart the replica"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    c.publish(20).await;
    let all = c.read_all().await;
    let got: HashMap<u64, &String> = all.iter().map(|(o, v)| (*o, v)).collect();
    for (o, v) in &c.acked {
        assert_eq!(got.get(o), Some(&v), "acknowledged offset {o} lost");
    }
    for n in &mut c.nodes {
        n.stop().await;
    }
}
