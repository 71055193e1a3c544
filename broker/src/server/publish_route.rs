//! The Publish RPC, read without a copy of its batch.
//!
//! tonic reads a request by copying every HTTP/2 DATA frame into one buffer of its own before it decodes
//! the message; for a publish that is a second copy of every byte the kernel has just copied off the
//! socket (8% of a broker's CPU at 1 KiB messages, docs/benchmarks.md, session 19). This route reads the
//! body's frames as HTTP/2 hands them over (slices of the connection's read buffer) and decodes the
//! request straight from them: the batch stays a slice of the frame it came in when it lies within one
//! frame, as it does from the Rust SDK (the batch is its own DATA chunk, and [`frame_bytes_max`] lets a
//! whole batch travel in one frame). Everything else is what tonic does: the same message size limit and
//! errors, no compressed messages accepted, the request's metadata and extensions (credentials, TLS
//! identity) passed on, and the same handler ([`Ferry::publish`]) answers; every other method goes to
//! tonic's generated service.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use ferry_protocol::codec::decode_message;
use ferry_protocol::limits::GRPC_MESSAGE_BYTES_MAX;
use ferry_protocol::v1;
use ferry_protocol::v1::ferry_server::{Ferry, FerryServer};
use http_body::{Body, Frame};
use prost::Message;
use tonic::body::BoxBody;
use tonic::codegen::{BoxFuture, StdError};
use tonic::Status;

/// The HTTP/2 path of the Publish method.
pub const PUBLISH_PATH: &str = "/ferry.v1.Ferry/Publish";
/// Bytes before each gRPC message: a compression flag and the message length.
const GRPC_PREFIX_BYTES: usize = 5;
/// The largest HTTP/2 frame payload the protocol allows (bytes).
const HTTP2_FRAME_BYTES_MAX: u32 = (1 << 24) - 1;
/// HTTP/2's default frame payload limit (bytes).
const HTTP2_FRAME_BYTES_DEFAULT: u32 = 16 * 1024;

/// The frame size a client listener advertises for batches of up to `batch_bytes_max`: room for a whole
/// batch in one DATA frame, so it arrives in one piece and is used where it landed. This does not add to
/// what a connection may buffer: the flow-control windows bound that, as before.
pub fn frame_bytes_max(batch_bytes_max: u32) -> u32 {
    batch_bytes_max.clamp(HTTP2_FRAME_BYTES_DEFAULT, HTTP2_FRAME_BYTES_MAX)
}

/// tonic's generated `ferry.v1.Ferry` service with Publish read by [`read_request`].
pub struct PublishRoute<T> {
    handler: Arc<T>,
    generated: FerryServer<T>,
}

impl<T> Clone for PublishRoute<T> {
    fn clone(&self) -> Self {
        PublishRoute {
            handler: self.handler.clone(),
            generated: self.generated.clone(),
        }
    }
}

impl<T: Ferry> PublishRoute<T> {
    /// Publish answered by `handler`, every other method by `generated` (built over the same handler).
    pub fn new(handler: Arc<T>, generated: FerryServer<T>) -> Self {
        PublishRoute { handler, generated }
    }
}

impl<T> tonic::server::NamedService for PublishRoute<T> {
    const NAME: &'static str = <FerryServer<T> as tonic::server::NamedService>::NAME;
}

impl<T, B> tower_service::Service<http::Request<B>> for PublishRoute<T>
where
    T: Ferry,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<BoxBody>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if req.uri().path() != PUBLISH_PATH {
            return self.generated.call(req);
        }
        let handler = self.handler.clone();
        Box::pin(async move {
            let answer = match read_request(req).await {
                Ok(request) => handler.publish(request).await,
                Err(status) => Err(status),
            };
            Ok(match answer {
                Ok(response) => respond(response),
                Err(status) => status.into_http(),
            })
        })
    }
}

/// The one `PublishRequest` of a unary call, with the call's metadata and extensions.
pub async fn read_request<B>(
    req: http::Request<B>,
) -> Result<tonic::Request<v1::PublishRequest>, Status>
where
    B: Body<Data = Bytes>,
    B::Error: Into<StdError>,
{
    if let Some(encoding) = req.headers().get("grpc-encoding") {
        if encoding.as_bytes() != b"identity" {
            return Err(Status::unimplemented(format!(
                "messages compressed with {} are not accepted: send them uncompressed (record batches \
                 carry their own compression)",
                String::from_utf8_lossy(encoding.as_bytes())
            )));
        }
    }
    let (parts, body) = req.into_parts();
    let mut frames = Frames::default();
    let mut body = std::pin::pin!(body);
    // The whole message length (prefix included), once the prefix has arrived.
    let mut message_bytes: Option<usize> = None;
    while let Some(frame) = std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await {
        let frame = frame.map_err(|e| Status::from_error(e.into()))?;
        let Ok(data) = frame.into_data() else {
            continue; // trailers: a request's carry nothing this method reads
        };
        frames.push(data);
        if message_bytes.is_none() && frames.remaining() >= GRPC_PREFIX_BYTES {
            message_bytes = Some(GRPC_PREFIX_BYTES + message_length(&frames)?);
        }
        // Checked per frame, so what a sender can make the broker hold is bounded by the limit.
        match message_bytes {
            Some(n) if frames.remaining() > n => {
                return Err(Status::invalid_argument(
                    "a Publish call carries one message; this one carries more",
                ))
            }
            _ => {}
        }
    }
    match message_bytes {
        Some(n) if frames.remaining() == n => {}
        _ if frames.remaining() == 0 => return Err(Status::internal("Missing request message.")),
        _ => {
            return Err(Status::invalid_argument(
                "the Publish message ended before its length",
            ))
        }
    }
    frames.advance(GRPC_PREFIX_BYTES);
    let message: v1::PublishRequest = decode_message(&mut frames)?;
    Ok(tonic::Request::from_http(http::Request::from_parts(
        parts, message,
    )))
}

