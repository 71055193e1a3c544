//! The `ferry` binary against real `ferryd` processes: exit codes, stderr lines and the JSON contract of
//! docs/cli.md. The 100,000-line produce and consume round trip is in `quickstart.rs`.

use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use ferry_protocol::partitioner::partition_for_key;
use ferry_tests::{bin, unused_addr, wait_exit, Ferryd};
use serde_json::{json, Value};

fn stdout_lines(output: &Output) -> Vec<String> {
    String::from_utf8(output.stdout.clone())
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn json_lines(output: &Output) -> Vec<Value> {
    stdout_lines(output)
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn stderr(output: &Output) -> String {
    String::from_utf8(output.stderr.clone()).unwrap()
}

/// Runs `ferry args...` against `broker` and asserts it succeeded.
fn ok(broker: &Ferryd, args: &[&str], stdin: &[u8]) -> Output {
    let out = broker.ferry(args, Some(stdin));
    assert!(out.status.success(), "ferry {args:?}: {}", stderr(&out));
    out
}

/// A broker in a temp dir, with the given topics created through the CLI.
fn broker_with(topics: &[(&str, u32)]) -> (tempfile::TempDir, Ferryd) {
    let dir = tempfile::tempdir().unwrap();
    let broker = Ferryd::start(dir.path(), &[]);
    for (name, partitions) in topics {
        let partitions = partitions.to_string();
        ok(
            &broker,
            &["topic", "create", name, "--partitions", &partitions],
            b"",
        );
    }
    (dir, broker)
}

/// High watermarks of `topic`'s partitions, from `topic describe -o json`.
fn high_watermarks(broker: &Ferryd, topic: &str) -> Vec<u64> {
    let out = ok(broker, &["topic", "describe", topic, "-o", "json"], b"");
    json_lines(&out)[0]["partition_info"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["high_watermark"].as_u64().unwrap())
        .collect()
}

#[test]
fn topic_commands_and_their_json() {
    let (_dir, broker) = broker_with(&[]);
    let args = [
        "topic",
        "create",
        "orders",
        "--partitions",
        "3",
        "--retention-ms",
        "1000",
    ];
    let out = ok(&broker, &args, b"");
    assert_eq!(
        stdout_lines(&out),
        ["created topic orders: 3 partitions, replication factor 1"]
    );
    let out = ok(&broker, &["-o", "json", "topic", "describe", "orders"], b"");
    let doc = &json_lines(&out)[0];
    assert_eq!(doc["name"], "orders");
    assert_eq!(doc["partitions"], 3);
    assert_eq!(doc["replicas"], 1);
    assert_eq!(
        doc["config"],
        json!({"retention_bytes": 0, "retention_ms": 1000, "segment_bytes": 0, "segment_ms": 0})
    );
    let partitions = doc["partition_info"].as_array().unwrap();
    assert_eq!(partitions.len(), 3);
    for (i, p) in partitions.iter().enumerate() {
        let expected = json!({"partition": i, "leader": 1, "replicas": [1], "in_sync": [1],
            "high_watermark": 0, "log_start_offset": 0, "error": null});
        assert_eq!(*p, expected);
    }
    let out = ok(&broker, &["topic", "list", "-o", "json"], b"");
    assert_eq!(
        json_lines(&out),
        [json!({"name": "orders", "partitions": 3, "replicas": 1})]
    );
    let out = ok(&broker, &["topic", "list"], b"");
    assert_eq!(
        stdout_lines(&out),
        ["NAME    PARTITIONS  REPLICAS", "orders  3           1"]
    );
    let out = broker.ferry(&["topic", "create", "orders", "--partitions", "1"], None);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stderr(&out), "error: topic 'orders' already exists\n");
    let out = ok(&broker, &["-o", "json", "topic", "delete", "orders"], b"");
    assert_eq!(json_lines(&out), [json!({"deleted": "orders"})]);
    let out = broker.ferry(&["topic", "describe", "orders"], None);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stderr(&out), "error: topic 'orders' does not exist\n");
}

