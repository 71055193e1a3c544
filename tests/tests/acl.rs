//! Authentication and authorization end to end (docs/security.md): static bearer tokens (stored as
//! hashes), prefix and literal ACLs, deny over allow, superusers, filtered listings, and refusals that do not
//! reveal whether a topic exists; then a three-broker cluster with mTLS between brokers and TLS + tokens
//! for clients, through the SDK.

use std::time::Duration;

use ferry_client::v1::AclBinding;
use ferry_client::{
    Client, ClientConfig, ClientTls, Producer, ProducerConfig, ProducerRecord, Token,
};
use ferry_tests::pki::{start_secure_cluster, token_hash, Pki};
use ferry_tests::{run_ferry, run_ferry_env, Ferryd};

const ADMIN: &str = "admin-secret-token";
const ORDERS: &str = "orders-service-token";
const READER: &str = "reader-token";

fn tokens_flag() -> String {
    format!(
        "User:admin={},User:orders={},User:reader={}",
        token_hash(ADMIN),
        token_hash(ORDERS),
        token_hash(READER)
    )
}

/// `ferry` as the holder of `token` (none: anonymous).
fn as_token(
    b: &Ferryd,
    token: Option<&str>,
    args: &[&str],
    stdin: Option<&[u8]>,
) -> std::process::Output {
    let mut all = Vec::new();
    if let Some(t) = token {
        all.extend(["--token", t]);
    }
    all.extend_from_slice(args);
    run_ferry(&b.addr, &all, stdin)
}

fn ok(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The command failed with one line on stderr containing `what`.
fn refused(out: &std::process::Output, what: &str) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "succeeded: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(err.to_lowercase().contains(what), "says {what}: {err}");
    err
}

