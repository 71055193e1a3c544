//! Consumer groups through the real CLI: two `ferry consume --group` processes share a topic's partitions,
//! each message is consumed by exactly one of them; after kill -9 of one the other takes every partition
//! within the session timeout and resumes from the committed offsets; a static member that returns gets
//! its partitions back without disturbing the others; `ferry group describe` reports lag 0 once caught up.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ferry_tests::{bin, run_ferry, wait_until, Ferryd};

const SESSION_MS: &str = "3000";

/// A `ferry consume --group` process writing JSON lines to a file.
struct Member {
    child: Child,
    out: PathBuf,
}

impl Member {
    fn start(addr: &str, dir: &Path, name: &str, group: &str, instance: Option<&str>) -> Member {
        let out = dir.join(format!("{name}.out"));
        let file = std::fs::File::create(&out).unwrap();
        let mut args = vec![
            "--bootstrap",
            addr,
            "-o",
            "json",
            "consume",
            "t",
            "--group",
            group,
            "--from",
            "beginning",
            "--session-timeout-ms",
            SESSION_MS,
        ];
        if let Some(i) = instance {
            args.extend(["--instance-id", i]);
        }
        let child = Command::new(bin("ferry"))
            .args(&args)
            .env_remove("RUST_LOG")
            // No contexts from this machine's CLI config file.
            .env("FERRY_CLI_CONFIG", "/dev/null")
            .stdout(Stdio::from(file))
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        Member { child, out }
    }

