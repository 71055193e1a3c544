//! Deployment: the config file, `--print-config`, bad settings, and health that fits Kubernetes
//! (liveness from the first second, readiness that does not hang on other brokers, cluster health).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ferry_tests::cluster::start_cluster;
use ferry_tests::{bin, http_get, output_within, unused_addr, wait_until};

fn ferryd(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let child = Command::new(bin("ferryd"))
        .args(args)
        .env_remove("FERRY_LOG")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ferryd");
    output_within(child, Duration::from_secs(20), "ferryd")
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

#[test]
fn print_config_round_trips_and_a_bad_setting_fails_on_one_line_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ferry.toml");
    write(
        &file,
        "data_dir = \"/var/lib/ferry\"\nsegment_bytes = \"64MiB\"\nretention_ms = \"forever\"\n\
         listen = \"0.0.0.0:7400\"\nadvertise = \"ferry-0.ferry.default.svc\"\nfsync = \"interval:20ms\"\n",
    );
    let f = file.to_str().unwrap();
    // Flags over the environment over the file.
    let out = ferryd(
        &["--config", f, "--print-config", "--partitions-max", "9"],
        &[
            ("FERRY_PARTITIONS_MAX", "8"),
            ("FERRY_CONNECTIONS_MAX", "7"),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8(out.stdout).unwrap();
    for line in [
        "data_dir = \"/var/lib/ferry\"",
        "segment_bytes = \"64MiB\"",
        "retention_ms = \"forever\"",
        "partitions_max = 9",
        "connections_max = 7",
        "fsync = \"interval:20ms\"",
    ] {
        assert!(
            printed.lines().any(|l| l == line),
            "{line} not in:\n{printed}"
        );
    }
    let again = dir.path().join("printed.toml");
    write(&again, &printed);
    let out = ferryd(
        &["--config", again.to_str().unwrap(), "--print-config"],
        &[],
    );
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        printed,
        "feeding the printed file back"
    );

    /// File text, flags, environment, the key the error must name.
    type Case<'a> = (&'a str, &'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
    let cases: &[Case] = &[
        ("segmnet_bytes = 1\n", &[], &[], "segmnet_bytes"),
        ("segment_bytes = \"lots\"\n", &[], &[], "segment_bytes"),
        ("", &["--listen", "0.0.0.0:0"], &[], "advertise"),
        ("", &[], &[("FERRY_RETENTION_MS", "soon")], "retention_ms"),
        ("", &["--fsync", "never"], &[], "fsync"),
    ];
    for (text, flags, env, key) in cases {
        write(&file, text);
        let mut args = vec!["--config", f, "--data-dir"];
        let data = dir.path().join("data");
        args.push(data.to_str().unwrap());
        args.extend_from_slice(flags);
        let out = ferryd(&args, env);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{text:?} {flags:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
        assert!(stderr.contains(key), "{key} not named: {stderr}");
        assert!(!data.exists(), "nothing started");
    }
    let out = ferryd(&["--config", "/nonexistent/ferry.toml"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/ferry.toml"));
}

#[test]
fn a_broker_runs_on_the_settings_of_its_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let (listen, http) = (unused_addr(), unused_addr());
    let data = dir.path().join("data");
    let file = dir.path().join("ferry.toml");
    write(
        &file,
        &format!("data_dir = {data:?}\nlisten = \"{listen}\"\nhttp_listen = \"{http}\"\nlog = \"warn\"\n"),
    );
    let mut child = Command::new(bin("ferryd"))
        .args(["--config", file.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let ready = (|| {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if http_get(&http, "/readyz").0 == 200 {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    })();
    let out = ferry_tests::run_ferry(
        &listen,
        &["topic", "create", "t", "--partitions", "1"],
        None,
    );
    let _ = child.kill();
    let _ = child.wait();
    assert!(ready, "not ready on the file's HTTP address {http}");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        data.join("t-0").exists() || std::fs::read_dir(&data).unwrap().count() > 1,
        "data in the file's data_dir"
    );
}

fn cluster_health(brokers: &[String]) -> (Option<i32>, serde_json::Value) {
    let out = ferry_tests::run_ferry(
        &brokers.join(","),
        &["cluster", "health", "-o", "json"],
        None,
    );
    (
        out.status.code(),
        serde_json::from_slice(&out.stdout).unwrap_or_default(),
    )
}

/// Liveness answers while a broker waits for its controller; readiness needs the metadata caught up and
/// registration, never every other broker; `ferry cluster health` exits 10 while a broker is down.
#[tokio::test(flavor = "multi_thread")]
async fn liveness_answers_while_starting_and_readiness_does_not_wait_for_other_brokers() {
    let _serial = ferry_tests::serial_async().await;
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut nodes = start_cluster(&dirs);
    let brokers: Vec<String> = nodes.iter().map(|n| n.addr.clone()).collect();
    let out = nodes[0].ferry(
        &[
            "topic",
            "create",
            "h",
            "--partitions",
            "3",
            "--replicas",
            "3",
        ],
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_until(Duration::from_secs(30), "cluster healthy", || {
        cluster_health(&brokers).0 == Some(0)
    });

    nodes[2].kill9();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (code, h) = cluster_health(&brokers[..2]);
        if code == Some(10)
            && h["brokers_down"] == serde_json::json!([3])
            && h["under_replicated"]
                .as_array()
                .is_some_and(|a| a.len() == 3)
            && h["leaderless"].as_array().is_some_and(|a| a.is_empty())
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no exit 10 with broker 3 down and 3 partitions under-replicated: {code:?} {h}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    for n in &nodes[..2] {
        let (code, body) = http_get(&n.http, "/readyz");
        assert_eq!(
            code, 200,
            "a broker down elsewhere does not make this one unready: {body}"
        );
        // Each broker sees a peer go on its own connection's clock: the one the CLI asked may see it
        // first, so the other's view is waited for, not read once.
        wait_until(
            Duration::from_secs(30),
            "/health/cluster 503 with broker 3 down",
            || http_get(&n.http, "/health/cluster").0 == 503,
        );
    }

    // The controller's leader L proposes a command with its only peer gone: the entry is in L's log and
    // never committed. Restarted alone, L waits (bounded) in `catching-up` for the controller to commit
    // its log: alive, not ready; and not ready after it either, its metadata not caught up.
    let mut controller = 0;
    wait_until(
        Duration::from_secs(30),
        "a controller leader among the two left",
        || {
            controller = ferry_tests::cluster::cluster_status(&brokers[..2])
                .and_then(|s| s["controller"].as_u64())
                .unwrap_or(0);
            controller == 1 || controller == 2
        },
    );
    let (l, other) = if controller == 1 { (0, 1) } else { (1, 0) };
    nodes[other].kill9();
    let mut admin = nodes[l].admin().await;
    let create = ferry_protocol::v1::CreateTopicRequest {
        name: "uncommitted".into(),
        partitions: 1,
        replicas: 1,
        config: None,
    };
    // Given 2 s to be proposed; without a quorum it cannot be answered.
    let answer = tokio::time::timeout(Duration::from_secs(2), admin.create_topic(create)).await;
    assert!(
        !matches!(answer, Ok(Ok(_))),
        "a topic created without a quorum"
    );
    nodes[l].kill9();
    let http = nodes[l].http.clone();
    let watcher = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(40);
        let mut seen: Vec<(String, u16)> = Vec::new();
        while Instant::now() < deadline {
            let (live, body) = http_get(&http, "/healthz");
            if live == 200 {
                let phase = body
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix("phase="))
                    .unwrap_or("")
                    .to_owned();
                let ready = http_get(&http, "/readyz").0;
                if seen.last() != Some(&(phase.clone(), ready)) {
                    seen.push((phase.clone(), ready));
                }
                if phase == "serving" {
                    break;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        seen
    });
    let started = Instant::now();
    tokio::task::block_in_place(|| nodes[l].restart_in_place());
    let seen = watcher.join().unwrap();
    assert!(
        seen.iter()
            .any(|(phase, ready)| phase == "catching-up" && *ready == 503),
        "liveness answered during the catch-up, not ready: {seen:?} (start took {:?})",
        started.elapsed()
    );
    let (code, body) = http_get(&nodes[l].http, "/readyz");
    assert_eq!(code, 503, "alone, its metadata is not caught up: {body}");
    assert!(body.contains("metadata not caught up"), "{body}");
    tokio::task::block_in_place(|| nodes[other].restart_in_place());
    wait_until(
        Duration::from_secs(30),
        "ready once a quorum is back",
        || http_get(&nodes[l].http, "/readyz").0 == 200,
    );
}

/// `--retention-ms forever` on a topic keeps its data whatever the broker's default: on a broker whose
/// default keeps 1 ms, a default topic's old segments go while the forever topic's all stay.
#[tokio::test(flavor = "multi_thread")]
async fn a_topic_kept_forever_outlives_the_broker_default() {
    use ferry_protocol::v1;
    let dir = tempfile::tempdir().unwrap();
    let broker = ferry_tests::Ferryd::start(
        dir.path(),
        &["--retention-ms", "1ms", "--segment-bytes", "64KiB"],
    );
    for (name, extra) in [
        ("aged", &[][..]),
        (
            "kept",
            &["--retention-ms", "forever", "--retention-bytes", "-1"][..],
        ),
    ] {
        let mut args = vec!["topic", "create", name, "--partitions", "1"];
        args.extend_from_slice(extra);
        let out = broker.ferry(&args, None);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = broker.ferry(&["topic", "describe", "kept"], None);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("retention_ms=forever"),
        "{out:?}"
    );
    let mut client = broker.client().await;
    let values: Vec<String> = (0..64).map(|i| format!("{i:0>1024}")).collect();
    for topic in ["aged", "kept"] {
        // 4 × 64 KiB: several sealed segments.
        for _ in 0..4 {
            client
                .publish(v1::PublishRequest {
                    topic: topic.into(),
                    partition: Some(0),
                    acks: v1::Acks::All as i32,
                    payload: Some(v1::publish_request::Payload::Batch(ferry_tests::batch_of(
                        &values,
                    ))),
                    timeout_ms: 5_000,
                })
                .await
                .unwrap();
        }
    }
    let mut admin = broker.admin().await;
    let mut start_of = async |t: &str| {
        let d = admin
            .describe_topic(v1::DescribeTopicRequest {
                name: t.into(),
                local_only: true,
            })
            .await
            .unwrap()
            .into_inner();
        d.partition_info[0].log_start_offset
    };
    // Retention passes run every 10 s.
    let deadline = Instant::now() + Duration::from_secs(40);
    while start_of("aged").await == 0 {
        assert!(
            Instant::now() < deadline,
            "the broker default (1 ms) deleted nothing"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        start_of("kept").await,
        0,
        "a topic kept forever lost its oldest segments"
    );
}

/// The Kubernetes TLS variant (deploy/kubernetes-tls) agrees with itself and with the base: its settings
/// load, every broker's certificate (the CSI driver's names, as the driver expands them for each pod) names
/// the broker as `tls_peer_name` expects, covers the address every peer dials it at and the client Service,
/// and holds 127.0.0.1 for the preStop hand-off; the probes speak HTTPS. (Running it needs cert-manager's
/// CSI driver: the containers test runs the plain manifests.)
#[test]
fn the_kubernetes_tls_variant_names_each_broker_as_its_peers_expect() {
    let root =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes-tls");
    let read = |f: &str| std::fs::read_to_string(root.join(f)).expect("manifest reads");
    let cm: serde_yaml::Value = serde_yaml::from_str(&read("configmap-tls.yaml")).unwrap();
    let toml = cm["data"]["ferry.toml"].as_str().expect("ferry.toml");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ferry.toml");
    write(&file, toml);
    // The advertised address comes from the StatefulSet's env, as in the base.
    let out = ferryd(
        &["--config", file.to_str().unwrap(), "--print-config"],
        &[("FERRY_ADVERTISE", "ferry-0.ferry.default.svc")],
    );
    assert!(
        out.status.success(),
        "the TLS variant's settings: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let settings: toml::Value = toml::from_str(toml).unwrap();
    let peer_name = settings["tls_peer_name"].as_str().expect("tls_peer_name");
    let peers = settings["peers"].as_str().expect("peers");

    let sts: serde_yaml::Value = serde_yaml::from_str(&read("statefulset-tls.yaml")).unwrap();
    let spec = &sts["spec"]["template"]["spec"];
    let attrs = &spec["volumes"][0]["csi"]["volumeAttributes"];
    let dns = attrs["csi.cert-manager.io/dns-names"]
        .as_str()
        .expect("dns-names");
    let ips = attrs["csi.cert-manager.io/ip-sans"]
        .as_str()
        .unwrap_or_default();
    let mount = spec["containers"][0]["volumeMounts"][0]["mountPath"]
        .as_str()
        .expect("the TLS mount");
    for key in ["tls_cert", "tls_key", "tls_ca"] {
        let path = settings[key].as_str().expect(key);
        assert!(
            path.starts_with(&format!("{mount}/")),
            "{key} {path} is under {mount}"
        );
    }
    for (i, peer) in peers.split(',').enumerate() {
        let pod = format!("ferry-{i}");
        let names: Vec<String> = dns
            .split(',')
            .map(|n| {
                n.replace("${POD_NAME}", &pod)
                    .replace("${POD_NAMESPACE}", "default")
            })
            .collect();
        let id = i + 1;
        let (peer_id, addr) = peer.split_once('=').unwrap();
        assert_eq!(peer_id, id.to_string());
        let host = addr.rsplit_once(':').unwrap().0;
        assert!(
            names.iter().any(|n| n == host),
            "{pod}'s certificate covers {host}: {names:?}"
        );
        let expected = peer_name.replace("{ordinal}", &i.to_string());
        assert!(
            names.contains(&expected),
            "{pod}'s certificate names {expected}: {names:?}"
        );
        assert!(
            names.iter().any(|n| n == "ferry-client"),
            "the client Service: {names:?}"
        );
    }
    assert!(
        ips.split(',').any(|ip| ip == "127.0.0.1"),
        "preStop dials 127.0.0.1"
    );
    let container = &spec["containers"][0];
    for probe in ["startupProbe", "livenessProbe", "readinessProbe"] {
        assert_eq!(container[probe]["httpGet"]["scheme"], "HTTPS", "{probe}");
    }
    let pre_stop: Vec<&str> = container["lifecycle"]["preStop"]["exec"]["command"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert!(pre_stop.contains(&"--tls-ca"), "{pre_stop:?}");
}