#[test]
fn tokens_and_acls_let_each_service_touch_only_its_own_topics() {
    let _serial = ferry_tests::serial();
    let data = tempfile::tempdir().unwrap();
    let tokens = tokens_flag();
    let b = Ferryd::start(
        data.path(),
        &[
            "--authorization",
            "--superusers",
            "User:admin",
            "--auth-tokens",
            &tokens,
        ],
    );
    let admin = Some(ADMIN);
    let orders = Some(ORDERS);
    for t in ["orders.created", "orders.audit", "payments.settled"] {
        ok(&as_token(
            &b,
            admin,
            &["topic", "create", t, "--partitions", "2"],
            None,
        ));
    }
    // The orders service may write (and so describe) every `orders.` topic, but not orders.audit.
    ok(&as_token(
        &b,
        admin,
        &[
            "acl",
            "create",
            "--principal",
            "User:orders",
            "--operation",
            "write",
            "--topic",
            "orders.",
            "--prefix",
        ],
        None,
    ));
    ok(&as_token(
        &b,
        admin,
        &[
            "acl",
            "create",
            "--principal",
            "User:orders",
            "--deny",
            "--operation",
            "write",
            "--topic",
            "orders.audit",
        ],
        None,
    ));
    // The reader may read payments.settled.
    ok(&as_token(
        &b,
        admin,
        &[
            "acl",
            "create",
            "--principal",
            "User:reader",
            "--operation",
            "read",
            "--topic",
            "payments.settled",
        ],
        None,
    ));

    let input: String = (0..20).map(|i| format!("o{i}\n")).collect();
    let out = as_token(
        &b,
        orders,
        &["produce", "orders.created"],
        Some(input.as_bytes()),
    );
    ok(&out);
    refused(
        &as_token(&b, orders, &["produce", "payments.settled"], Some(b"x\n")),
        // The client asks for the topic's metadata first: refused already (it may not even describe it).
        "user:orders may not describe topic `payments.settled`",
    );
    refused(
        &as_token(&b, orders, &["produce", "orders.audit"], Some(b"x\n")),
        "may not write topic `orders.audit`",
    );
    refused(
        &as_token(
            &b,
            orders,
            &["topic", "create", "orders.new", "--partitions", "1"],
            None,
        ),
        "may not create topic `orders.new`",
    );
    refused(
        &as_token(
            &b,
            orders,
            &[
                "consume",
                "orders.created",
                "--from",
                "beginning",
                "--exit-at-end",
            ],
            None,
        ),
        "may not read topic `orders.created`",
    );
    // Listings show only what the principal may describe: the write allow implies describe, the deny of
    // write does not take it away.
    let listed = ok(&as_token(
        &b,
        orders,
        &["topic", "list", "-o", "json"],
        None,
    ));
    let names: Vec<String> = listed
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["name"].as_str().map(str::to_owned))
        .collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(sorted, ["orders.audit", "orders.created"], "{listed}");
    // A refusal does not say whether the topic exists.
    let a = refused(
        &as_token(&b, orders, &["topic", "describe", "payments.settled"], None),
        "may not",
    );
    let n = refused(
        &as_token(&b, orders, &["topic", "describe", "payments.nope"], None),
        "may not",
    );
    assert_eq!(
        a.replace("payments.settled", "X"),
        n.replace("payments.nope", "X"),
        "an existing and a missing topic are refused alike"
    );

    // The reader reads payments.settled and nothing else; anonymous and unknown tokens get nothing.
    ok(&as_token(
        &b,
        Some(READER),
        &[
            "consume",
            "payments.settled",
            "--from",
            "beginning",
            "--exit-at-end",
        ],
        None,
    ));
    refused(
        &as_token(
            &b,
            Some(READER),
            &["produce", "payments.settled"],
            Some(b"x\n"),
        ),
        "may not write",
    );
    refused(
        &as_token(&b, None, &["produce", "orders.created"], Some(b"x\n")),
        "user:anonymous may not",
    );
    let anon = ok(&as_token(&b, None, &["topic", "list", "-o", "json"], None));
    assert!(anon.trim().is_empty(), "anonymous sees no topic: {anon}");
    refused(
        &as_token(&b, Some("not-a-token"), &["topic", "list"], None),
        "unknown bearer token",
    );
    // Only a superuser (or cluster-admin) manages ACLs.
    refused(
        &as_token(&b, orders, &["acl", "list"], None),
        "may not describe cluster",
    );

    // The superuser reads everything and lists the ACLs.
    let read = ok(&as_token(
        &b,
        admin,
        &[
            "consume",
            "orders.created",
            "--from",
            "beginning",
            "--exit-at-end",
        ],
        None,
    ));
    assert_eq!(read.lines().count(), 20);
    let acls = ok(&as_token(
        &b,
        admin,
        &["acl", "list", "--principal", "User:orders", "-o", "json"],
        None,
    ));
    assert_eq!(acls.lines().count(), 2, "{acls}");
    assert!(acls.contains(r#""pattern_type":"prefix""#), "{acls}");

    // ACLs are replicated state: they survive a restart; deleting them takes the access away.
    let mut b = b;
    assert!(b.stop());
    b.restart_in_place();
    b.wait_ready();
    ok(&as_token(
        &b,
        orders,
        &["produce", "orders.created"],
        Some(b"after-restart\n"),
    ));
    let deleted = ok(&as_token(
        &b,
        admin,
        &["acl", "delete", "--principal", "User:orders"],
        None,
    ));
    assert_eq!(deleted.trim(), "deleted 2 ACLs");
    refused(
        &as_token(&b, orders, &["produce", "orders.created"], Some(b"x\n")),
        "user:orders may not",
    );
}

#[test]
fn bad_auth_settings_stop_ferryd_with_one_line() {
    let data = tempfile::tempdir().unwrap();
    for (flags, named) in [
        (vec!["--auth-tokens", "orders=sha256:00"], "auth_tokens"),
        (
            vec!["--auth-tokens", "User:orders=plaintext-token"],
            "sha256",
        ),
        (vec!["--superusers", "admin"], "superusers"),
        (
            vec!["--authorization", "--peers", "1=127.0.0.1:1,2=127.0.0.1:2"],
            "needs tls",
        ),
    ] {
        let out = std::process::Command::new(ferry_tests::bin("ferryd"))
            .arg("--data-dir")
            .arg(data.path())
            .args(["--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"])
            .args(&flags)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{flags:?}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(err.to_lowercase().contains(named), "{flags:?}: {err}");
    }
}

fn sdk(ca: &[u8], token: &str) -> ClientConfig {
    ClientConfig {
        tls: Some(ClientTls {
            ca_pem: ca.to_vec(),
            ..ClientTls::default()
        }),
        token: Some(Token::Static(token.to_owned())),
        retries_max: 2,
        ..ClientConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secure_cluster_serves_the_sdk_by_token_over_tls() {
    let _serial = ferry_tests::serial_async().await;
    let pki_dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(pki_dir.path(), "cluster-ca");
    let ca = pki.ca();
    let tokens = tokens_flag();
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let flags = [
        "--authorization",
        "--superusers",
        "User:admin",
        "--auth-tokens",
        &tokens,
    ];
    let (_, brokers) = start_secure_cluster(&pki, &dirs, &flags);
    let ca_pem = pki.ca_pem();
    let bootstrap: Vec<String> = brokers.iter().map(|b| b.addr.clone()).collect();

    let admin = Client::connect_with(bootstrap.clone(), sdk(&ca_pem, ADMIN))
        .await
        .unwrap();
    for t in ["orders.created", "payments.settled"] {
        admin
            .create_topic(t, 3, 3)
            .await
            .expect("the superuser creates topics");
    }
    // Six partitions of one replica each: every broker hosts some and not others, so its describe asks the
    // brokers that do. They answer on their peer ports; asked on the client port, as before, a broker came
    // as User:ANONYMOUS, was refused, and the leaders it did not host stayed unknown.
    admin.create_topic("solo", 6, 1).await.unwrap();
    for addr in &bootstrap {
        let one = Client::connect_with(vec![addr.clone()], sdk(&ca_pem, ADMIN))
            .await
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            let info = one.describe_topic("solo").await.unwrap();
            let leaders: Vec<u64> = info.partition_info.iter().map(|p| p.leader).collect();
            if leaders.len() == 6 && leaders.iter().all(|l| *l != 0) {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{addr} describes partitions it does not host with no leader: {leaders:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    admin
        .create_acl(AclBinding {
            principal: "User:orders".into(),
            permission: "allow".into(),
            operation: "write".into(),
            resource_type: "topic".into(),
            pattern: "orders.".into(),
            pattern_type: "prefix".into(),
        })
        .await
        .unwrap();
    // Every broker applies the ACL (it is controller state): wait until each shows the service its topic
    // (the write allow implies describe).
    for addr in &bootstrap {
        let one = Client::connect_with(vec![addr.clone()], sdk(&ca_pem, ORDERS))
            .await
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !one
            .list_topics()
            .await
            .is_ok_and(|t| t.iter().any(|t| t.name == "orders.created"))
        {
            assert!(
                std::time::Instant::now() < deadline,
                "{addr} never applied the ACL"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let orders = Client::connect_with(bootstrap.clone(), sdk(&ca_pem, ORDERS))
        .await
        .unwrap();
    let producer = Producer::new(orders.clone(), ProducerConfig::default()).unwrap();
    for i in 0..30 {
        producer
            .send(ProducerRecord::new("orders.created", format!("o{i}")))
            .await
            .await
            .expect("an orders service publishes to orders.created");
    }
    let e = producer
        .send(ProducerRecord::new("payments.settled", "x"))
        .await
        .await
        .expect_err("refused on payments.settled");
    assert!(
        e.to_string().contains("may not") && e.to_string().contains("`payments.settled`"),
        "{e}"
    );
    let e = orders.create_topic("orders.new", 1, 3).await.unwrap_err();
    assert!(e.to_string().contains("may not create"), "{e}");
    let topics = orders.list_topics().await.unwrap();
    let names: Vec<&str> = topics.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(
        names,
        ["orders.created"],
        "metadata lists only what it may describe"
    );

    // The CLI over TLS with tokens, on the same cluster: the service publishes, the admin reads it all.
    let ca = ca.display().to_string();
    let all = bootstrap.join(",");
    let input: String = (0..20).map(|i| format!("cli{i}\n")).collect();
    let out = run_ferry(
        &all,
        &[
            "--tls-ca",
            &ca,
            "--token",
            ORDERS,
            "produce",
            "orders.created",
        ],
        Some(input.as_bytes()),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run_ferry(
        &all,
        &[
            "--tls-ca",
            &ca,
            "--token",
            ORDERS,
            "produce",
            "payments.settled",
        ],
        Some(b"x\n"),
    );
    assert!(
        !out.status.success(),
        "the CLI is refused on payments.settled too"
    );
    let out = run_ferry(
        &all,
        &[
            "--tls-ca",
            &ca,
            "--token",
            ADMIN,
            "consume",
            "orders.created",
            "--from",
            "beginning",
            "--exit-at-end",
        ],
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).lines().count(),
        50,
        "30 from the SDK and 20 from the CLI"
    );

    // A CLI context keeps the bootstrap brokers, the CA and a token file; commands then need no flags,
    // and a token rewritten in the file is the next command's.
    let cfg_dir = tempfile::tempdir().unwrap();
    let cfg = cfg_dir.path().join("ferry").join("cli.toml");
    let token_file = cfg_dir.path().join("token");
    std::fs::write(&token_file, format!("{ORDERS}\n")).unwrap();
    let env = [("FERRY_CLI_CONFIG", cfg.to_str().unwrap())];
    let token_path = token_file.to_str().unwrap();
    let cli = |args: &[&str], input: Option<&[u8]>| run_ferry_env("", args, input, &env);
    let flags = ["--tls-ca", &ca, "--token-file", token_path];
    let out = run_ferry_env(
        &all,
        &[&flags[..], &["context", "set", "orders"]].concat(),
        None,
        &env,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cli(&["produce", "orders.created"], Some(b"ctx\n"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cli(&["produce", "payments.settled"], Some(b"x\n"));
    assert!(
        !out.status.success(),
        "the orders token, from the file, is refused there"
    );
    std::fs::write(&token_file, format!("{ADMIN}\n")).unwrap();
    let out = cli(&["produce", "payments.settled"], Some(b"x\n"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed =
        String::from_utf8_lossy(&cli(&["context", "list", "-o", "json"], None).stdout).into_owned();
    assert!(
        listed.contains(r#""name":"orders""#) && listed.contains(r#""current":true"#),
        "{listed}"
    );
    // Brokers named on the command line get none of the current context's settings (its token is for
    // its own brokers): plaintext to these TLS brokers fails; naming the context applies it again.
    let out = run_ferry_env(&all, &["topic", "list"], None, &env);
    assert!(
        !out.status.success(),
        "the context's TLS and token were applied to --bootstrap"
    );
    let out = run_ferry_env(&all, &["--context", "orders", "topic", "list"], None, &env);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cli(&["--context", "nope", "topic", "list"], None);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.trim().lines().count() == 1 && err.contains("no context `nope`"),
        "{err}"
    );
    let out = cli(&["--token", ADMIN, "context", "set", "leaky"], None);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success() && err.contains("never the token itself"),
        "{err}"
    );
}
