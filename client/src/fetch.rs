//! Reading a partition: [`Client::fetch`] (one long poll) and the offsets a consumer starts from
//! ([`Client::list_offsets`]). Records
//! arrive as the packed batches the broker stores; decoding them ([`decode_batches`]) is pure and checks
//! every batch's CRC: a batch that fails is an error, never skipped, so a consumer cannot lose records
//! without being told.

use bytes::Bytes;
use ferry_protocol::batch::{validate, BatchError, Records};
use ferry_protocol::limits::{FETCH_BYTES_MAX, FETCH_WAIT_MS_MAX};
use ferry_protocol::v1::list_offsets_request::Spec;
use ferry_protocol::v1::{FetchRequest, Format, ListOffsetsRequest, ListOffsetsResponse, Record};
use futures::{StreamExt, TryStreamExt};

use crate::channels::ferry_client;
use crate::client::{Client, Route};
use crate::error::ClientError;
use crate::record::ConsumedRecord;

/// What one fetch returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchResult {
    /// Records at or after the requested offset, in offset order.
    pub records: Vec<ConsumedRecord>,
    /// Offset one past the last committed record of the partition.
    pub high_watermark: u64,
    /// First offset the partition still stores.
    pub log_start_offset: u64,
    /// Offset to fetch from next.
    pub next_offset: u64,
}

/// What one [`Client::fetch_batches`] returned: whole stored batches, not decoded into records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchedBatches {
    /// The batches, each validated (CRC and layout); the first may start before the requested offset.
    pub batches: Vec<Bytes>,
    /// Records at or after the requested offset in `batches` (control batches hold none).
    pub record_count: u64,
    /// Offset one past the last committed record of the partition.
    pub high_watermark: u64,
    /// First offset the partition still stores.
    pub log_start_offset: u64,
    /// Offset to fetch from next.
    pub next_offset: u64,
}

/// Which offset [`Client::list_offsets`] looks up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffsetSpec {
    /// The first offset still stored.
    Earliest,
    /// The high watermark: where the next committed record will be.
    Latest,
    /// The first record whose timestamp (ms since the Unix epoch) is at least this; the high watermark
    /// when there is none.
    Timestamp(i64),
}

/// Concurrent offset lookups of [`Client::partition_offsets`].
pub const OFFSET_LOOKUPS_IN_FLIGHT_MAX: usize = 32;

/// The offsets bounding one partition's stored records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionOffsets {
    /// The partition.
    pub partition: u32,
    /// First offset still stored.
    pub log_start_offset: u64,
    /// Offset one past the last committed record.
    pub high_watermark: u64,
}

impl Client {
    /// Reads records of `partition` of `topic` from `offset`: at most about `max_bytes` (at least one whole
    /// batch when one is available), waiting up to `max_wait_ms` for data when there is none yet.
    pub async fn fetch(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        max_bytes: u32,
        max_wait_ms: u32,
    ) -> Result<FetchResult, ClientError> {
        let response = self
            .fetch_response(topic, partition, offset, max_bytes, max_wait_ms)
            .await?;
        let mut records = decode_batches(topic, partition, &response.batches, offset)?;
        records.extend(convert_records(topic, partition, response.records, offset));
        let next_offset = records
            .last()
            .map_or(offset, |r| r.offset + 1)
            .max(response.next_offset)
            .max(offset);
        Ok(FetchResult {
            records,
            high_watermark: response.high_watermark,
            log_start_offset: response.log_start_offset,
            next_offset,
        })
    }

    /// Like [`Client::fetch`], but hands back the stored batches whole (each validated) instead of
    /// decoding every record: the path for readers that process batches (a mirror, a bulk loader, a
    /// benchmark), with no per-record work.
    pub async fn fetch_batches(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        max_bytes: u32,
        max_wait_ms: u32,
    ) -> Result<FetchedBatches, ClientError> {
        let response = self
            .fetch_response(topic, partition, offset, max_bytes, max_wait_ms)
            .await?;
        let mut record_count = 0u64;
        let mut next = offset;
        for batch in &response.batches {
            let header = validate(batch).map_err(|reason| ClientError::CorruptBatch {
                topic: topic.to_owned(),
                partition,
                reason,
            })?;
            if !header.is_control() {
                record_count += header
                    .next_offset()
                    .saturating_sub(header.base_offset.max(offset));
            }
            next = next.max(header.next_offset());
        }
        Ok(FetchedBatches {
            batches: response.batches,
            record_count,
            high_watermark: response.high_watermark,
            log_start_offset: response.log_start_offset,
            next_offset: next.max(response.next_offset),
        })
    }

