//! The `ferry.v1.Ferry/Publish` call with the batch sent as it is. tonic's generated client encodes a
//! request into one buffer: for a publish, a copy of every byte of the batch into memory freshly allocated
//! per request (and, on memory the host has taken back, zeroed by the kernel first), about a tenth of the
//! client's CPU at 1 KiB records (docs/benchmarks.md, session 18). Here the gRPC message is two chunks of
//! the request body: the 5-byte gRPC prefix with every other field, then the batch's own `Bytes`, which h2
//! writes to the socket from where it lies. The answer is read with tonic's own decoder, as the generated
//! client reads it.
//!
//! ```text
//! chunk 1: 0x00 | u32 BE message length | topic (1), partition (2), acks (3), timeout_ms (6) | key of field 5 | varint batch length
//! chunk 2: the batch
//! ```
//! Protobuf fields may come in any order; the broker decodes this exactly as the generated client's
//! encoding (a test below checks they decode to the same request).

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{BufMut, Bytes, BytesMut};
use ferry_protocol::limits::GRPC_MESSAGE_BYTES_MAX;
use ferry_protocol::v1::{PublishRequest, PublishResponse};
use http_body::{Body, Frame};
use prost::encoding::{encode_key, encode_varint, encoded_len_varint, WireType};
use prost::Message;
use tonic::codec::{Codec, ProstCodec, Streaming};
use tonic::{Code, Status};
use tower_service::Service;

use crate::channels::BrokerChannel;

/// The method's path.
const PUBLISH_PATH: &str = "/ferry.v1.Ferry/Publish";
/// `PublishRequest.batch`'s field number (ferry.proto).
const BATCH_FIELD: u32 = 5;
/// gRPC's message prefix: a compression flag and the message's length (u32, big-endian).
const GRPC_PREFIX_LEN: usize = 5;

/// A publish request ready to send (and to send again on a retry: cloning it clones two `Bytes`).
#[derive(Debug, Clone)]
pub(crate) struct PublishFrames {
    /// The gRPC prefix, every field but the batch, and the batch field's key and length.
    head: Bytes,
    batch: Bytes,
}

impl PublishFrames {
    /// `fields` (every field of the request but the payload, which must be empty) carrying `batch`. Refused,
    /// as tonic's encoder refuses it, when the message exceeds the gRPC message limit.
    pub(crate) fn new(fields: PublishRequest, batch: Bytes) -> Result<Self, Status> {
        debug_assert!(fields.payload.is_none(), "the batch is the payload");
        let batch_len = batch.len() as u64;
        let message_len = fields.encoded_len()
            + prost::encoding::key_len(BATCH_FIELD)
            + encoded_len_varint(batch_len)
            + batch.len();
        if message_len > GRPC_MESSAGE_BYTES_MAX {
            return Err(Status::out_of_range(format!(
                "a publish of {message_len} bytes is over the gRPC message limit of \
                 {GRPC_MESSAGE_BYTES_MAX} bytes"
            )));
        }
        let head_len = GRPC_PREFIX_LEN + message_len - batch.len();
        let mut head = BytesMut::with_capacity(head_len);
        head.put_u8(0); // not compressed
        head.put_u32(message_len as u32); // fits: at most GRPC_MESSAGE_BYTES_MAX
        fields
            .encode(&mut head)
            .expect("the buffer was sized for the fields");
        encode_key(BATCH_FIELD, WireType::LengthDelimited, &mut head);
        encode_varint(batch_len, &mut head);
        debug_assert_eq!(head.len(), head_len);
        Ok(PublishFrames {
            head: head.freeze(),
            batch,
        })
    }
}

/// The request body: the two chunks, in order.
struct PublishBody {
    chunks: [Option<Bytes>; 2],
}

impl Body for PublishBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let next = self.get_mut().chunks.iter_mut().find_map(Option::take);
        Poll::Ready(next.map(|chunk| Ok(Frame::data(chunk))))
    }

    fn is_end_stream(&self) -> bool {
        self.chunks.iter().all(Option::is_none)
    }

    // No size hint, as tonic's own request bodies: an exact one would add a `content-length` header.
}

