//! Identity (docs/operations.md, "Identity"): a broker whose data dir was wiped never takes part in Raft
//! with forgotten state (it refuses to start, naming the procedure, and rejoins empty once the procedure
//! is followed), and a broker started on another cluster's data dir is refused.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use ferry_tests::cluster::{
    all_in_sync, cluster_status, leaders, members_settled, publish_once, read_all, start_cluster,
    try_describe,
};
use ferry_tests::{bin, fault_file, output_within, run_ferry, wait_until, Ferryd};

const TOPIC: &str = "kept";

fn cli_ok(brokers: &[String], args: &[&str]) -> String {
    let out = run_ferry(&brokers.join(","), args, None);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn identity_file(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("ferry-identity")).unwrap_or_default()
}

fn cluster_id(dir: &Path) -> Option<String> {
    identity_file(dir).lines().find_map(|l| {
        l.strip_prefix("cluster_id = ")
            .map(|v| v.trim_matches('"').to_owned())
    })
}

/// Waits until every broker on `dirs` registered and wrote the same cluster id into its data dir.
fn wait_for_one_cluster_id(dirs: &[tempfile::TempDir]) {
    wait_until(
        Duration::from_secs(30),
        "every broker registered and wrote the cluster id into its data dir",
        || {
            let ids: Vec<_> = dirs.iter().map(|d| cluster_id(d.path())).collect();
            ids[0].is_some() && ids.iter().all(|i| *i == ids[0])
        },
    );
}