    /// One Fetch of whole batches from the partition's leader, its bounds checked first.
    async fn fetch_response(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        max_bytes: u32,
        max_wait_ms: u32,
    ) -> Result<ferry_protocol::v1::FetchResponse, ClientError> {
        if max_bytes == 0 || max_bytes > FETCH_BYTES_MAX {
            return Err(ClientError::InvalidArgument(format!(
                "fetch max_bytes must be 1 to {FETCH_BYTES_MAX}, not {max_bytes}"
            )));
        }
        if max_wait_ms > FETCH_WAIT_MS_MAX {
            return Err(ClientError::InvalidArgument(format!(
                "fetch max_wait_ms must be at most {FETCH_WAIT_MS_MAX}, not {max_wait_ms}"
            )));
        }
        let request = FetchRequest {
            topic: topic.to_owned(),
            partition,
            offset,
            max_bytes,
            max_wait_ms,
            format: Format::Batches as i32,
        };
        let timeout =
            self.config().request_timeout() + std::time::Duration::from_millis(max_wait_ms.into());
        let route = Route::Leader { topic, partition };
        let response = self
            .call(route, true, timeout, |channel| {
                let request = request.clone();
                async move { ferry_client(channel).fetch(request).await }
            })
            .await?;
        Ok(response)
    }

    /// Looks up an offset of `partition` of `topic` at its leader: the first stored, the end, or the first
    /// record at or after a timestamp. The answer also carries the partition's current bounds.
    pub async fn list_offsets(
        &self,
        topic: &str,
        partition: u32,
        spec: OffsetSpec,
    ) -> Result<ListOffsetsResponse, ClientError> {
        let request = ListOffsetsRequest {
            topic: topic.to_owned(),
            partition,
            spec: Some(match spec {
                OffsetSpec::Earliest => Spec::Earliest(true),
                OffsetSpec::Latest => Spec::Latest(true),
                OffsetSpec::Timestamp(ms) => Spec::TimestampMs(ms),
            }),
        };
        let timeout = self.config().request_timeout();
        let route = Route::Leader { topic, partition };
        self.call(route, true, timeout, |channel| {
            let request = request.clone();
            async move { ferry_client(channel).list_offsets(request).await }
        })
        .await
    }

    /// Start and end offsets of every partition of `topic`, indexed by partition, each asked of the
    /// partition's leader (at most [`OFFSET_LOOKUPS_IN_FLIGHT_MAX`] at a time).
    pub async fn partition_offsets(
        &self,
        topic: &str,
    ) -> Result<Vec<PartitionOffsets>, ClientError> {
        let partitions = self.partition_count(topic).await?;
        futures::stream::iter(0..partitions)
            .map(|partition| async move {
                let listed = self
                    .list_offsets(topic, partition, OffsetSpec::Latest)
                    .await?;
                Ok(PartitionOffsets {
                    partition,
                    log_start_offset: listed.log_start_offset,
                    high_watermark: listed.high_watermark,
                })
            })
            .buffered(OFFSET_LOOKUPS_IN_FLIGHT_MAX)
            .try_collect()
            .await
    }

    /// The high watermark (offset one past the last committed record) of every partition of `topic`,
    /// indexed by partition.
    pub async fn end_offsets(&self, topic: &str) -> Result<Vec<u64>, ClientError> {
        let offsets = self.partition_offsets(topic).await?;
        Ok(offsets.iter().map(|o| o.high_watermark).collect())
    }
}