/// Sends `frames` to `channel` and reads the answer as tonic's generated client does: a status in the
/// headers (a trailers-only answer) or in the trailers ends the call with that status, and a successful
/// call carries exactly one message.
pub(crate) async fn publish(
    mut channel: BrokerChannel,
    frames: PublishFrames,
) -> Result<tonic::Response<PublishResponse>, Status> {
    let body = PublishBody {
        chunks: [Some(frames.head), Some(frames.batch)],
    };
    let request = http::Request::builder()
        .method(http::Method::POST)
        .uri(PUBLISH_PATH)
        .version(http::Version::HTTP_2)
        .header(http::header::TE, "trailers")
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .body(tonic::body::boxed(body))
        .map_err(|e| Status::internal(format!("publish request: {e}")))?;
    // As the generated client maps a channel that cannot take the request.
    futures::future::poll_fn(|cx| channel.poll_ready(cx))
        .await
        .map_err(|e| {
            let e: Box<dyn std::error::Error + Send + Sync> = e.into();
            Status::unknown(format!("Service was not ready: {e}"))
        })?;
    let response = channel
        .call(request)
        .await
        .map_err(|e| Status::from_error(e.into()))?;
    if let Some(status) = Status::from_header_map(response.headers()) {
        return Err(if status.code() == Code::Ok {
            Status::internal("Missing response message.")
        } else {
            status
        });
    }
    let status_code = response.status();
    let (parts, body) = response.into_parts();
    let mut codec = ProstCodec::<PublishRequest, PublishResponse>::default();
    let mut answer = Streaming::new_response(
        codec.decoder(),
        body,
        status_code,
        None,
        Some(GRPC_MESSAGE_BYTES_MAX),
    );
    // A status read from the body or the trailers also carries the response headers' metadata, as the
    // generated client merges them (a broker's `ferry-leader` redirect, wherever it was put).
    let with_headers = |status: Status| with_header_metadata(status, &parts.headers);
    let message = answer
        .message()
        .await
        .map_err(with_headers)?
        .ok_or_else(|| Status::internal("Missing response message."))?;
    // A status after the message (trailers) still decides the call.
    answer.trailers().await.map_err(with_headers)?;
    Ok(tonic::Response::new(message))
}

/// `status` with `headers` added to its metadata, where it has no value of its own for a name.
fn with_header_metadata(mut status: Status, headers: &http::HeaderMap) -> Status {
    let mut merged = std::mem::take(status.metadata_mut()).into_headers();
    for (name, value) in headers {
        if !merged.contains_key(name) {
            merged.insert(name.clone(), value.clone());
        }
    }
    *status.metadata_mut() = tonic::metadata::MetadataMap::from_headers(merged);
    status
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_protocol::v1::publish_request::Payload;
    use http_body_util::BodyExt;

    fn request(batch: Bytes) -> PublishRequest {
        PublishRequest {
            topic: "orders".into(),
            partition: Some(7),
            acks: ferry_protocol::v1::Acks::All as i32,
            payload: Some(Payload::Batch(batch)),
            timeout_ms: 1500,
        }
    }

    /// The request without its payload, as `PublishFrames::new` takes it.
    fn fields() -> PublishRequest {
        PublishRequest {
            payload: None,
            ..request(Bytes::new())
        }
    }

    /// What goes on the wire, as one buffer.
    async fn wire(frames: PublishFrames) -> (Vec<Bytes>, Bytes) {
        let mut body = PublishBody {
            chunks: [Some(frames.head), Some(frames.batch)],
        };
        let mut chunks = Vec::new();
        while let Some(frame) = body.frame().await {
            chunks.push(frame.unwrap().into_data().unwrap());
        }
        assert!(body.is_end_stream());
        let all: Vec<u8> = chunks.iter().flat_map(|c| c.to_vec()).collect();
        (chunks, Bytes::from(all))
    }

    #[tokio::test]
    async fn the_frames_are_one_grpc_message_decoding_to_the_same_request() {
        for len in [0usize, 1, 127, 128, 300_000] {
            let batch = Bytes::from(vec![0xAB; len]);
            let frames = PublishFrames::new(fields(), batch.clone()).unwrap();
            let (chunks, all) = wire(frames).await;
            assert_eq!(chunks.len(), 2);
            assert_eq!(
                chunks[1].as_ptr(),
                batch.as_ptr(),
                "the batch goes as it is, not copied"
            );
            assert_eq!(all[0], 0, "not compressed");
            // gRPC's length is big-endian (its spec), as `get_u32` reads.
            let message_len = bytes::Buf::get_u32(&mut &all[1..5]) as usize;
            assert_eq!(message_len, all.len() - GRPC_PREFIX_LEN);
            let decoded = PublishRequest::decode(&all[GRPC_PREFIX_LEN..]).unwrap();
            assert_eq!(decoded, request(batch), "length {len}");
        }
    }

    #[test]
    fn a_status_keeps_its_own_metadata_and_gains_the_headers() {
        let mut status = Status::unavailable("not the leader");
        status
            .metadata_mut()
            .insert("x-own", "status".parse().unwrap());
        let mut headers = http::HeaderMap::new();
        headers.insert("x-own", "header".parse().unwrap());
        headers.insert("ferry-leader", "2=127.0.0.1:7400".parse().unwrap());
        let merged = with_header_metadata(status, &headers);
        assert_eq!(merged.code(), Code::Unavailable);
        assert_eq!(merged.metadata().get("x-own").unwrap(), "status");
        assert_eq!(
            merged.metadata().get("ferry-leader").unwrap(),
            "2=127.0.0.1:7400"
        );
    }

    #[test]
    fn a_message_over_the_grpc_limit_is_refused() {
        let batch = Bytes::from(vec![0; GRPC_MESSAGE_BYTES_MAX]);
        let err = PublishFrames::new(fields(), batch).unwrap_err();
        assert_eq!(err.code(), Code::OutOfRange);
    }
}
