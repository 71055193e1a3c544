//! [`Client::subscribe`]: a stream of one partition's records as they are committed, over the `Subscribe`
//! server-streaming RPC. The stream remembers the next offset, so when the broker goes away or leadership
//! moves it resubscribes from there (after the usual bounded retries) and neither skips nor repeats a record.

use std::collections::VecDeque;
use std::time::Duration;

use ferry_protocol::v1::{FetchResponse, Format, SubscribeRequest};
use futures::Stream;
use tonic::Streaming;

use crate::channels::ferry_client;
use crate::client::{Client, Route};
use crate::error::ClientError;
use crate::fetch::{convert_records, decode_batches};
use crate::record::ConsumedRecord;
use crate::retry;

/// Upper bound on the bytes of each streamed response.
pub const SUBSCRIBE_RESPONSE_BYTES_MAX: u32 = 1024 * 1024;
/// Pause before resubscribing when the broker ends a stream cleanly (milliseconds), so a broker that keeps
/// closing streams is not hammered.
const RESUBSCRIBE_PAUSE_MS: u64 = 100;

struct Subscription {
    client: Client,
    topic: String,
    partition: u32,
    /// Offset of the next record to hand out.
    next_offset: u64,
    stream: Option<Streaming<FetchResponse>>,
    pending: VecDeque<ConsumedRecord>,
    /// Consecutive retriable failures; reset by every answer that arrives.
    retries: u32,
    finished: bool,
}

impl Client {
    /// Streams records of `partition` of `topic` from `offset` on, as they are committed. The stream ends
    /// after yielding its first error that retrying cannot fix.
    pub fn subscribe(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
    ) -> impl Stream<Item = Result<ConsumedRecord, ClientError>> + Send + 'static {
        let state = Subscription {
            client: self.clone(),
            topic: topic.to_owned(),
            partition,
            next_offset: offset,
            stream: None,
            pending: VecDeque::new(),
            retries: 0,
            finished: false,
        };
        futures::stream::unfold(state, |mut s| async move {
            let item = s.next_item().await?;
            Some((item, s))
        })
    }
}

impl Subscription {
    /// The next record or error, or `None` once finished.
    async fn next_item(&mut self) -> Option<Result<ConsumedRecord, ClientError>> {
        loop {
            if self.finished {
                return None;
            }
            if let Some(record) = self.pending.pop_front() {
                self.next_offset = record.offset + 1;
                return Some(Ok(record));
            }
            if let Err(err) = self.receive().await {
                if !self.may_retry(&err) {
                    self.finished = true;
                    return Some(Err(err));
                }
                self.stream = None;
                self.retries += 1;
                tracing::debug!(%err, retries = self.retries, topic = %self.topic,
                    partition = self.partition, "resubscribing");
                tokio::time::sleep(retry::backoff(self.client.config(), self.retries)).await;
                if let Err(err) = self.client.metadata(&[self.topic.as_str()]).await {
                    if matches!(err, ClientError::UnknownTopic(_)) {
                        self.finished = true;
                        return Some(Err(err));
                    }
                }
            }
        }
    }

    fn may_retry(&self, err: &ClientError) -> bool {
        // A subscription is a read that resumes from the next offset, so a transport failure in the middle
        // of the stream (the broker died: h2 reports UNKNOWN or INTERNAL) is as safe to retry as UNAVAILABLE.
        let broken_stream = matches!(
            err,
            ClientError::Status {
                code: tonic::Code::Unknown | tonic::Code::Internal | tonic::Code::Cancelled,
                ..
            }
        );
        (retry::is_retriable(err) || broken_stream)
            && self.retries < self.client.config().retries_max
    }

    /// Opens the stream if needed and takes in one response.
    async fn receive(&mut self) -> Result<(), ClientError> {
        let stream = match &mut self.stream {
            Some(stream) => stream,
            None => {
                let stream =
                    open(&self.client, &self.topic, self.partition, self.next_offset).await?;
                self.stream.insert(stream)
            }
        };
        match stream.message().await {
            Ok(Some(response)) => {
                self.retries = 0;
                let mut records = decode_batches(
                    &self.topic,
                    self.partition,
                    &response.batches,
                    self.next_offset,
                )?;
                records.extend(convert_records(
                    &self.topic,
                    self.partition,
                    response.records,
                    self.next_offset,
                ));
                if records.is_empty() {
                    // Only control batches: move past them so a resubscribe does not reread them.
                    self.next_offset = self.next_offset.max(response.next_offset);
                }
                self.pending.extend(records);
                Ok(())
            }
            Ok(None) => {
                self.stream = None;
                tokio::time::sleep(Duration::from_millis(RESUBSCRIBE_PAUSE_MS)).await;
                Ok(())
            }
            Err(status) => Err(ClientError::from(status)),
        }
    }
}

/// Starts the RPC at the partition's leader. Takes the parts it needs rather than the subscription, which
/// holds a stream that is `Send` but not `Sync`.
async fn open(
    client: &Client,
    topic: &str,
    partition: u32,
    offset: u64,
) -> Result<Streaming<FetchResponse>, ClientError> {
    let request = SubscribeRequest {
        topic: topic.to_owned(),
        partition,
        offset,
        max_bytes: SUBSCRIBE_RESPONSE_BYTES_MAX,
        format: Format::Batches as i32,
    };
    let route = Route::Leader { topic, partition };
    let timeout = client.config().request_timeout();
    client
        .call(route, true, timeout, |channel| {
            let request = request.clone();
            async move { ferry_client(channel).subscribe(request).await }
        })
        .await
}
