//! TLS end to end (docs/security.md): real `ferryd` processes with certificates made in the test.
//!
//! - a three-broker cluster with mTLS between brokers serves the CLI and the SDK over TLS; plaintext
//!   clients, clients trusting another CA and plain HTTP get nothing;
//! - the peer port refuses a peer without a certificate, one from another CA, a broker's certificate
//!   used to speak as another broker (a forged Raft batch, a forged Hello) and a forwarded command from a
//!   certificate that names no broker;
//! - with `tls_client_ca`, clients without a certificate, or with an expired one, are refused;
//! - a rotated certificate is served without a restart;
//! - a bad TLS file stops `ferryd` with one line naming it.

use std::path::Path;
use std::time::{Duration, Instant};

use ferry_client::{Client, ClientConfig, ClientTls};
use ferry_protocol::v1;
use ferry_tests::pki::{https_get, start_secure_cluster, Issued, Pki};
use ferry_tests::{run_ferry, Ferryd};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

/// A sample on `/metrics`, read over HTTPS (`name` with its labels as Prometheus prints them).
fn metric_tls(b: &Ferryd, name: &str, ca: &[u8]) -> Option<f64> {
    let (status, body) = https_get(&b.http, "/metrics", ca);
    assert_eq!(status, 200, "/metrics: {body}");
    body.lines()
        .filter_map(|l| l.split_once(' '))
        .find(|(n, _)| *n == name)
        .and_then(|(_, v)| v.trim().parse().ok())
}

fn tls_config(ca: &[u8], identity: Option<&Issued>) -> ClientConfig {
    ClientConfig {
        tls: Some(ClientTls {
            ca_pem: ca.to_vec(),
            identity: identity.map(|i| {
                (
                    std::fs::read(&i.cert).unwrap(),
                    std::fs::read(&i.key).unwrap(),
                )
            }),
            server_name: None,
        }),
        connect_timeout_ms: 2_000,
        retries_max: 2,
        ..ClientConfig::default()
    }
}

fn ferry_tls(addr: &str, ca: &Path, args: &[&str], stdin: Option<&[u8]>) -> std::process::Output {
    let ca = ca.display().to_string();
    let mut all = vec!["--tls-ca", ca.as_str()];
    all.extend_from_slice(args);
    run_ferry(addr, &all, stdin)
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A gRPC channel to a peer port over TLS as `identity` (none: no client certificate), checking the
/// server's certificate for `server_name`.
async fn peer_channel(
    addr: &str,
    ca: &[u8],
    identity: Option<&Issued>,
    server_name: &str,
) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name(server_name);
    if let Some(i) = identity {
        tls = tls.identity(Identity::from_pem(
            std::fs::read(&i.cert).unwrap(),
            std::fs::read(&i.key).unwrap(),
        ));
    }
    Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(3))
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
}

