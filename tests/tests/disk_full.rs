//! A broker whose disk fills up keeps running: publishes fail with an error, nothing acknowledged is lost,
//! and once space is free and the broker restarted it serves everything it acknowledged.
//!
//! The data dir is a small tmpfs, like a Kubernetes `emptyDir` with `medium: Memory`: there a read fault on
//! a hole of a memory-mapped file allocates a page, and on a full disk that is SIGBUS. A 20-minute chaos run
//! found brokers dying so (the active segment's sparse index was mapped and read over its holes after a
//! replica restarted on the full disk). Mounting a tmpfs needs root; without it the test fails unless
//! `CHAOS_ALLOW_SKIP` names `disk-full` (then it says so and passes).

use std::process::Command;
use std::time::{Duration, Instant};

use ferry_tests::{run_ferry, Ferryd};

/// Size of the tmpfs (bytes): room for the first load, then filled.
const DISK_BYTES: u64 = 48 << 20;

/// Unmounts the tmpfs when the test ends, however it ends.
struct Mounted(std::path::PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn free_bytes(dir: &std::path::Path) -> u64 {
    let out = Command::new("df")
        .args(["--output=avail", "-B1"])
        .arg(dir)
        .output()
        .expect("df");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .expect("df prints the free bytes")
}

fn lines(out: &std::process::Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn a_full_disk_is_an_error_not_a_crash_and_loses_nothing_acknowledged() {
    let _serial = ferry_tests::serial();
    let root = tempfile::tempdir().unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={DISK_BYTES}"), "tmpfs"])
        .arg(root.path())
        .output();
    if !mounted.as_ref().is_ok_and(|o| o.status.success()) {
        let allowed = std::env::var("CHAOS_ALLOW_SKIP").unwrap_or_default();
        assert!(
            allowed.split(',').any(|f| f == "disk-full"),
            "cannot mount a tmpfs (needs root): {mounted:?}; set CHAOS_ALLOW_SKIP=disk-full to skip"
        );
        eprintln!("disk_full: skipped (no tmpfs: CHAOS_ALLOW_SKIP names disk-full)");
        return;
    }
    let _unmount = Mounted(root.path().to_owned());
    let data = root.path().join("data");
    let mut broker = Ferryd::start(&data, &[]);
    let out = broker.ferry(&["topic", "create", "t", "--partitions", "3"], None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let first: Vec<String> = (0..20_000).map(|i| format!("m{i:06}")).collect();
    let out = broker.ferry(
        &["produce", "t"],
        Some(format!("{}\n", first.join("\n")).as_bytes()),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Fill the disk but 64 KiB, then keep publishing: every replica runs into the full disk.
    let filler = root.path().join("filler");
    let fill = free_bytes(root.path()).saturating_sub(64 << 10);
    let status = Command::new("fallocate")
        .args(["-l", &fill.to_string()])
        .arg(&filler)
        .status()
        .expect("fallocate");
    assert!(status.success(), "fallocate -l {fill}");
    let big: String = (0..4_000).map(|i| format!("{i:0>700}\n")).collect();
    // Each publish fails in a second or two, but one now and then takes the client's whole request
    // timeout while the replicas restart on the full disk (seen once in 5-15 runs, on c35fae3 too).
    // The likely cause, read from the code: the client retries a batch refused as a sequence gap
    // after the batch before it failed for good (docs/design.md, "Not yet"). The bound is what a
    // client can take: three produces, each at most one request timeout plus its retries. A broker
    // that hangs past that, or dies, still fails the test.
    let request_timeout = Duration::from_millis(ferry_client::config::REQUEST_TIMEOUT_MS_DEFAULT);
    let deadline = Instant::now() + 3 * (request_timeout + Duration::from_secs(10));
    for _ in 0..3 {
        let _ = run_ferry(&broker.addr, &["produce", "t"], Some(big.as_bytes()));
        assert!(
            Instant::now() < deadline,
            "publishing to a full disk took too long"
        );
    }
    // Alive: it did not die of SIGBUS (or anything else) on the full disk, and still answers.
    assert!(
        broker.child.try_wait().expect("wait").is_none(),
        "the broker died on the full disk: {:?}",
        broker.child.try_wait()
    );
    assert_eq!(ferry_tests::http_get(&broker.http, "/healthz").0, 200);

    // Space again; a SIGTERM stops it cleanly and in time, and after the restart every message that
    // was acknowledged before the disk filled is there, in order per partition.
    std::fs::remove_file(&filler).unwrap();
    assert!(
        broker.stop(),
        "SIGTERM stops a broker that ran into a full disk"
    );
    broker.restart_in_place();
    broker.wait_ready();
    let out = broker.ferry(
        &["consume", "t", "--from", "beginning", "--exit-at-end"],
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let read = lines(&out);
    let mut seen: Vec<&String> = read.iter().filter(|l| l.starts_with('m')).collect();
    seen.sort();
    let want: Vec<&String> = first.iter().collect();
    assert_eq!(
        seen, want,
        "every message acknowledged before the disk filled"
    );
}