/// The length a gRPC message prefix at the start of `frames` announces, refused when compressed or over
/// the message size limit (tonic's codes and wording).
fn message_length(frames: &Frames) -> Result<usize, Status> {
    let mut prefix = [0u8; GRPC_PREFIX_BYTES];
    frames.peek(&mut prefix);
    let length = (&prefix[1..]).get_u32() as usize;
    match prefix[0] {
        0 => {}
        1 => {
            return Err(Status::unimplemented(
                "a compressed message, but the call names no grpc-encoding the broker accepts",
            ))
        }
        flag => {
            return Err(Status::internal(format!(
                "protocol error: received message with invalid compression flag: {flag} (valid \
                 flags are 0 and 1) while receiving request"
            )))
        }
    }
    if length > GRPC_MESSAGE_BYTES_MAX {
        return Err(Status::out_of_range(format!(
            "Error, decoded message length too large: found {length} bytes, the limit is: \
             {GRPC_MESSAGE_BYTES_MAX} bytes"
        )));
    }
    Ok(length)
}

/// A successful answer as tonic sends it: headers with the response's metadata, one message, trailers
/// with status 0.
fn respond(response: tonic::Response<v1::PublishResponse>) -> http::Response<BoxBody> {
    let (metadata, message, extensions) = response.into_parts();
    let mut data = BytesMut::with_capacity(GRPC_PREFIX_BYTES + message.encoded_len());
    data.put_u8(0);
    data.put_u32(message.encoded_len() as u32);
    message
        .encode(&mut data)
        .expect("a buffer sized by encoded_len holds the message");
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
    let frames = [Frame::data(data.freeze()), Frame::trailers(trailers)];
    let body = http_body_util::StreamBody::new(futures::stream::iter(
        frames.into_iter().map(Ok::<_, Status>),
    ));
    let mut http = http::Response::new(tonic::body::boxed(body));
    *http.headers_mut() = metadata.into_headers();
    http.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/grpc"),
    );
    *http.extensions_mut() = extensions;
    http
}

/// A request body's DATA frames in arrival order, read as one buffer. Taking bytes that lie within one
/// frame (prost does for a `bytes` field) slices that frame rather than copying.
#[derive(Default)]
struct Frames {
    chunks: VecDeque<Bytes>,
    remaining: usize,
}

impl Frames {
    fn push(&mut self, data: Bytes) {
        if !data.is_empty() {
            self.remaining += data.len();
            self.chunks.push_back(data);
        }
    }

    /// Copies the first `out.len()` bytes into `out` without consuming them (there must be as many).
    fn peek(&self, out: &mut [u8]) {
        let mut filled = 0;
        for chunk in &self.chunks {
            let n = chunk.len().min(out.len() - filled);
            out[filled..filled + n].copy_from_slice(&chunk[..n]);
            filled += n;
            if filled == out.len() {
                return;
            }
        }
        panic!("peek of {} bytes from {filled}", out.len());
    }
}

impl Buf for Frames {
    fn remaining(&self) -> usize {
        self.remaining
    }

    fn chunk(&self) -> &[u8] {
        self.chunks.front().map_or(&[], |c| &c[..])
    }

    fn advance(&mut self, mut cnt: usize) {
        assert!(cnt <= self.remaining, "advance past the end of the frames");
        self.remaining -= cnt;
        while cnt > 0 {
            let front = self.chunks.front_mut().expect("counted above");
            if cnt < front.len() {
                front.advance(cnt);
                return;
            }
            cnt -= front.len();
            self.chunks.pop_front();
        }
    }

    fn copy_to_bytes(&mut self, len: usize) -> Bytes {
        match self.chunks.front_mut() {
            Some(front) if front.len() >= len => {
                let out = front.split_to(len);
                if front.is_empty() {
                    self.chunks.pop_front();
                }
                self.remaining -= len;
                out
            }
            _ => {
                assert!(
                    len <= self.remaining,
                    "copy_to_bytes past the end of the frames"
                );
                let mut out = BytesMut::with_capacity(len);
                out.put((&mut *self).take(len));
                out.freeze()
            }
        }
    }
}

#[cfg(test)]
#[path = "publish_route_tests.rs"]
mod tests;