#[test]
fn errors_and_usage() {
    let (_dir, broker) = broker_with(&[]);
    let out = broker.ferry(&["topic", "create", "x"], None);
    assert_eq!(
        out.status.code(),
        Some(2),
        "missing --partitions is a usage error"
    );
    let out = broker.ferry(&["produce", "missing"], Some(b"a\n"));
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stderr(&out), "error: topic 'missing' does not exist\n");

    let dead = unused_addr();
    let out = ferry_tests::run_ferry(&dead, &["topic", "list"], None);
    assert_eq!(out.status.code(), Some(1));
    let text = stderr(&out);
    assert!(
        text.starts_with("error: could not reach any bootstrap broker: ") && text.contains(&dead),
        "{text}"
    );
    assert_eq!(text.lines().count(), 1, "{text}");
    // A dead address first in the list is skipped.
    let both = format!("{dead},{}", broker.addr);
    let out = ferry_tests::run_ferry(&both, &["topic", "list"], None);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn produce_reports_and_consume_prints_the_documented_shapes() {
    let (_dir, broker) = broker_with(&[("t", 4)]);
    let input: String = (0..1_000).map(|i| format!("k{}:v{i}\n", i % 7)).collect();
    let args = ["produce", "t", "--key-separator", ":"];
    let out = ok(&broker, &args, input.as_bytes());
    assert_eq!(stderr(&out), "produced 1000 messages to t\n");
    assert!(out.stdout.is_empty());
    assert_eq!(high_watermarks(&broker, "t").iter().sum::<u64>(), 1_000);

    let args = [
        "consume",
        "t",
        "--from",
        "beginning",
        "--exit-at-end",
        "-o",
        "json",
    ];
    let out = ok(&broker, &args, b"");
    let records = json_lines(&out);
    assert_eq!(records.len(), 1_000);
    let fields = ["key", "offset", "partition", "timestamp", "topic", "value"];
    for r in &records {
        let mut keys: Vec<&str> = r.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort();
        assert_eq!(keys, fields, "exactly the documented fields: {r}");
        let value: u64 = r["value"].as_str().unwrap()[1..].parse().unwrap();
        assert_eq!(r["key"], format!("k{}", value % 7));
    }

    // The partition key "k0" went to: its first three messages, with their key.
    let partition = partition_for_key(b"k0", 4).to_string();
    let args = [
        "consume",
        "t",
        "--from",
        "beginning",
        "--partition",
        &partition,
        "--max",
        "3",
        "--print-key",
    ];
    let out = ok(&broker, &args, b"");
    let lines = stdout_lines(&out);
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0], "k0\tv0", "the first line produced with key k0");
    assert!(lines.iter().all(|l| l.contains("\tv")), "{lines:?}");

    // From the end with --exit-at-end there is nothing to wait for.
    let out = ok(&broker, &["consume", "t", "--exit-at-end"], b"");
    assert!(out.stdout.is_empty());
}

#[test]
fn produce_plain_lines_with_a_key_and_partition() {
    let (_dir, broker) = broker_with(&[("t", 2)]);
    let args = [
        "produce",
        "t",
        "--key",
        "K",
        "--partition",
        "1",
        "--acks",
        "leader",
    ];
    ok(&broker, &args, b"one\r\ntwo\n\nthree");
    assert_eq!(high_watermarks(&broker, "t"), [0, 4]);
    let args = [
        "consume",
        "t",
        "--from",
        "0",
        "--exit-at-end",
        "--print-key",
    ];
    let out = ok(&broker, &args, b"");
    assert_eq!(stdout_lines(&out), ["K\tone", "K\ttwo", "K\t", "K\tthree"]);
    let out = broker.ferry(&["produce", "t", "--partition", "2"], Some(b"x\n"));
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        "error: topic 't' has 2 partitions; partition 2 does not exist\n"
    );
}

#[test]
fn a_closed_pipe_ends_consume_quietly() {
    let (_dir, broker) = broker_with(&[("t", 1)]);
    // About 500 KB: far more than the pipe buffer, so consume is still writing when the reader goes.
    let input: String = (0..50_000).map(|i| format!("line {i}\n")).collect();
    ok(&broker, &["produce", "t"], input.as_bytes());
    let mut child = Command::new(bin("ferry"))
        .args([
            "--bootstrap",
            &broker.addr,
            "consume",
            "t",
            "--from",
            "beginning",
        ])
        .env_remove("RUST_LOG")
        // No contexts from this machine's CLI config file.
        .env("FERRY_CLI_CONFIG", "/dev/null")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let errors = std::thread::spawn(move || std::io::read_to_string(stderr).unwrap());
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert_eq!(first, "line 0\n");
    // The reader is gone now (like `| head -1`); without --exit-at-end only EPIPE can stop it.
    let status = wait_exit(&mut child, Duration::from_secs(20));
    assert!(status.success(), "{status}");
    assert_eq!(errors.join().unwrap(), "");
}

