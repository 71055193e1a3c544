use std::convert::Infallible;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use ferry_protocol::limits::GRPC_MESSAGE_BYTES_MAX;
use ferry_protocol::v1;
use http_body::Frame;
use prost::Message;
use tonic::Code;

use super::{frame_bytes_max, read_request, Frames, PUBLISH_PATH};

/// A body of DATA frames given up front.
type TestBody = http_body_util::StreamBody<
    futures::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>,
>;

/// A request whose body is `chunks`, one DATA frame each.
fn request(chunks: Vec<Bytes>) -> http::Request<TestBody> {
    let frames: Vec<_> = chunks.into_iter().map(|c| Ok(Frame::data(c))).collect();
    http::Request::builder()
        .uri(PUBLISH_PATH)
        .header("authorization", "Bearer t")
        .body(http_body_util::StreamBody::new(futures::stream::iter(
            frames,
        )))
        .unwrap()
}

fn prefix(compressed: u8, length: usize) -> BytesMut {
    let mut b = BytesMut::new();
    b.put_u8(compressed);
    b.put_u32(length as u32);
    b
}

fn publish(batch: &[u8]) -> v1::PublishRequest {
    v1::PublishRequest {
        topic: "orders".into(),
        partition: Some(3),
        payload: Some(v1::publish_request::Payload::Batch(Bytes::copy_from_slice(
            batch,
        ))),
        ..Default::default()
    }
}

/// `message` framed as the Rust SDK sends it: the prefix and every field before the batch, then the batch.
fn sdk_chunks(message: &v1::PublishRequest, batch_len: usize) -> (Bytes, Bytes) {
    let encoded = message.encode_to_vec();
    let mut head = prefix(0, encoded.len());
    let split = encoded.len() - batch_len;
    head.put_slice(&encoded[..split]);
    (head.freeze(), Bytes::copy_from_slice(&encoded[split..]))
}

#[tokio::test]
async fn a_batch_that_arrives_in_one_frame_is_used_where_it_landed() {
    let message = publish(&[7u8; 4096]);
    let (head, batch_frame) = sdk_chunks(&message, 4096);
    let landed = batch_frame.as_ptr();
    let req = read_request(request(vec![head, batch_frame]))
        .await
        .unwrap();
    assert_eq!(
        req.metadata().get("authorization").unwrap(),
        "Bearer t",
        "the call's metadata is passed on"
    );
    let got = req.into_inner();
    assert_eq!(got, message);
    let Some(v1::publish_request::Payload::Batch(batch)) = got.payload else {
        panic!("a batch")
    };
    assert_eq!(batch.as_ptr(), landed, "the batch was copied");
}

#[tokio::test]
async fn a_message_split_anywhere_decodes_the_same() {
    let message = publish(&(0..=255u8).cycle().take(3000).collect::<Vec<_>>());
    let encoded = message.encode_to_vec();
    let mut whole = prefix(0, encoded.len());
    whole.put_slice(&encoded);
    let whole = whole.freeze();
    for cut in [1, 4, 5, 6, 20, whole.len() / 2, whole.len() - 1] {
        for second in [cut + 1, whole.len()] {
            let second = second.min(whole.len());
            let chunks = vec![
                whole.slice(..cut),
                whole.slice(cut..second),
                whole.slice(second..),
            ];
            let got = read_request(request(chunks)).await.unwrap().into_inner();
            assert_eq!(got, message, "cut at {cut} and {second}");
        }
    }
}

#[tokio::test]
async fn bad_bodies_get_tonics_codes_and_a_reason() {
    let message = publish(b"abc");
    let encoded = Bytes::from(message.encode_to_vec());
    let framed = |m: &Bytes| {
        let mut b = prefix(0, m.len());
        b.put_slice(m);
        b.freeze()
    };
    let cases: Vec<(&str, Vec<Bytes>, Code)> = vec![
        ("empty", vec![], Code::Internal),
        (
            "prefix only, cut",
            vec![prefix(0, 10).split_to(3).freeze()],
            Code::InvalidArgument,
        ),
        (
            "cut short",
            vec![framed(&encoded).slice(..8)],
            Code::InvalidArgument,
        ),
        (
            "two messages",
            vec![framed(&encoded), framed(&encoded)],
            Code::InvalidArgument,
        ),
        (
            "compressed",
            vec![{
                let mut b = prefix(1, encoded.len());
                b.put_slice(&encoded);
                b.freeze()
            }],
            Code::Unimplemented,
        ),
        ("bad flag", vec![prefix(2, 0).freeze()], Code::Internal),
        (
            "not protobuf",
            vec![framed(&Bytes::from_static(&[0xff; 9]))],
            Code::InvalidArgument,
        ),
    ];
    for (name, chunks, code) in cases {
        let e = read_request(request(chunks)).await.expect_err(name);
        assert_eq!(e.code(), code, "{name}: {e:?}");
        assert!(!e.message().is_empty(), "{name}");
    }
    let mut gzip = request(vec![framed(&encoded)]);
    gzip.headers_mut()
        .insert("grpc-encoding", http::HeaderValue::from_static("gzip"));
    let e = read_request(gzip).await.expect_err("gzip");
    assert_eq!(e.code(), Code::Unimplemented, "{e:?}");
}

#[tokio::test]
async fn an_oversized_message_is_refused_on_its_prefix_not_buffered() {
    // The body never ends: the refusal must come from the prefix alone.
    let (tx, rx) = futures::channel::mpsc::unbounded::<Result<Frame<Bytes>, Infallible>>();
    tx.unbounded_send(Ok(Frame::data(
        prefix(0, GRPC_MESSAGE_BYTES_MAX + 1).freeze(),
    )))
    .unwrap();
    let req = http::Request::builder()
        .uri(PUBLISH_PATH)
        .body(http_body_util::StreamBody::new(rx))
        .unwrap();
    let e = tokio::time::timeout(std::time::Duration::from_secs(10), read_request(req))
        .await
        .expect("refused without waiting for the rest")
        .expect_err("over the limit");
    assert_eq!(e.code(), Code::OutOfRange, "{e:?}");
    drop(tx);
}

#[test]
fn frames_read_as_one_buffer() {
    let mut f = Frames::default();
    for c in [&b"hel"[..], b"", b"lo wor", b"ld"] {
        f.push(Bytes::copy_from_slice(c));
    }
    assert_eq!(f.remaining(), 11);
    let mut peeked = [0u8; 5];
    f.peek(&mut peeked);
    assert_eq!(&peeked, b"hello");
    assert_eq!(f.copy_to_bytes(2), Bytes::from_static(b"he"));
    assert_eq!(
        f.copy_to_bytes(4),
        Bytes::from_static(b"llo "),
        "across frames"
    );
    f.advance(2);
    assert_eq!(f.chunk(), b"r");
    assert_eq!(f.copy_to_bytes(3), Bytes::from_static(b"rld"));
    assert_eq!(f.remaining(), 0);
    assert!(f.chunk().is_empty());
}

#[test]
fn frames_hold_a_whole_batch_within_the_protocols_bounds() {
    assert_eq!(frame_bytes_max(1 << 20), 1 << 20);
    assert_eq!(
        frame_bytes_max(100),
        16 * 1024,
        "never below HTTP/2's default"
    );
    assert_eq!(
        frame_bytes_max(u32::MAX),
        (1 << 24) - 1,
        "never above HTTP/2's largest"
    );
}
