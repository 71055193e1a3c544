//! Byte-rate quotas (docs/security.md): a producer and a consumer over their principal's quota are slowed
//! to it, within 10%, by delayed answers rather than errors; a principal without a quota is not slowed; the
//! throttling shows in the metrics.

use ferry_tests::pki::token_hash;
use ferry_tests::{run_ferry, Ferryd};

const SLOW: &str = "slow-token";
const FREE: &str = "free-token";
/// The quotas under test (bytes per second).
const PUBLISH_RATE: f64 = 1_048_576.0;
const FETCH_RATE: f64 = 2_097_152.0;

/// `ferry -o json bench ...` as `token`: the report.
fn bench(b: &Ferryd, token: &str, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["--token", token, "-o", "json", "bench"];
    all.extend_from_slice(args);
    let out = run_ferry(&b.addr, &all, None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.lines().last().unwrap_or_default()).expect("a JSON report")
}

fn rate(report: &serde_json::Value) -> f64 {
    report["bytes"].as_f64().unwrap() / report["seconds"].as_f64().unwrap()
}

#[test]
fn producers_and_consumers_are_throttled_to_their_quota() {
    let _serial = ferry_tests::serial();
    let dir = tempfile::tempdir().unwrap();
    let tokens = format!(
        "User:slow={},User:free={}",
        token_hash(SLOW),
        token_hash(FREE)
    );
    let quotas = "User:slow=publish:1MiB,User:slow=fetch:2MiB";
    let b = Ferryd::start(dir.path(), &["--auth-tokens", &tokens, "--quotas", quotas]);
    let out = run_ferry(
        &b.addr,
        &["--token", FREE, "topic", "create", "q", "--partitions", "4"],
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // 6 MB at 1 MiB/s: about six seconds, whatever the disk could do.
    let slow = bench(
        &b,
        SLOW,
        &[
            "produce",
            "--topic",
            "q",
            "--messages",
            "6000",
            "--size",
            "1000",
        ],
    );
    let achieved = rate(&slow);
    assert_eq!(slow["failed"], 0, "throttled, not refused: {slow}");
    assert!(
        (achieved - PUBLISH_RATE).abs() / PUBLISH_RATE < 0.10,
        "a producer with a 1 MiB/s quota published {achieved:.0} B/s: {slow}"
    );
    // Another principal is not held to it.
    let free = bench(
        &b,
        FREE,
        &[
            "produce",
            "--topic",
            "q",
            "--messages",
            "6000",
            "--size",
            "1000",
        ],
    );
    assert!(
        rate(&free) > 3.0 * PUBLISH_RATE,
        "an unthrottled producer: {free}"
    );

    // 12 MB stored; reading them at 2 MiB/s takes about six seconds.
    let read = bench(
        &b,
        SLOW,
        &["consume", "--topic", "q", "--messages", "12000"],
    );
    let achieved = rate(&read);
    assert!(
        (achieved - FETCH_RATE).abs() / FETCH_RATE < 0.10,
        "a consumer with a 2 MiB/s quota read {achieved:.0} B/s: {read}"
    );
    let throttled = b
        .metric("ferry_quota_throttled_total{principal=\"User:slow\",kind=\"publish\"}")
        .unwrap_or(0.0);
    assert!(throttled > 0.0, "throttling is counted");
}

/// A quota is one per broker: a principal publishing through two client listeners at once shares its
/// rate between them (each listener with its own clocks would give it twice its quota).
#[test]
fn a_quota_holds_across_listeners() {
    let _serial = ferry_tests::serial();
    let dir = tempfile::tempdir().unwrap();
    let tokens = format!("User:slow={}", token_hash(SLOW));
    let b = Ferryd::start(
        dir.path(),
        &[
            "--auth-tokens",
            &tokens,
            "--quotas",
            "User:slow=publish:1MiB",
            "--listeners",
            "second=127.0.0.1:0",
        ],
    );
    let out = run_ferry(
        &b.addr,
        &["topic", "create", "q", "--partitions", "2"],
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let second = b.listeners["second"].clone();
    let started = std::time::Instant::now();
    let one = {
        let addr = b.addr.clone();
        std::thread::spawn(move || bench_at(&addr))
    };
    let two = std::thread::spawn(move || bench_at(&second));
    let bytes = one.join().unwrap() + two.join().unwrap();
    let achieved = bytes / started.elapsed().as_secs_f64();
    assert!(
        (achieved - PUBLISH_RATE).abs() / PUBLISH_RATE < 0.15,
        "through two listeners together {achieved:.0} B/s for a 1 MiB/s quota"
    );
}

/// Bytes `ferry bench produce` published as the slow principal through `addr` (3 MB).
fn bench_at(addr: &str) -> f64 {
    let args = [
        "--token",
        SLOW,
        "-o",
        "json",
        "bench",
        "produce",
        "--topic",
        "q",
        "--messages",
        "3000",
        "--size",
        "1000",
    ];
    let out = run_ferry(addr, &args, None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let r: serde_json::Value =
        serde_json::from_str(text.lines().last().unwrap_or_default()).unwrap();
    r["bytes"].as_f64().unwrap()
}
