//! The idempotent producer's rules as the broker enforces them, end to end through the Publish RPC with
//! hand-stamped batches (docs/design.md, idempotent producer): a retried batch is answered with where it
//! landed and stored once (also a batch a few back in the window, also after a restart, which rebuilds the
//! table from the log); a sequence gap is refused (ABORTED, after waiting for the batches before it); an older epoch is fenced by a newer one; sequences wrap
//! from 2^31-1 to 0.

use ferry_protocol::batch::{BatchBuilder, ProducerStamp};
use ferry_protocol::v1::{self, publish_request::Payload};
use ferry_tests::Ferryd;
use tonic::Code;

const TOPIC: &str = "idem";

/// A batch of `n` records of producer `id`/`epoch` starting at sequence `seq`, values tagged `tag`.
fn batch(id: i64, epoch: i16, seq: i32, n: u32, tag: &str) -> bytes::Bytes {
    let mut b = BatchBuilder::new(1);
    b.producer(ProducerStamp {
        producer_id: id,
        producer_epoch: epoch,
        base_sequence: seq,
    });
    for i in 0..n {
        b.push(1, None, format!("{tag}-{i}").as_bytes(), &[]);
    }
    b.finish()
}

async fn publish(broker: &Ferryd, batch: bytes::Bytes) -> Result<u64, tonic::Status> {
    let mut c = broker.client().await;
    c.publish(v1::PublishRequest {
        topic: TOPIC.into(),
        partition: Some(0),
        acks: v1::Acks::All as i32,
        payload: Some(Payload::Batch(batch)),
        timeout_ms: 5_000,
    })
    .await
    .map(|r| r.into_inner().acks[0].base_offset)
}

/// Every value stored in the partition, in offset order.
async fn stored(broker: &Ferryd) -> Vec<String> {
    ferry_tests::cluster::read_all(&broker.addr, TOPIC, 0).await
}

async fn init(broker: &Ferryd) -> v1::InitProducerResponse {
    let mut c = broker.client().await;
    c.init_producer(v1::InitProducerRequest::default())
        .await
        .unwrap()
        .into_inner()
}

fn dups(broker: &Ferryd) -> f64 {
    broker
        .metric("ferry_publish_duplicates_total")
        .unwrap_or(0.0)
}

fn refused(r: Result<u64, tonic::Status>, code: Code, says: &str) {
    let e = r.expect_err("refused");
    assert_eq!(e.code(), code, "{e:?}");
    assert!(e.message().contains(says), "{says}: {e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_are_deduplicated_gaps_refused_epochs_fenced_and_sequences_wrap() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Ferryd::start(dir.path(), &[]);
    broker
        .admin()
        .await
        .create_topic(v1::CreateTopicRequest {
            name: TOPIC.into(),
            partitions: 1,
            replicas: 1,
            config: None,
        })
        .await
        .unwrap();
    let p = init(&broker).await;
    let (id, epoch) = (p.producer_id, p.producer_epoch as i16);

    // Two batches; each retried (a lost acknowledgement): same answer, stored once.
    let first = batch(id, epoch, 0, 3, "a");
    let second = batch(id, epoch, 3, 2, "b");
    assert_eq!(publish(&broker, first.clone()).await.unwrap(), 0);
    assert_eq!(publish(&broker, second.clone()).await.unwrap(), 3);
    let before = dups(&broker);
    assert_eq!(
        publish(&broker, second.clone()).await.unwrap(),
        3,
        "the retry lands where the first did"
    );
    assert_eq!(
        publish(&broker, first.clone()).await.unwrap(),
        0,
        "a batch further back in the window too"
    );
    assert_eq!(dups(&broker) - before, 2.0, "both answered as duplicates");
    // A gap: an earlier batch is missing. It waits for it (500 ms), then is refused, retriably (ABORTED),
    // and nothing is written.
    refused(
        publish(&broker, batch(id, epoch, 9, 1, "gap")).await,
        Code::Aborted,
        "out-of-order",
    );
    // The next in sequence goes on.
    assert_eq!(
        publish(&broker, batch(id, epoch, 5, 1, "c")).await.unwrap(),
        5
    );

    // A restart rebuilds the producer table from the log: a retry is still recognised.
    tokio::task::block_in_place(|| {
        broker.kill9();
        broker.restart_in_place();
    });
    broker.wait_ready();
    assert_eq!(
        publish(&broker, second.clone()).await.unwrap(),
        3,
        "recognised after a restart"
    );

    // A newer epoch of the same producer id starts its sequences afresh and fences the old one.
    assert_eq!(
        publish(&broker, batch(id, epoch + 1, 0, 1, "d"))
            .await
            .unwrap(),
        6
    );
    refused(
        publish(&broker, batch(id, epoch, 6, 1, "zombie")).await,
        Code::FailedPrecondition,
        "fenced",
    );

    // Sequences wrap: a producer whose sequence reaches 2^31-1 goes on at 0.
    let q = init(&broker).await;
    let (qid, qepoch) = (q.producer_id, q.producer_epoch as i16);
    assert_ne!(qid, id);
    let wrapping = batch(qid, qepoch, i32::MAX - 1, 3, "w"); // sequences MAX-1, MAX, 0
    assert_eq!(publish(&broker, wrapping.clone()).await.unwrap(), 7);
    refused(
        publish(&broker, batch(qid, qepoch, 0, 1, "dup-seq")).await,
        Code::FailedPrecondition,
        "out-of-order",
    );
    assert_eq!(
        publish(&broker, batch(qid, qepoch, 1, 1, "x"))
            .await
            .unwrap(),
        10
    );
    assert_eq!(
        publish(&broker, wrapping).await.unwrap(),
        7,
        "the wrapped batch's retry"
    );

    let want: Vec<String> = [
        "a-0", "a-1", "a-2", "b-0", "b-1", "c-0", "d-0", "w-0", "w-1", "w-2", "x-0",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_eq!(
        stored(&broker).await,
        want,
        "each batch once, in order, nothing refused"
    );
}
