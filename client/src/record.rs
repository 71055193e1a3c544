//! The records an application hands to the producer and gets back from fetch and subscribe.

use bytes::Bytes;

/// A record to publish. Build it with [`ProducerRecord::new`] and the `with_*` methods, or fill the fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducerRecord {
    /// Topic to publish to.
    pub topic: String,
    /// Optional key: records with equal keys land on the same partition (unless `partition` is set).
    pub key: Option<Bytes>,
    /// The payload.
    pub value: Bytes,
    /// Headers, in order; keys are UTF-8 of at most 65,535 bytes.
    pub headers: Vec<(String, Bytes)>,
    /// Explicit partition; wins over the key.
    pub partition: Option<u32>,
    /// Timestamp (milliseconds since the Unix epoch); `None` stamps the time [`Producer::send`] adds the
    /// record to its batch (after any wait for room under the in-flight byte limit).
    ///
    /// [`Producer::send`]: crate::Producer::send
    pub timestamp_ms: Option<i64>,
}

impl ProducerRecord {
    /// A keyless record with no headers, placed round robin.
    pub fn new(topic: impl Into<String>, value: impl Into<Bytes>) -> Self {
        ProducerRecord {
            topic: topic.into(),
            key: None,
            value: value.into(),
            headers: Vec::new(),
            partition: None,
            timestamp_ms: None,
        }
    }

    /// Sets the key.
    pub fn with_key(mut self, key: impl Into<Bytes>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Sets an explicit partition.
    pub fn with_partition(mut self, partition: u32) -> Self {
        self.partition = Some(partition);
        self
    }

    /// Appends a header.
    pub fn with_header(mut self, key: impl Into<String>, value: impl Into<Bytes>) -> Self {
        self.headers.push((key.into(), value.into()));
        self
    }

    /// Sets the timestamp (milliseconds since the Unix epoch).
    pub fn with_timestamp_ms(mut self, timestamp_ms: i64) -> Self {
        self.timestamp_ms = Some(timestamp_ms);
        self
    }
}

/// Name of the record header that carries the W3C trace context (`crate::trace` sets and reads it).
pub const TRACEPARENT_HEADER: &str = "traceparent";

/// A record read from a partition. Key, value and header values share the fetched batch's memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumedRecord {
    /// Topic it was read from.
    pub topic: String,
    /// Partition it was read from.
    pub partition: u32,
    /// Its offset in the partition.
    pub offset: u64,
    /// Its timestamp (milliseconds since the Unix epoch).
    pub timestamp_ms: i64,
    /// Its key, if it had one.
    pub key: Option<Bytes>,
    /// Its payload.
    pub value: Bytes,
    /// Its headers, in order.
    pub headers: Vec<(String, Bytes)>,
}

impl ConsumedRecord {
    /// The W3C `traceparent` header the producer wrote (see [`crate::trace`]), if any.
    pub fn traceparent(&self) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == TRACEPARENT_HEADER)
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    }
}