/// Sends one empty Raft batch claiming to come from broker `from` to broker `to`.
async fn raft_batch(
    channel: tonic::transport::Channel,
    from: u64,
    to: u64,
) -> Result<(), tonic::Status> {
    let batch = v1::RaftBatch {
        from,
        to,
        ..Default::default()
    };
    let mut peer = v1::peer_client::PeerClient::new(channel);
    peer.raft(futures::stream::iter(vec![batch]))
        .await
        .map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_speaks_tls_to_clients_and_mtls_between_brokers() {
    let _serial = ferry_tests::serial_async().await;
    let pki_dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(pki_dir.path(), "cluster-ca");
    let ca = pki.ca();
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    // Readiness needs the controller elected: Raft between the brokers works over mTLS.
    let (_certs, brokers) = start_secure_cluster(&pki, &dirs, &[]);
    let bootstrap: Vec<String> = brokers.iter().map(|b| b.addr.clone()).collect();

    // The CLI over TLS: create, produce, consume.
    let out = ferry_tls(
        &bootstrap.join(","),
        &ca,
        &[
            "topic",
            "create",
            "orders.created",
            "--partitions",
            "3",
            "--replicas",
            "3",
        ],
        None,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let input: String = (0..30).map(|i| format!("m{i}\n")).collect();
    let out = ferry_tls(
        &bootstrap[0],
        &ca,
        &["produce", "orders.created"],
        Some(input.as_bytes()),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let out = ferry_tls(
        &bootstrap[1],
        &ca,
        &[
            "consume",
            "orders.created",
            "--from",
            "beginning",
            "--exit-at-end",
        ],
        None,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let mut read: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    read.sort();
    let mut want: Vec<String> = (0..30).map(|i| format!("m{i}")).collect();
    want.sort();
    assert_eq!(
        read, want,
        "every message, through every partition's leader"
    );

    // The SDK over TLS sees the same topic.
    let client = Client::connect_with(bootstrap.clone(), tls_config(&pki.ca_pem(), None))
        .await
        .expect("the SDK connects over TLS");
    let topics = client.list_topics().await.expect("list topics");
    assert!(
        topics.iter().any(|t| t.name == "orders.created"),
        "{topics:?}"
    );

    // Plaintext gRPC, a client trusting another CA, and plain HTTP get nothing.
    let plain = Client::connect_with(
        vec![bootstrap[0].clone()],
        ClientConfig {
            connect_timeout_ms: 2_000,
            ..ClientConfig::default()
        },
    )
    .await;
    assert!(plain.is_err(), "a plaintext client is not served");
    let other = Pki::new(pki_dir.path(), "other-ca");
    let e = Client::connect_with(
        vec![bootstrap[0].clone()],
        tls_config(&other.ca_pem(), None),
    )
    .await
    .expect_err("a client trusting another CA does not connect");
    assert!(
        e.to_string().to_lowercase().contains("certificate"),
        "the error says why: {e}"
    );
    assert_eq!(ferry_tests::http_get(&brokers[0].http, "/readyz").0, 0);
    let out = run_ferry(&bootstrap[0], &["topic", "list"], None);
    assert!(!out.status.success(), "the CLI without --tls-ca is refused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_peer_port_refuses_anyone_who_is_not_the_broker_it_claims() {
    let _serial = ferry_tests::serial_async().await;
    let pki_dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(pki_dir.path(), "cluster-ca");
    let ca_pem = pki.ca_pem();
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let (certs, brokers) = start_secure_cluster(&pki, &dirs, &[]);
    let peer_1 = brokers[0].flag("--peer-listen").expect("peer address");

    // Broker 3's own certificate speaking as broker 3 passes the identity check...
    let as_3 = peer_channel(&peer_1, &ca_pem, Some(&certs[2]), "broker-1")
        .await
        .expect("broker 3's certificate is accepted on the peer port");
    raft_batch(as_3.clone(), 3, 1)
        .await
        .expect("a batch from broker 3 with broker 3's certificate");
    // ...and speaking as broker 2 is refused: a forged Raft batch.
    let s = raft_batch(as_3.clone(), 2, 1)
        .await
        .expect_err("broker 3's certificate cannot speak for broker 2");
    assert_eq!(s.code(), tonic::Code::PermissionDenied, "{s:?}");
    assert!(
        s.message().contains("broker 2") && s.message().contains("[3]"),
        "{s:?}"
    );
    // A forged Hello, likewise.
    let s = v1::peer_client::PeerClient::new(as_3)
        .hello(v1::HelloRequest {
            node_id: 2,
            fresh: true,
            ..Default::default()
        })
        .await
        .expect_err("a Hello as broker 2 with broker 3's certificate");
    assert_eq!(s.code(), tonic::Code::PermissionDenied, "{s:?}");

    // A certificate of the cluster's CA that names no broker may not forward controller commands.
    let alice = pki.issue("alice", &["alice"]);
    let as_alice = peer_channel(&peer_1, &ca_pem, Some(&alice), "broker-1")
        .await
        .expect("the handshake itself succeeds: the CA signed it");
    let s = v1::peer_client::PeerClient::new(as_alice.clone())
        .forward(v1::ForwardRequest {
            command: bytes::Bytes::from_static(b"anything"),
            cluster_id: String::new(),
        })
        .await
        .expect_err("a forwarded command from a non-broker");
    assert_eq!(s.code(), tonic::Code::PermissionDenied, "{s:?}");
    let s = raft_batch(as_alice, 1, 1).await.expect_err("nor send Raft");
    assert_eq!(s.code(), tonic::Code::PermissionDenied, "{s:?}");

    // No client certificate, or one from another CA: no TLS session at all.
    let refused = |r: Result<(), tonic::Status>| match r {
        Ok(()) => panic!("served without a cluster certificate"),
        Err(s) => assert_ne!(s.code(), tonic::Code::Ok),
    };
    match peer_channel(&peer_1, &ca_pem, None, "broker-1").await {
        Err(_) => {}
        Ok(ch) => refused(raft_batch(ch, 3, 1).await),
    }
    let other = Pki::new(pki_dir.path(), "other-ca");
    let impostor = other.broker(3);
    match peer_channel(&peer_1, &ca_pem, Some(&impostor), "broker-1").await {
        Err(_) => {}
        Ok(ch) => refused(raft_batch(ch, 3, 1).await),
    }
    let failures = metric_tls(
        &brokers[0],
        "ferry_tls_handshake_failures_total{listener=\"peer\"}",
        &ca_pem,
    )
    .unwrap_or(0.0);
    assert!(
        failures >= 2.0,
        "both failed handshakes are counted: {failures}"
    );
    // The client port is no way around: it does not serve the peer service.
    let to_client_port = peer_channel(&brokers[0].addr, &ca_pem, Some(&certs[2]), "broker-1")
        .await
        .unwrap();
    let s = raft_batch(to_client_port, 3, 1).await.unwrap_err();
    assert_eq!(s.code(), tonic::Code::Unimplemented, "{s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_are_required_with_a_client_ca() {
    let _serial = ferry_tests::serial_async().await;
    let pki_dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(pki_dir.path(), "cluster-ca");
    let clients = Pki::new(pki_dir.path(), "clients-ca");
    let data = tempfile::tempdir().unwrap();
    let mut flags = pki.broker(1).broker_flags(&pki.ca());
    flags.extend([
        "--tls-client-ca".into(),
        clients.ca().display().to_string(),
        "--authorization".into(),
    ]);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let broker = Ferryd::start(data.path(), &flags);
    let addr = vec![broker.addr.clone()];

    let alice = clients.issue("alice", &["alice"]);
    let client = Client::connect_with(addr.clone(), tls_config(&pki.ca_pem(), Some(&alice)))
        .await
        .expect("a client with a certificate of the client CA connects");
    client.list_topics().await.expect("and is served");

    // Only the cluster's CA makes brokers (superusers): a client CA's certificate naming broker-1 is a user
    // (named by its common name), refused where no ACL allows it; the cluster CA's certificate for the same name is
    // broker 1.
    let forged = clients.issue("forged-broker-1", &["broker-1"]);
    let f = Client::connect_with(addr.clone(), tls_config(&pki.ca_pem(), Some(&forged)))
        .await
        .expect("a valid certificate of the client CA connects");
    let e = f.create_topic("forged", 1, 1).await.unwrap_err();
    assert!(
        e.to_string().contains("User:") && e.to_string().contains("may not create"),
        "a client CA's certificate naming a broker is a user: {e}"
    );
    let real = pki.issue("real-broker-1", &["broker-1"]);
    let b = Client::connect_with(addr.clone(), tls_config(&pki.ca_pem(), Some(&real)))
        .await
        .unwrap();
    b.create_topic("by-broker", 1, 1)
        .await
        .expect("the cluster CA's certificate naming broker 1 speaks for broker 1");

    let none = Client::connect_with(addr.clone(), tls_config(&pki.ca_pem(), None)).await;
    assert!(none.is_err(), "no client certificate: refused");
    let expired = clients.issue_expired("old", &["old"]);
    let old = Client::connect_with(addr.clone(), tls_config(&pki.ca_pem(), Some(&expired))).await;
    assert!(old.is_err(), "an expired client certificate: refused");
    let stranger = Pki::new(pki_dir.path(), "stranger-ca").issue("mallory", &["mallory"]);
    let m = Client::connect_with(addr.clone(), tls_config(&pki.ca_pem(), Some(&stranger))).await;
    assert!(m.is_err(), "a certificate of an unknown CA: refused");

    // The CLI with a client certificate.
    let ca = pki.ca().display().to_string();
    let (cert, key) = (
        alice.cert.display().to_string(),
        alice.key.display().to_string(),
    );
    let args = [
        "--tls-ca",
        &ca,
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
        "topic",
        "list",
    ];
    let out = run_ferry(&broker.addr, &args, None);
    assert!(out.status.success(), "{}", stderr(&out));
    // HTTP asks for no client certificate: the kubelet's probes have none.
    assert_eq!(https_get(&broker.http, "/healthz", &pki.ca_pem()).0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_certificate_is_served_without_a_restart() {
    let _serial = ferry_tests::serial_async().await;
    let pki_dir = tempfile::tempdir().unwrap();
    let old_ca = Pki::new(pki_dir.path(), "old-ca");
    let new_ca = Pki::new(pki_dir.path(), "new-ca");
    let cert = old_ca.broker(1);
    let bundle = pki_dir.path().join("bundle.pem");
    std::fs::write(&bundle, [old_ca.ca_pem(), new_ca.ca_pem()].concat()).unwrap();
    let data = tempfile::tempdir().unwrap();
    let mut flags = cert.broker_flags(&bundle);
    flags.extend(["--tls-reload-ms".into(), "200".into()]);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let broker = Ferryd::start(data.path(), &flags);
    let pid = broker.pid();
    let addr = vec![broker.addr.clone()];

    let old_client = Client::connect_with(addr.clone(), tls_config(&old_ca.ca_pem(), None))
        .await
        .expect("served with the old CA's certificate");
    assert!(
        Client::connect_with(addr.clone(), tls_config(&new_ca.ca_pem(), None))
            .await
            .is_err(),
        "a client trusting only the new CA is refused before the rotation"
    );

    // Rotate: the new CA's certificate replaces the old one's files in place.
    let issued = new_ca.broker(1);
    std::fs::rename(&issued.cert, &cert.cert).unwrap();
    std::fs::rename(&issued.key, &cert.key).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if Client::connect_with(addr.clone(), tls_config(&new_ca.ca_pem(), None))
            .await
            .is_ok()
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the rotated certificate was not served within 15 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(broker.pid(), pid);
    let reloads = metric_tls(
        &broker,
        "ferry_tls_reloads_total{result=\"ok\"}",
        &new_ca.ca_pem(),
    );
    assert!(reloads >= Some(1.0), "the reload is counted: {reloads:?}");
    // The connection made before the rotation still works.
    old_client
        .list_topics()
        .await
        .expect("an open connection outlives the rotation");
}

#[test]
fn bad_tls_settings_stop_ferryd_with_one_line() {
    let pki_dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(pki_dir.path(), "ca");
    let cert = pki.broker(1);
    let data = tempfile::tempdir().unwrap();
    let missing = pki_dir.path().join("missing.key");
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec!["--tls-cert".into(), cert.cert.display().to_string()],
            "tls_key",
        ),
        (
            vec![
                "--tls-cert".into(),
                cert.cert.display().to_string(),
                "--tls-key".into(),
                missing.display().to_string(),
                "--tls-ca".into(),
                pki.ca().display().to_string(),
            ],
            "missing.key",
        ),
        (
            {
                let mut f = cert.broker_flags(&pki.ca());
                f.extend(["--tls-peer-name".into(), "broker".into()]);
                f
            },
            "tls_peer_name",
        ),
    ];
    for (flags, named) in cases {
        let out = std::process::Command::new(ferry_tests::bin("ferryd"))
            .arg("--data-dir")
            .arg(data.path())
            .args(["--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"])
            .args(&flags)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{flags:?}");
        let err = stderr(&out);
        assert_eq!(err.lines().count(), 1, "one line: {err}");
        assert!(err.contains(named), "{flags:?}: names {named}: {err}");
    }
}