    /// Values printed so far.
    fn values(&self) -> Vec<String> {
        std::fs::read_to_string(&self.out)
            .unwrap()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .map(|v| v["value"].as_str().unwrap().to_owned())
            .collect()
    }

    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn describe(addr: &str, group: &str) -> serde_json::Value {
    let out = run_ferry(addr, &["-o", "json", "group", "describe", group], None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Partitions assigned to each instance (or member id), when the group is stable.
fn assignment(d: &serde_json::Value) -> BTreeMap<String, Vec<u64>> {
    d["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let who = m["instance_id"]
                .as_str()
                .unwrap_or(m["member_id"].as_str().unwrap())
                .to_owned();
            let mut ps: Vec<u64> = m["assignment"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t["partition"].as_u64().unwrap())
                .collect();
            ps.sort_unstable();
            (who, ps)
        })
        .collect()
}

fn owners(d: &serde_json::Value) -> HashMap<u64, String> {
    d["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| Some((p["partition"].as_u64()?, p["owner"].as_str()?.to_owned())))
        .collect()
}

fn produce(addr: &str, from: usize, count: usize) {
    let lines: String = (from..from + count)
        .map(|i| format!("k{i}:m{i}\n"))
        .collect();
    let out = run_ferry(
        addr,
        &["produce", "t", "--key-separator", ":"],
        Some(lines.as_bytes()),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn setup() -> (tempfile::TempDir, Ferryd, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let broker = Ferryd::start(dir.path(), &[]);
    let out = run_ferry(
        &broker.addr,
        &["topic", "create", "t", "--partitions", "6"],
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (dir, broker, tempfile::tempdir().unwrap())
}

#[test]
fn two_members_share_and_one_takes_over_after_kill9() {
    // Multi-broker timing: never beside another test of this binary (see ferry_tests::serial).
    let _serial = ferry_tests::serial();
    let (_dir, broker, outs) = setup();
    let addr = broker.addr.clone();
    let a = Member::start(&addr, outs.path(), "a", "g", None);
    let mut b = Member::start(&addr, outs.path(), "b", "g", None);
    wait_until(
        Duration::from_secs(20),
        "two members with 3 partitions each",
        || {
            let d = describe(&addr, "g");
            let owned = owners(&d);
            d["state"] == "stable"
                && assignment(&d).values().map(Vec::len).collect::<Vec<_>>() == [3, 3]
                && owned.len() == 6
        },
    );
    produce(&addr, 0, 20_000);
    wait_until(Duration::from_secs(30), "20,000 messages consumed", || {
        a.values().len() + b.values().len() >= 20_000
    });
    let (va, vb) = (a.values(), b.values());
    assert!(!va.is_empty() && !vb.is_empty(), "both members consumed");
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for v in va.iter().chain(vb.iter()) {
        *seen.entry(v.as_str()).or_default() += 1;
    }
    assert_eq!(seen.len(), 20_000, "every message consumed");
    assert!(
        seen.values().all(|n| *n == 1),
        "each message by exactly one member"
    );

    // Once everything is committed (automatic commit, every second), lag is 0 on every partition.
    wait_until(Duration::from_secs(20), "lag 0 on every partition", || {
        let d = describe(&addr, "g");
        let ps = d["partitions"].as_array().unwrap().clone();
        ps.len() == 6 && ps.iter().all(|p| p["lag"].as_u64() == Some(0))
    });

    // kill -9 one member: the other owns all 6 within the session timeout (plus a heartbeat or two).
    b.kill9();
    let killed = Instant::now();
    wait_until(
        Duration::from_secs(20),
        "the survivor owns every partition",
        || {
            let d = describe(&addr, "g");
            let owned = owners(&d);
            assignment(&d).len() == 1 && owned.len() == 6
        },
    );
    let took = killed.elapsed();
    eprintln!("takeover after kill -9: {took:?}");
    assert!(
        took < Duration::from_millis(3000 + 2000),
        "takeover took {took:?}"
    );

    // It resumes from the committed offsets: new messages once, nothing earlier again (all was committed).
    produce(&addr, 20_000, 5_000);
    wait_until(
        Duration::from_secs(30),
        "the survivor consumed the new messages",
        || a.values().len() >= va.len() + 5_000,
    );
    let after: Vec<String> = a.values()[va.len()..].to_vec();
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for v in &after {
        *seen.entry(v.as_str()).or_default() += 1;
    }
    assert!(
        seen.values().all(|n| *n == 1),
        "nothing twice after the takeover"
    );
    for i in 20_000..25_000 {
        assert_eq!(seen.get(format!("m{i}").as_str()), Some(&1), "m{i} lost");
    }
    assert_eq!(
        after.len(),
        5_000,
        "nothing already committed was consumed again"
    );
}

#[test]
fn a_static_member_gets_its_partitions_back() {
    // Multi-broker timing: never beside another test of this binary (see ferry_tests::serial).
    let _serial = ferry_tests::serial();
    let (_dir, broker, outs) = setup();
    let addr = broker.addr.clone();
    let a = Member::start(&addr, outs.path(), "a", "s", Some("pod-a"));
    let mut b = Member::start(&addr, outs.path(), "b", "s", Some("pod-b"));
    wait_until(
        Duration::from_secs(20),
        "two static members, stable",
        || {
            let d = describe(&addr, "s");
            d["state"] == "stable" && owners(&d).len() == 6 && assignment(&d).len() == 2
        },
    );
    let before = describe(&addr, "s");
    let (assigned, generation) = (assignment(&before), before["generation"].as_u64());
    b.kill9();
    // Back within the session timeout, under the same instance id. It has rejoined once it consumes:
    // publish, and wait until the returned process delivers (comparing the group before that would compare
    // it with itself: the coordinator still counts pod-b alive right after the kill).
    let b2 = Member::start(&addr, outs.path(), "b2", "s", Some("pod-b"));
    produce(&addr, 0, 600);
    wait_until(
        Duration::from_secs(20),
        "600 messages consumed, some by the returned pod-b",
        || a.values().len() + b2.values().len() >= 600 && !b2.values().is_empty(),
    );
    let after = describe(&addr, "s");
    let (ids_before, ids_after) = (member_ids(&before), member_ids(&after));
    assert_eq!(
        ids_after.keys().collect::<Vec<_>>(),
        ids_before.keys().collect::<Vec<_>>(),
        "the same two instances"
    );
    assert_eq!(
        after["members"].as_array().map(Vec::len),
        Some(2),
        "no new member"
    );
    assert_eq!(ids_after["pod-a"], ids_before["pod-a"], "pod-a undisturbed");
    // Under a new member id: the killed process, had it still run, would be fenced.
    assert_ne!(ids_after["pod-b"], ids_before["pod-b"]);
    assert_eq!(
        assignment(&after),
        assigned,
        "same partitions, nobody else moved"
    );
    assert_eq!(after["generation"].as_u64(), generation, "no rebalance");
    let mut got = a.values();
    got.extend(b2.values());
    got.sort();
    let mut want: Vec<String> = (0..600).map(|i| format!("m{i}")).collect();
    want.sort();
    assert_eq!(got, want, "each record once");
}

/// Instance id → member id of every member.
fn member_ids(d: &serde_json::Value) -> BTreeMap<String, String> {
    d["members"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| {
            let instance = m["instance_id"].as_str()?.to_owned();
            Some((instance, m["member_id"].as_str()?.to_owned()))
        })
        .collect()
}
