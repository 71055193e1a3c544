//! Hostile input on every port: random bytes, a truncated HTTP/2 preface, a gRPC frame claiming 1 GiB,
//! invalid protobuf, invalid UTF-8, unknown methods and API versions, unknown enum values, oversized
//! messages, a stream flood, and offset commits past the end or from stale members. Each gets a clear
//! status (or a closed connection), changes nothing, and the broker keeps serving other clients.

use std::io::Write;
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ferry_protocol::v1::{self, publish_request::Payload};
use ferry_tests::cluster::free_port;
use ferry_tests::{batch_of, Ferryd};
use tonic::Code;

/// One raw gRPC call over HTTP/2 with `body` as the whole request body (gRPC framing included): the
/// `grpc-status` code it ends with.
async fn raw_call(addr: &str, path: &str, body: Vec<u8>) -> i32 {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut h2, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    let req = http::Request::builder()
        .method("POST")
        .uri(format!("http://{addr}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let (response, mut send) = h2.send_request(req, false).unwrap();
    send.send_data(Bytes::from(body), true).unwrap();
    let response = response.await.unwrap();
    let status = |h: &http::HeaderMap| {
        h.get("grpc-status")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<i32>().ok())
    };
    if let Some(s) = status(response.headers()) {
        return s;
    }
    let mut body = response.into_body();
    while let Some(chunk) = body.data().await {
        if chunk.is_err() {
            break;
        }
    }
    body.trailers()
        .await
        .ok()
        .flatten()
        .and_then(|t| status(&t))
        .unwrap_or(-1)
}

/// A gRPC message frame claiming `claimed` bytes, followed by `body`.
// gRPC's length prefix is big-endian by its specification (Ferry's own formats are little-endian).
#[allow(clippy::big_endian_bytes)]
fn frame(claimed: u32, body: &[u8]) -> Vec<u8> {
    let mut b = vec![0u8];
    b.extend_from_slice(&claimed.to_be_bytes());
    b.extend_from_slice(body);
    b
}

fn framed(message: &[u8]) -> Vec<u8> {
    frame(message.len() as u32, message)
}

async fn still_serves(broker: &Ferryd, topic: &str) {
    let mut c = broker.client().await;
    let req = v1::PublishRequest {
        topic: topic.into(),
        partition: Some(0),
        acks: v1::Acks::All as i32,
        payload: Some(Payload::Batch(batch_of(&["alive".to_owned()]))),
        timeout_ms: 5_000,
    };
    c.publish(req).await.expect("the broker still serves");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_input_gets_clear_errors_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let peer = format!("127.0.0.1:{}", free_port());
    let broker = Ferryd::start(
        dir.path(),
        &[
            "--peers",
            &format!("1={peer}"),
            "--peer-listen",
            &peer,
            "--node-id",
            "1",
        ],
    );
    let mut admin = broker.admin().await;
    admin
        .create_topic(v1::CreateTopicRequest {
            name: "t".into(),
            partitions: 1,
            replicas: 1,
            config: None,
        })
        .await
        .unwrap();
    still_serves(&broker, "t").await;

    // Random bytes and a truncated HTTP/2 preface on every port: the connection is closed.
    for addr in [broker.addr.as_str(), broker.http.as_str(), peer.as_str()] {
        for junk in [
            &b"\x16\x03\x01\x02\x00garbage\x00\xff\xfe"[..],
            &b"PRI * HTTP/2.0\r\n\r\nSM"[..],
            &[0u8; 4096][..],
        ] {
            let mut s = TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            // The server may close before all the junk is written: a write error is an answer too.
            let _ = s.write_all(junk);
            let _ = s.shutdown(std::net::Shutdown::Write);
            let mut rest = Vec::new();
            // Closed: end of stream, or a reset. A read that times out means the server kept it open.
            match std::io::Read::read_to_end(&mut s, &mut rest) {
                Ok(_) => {}
                Err(e) => assert!(
                    matches!(
                        e.kind(),
                        std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
                    ),
                    "{addr} kept a connection open after junk {junk:?}: {e}"
                ),
            }
        }
    }
    still_serves(&broker, "t").await;

    let publish = "/ferry.v1.Ferry/Publish";
    // A frame claiming 1 GiB: refused without allocating it. An allocation of that size would show in the
    // broker's peak virtual size (VmPeak) even if never touched; a new thread or malloc arena reserves
    // 64-128 MiB, so the bound leaves room for a few of those and none for the claim.
    let peak = || vm_peak_kib(broker.child.id());
    let before = peak();
    let code = raw_call(&broker.addr, publish, frame(1 << 30, &[0u8; 64])).await;
    assert!(
        [Code::OutOfRange as i32, Code::ResourceExhausted as i32].contains(&code),
        "1 GiB claim: {code}"
    );
    let grew_mib = peak().saturating_sub(before) / 1024;
    assert!(
        grew_mib < 768,
        "the broker's peak virtual size grew {grew_mib} MiB answering a 1 GiB claim"
    );
    // Invalid protobuf, and a topic name that is not UTF-8.
    let code = raw_call(&broker.addr, publish, framed(&[0xff; 7])).await;
    assert_eq!(code, Code::InvalidArgument as i32, "invalid protobuf");
    let code = raw_call(&broker.addr, publish, framed(&[0x0a, 0x02, 0xff, 0xfe])).await;
    assert_eq!(code, Code::InvalidArgument as i32, "non-UTF-8 topic");
    // Unknown methods and API versions.
    for path in [
        "/ferry.v1.Ferry/Nope",
        "/ferry.v2.Ferry/Publish",
        "/kafka.Produce/Produce",
    ] {
        let code = raw_call(&broker.addr, path, framed(&[])).await;
        assert_eq!(code, Code::Unimplemented as i32, "{path}");
    }

    // Unknown enum values and oversized messages, through a normal client.
    let mut c = broker.client().await;
    let e = c
        .publish(v1::PublishRequest {
            topic: "t".into(),
            partition: Some(0),
            acks: 99,
            payload: Some(Payload::Batch(batch_of(&["x".to_owned()]))),
            timeout_ms: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    let e = c
        .fetch(v1::FetchRequest {
            topic: "t".into(),
            partition: 0,
            offset: 0,
            max_bytes: 1024,
            max_wait_ms: 0,
            format: 42,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    // A message over the 16 MiB limit (claimed 17 MiB, 1 MiB of it sent).
    let code = raw_call(&broker.addr, publish, frame(17 << 20, &vec![0u8; 1 << 20])).await;
    assert!(
        [Code::OutOfRange as i32, Code::ResourceExhausted as i32].contains(&code),
        "oversized: {code}"
    );

    // A stream flood on one connection: per-connection limits hold, and another client is unaffected.
    let flood_addr = broker.addr.clone();
    let tcp = tokio::net::TcpStream::connect(&flood_addr).await.unwrap();
    let (h2, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    let limit = h2.clone();
    let opened = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = opened.clone();
    let flood = tokio::spawn(async move {
        let mut open = Vec::new();
        for _ in 0..1_100 {
            let mut h2 = match h2.clone().ready().await {
                Ok(h) => h,
                Err(_) => break,
            };
            let req = http::Request::builder()
                .method("POST")
                .uri(format!("http://{flood_addr}/ferry.v1.Ferry/Subscribe"))
                .header("content-type", "application/grpc")
                .body(())
                .unwrap();
            match h2.send_request(req, false) {
                Ok(s) => {
                    open.push(s);
                    counted.store(open.len(), std::sync::atomic::Ordering::SeqCst);
                }
                Err(_) => break,
            }
        }
        open
    });
    // The flood is on (1,000 streams asked for) while another client is served; the connection carries
    // the broker's limit of 1,024 concurrent streams (streams past it wait in the client: h2 enforces the
    // limit its peer advertised).
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while opened.load(std::sync::atomic::Ordering::SeqCst) < 1_000 {
        assert!(
            std::time::Instant::now() < deadline,
            "the flood opened only {} streams",
            opened.load(std::sync::atomic::Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    still_serves(&broker, "t").await;
    assert_eq!(
        limit.current_max_send_streams(),
        1_024,
        "the broker's concurrent-stream limit per connection"
    );
    flood.abort();

    // Offset commits past the end, "negative" (a u64 near 2^64), from members that are not in the group.
    let mut c = broker.client().await;
    let commit = |member: &str, offset: u64| v1::CommitOffsetsRequest {
        group: "g".into(),
        member_id: member.into(),
        generation: 1,
        offsets: vec![v1::PartitionOffset {
            topic: "t".into(),
            partition: 0,
            offset,
        }],
    };
    c.commit_offsets(commit("", 1))
        .await
        .expect("an admin commit of an empty group");
    for (member, offset) in [("", 1_000_000), ("", u64::MAX), ("ghost", 1)] {
        let e = c.commit_offsets(commit(member, offset)).await.unwrap_err();
        assert!(
            [Code::InvalidArgument, Code::FailedPrecondition].contains(&e.code()),
            "{member} {offset}: {e:?}"
        );
    }
    let d = c
        .describe_group(v1::DescribeGroupRequest { group: "g".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        d.partitions[0].committed, 1,
        "the committed offset is unchanged"
    );

    // Nothing was appended by any of it: only the three good publishes are there.
    let r = c
        .list_offsets(v1::ListOffsetsRequest {
            topic: "t".into(),
            partition: 0,
            spec: Some(v1::list_offsets_request::Spec::Latest(true)),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.offset, 3, "only the three good publishes were stored");
    let (code, _) = ferry_tests::http_get(&broker.http, "/healthz");
    assert_eq!(code, 200);
}

/// The peak virtual size of process `pid` (KiB), from `/proc/PID/status`.
fn vm_peak_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmPeak:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmPeak in /proc status")
}
