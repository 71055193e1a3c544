//! The short chaos schedule that runs on every change: `ferry-chaos` for two and a half minutes, every fault
//! of its schedule once (a membership fault last, as time allows), and a clean history (`lost=0
//! duplicated=0 inconsistent=0 ...`).

use std::process::Command;

#[test]
fn a_short_chaos_run_keeps_every_acknowledged_message() {
    // Multi-broker timing: never beside another test of this binary (see ferry_tests::serial).
    let _serial = ferry_tests::serial();
    let report = tempfile::NamedTempFile::new().unwrap();
    let out = Command::new(ferry_tests::bin("ferry-chaos"))
        .args([
            "--duration-secs",
            "150",
            "--fault-secs",
            "2",
            "--heal-secs",
            "3",
            "--rate",
            "300",
        ])
        .args(["--report", report.path().to_str().unwrap()])
        .output()
        .expect("run ferry-chaos");
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "chaos run failed: {summary}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for clean in [
        "lost=0 ",
        "duplicated=0 ",
        "inconsistent=0 ",
        "unseen=0 ",
        "commit_regressions=0 ",
        "stuck_membership=0 ",
    ] {
        assert!(summary.contains(clean), "{summary}");
    }
    let r: serde_json::Value =
        serde_json::from_slice(&std::fs::read(report.path()).unwrap()).unwrap();
    assert!(r["acked"].as_u64().unwrap() > 1000, "load ran: {r}");
    assert!(
        r["faults"].as_array().unwrap().len() >= 12,
        "faults ran: {r}"
    );
    // A fault this machine cannot inject is skipped, never silently: say which and why.
    for s in r["skipped"].as_array().unwrap() {
        eprintln!("chaos: skipped fault: {}", s.as_str().unwrap_or_default());
    }
    eprintln!("{summary}");
}
