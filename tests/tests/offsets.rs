//! ListOffsets: earliest, latest and by timestamp; plain records published without a partition are placed by
//! key; fetch long-polls until data arrives.

use std::time::{Duration, Instant};

use ferry_protocol::partitioner::partition_for_key;
use ferry_protocol::v1::{self, list_offsets_request::Spec, publish_request::Payload};
use ferry_tests::Ferryd;

fn record(key: &str, value: &str, ts: i64) -> v1::Record {
    v1::Record {
        key: key.as_bytes().to_vec().into(),
        has_key: true,
        value: value.as_bytes().to_vec().into(),
        timestamp_ms: ts,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_by_time_and_key_placement() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Ferryd::start(dir.path(), &[]);
    let mut admin = broker.admin().await;
    let mut client = broker.client().await;
    admin
        .create_topic(v1::CreateTopicRequest {
            name: "t".into(),
            partitions: 3,
            replicas: 1,
            config: None,
        })
        .await
        .unwrap();
    let base = 1_700_000_000_000i64;
    let key = "same-key";
    let p = partition_for_key(key.as_bytes(), 3);
    for i in 0..10 {
        let req = v1::PublishRequest {
            topic: "t".into(),
            partition: None,
            acks: v1::Acks::Leader as i32,
            payload: Some(Payload::Records(v1::RecordList {
                records: vec![record(key, &format!("v{i}"), base + i * 1000)],
            })),
            timeout_ms: 0,
        };
        let ack = client.publish(req).await.unwrap().into_inner().acks[0];
        assert_eq!(ack.partition, p, "placed by the documented key hash");
        assert_eq!(ack.base_offset, i as u64);
    }
    let list = |spec| v1::ListOffsetsRequest {
        topic: "t".into(),
        partition: p,
        spec: Some(spec),
    };
    assert_eq!(
        client
            .list_offsets(list(Spec::Earliest(true)))
            .await
            .unwrap()
            .into_inner()
            .offset,
        0
    );
    assert_eq!(
        client
            .list_offsets(list(Spec::Latest(true)))
            .await
            .unwrap()
            .into_inner()
            .offset,
        10
    );
    assert_eq!(
        client
            .list_offsets(list(Spec::TimestampMs(base + 3500)))
            .await
            .unwrap()
            .into_inner()
            .offset,
        4
    );
    assert_eq!(
        client
            .list_offsets(list(Spec::TimestampMs(base)))
            .await
            .unwrap()
            .into_inner()
            .offset,
        0
    );
    assert_eq!(
        client
            .list_offsets(list(Spec::TimestampMs(base + 99_000)))
            .await
            .unwrap()
            .into_inner()
            .offset,
        10
    );

    // A long poll at the end returns as soon as a record is committed.
    let mut poller = client.clone();
    let started = Instant::now();
    let poll = tokio::spawn(async move {
        poller
            .fetch(v1::FetchRequest {
                topic: "t".into(),
                partition: p,
                offset: 10,
                max_wait_ms: 10_000,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
    });
    // Published only once the poll waits (the broker counts waiting fetches), so the answer shows the
    // commit woke it: a poll that came after the publish would find the record without waiting.
    tokio::task::block_in_place(|| {
        ferry_tests::wait_until(Duration::from_secs(10), "the long poll waiting", || {
            broker.metric("ferry_fetch_waiting").unwrap_or(0.0) >= 1.0
        })
    });
    let req = v1::PublishRequest {
        topic: "t".into(),
        partition: Some(p),
        acks: 0,
        payload: Some(Payload::Records(v1::RecordList {
            records: vec![record(key, "late", 0)],
        })),
        timeout_ms: 0,
    };
    client.publish(req).await.unwrap();
    let resp = poll.await.unwrap();
    assert_eq!(resp.records.len(), 1);
    assert_eq!(&resp.records[0].value[..], b"late");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "answered on commit, not at the deadline"
    );
}

/// Group commits are fenced end to end: a member commits only partitions it owns (a partition handed to
/// another member is refused to the old owner), a member whose session expired is out of the group (its
/// commits are refused, and the committed offsets stay as they were), and a generation from before a
/// member joined is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_and_foreign_group_commits_are_refused() {
    let (_dir, _broker, mut c) = broker_with_topic("f", 2).await;
    let tp = |p: u32| v1::TopicPartition {
        topic: "f".into(),
        partition: p,
    };
    // One heartbeat of `member` reporting `owned`.
    let beat = |member: &str, owned: &[u32]| v1::GroupHeartbeatRequest {
        group: "fence".into(),
        member_id: member.into(),
        instance_id: String::new(),
        topics: vec!["f".into()],
        session_timeout_ms: 1_000,
        owned: owned.iter().map(|p| tp(*p)).collect(),
        leave: false,
        assignor: String::new(),
    };
    let commit = |member: &str, generation: u64, p: u32, offset: u64| v1::CommitOffsetsRequest {
        group: "fence".into(),
        member_id: member.into(),
        generation,
        offsets: vec![v1::PartitionOffset {
            topic: "f".into(),
            partition: p,
            offset,
        }],
    };
    let owned = |r: &v1::GroupHeartbeatResponse| -> Vec<u32> {
        let mut v: Vec<u32> = r.assignment.iter().map(|t| t.partition).collect();
        v.sort_unstable();
        v
    };
    let committed = |c: &mut v1::ferry_client::FerryClient<_>| {
        let mut c = c.clone();
        async move {
            let d = c
                .describe_group(v1::DescribeGroupRequest {
                    group: "fence".into(),
                })
                .await
                .unwrap()
                .into_inner();
            let mut v: Vec<(u32, i64)> = d
                .partitions
                .iter()
                .map(|p| (p.partition, p.committed))
                .collect();
            v.sort_unstable();
            v
        }
    };

    // A joins and gets both partitions.
    let a = c.group_heartbeat(beat("", &[])).await.unwrap().into_inner();
    let (a_id, a_gen) = (a.member_id.clone(), a.generation);
    let mut a_owned = owned(&a);
    let deadline = Instant::now() + Duration::from_secs(10);
    while a_owned != [0, 1] {
        assert!(Instant::now() < deadline, "A owns {a_owned:?}");
        let r = c
            .group_heartbeat(beat(&a_id, &a_owned))
            .await
            .unwrap()
            .into_inner();
        a_owned.extend(owned(&r));
        a_owned.sort_unstable();
        a_owned.dedup();
    }
    c.commit_offsets(commit(&a_id, a_gen, 0, 5)).await.unwrap();
    c.commit_offsets(commit(&a_id, a_gen, 1, 6)).await.unwrap();

    // B joins: A is asked to give one partition up, releases it, and B gets it.
    let b = c.group_heartbeat(beat("", &[])).await.unwrap().into_inner();
    let (b_id, b_gen) = (b.member_id.clone(), b.generation);
    assert!(b_gen > a_gen, "a join is a new generation");
    let mut b_owned = owned(&b);
    let deadline = Instant::now() + Duration::from_secs(10);
    while b_owned.is_empty() {
        assert!(Instant::now() < deadline, "B got nothing");
        // A reports what it is still told to own (its assignment answer is its target).
        let r = c
            .group_heartbeat(beat(&a_id, &a_owned))
            .await
            .unwrap()
            .into_inner();
        let target = owned(&r);
        if !target.is_empty() {
            a_owned.retain(|p| target.contains(p));
        }
        let r = c
            .group_heartbeat(beat(&b_id, &b_owned))
            .await
            .unwrap()
            .into_inner();
        b_owned = owned(&r);
    }
    assert_eq!(b_owned.len(), 1, "B {b_owned:?}, A {a_owned:?}");
    let moved = b_owned[0];
    assert!(!a_owned.contains(&moved), "A released {moved}: {a_owned:?}");
    // A commits the partition it gave up: refused, whatever generation it names.
    for generation in [a_gen, b_gen] {
        let e = c
            .commit_offsets(commit(&a_id, generation, moved, 9))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
        assert!(e.message().contains("does not own"), "{e:?}");
    }
    // B's generation is its join: one from before is stale.
    let e = c
        .commit_offsets(commit(&b_id, a_gen, moved, 8))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    c.commit_offsets(commit(&b_id, b_gen, moved, 7))
        .await
        .unwrap();
    let before = committed(&mut c).await;
    assert!(before.contains(&(moved, 7)), "{before:?}");

    // A goes quiet past its 1 s session while B keeps beating: A is expired, and its commits (even of the
    // partition it owned) are refused; nothing committed changes.
    let kept = a_owned[0];
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = c
            .group_heartbeat(beat(&b_id, &b_owned))
            .await
            .unwrap()
            .into_inner();
        b_owned.extend(owned(&r));
        b_owned.sort_unstable();
        b_owned.dedup();
        // Within its session the commit is A's right: it names the offset already committed.
        let same = before
            .iter()
            .find(|(p, _)| *p == kept)
            .map_or(0, |(_, o)| *o as u64);
        match c.commit_offsets(commit(&a_id, a_gen, kept, same)).await {
            Ok(_) => {}
            Err(e) => {
                assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
                assert!(e.message().contains("is not in the group"), "{e:?}");
                break;
            }
        }
        assert!(Instant::now() < deadline, "A was never expired");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        committed(&mut c).await,
        before,
        "refused commits changed nothing"
    );
}