/// Decodes fetched `batches` of `partition` of `topic` into records at or after `from`: validates each
/// batch, skips control batches (Ferry's and Raft's own entries) and records before `from` (a fetch returns
/// whole batches, so the first may start earlier).
pub fn decode_batches(
    topic: &str,
    partition: u32,
    batches: &[Bytes],
    from: u64,
) -> Result<Vec<ConsumedRecord>, ClientError> {
    let corrupt = |reason: BatchError| ClientError::CorruptBatch {
        topic: topic.to_owned(),
        partition,
        reason,
    };
    let mut out = Vec::new();
    for batch in batches {
        let header = validate(batch).map_err(corrupt)?;
        if header.is_control() || header.next_offset() <= from {
            continue;
        }
        let mut found = 0u32;
        for record in Records::new(batch.clone(), header) {
            let record = record.map_err(corrupt)?;
            found += 1;
            if record.offset < from {
                continue;
            }
            out.push(ConsumedRecord {
                topic: topic.to_owned(),
                partition,
                offset: record.offset,
                timestamp_ms: record.timestamp_ms,
                key: record.key,
                value: record.value,
                headers: record
                    .headers
                    .into_iter()
                    .map(|h| (h.key, h.value))
                    .collect(),
            });
        }
        if found != header.record_count {
            return Err(corrupt(BatchError::RecordCount {
                declared: header.record_count,
                found,
            }));
        }
    }
    Ok(out)
}

/// Plain protobuf records, which a broker may send instead of batches; records before `from` are dropped.
pub(crate) fn convert_records(
    topic: &str,
    partition: u32,
    records: Vec<Record>,
    from: u64,
) -> impl Iterator<Item = ConsumedRecord> + '_ {
    records
        .into_iter()
        .filter(move |r| r.offset >= from)
        .map(move |r| ConsumedRecord {
            topic: topic.to_owned(),
            partition,
            offset: r.offset,
            timestamp_ms: r.timestamp_ms,
            key: r.has_key.then_some(r.key),
            value: r.value,
            headers: r.headers.into_iter().map(|h| (h.key, h.value)).collect(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_protocol::batch::{control_batch, stamp, BatchBuilder, BatchHeader, STAMP_LEN};

    /// A batch as a broker stores it: built by a client, then stamped with `base_offset`.
    fn stored_batch(base_offset: u64, values: &[&str]) -> Bytes {
        let mut builder = BatchBuilder::new(1_000);
        for (i, v) in values.iter().enumerate() {
            let key = format!("k{i}");
            builder.push(
                1_000 + i as i64,
                Some(key.as_bytes()),
                v.as_bytes(),
                &[("h", b"x")],
            );
        }
        let batch = builder.finish();
        let h = BatchHeader::parse(&batch).unwrap();
        let mut stored = stamp(&h, base_offset, 1, 1).unwrap().to_vec();
        stored.extend_from_slice(&batch[STAMP_LEN..]);
        Bytes::from(stored)
    }

    #[test]
    fn decodes_from_the_requested_offset_and_skips_control_batches() {
        let control = control_batch(1, b"raft", 5).freeze();
        let batches = vec![
            stored_batch(10, &["a", "b", "c"]),
            control,
            stored_batch(13, &["d"]),
        ];
        let records = decode_batches("t", 2, &batches, 11).unwrap();
        let got: Vec<(u64, &[u8])> = records.iter().map(|r| (r.offset, &r.value[..])).collect();
        assert_eq!(got, vec![(11, &b"b"[..]), (12, b"c"), (13, b"d")]);
        assert_eq!(records[0].key.as_deref(), Some(&b"k1"[..]));
        assert_eq!(records[0].timestamp_ms, 1_001);
        assert_eq!(records[0].headers, vec![("h".to_owned(), Bytes::from("x"))]);
        assert_eq!((records[0].topic.as_str(), records[0].partition), ("t", 2));
    }

    #[test]
    fn a_corrupt_batch_is_an_error_not_a_gap() {
        let good = stored_batch(0, &["a"]);
        let mut bad = stored_batch(1, &["b"]).to_vec();
        let last = bad.len() - 1;
        bad[last] ^= 0xff;
        let err = decode_batches("t", 0, &[good, Bytes::from(bad)], 0).unwrap_err();
        assert!(matches!(
            err,
            ClientError::CorruptBatch {
                reason: BatchError::CrcMismatch { .. },
                ..
            }
        ));
    }
}