#[test]
fn cluster_status_counts_leaders() {
    let (_dir, broker) = broker_with(&[("a", 3), ("b", 2)]);
    let out = ok(&broker, &["-o", "json", "cluster", "status"], b"");
    let expected = json!({"controller": 1, "node_id": 1, "leaderless_partitions": 0, "moving_partitions": 0,
        "brokers": [{"id": 1, "address": broker.addr, "up": true, "leaders": 5, "state": "active",
            "peer_address": "", "replicas": 5}]});
    assert_eq!(json_lines(&out), [expected]);
    let out = ok(&broker, &["cluster", "status"], b"");
    let lines = stdout_lines(&out);
    assert_eq!(lines.len(), 2, "{lines:?}");
    let row: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(
        row,
        [
            "1",
            &broker.addr,
            "up",
            "active",
            "5",
            "5",
            "controller,answered"
        ]
    );
}

#[test]
fn bench_produce_reports_json() {
    let (_dir, broker) = broker_with(&[("t", 2)]);
    let args = [
        "-o",
        "json",
        "bench",
        "produce",
        "--topic",
        "t",
        "--messages",
        "20000",
        "--size",
        "50",
        // Small batches, so the early stop below has a bound: with the default 1 MiB, a partition's records
        // could all be in one or two batches (the producer grows a batch while the one before waits for its
        // producer id), and a stop "on a whole fetch" could then read everything.
        "--batch-bytes",
        "4096",
    ];
    let out = ok(&broker, &args, b"");
    let doc = &json_lines(&out)[0];
    assert_eq!(doc["messages"], 20000);
    assert_eq!(doc["failed"], 0);
    assert_eq!(doc["bytes"], 20000 * 50);
    assert!(doc["latency_ms"]["p99"].as_f64().unwrap() > 0.0);
    assert_eq!(high_watermarks(&broker, "t").iter().sum::<u64>(), 20_000);
    // `bench consume` reads back exactly what is stored, as whole batches from both partitions.
    let out = ok(
        &broker,
        &["-o", "json", "bench", "consume", "--topic", "t"],
        b"",
    );
    let doc = &json_lines(&out)[0];
    assert_eq!(doc["messages"], 20000);
    assert_eq!(doc["partitions"], 2);
    assert!(doc["bytes"].as_u64().unwrap() > 20000 * 50, "{doc}");
    // With a small fetch and a limit it stops early, on a whole fetch.
    let args = [
        "-o",
        "json",
        "bench",
        "consume",
        "--topic",
        "t",
        "--messages",
        "10",
        "--fetch-bytes",
        "1",
    ];
    let doc = &json_lines(&ok(&broker, &args, b""))[0];
    let read = doc["messages"].as_u64().unwrap();
    // Each fetch is one whole batch of at most 4,096 bytes (55 records of 50 bytes), and a partition fetches
    // again only while fewer than 10 were read in all: at most 9 + 2 x 55.
    assert!((10..=119).contains(&read), "{doc}");
    let bad = broker.ferry(
        &["bench", "consume", "--topic", "t", "--fetch-bytes", "0"],
        None,
    );
    assert_eq!(bad.status.code(), Some(1));
    assert!(stderr(&bad).contains("--fetch-bytes"), "{}", stderr(&bad));
}

#[test]
fn lz4_compressed_batches_are_stored_smaller_and_read_back() {
    let (dir, broker) = broker_with(&[("plain", 1), ("packed", 1)]);
    let lines: String = (0..20_000)
        .map(|i| format!("order {i} shipped to warehouse north\n"))
        .collect();
    ok(&broker, &["produce", "plain"], lines.as_bytes());
    ok(
        &broker,
        &["produce", "packed", "--compression", "lz4"],
        lines.as_bytes(),
    );
    let size = |topic: &str| -> u64 {
        ferry_tests::segment_files(dir.path(), topic, 0)
            .iter()
            .map(|p| std::fs::metadata(p).unwrap().len())
            .sum()
    };
    let (plain, packed) = (size("plain"), size("packed"));
    assert!(
        packed * 3 < plain,
        "lz4 batches take {packed} bytes vs {plain}"
    );
    for topic in ["plain", "packed"] {
        let out = ok(
            &broker,
            &["consume", topic, "--from", "beginning", "--exit-at-end"],
            b"",
        );
        assert_eq!(String::from_utf8(out.stdout).unwrap(), lines, "{topic}");
    }
}