/// A static member that comes back (same instance id, a new process) gets a new member id, so the process
/// it replaced, if still running, is fenced: its heartbeats and commits are refused, the new one's go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_static_member_is_fenced() {
    let (_dir, _broker, mut c) = broker_with_topic("z", 1).await;
    let beat = |member: &str, owned: bool| v1::GroupHeartbeatRequest {
        group: "static".into(),
        member_id: member.into(),
        instance_id: "pod-z".into(),
        topics: vec!["z".into()],
        session_timeout_ms: 10_000,
        owned: if owned {
            vec![v1::TopicPartition {
                topic: "z".into(),
                partition: 0,
            }]
        } else {
            vec![]
        },
        leave: false,
        assignor: String::new(),
    };
    let commit = |member: &str, generation: u64, offset: u64| v1::CommitOffsetsRequest {
        group: "static".into(),
        member_id: member.into(),
        generation,
        offsets: vec![v1::PartitionOffset {
            topic: "z".into(),
            partition: 0,
            offset,
        }],
    };
    let old = c
        .group_heartbeat(beat("", false))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(old.assignment.len(), 1, "{old:?}");
    c.group_heartbeat(beat(&old.member_id, true)).await.unwrap();
    c.commit_offsets(commit(&old.member_id, old.generation, 3))
        .await
        .unwrap();
    // The instance restarts (the old process is only paused, say): it joins again with no member id.
    let new = c
        .group_heartbeat(beat("", false))
        .await
        .unwrap()
        .into_inner();
    assert_ne!(new.member_id, old.member_id);
    assert_eq!(new.generation, old.generation, "no rebalance");
    assert_eq!(new.assignment.len(), 1, "same partition back: {new:?}");
    assert_eq!(new.committed.first().map(|o| o.offset), Some(3));
    // The old process wakes up: fenced, and it is told why.
    for e in [
        c.commit_offsets(commit(&old.member_id, old.generation, 2))
            .await
            .unwrap_err(),
        c.group_heartbeat(beat(&old.member_id, true))
            .await
            .unwrap_err(),
    ] {
        assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
        assert!(e.message().contains("fenced"), "{e:?}");
    }
    c.commit_offsets(commit(&new.member_id, new.generation, 4))
        .await
        .unwrap();
    let d = c
        .describe_group(v1::DescribeGroupRequest {
            group: "static".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(d.partitions[0].committed, 4);
}

/// A broker with topic `name` of `partitions` partitions holding ten records each, and a client of it.
async fn broker_with_topic(
    name: &str,
    partitions: u32,
) -> (
    tempfile::TempDir,
    Ferryd,
    v1::ferry_client::FerryClient<tonic::transport::Channel>,
) {
    let dir = tempfile::tempdir().unwrap();
    let broker = Ferryd::start(dir.path(), &[]);
    broker
        .admin()
        .await
        .create_topic(v1::CreateTopicRequest {
            name: name.into(),
            partitions,
            replicas: 1,
            config: None,
        })
        .await
        .unwrap();
    let mut c = broker.client().await;
    for p in 0..partitions {
        let values: Vec<String> = (0..10).map(|i| format!("v{i}")).collect();
        c.publish(v1::PublishRequest {
            topic: name.into(),
            partition: Some(p),
            acks: v1::Acks::All as i32,
            payload: Some(Payload::Batch(ferry_tests::batch_of(&values))),
            timeout_ms: 5_000,
        })
        .await
        .unwrap();
    }
    (dir, broker, c)
}
