//! Named listeners (docs/configuration.md, "Listeners"): a client that comes in on a named listener is told
//! every broker's address on that listener — in the broker list and in a not-leader redirect — and one on
//! the main listener the main addresses, so in-cluster and outside clients are both served.
//!
//! Each broker gets `external=127.0.0.1:0@localhost`: its external addresses read `localhost:PORT`, its
//! main ones `127.0.0.1:PORT`, so every answer shows which listener it was written for.

use std::collections::BTreeMap;
use std::time::Duration;

use ferry_protocol::v1;
use ferry_tests::cluster::{client, start_cluster_with_flags};
use ferry_tests::{run_ferry, Ferryd};

const TOPIC: &str = "outside";
const LEADER_HEADER: &str = "ferry-leader";

/// Each broker's id → (main address, external address as advertised).
fn addresses(brokers: &[Ferryd]) -> BTreeMap<u64, (String, String)> {
    brokers
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let port = b.listeners["external"].rsplit_once(':').unwrap().1;
            (
                (i + 1) as u64,
                (b.addr.clone(), format!("localhost:{port}")),
            )
        })
        .collect()
}

async fn broker_list(addr: &str) -> BTreeMap<u64, String> {
    let mut c = client(addr).await.expect("the listener answers");
    let m = c
        .metadata(v1::MetadataRequest { topics: vec![] })
        .await
        .expect("metadata")
        .into_inner();
    m.brokers.into_iter().map(|b| (b.id, b.address)).collect()
}

/// The redirect a read of `partition` from `addr` gets when `addr` does not lead it: the leader's id and
/// address (`ID=HOST:PORT`); `None` when `addr` leads it (the read is served). A follower that has not
/// heard from a leader yet says so; it is asked again. (A read, so that nothing is written.)
async fn redirect(addr: &str, partition: u32) -> Option<(u64, String)> {
    let mut c = client(addr).await.expect("the listener answers");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let read = c
            .fetch(v1::FetchRequest {
                topic: TOPIC.into(),
                partition,
                offset: 0,
                max_bytes: 1024,
                max_wait_ms: 0,
                format: v1::Format::Batches as i32,
            })
            .await;
        let err = match read {
            Ok(_) => return None,
            Err(e) => e,
        };
        assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
        if let Some(v) = err.metadata().get(LEADER_HEADER) {
            let (id, address) = v.to_str().unwrap().split_once('=').unwrap();
            return Some((id.parse().unwrap(), address.to_owned()));
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no redirect names the leader: {err:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_listener_tells_its_clients_its_own_addresses() {
    let _serial = ferry_tests::serial_async().await;
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let brokers =
        start_cluster_with_flags(&dirs, &["--listeners", "external=127.0.0.1:0@localhost"]);
    let addrs = addresses(&brokers);
    let main: Vec<String> = brokers.iter().map(|b| b.addr.clone()).collect();
    let bootstrap = main.join(",");
    let out = run_ferry(
        &bootstrap,
        &[
            "topic",
            "create",
            TOPIC,
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

    // Every broker registers its external address; each listener lists the brokers by its own addresses.
    let want_main: BTreeMap<u64, String> = addrs.iter().map(|(id, a)| (*id, a.0.clone())).collect();
    let want_external: BTreeMap<u64, String> =
        addrs.iter().map(|(id, a)| (*id, a.1.clone())).collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let mut all = true;
        for (id, (main_addr, _)) in &addrs {
            let external = brokers[(*id - 1) as usize].listeners["external"].clone();
            all &= broker_list(main_addr).await == want_main;
            all &= broker_list(&external).await == want_external;
        }
        if all {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "brokers list {:?} (main) and {:?} (external), want {want_main:?} and {want_external:?}",
            broker_list(&main[0]).await,
            broker_list(&brokers[0].listeners["external"]).await,
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A read from a follower is redirected to the leader's address on the listener it came in on. (The
    // leader named is whichever leads then: leadership may move meanwhile.)
    for p in 0..3 {
        let mut redirected = 0;
        for (id, b) in brokers.iter().enumerate() {
            let id = id as u64 + 1;
            if let Some((named, address)) = redirect(&b.addr, p).await {
                assert_ne!(named, id, "a broker redirects to another");
                assert_eq!(
                    address, addrs[&named].0,
                    "partition {p} through the main listener"
                );
                redirected += 1;
            }
            if let Some((named, address)) = redirect(&b.listeners["external"], p).await {
                assert_eq!(
                    address, addrs[&named].1,
                    "partition {p} through the external listener"
                );
            }
        }
        assert!(
            redirected >= 2,
            "partition {p}: {redirected} brokers redirected"
        );
    }

    // The CLI bootstrapped from one external address publishes to and reads from every partition's
    // leader: the addresses it was told work.
    let outside = &want_external[&1];
    let input: String = (0..30).map(|i| format!("m{i}\n")).collect();
    let out = run_ferry(outside, &["produce", TOPIC], Some(input.as_bytes()));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run_ferry(
        outside,
        &["consume", TOPIC, "--from", "beginning", "--exit-at-end"],
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut read: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    read.sort();
    let mut want: Vec<String> = (0..30).map(|i| format!("m{i}")).collect();
    want.sort();
    assert_eq!(read, want);
}
