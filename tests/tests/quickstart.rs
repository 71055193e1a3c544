//! The README quickstart through the real CLI: create a topic, produce 100,000 keyed lines, consume them all
//! back from the beginning, in order within each partition, each key always on one partition.

use std::collections::HashMap;

use ferry_tests::Ferryd;

#[test]
fn produce_and_consume_100k_keyed_lines_with_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Ferryd::start(dir.path(), &[]);
    let out = broker.ferry(&["topic", "create", "orders", "--partitions", "4"], None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let mut input = String::new();
    for i in 0..100_000 {
        input.push_str(&format!("user-{}:order-{i}\n", i % 1000));
    }
    let out = broker.ferry(
        &["produce", "orders", "--key-separator", ":"],
        Some(input.as_bytes()),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = broker.ferry(
        &[
            "consume",
            "orders",
            "--from",
            "beginning",
            "--exit-at-end",
            "-o",
            "json",
        ],
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let mut partition_of_key: HashMap<String, u64> = HashMap::new();
    let mut last_seq: HashMap<String, i64> = HashMap::new();
    let mut last_offset: HashMap<u64, i64> = HashMap::new();
    let mut count = 0;
    for line in stdout.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["topic"], "orders");
        let key = v["key"].as_str().unwrap().to_owned();
        let partition = v["partition"].as_u64().unwrap();
        let offset = v["offset"].as_i64().unwrap();
        assert!(v["timestamp"].as_i64().unwrap() > 0);
        let seq: i64 = v["value"]
            .as_str()
            .unwrap()
            .strip_prefix("order-")
            .unwrap()
            .parse()
            .unwrap();
        // Same key, same partition.
        assert_eq!(
            *partition_of_key.entry(key.clone()).or_insert(partition),
            partition,
            "{key}"
        );
        // In order within a partition (offsets and, per key, production order).
        let lo = last_offset.entry(partition).or_insert(-1);
        assert_eq!(
            offset,
            *lo + 1,
            "offsets of partition {partition} are dense and ordered"
        );
        *lo = offset;
        let ls = last_seq.entry(key).or_insert(-1);
        assert!(seq > *ls, "per-key order");
        *ls = seq;
        count += 1;
    }
    assert_eq!(count, 100_000);
    assert!(last_offset.len() > 1, "keys spread over partitions");

    // `--max` and text output.
    let out = broker.ferry(
        &[
            "consume",
            "orders",
            "--from",
            "beginning",
            "--partition",
            "0",
            "--max",
            "3",
        ],
        None,
    );
    assert!(out.status.success());
    assert_eq!(String::from_utf8(out.stdout).unwrap().lines().count(), 3);

    // Errors: one readable line and a non-zero exit.
    let out = broker.ferry(&["topic", "describe", "missing"], None);
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("missing"), "{err}");
}