/// Runs `ferryd` on `dir` with `flags` (ephemeral client and HTTP ports), expecting it to refuse to start:
/// its stderr.
fn refused_start(dir: &Path, flags: &[String]) -> String {
    let child = Command::new(bin("ferryd"))
        .arg("--data-dir")
        .arg(dir)
        .args(["--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"])
        .args(flags)
        .env("FERRY_LOG", "warn")
        .env("FERRY_FAULT_FILE", fault_file(dir))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ferryd");
    let out = output_within(
        child,
        Duration::from_secs(60),
        "ferryd on a refused data dir",
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(1),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    assert!(
        !stdout.contains("ferryd listening"),
        "a refused broker never serves: {stdout}"
    );
    stderr
}

fn flags_of(node: &Ferryd) -> Vec<String> {
    ["--node-id", "--peer-listen", "--peers"]
        .iter()
        .flat_map(|f| [f.to_string(), node.flag(f).expect("flag")])
        .collect()
}

/// Publishes `count` one-record batches to every partition of TOPIC: the acknowledged values by partition.
async fn publish(brokers: &[String], partitions: u32, tag: &str) -> Vec<Vec<String>> {
    let mut pool = std::collections::HashMap::new();
    let mut acked = vec![Vec::new(); partitions as usize];
    for p in 0..partitions {
        for n in 0..20 {
            let v = vec![format!("{tag}-{p}-{n}")];
            let mut done = false;
            for _ in 0..50 {
                let routes = leaders(brokers, TOPIC).await;
                if publish_once(&mut pool, routes.get(&p), TOPIC, p, &v)
                    .await
                    .is_some()
                {
                    done = true;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            assert!(done, "publishing {v:?} to partition {p}");
            acked[p as usize].extend(v);
        }
    }
    acked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_broker_refuses_to_start_and_rejoins_empty_after_the_documented_procedure() {
    let _serial = ferry_tests::serial_async().await;
    let dirs: Vec<_> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut nodes = start_cluster(&dirs);
    let brokers: Vec<String> = nodes.iter().map(|n| n.addr.clone()).collect();
    wait_for_one_cluster_id(&dirs);
    cli_ok(
        &brokers,
        &[
            "topic",
            "create",
            TOPIC,
            "--partitions",
            "4",
            "--replicas",
            "3",
        ],
    );
    let before = publish(&brokers, 4, "before").await;

    // Broker 4's volume is lost: it comes back empty under the same node id and the same flags.
    let flags = flags_of(&nodes[3]);
    let peer_listen = nodes[3].flag("--peer-listen").unwrap();
    nodes[3].kill9();
    let dir4 = dirs[3].path();
    std::fs::remove_dir_all(dir4).unwrap();
    std::fs::create_dir(dir4).unwrap();
    let stderr = refused_start(dir4, &flags);
    assert!(
        stderr.contains("already knows broker 4")
            && stderr.contains("ferry cluster remove-broker 4"),
        "the refusal names the cause and the procedure: {stderr}"
    );
    assert!(
        !dir4.join("ferry-identity").exists() && !dir4.join("__cluster").exists(),
        "a refused broker writes no identity and no Raft state"
    );
    // The other three serve meanwhile.
    let rest: Vec<String> = brokers[..3].to_vec();
    let during = publish(&rest, 4, "during").await;

    // The procedure: remove it (its replicas move to the others), then it starts empty and is added.
    cli_ok(&rest, &["cluster", "remove-broker", "4"]);
    wait_until(
        Duration::from_secs(90),
        "broker 4 removed and forgotten",
        || cluster_status(&rest).is_some_and(|s| members_settled(&s, &[1, 2, 3])),
    );
    let mut fourth = Ferryd::try_start(dir4, &flags.iter().map(String::as_str).collect::<Vec<_>>())
        .expect("the rebuilt broker starts");
    assert!(
        identity_file(dir4).contains("node_id = 4"),
        "the rebuilt data dir has its own identity"
    );
    cli_ok(&rest, &["cluster", "add-broker", "4", &peer_listen]);
    let all: Vec<String> = rest.iter().cloned().chain([fourth.addr.clone()]).collect();
    wait_until(
        Duration::from_secs(90),
        "broker 4 a member again and every partition in sync",
        || {
            cluster_status(&all).is_some_and(|s| members_settled(&s, &[1, 2, 3, 4]))
                && try_describe(&all, TOPIC).is_some_and(|d| all_in_sync(&d))
        },
    );
    wait_until(
        Duration::from_secs(30),
        "the rebuilt broker learned the cluster id",
        || cluster_id(dir4) == cluster_id(dirs[0].path()),
    );
    let routes = leaders(&all, TOPIC).await;
    for p in 0..4u32 {
        let got = read_all(&routes[&p], TOPIC, p).await;
        let want: Vec<String> = before[p as usize]
            .iter()
            .chain(&during[p as usize])
            .cloned()
            .collect();
        assert_eq!(
            got, want,
            "partition {p} holds every acknowledged message once"
        );
    }
    fourth.kill9();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_on_another_clusters_data_dir_is_refused() {
    let _serial = ferry_tests::serial_async().await;
    // Cluster A: one broker, id 3, alone.
    let other = tempfile::tempdir().unwrap();
    let mut alone = Ferryd::start(other.path(), &["--node-id", "3"]);
    wait_until(
        Duration::from_secs(30),
        "the lone broker minted its cluster id",
        || cluster_id(other.path()).is_some(),
    );
    assert!(alone.stop(), "the lone broker stops cleanly");
    // Cluster B: three brokers.
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut nodes = start_cluster(&dirs);
    wait_for_one_cluster_id(&dirs);
    let (a, b) = (
        cluster_id(other.path()).unwrap(),
        cluster_id(dirs[0].path()).unwrap(),
    );
    assert_ne!(a, b, "two clusters, two ids");
    // Broker 3 of B is started, by mistake, on A's data dir.
    let flags = flags_of(&nodes[2]);
    assert!(nodes[2].stop());
    let stderr = refused_start(other.path(), &flags);
    assert!(
        stderr.contains(&format!("belongs to cluster {a}")) && stderr.contains(&b),
        "the refusal names both clusters: {stderr}"
    );
    // A's data dir is untouched, and B's broker 3 comes back on its own data dir.
    assert_eq!(cluster_id(other.path()), Some(a));
    nodes[2].restart_in_place();
    let brokers: Vec<String> = nodes.iter().map(|n| n.addr.clone()).collect();
    cli_ok(
        &brokers,
        &[
            "topic",
            "create",
            TOPIC,
            "--partitions",
            "1",
            "--replicas",
            "3",
        ],
    );
    wait_until(
        Duration::from_secs(30),
        "B serves a topic on all three brokers",
        || try_describe(&brokers, TOPIC).is_some_and(|d| all_in_sync(&d)),
    );
}
