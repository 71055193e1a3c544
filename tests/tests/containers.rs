//! The image and the compose file, for real: three broker containers on a Docker network the test creates
//! (`deploy/compose.yaml`, a project of its own), the CLI run inside them. Nothing acknowledged is lost when
//! a leader's container is killed; a rolling restart that waits for readiness keeps every partition led
//! (no partition leaderless for more than 2 s); a container cut off the network (`docker network
//! disconnect`) acknowledges nothing while the other two go on; a fourth container joins the cluster.
//!
//! Needs Docker and the image (`deploy/image.sh`, which `.ci/run` runs first); ignored otherwise:
//! `cargo test -p ferry-tests --test containers -- --ignored`. Every container, network and volume of the
//! project is removed at the end, passed or not.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use ferry_tests::docker::{image, run};
use std::time::{Duration, Instant};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `docker compose` where the plugin is there, else the standalone `docker-compose`.
fn compose_tool() -> (&'static str, &'static [&'static str]) {
    let plugin = Command::new("docker").args(["compose", "version"]).output();
    if plugin.is_ok_and(|o| o.status.success()) {
        ("docker", &["compose"])
    } else {
        ("docker-compose", &[])
    }
}

/// One compose project: its own network and volumes, removed on drop.
struct Project {
    name: String,
    extra: Vec<String>,
}

impl Project {
    fn up() -> Project {
        let name = format!("ferrytest{}", std::process::id());
        let p = Project {
            name,
            extra: Vec::new(),
        };
        let out = p.compose(&["up", "-d", "--quiet-pull"], Duration::from_secs(120));
        assert!(
            out.status.success(),
            "compose up: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        p
    }

    fn compose(&self, args: &[&str], bound: Duration) -> Output {
        let file = repo().join("deploy/compose.yaml");
        let (program, first) = compose_tool();
        run(
            Command::new(program)
                .args(first)
                .args(["-p", &self.name, "-f"])
                .arg(file)
                .args(args)
                // Ephemeral host ports: the test never needs them, and must not clash with a broker here.
                .env("FERRY_HTTP_PORT_0", "")
                .env("FERRY_HTTP_PORT_1", "")
                .env("FERRY_HTTP_PORT_2", "")
                .env("FERRY_IMAGE", image()),
            None,
            bound,
        )
    }

    /// The container of service `ferry-i` (its id: Compose v1 and v2 name containers differently).
    fn container(&self, i: usize) -> String {
        let out = self.compose(
            &["ps", "-q", &format!("ferry-{i}")],
            Duration::from_secs(60),
        );
        let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        assert!(!id.is_empty(), "no container for ferry-{i}");
        id
    }

    /// The project's network, as Compose names it.
    fn network(&self) -> String {
        let out = ferry_tests::docker::docker(&[
            "inspect",
            "-f",
            "{{range $k, $v := .NetworkSettings.Networks}}{{$k}} {{end}}",
            &self.container(0),
        ]);
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
            .expect("a network")
            .to_owned()
    }

    /// `ferry ARGS` inside container `i` (bootstrap: that broker, 127.0.0.1:7400).
    fn ferry(&self, i: usize, args: &[&str], stdin: Option<&[u8]>) -> Output {
        self.ferry_in(&self.container(i), args, stdin)
    }

    fn ferry_in(&self, container: &str, args: &[&str], stdin: Option<&[u8]>) -> Output {
        run(
            Command::new("docker")
                .args(["exec", "-i", container, "/usr/local/bin/ferry"])
                .args(args),
            stdin,
            Duration::from_secs(90),
        )
    }

    fn docker(&self, args: &[&str]) -> Output {
        ferry_tests::docker::docker(args)
    }

    fn healthy_from(&self, i: usize) -> bool {
        self.ferry(i, &["cluster", "health"], None).status.code() == Some(0)
    }

    /// Partition → leader id, from container `i`.
    fn leaders(&self, i: usize, topic: &str) -> Option<Vec<u64>> {
        let out = self.ferry(i, &["topic", "describe", topic, "-o", "json"], None);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        v["partition_info"].as_array().map(|ps| {
            ps.iter()
                .map(|p| p["leader"].as_u64().unwrap_or(0))
                .collect()
        })
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        for c in &self.extra {
            let _ = run(
                Command::new("docker").args(["rm", "-f", "-v", c]),
                None,
                Duration::from_secs(60),
            );
        }
        let _ = self.compose(
            &["down", "-v", "--remove-orphans", "-t", "5"],
            Duration::from_secs(120),
        );
    }
}

fn lines(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

fn produce(p: &Project, i: usize, values: &[String]) -> Output {
    let input = values.join("\n") + "\n";
    p.ferry(i, &["produce", "ev"], Some(input.as_bytes()))
}

#[test]
#[ignore = "needs Docker and the image from deploy/image.sh (.ci/run builds it and runs this)"]
fn a_three_container_cluster_survives_kills_restarts_partitions_and_grows() {
    let mut p = Project::up();
    ferry_tests::docker::poll_until("the cluster healthy", Duration::from_secs(120), || {
        p.healthy_from(0)
    });
    let out = p.ferry(
        0,
        &[
            "topic",
            "create",
            "ev",
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
    ferry_tests::docker::poll_until(
        "every partition led and in sync",
        Duration::from_secs(60),
        || p.healthy_from(0),
    );
    let mut acked: BTreeSet<String> = BTreeSet::new();
    let first = lines("a", 300);
    let out = produce(&p, 0, &first);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    acked.extend(first);

    // docker kill the container leading partition 0: nothing acknowledged is lost.
    let leader = p.leaders(0, "ev").unwrap()[0];
    assert!(leader >= 1, "partition 0 has a leader");
    let victim = (leader - 1) as usize;
    let survivor = (victim + 1) % 3;
    p.docker(&["kill", &p.container(victim)]);
    let second = lines("b", 300);
    let out = produce(&p, survivor, &second);
    assert!(
        out.status.success(),
        "publishing after the kill: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    acked.extend(second);
    p.docker(&["start", &p.container(victim)]);
    ferry_tests::docker::poll_until(
        "healthy after the restart",
        Duration::from_secs(120),
        || p.healthy_from(survivor),
    );

    // A rolling restart that waits for readiness between containers, publishing all along; no partition
    // goes without a leader for more than 2 s.
    for i in 0..3 {
        let watcher_from = (i + 1) % 3;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let watcher = {
            let (stop, container) = (stop.clone(), p.container(watcher_from));
            std::thread::spawn(move || {
                let mut leaderless_since: [Option<Instant>; 3] = [None; 3];
                let mut longest = Duration::ZERO;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let out = run(
                        Command::new("docker").args([
                            "exec",
                            &container,
                            "/usr/local/bin/ferry",
                            "topic",
                            "describe",
                            "ev",
                            "-o",
                            "json",
                        ]),
                        None,
                        Duration::from_secs(30),
                    );
                    let v: serde_json::Value =
                        serde_json::from_slice(&out.stdout).unwrap_or_default();
                    if let Some(ps) = v["partition_info"].as_array() {
                        for (k, part) in ps.iter().enumerate().take(3) {
                            let led = part["leader"].as_u64().unwrap_or(0) != 0;
                            match (led, leaderless_since[k]) {
                                (false, None) => leaderless_since[k] = Some(Instant::now()),
                                (true, Some(t)) => {
                                    longest = longest.max(t.elapsed());
                                    leaderless_since[k] = None;
                                }
                                _ => {}
                            }
                        }
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                for t in leaderless_since.into_iter().flatten() {
                    longest = longest.max(t.elapsed());
                }
                longest
            })
        };
        let out = p.compose(
            &["restart", "-t", "60", &format!("ferry-{i}")],
            Duration::from_secs(120),
        );
        assert!(
            out.status.success(),
            "restart ferry-{i}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let batch = lines(&format!("r{i}"), 100);
        let out = produce(&p, watcher_from, &batch);
        assert!(
            out.status.success(),
            "publishing during the rolling restart: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        acked.extend(batch);
        ferry_tests::docker::poll_until(
            &format!("ferry-{i} ready again"),
            Duration::from_secs(120),
            || p.healthy_from(watcher_from),
        );
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let longest = watcher.join().unwrap();
        assert!(
            longest <= Duration::from_secs(2),
            "a partition had no leader for {longest:?} restarting ferry-{i}"
        );
    }

    // A real network cut: ferry-2 off the network acknowledges nothing in 20 s (its producer keeps
    // retrying); the two others go on. Then the cut-off container is killed (its broker and that producer
    // with it), reconnected and started: what it held unacknowledged must not survive.
    p.docker(&["network", "disconnect", &p.network(), &p.container(2)]);
    let cut = lines("cut", 20);
    let mut minority = Command::new("docker")
        .args([
            "exec",
            "-i",
            &p.container(2),
            "/usr/local/bin/ferry",
            "produce",
            "ev",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut input = minority.stdin.take().unwrap();
        input.write_all((cut.join("\n") + "\n").as_bytes()).unwrap();
    }
    let during = lines("majority", 100);
    let out = produce(&p, 0, &during);
    assert!(
        out.status.success(),
        "the majority stopped: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    acked.extend(during);
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Some(status) = minority.try_wait().unwrap() {
            assert!(
                !status.success(),
                "the cut-off minority acknowledged every message"
            );
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    p.docker(&["kill", &p.container(2)]);
    let _ = minority.kill();
    let _ = minority.wait();
    p.docker(&[
        "network",
        "connect",
        "--alias",
        "ferry-2",
        &p.network(),
        &p.container(2),
    ]);
    p.docker(&["start", &p.container(2)]);
    ferry_tests::docker::poll_until("healthy after the heal", Duration::from_secs(120), || {
        p.healthy_from(0)
    });

    // A fourth broker joins: a container like the others, added to the cluster, takes replicas.
    let fourth = format!("{}-ferry-3", p.name);
    p.docker(&[
        "run",
        "-d",
        "--name",
        &fourth,
        "--hostname",
        "ferry-3",
        "--network",
        &p.network(),
        "--network-alias",
        "ferry-3",
        "--read-only",
        "-e",
        "FERRY_PEERS=1=ferry-0:7401,2=ferry-1:7401,3=ferry-2:7401",
        "-e",
        "FERRY_ADVERTISE=ferry-3",
        "-e",
        "FERRY_LISTEN=0.0.0.0:7400",
        "-e",
        "FERRY_PEER_LISTEN=0.0.0.0:7401",
        "-e",
        "FERRY_HTTP_LISTEN=0.0.0.0:7480",
        &image(),
    ]);
    p.extra.push(fourth.clone());
    let out = p.ferry(0, &["cluster", "add-broker", "4", "ferry-3:7401"], None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    ferry_tests::docker::poll_until(
        "broker 4 active with replicas",
        Duration::from_secs(180),
        || {
            let out = p.ferry(0, &["cluster", "status", "-o", "json"], None);
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
            v["brokers"].as_array().is_some_and(|bs| {
                bs.iter().any(|b| {
                    b["id"] == 4
                        && b["state"] == "active"
                        && b["up"] == true
                        && b["replicas"].as_u64() > Some(0)
                })
            }) && v["moving_partitions"] == 0
        },
    );

    // Everything acknowledged is there, once; the minority's messages are not.
    let out = p.ferry(
        0,
        &["consume", "ev", "--from", "beginning", "--exit-at-end"],
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let got: Vec<&str> = text.lines().collect();
    let unique: BTreeSet<&str> = got.iter().copied().collect();
    assert_eq!(unique.len(), got.len(), "duplicates in the log");
    for v in &acked {
        assert!(unique.contains(v.as_str()), "acknowledged {v} lost");
    }
    for v in &cut {
        assert!(
            !unique.contains(v.as_str()),
            "{v}, sent to the cut-off minority, is in the log"
        );
    }
}
