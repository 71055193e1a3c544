//! Publishing one packed batch to one partition, and mapping the broker's acknowledgement back to record
//! offsets: the broker assigns a batch consecutive offsets from `base_offset`, in record order.

use bytes::Bytes;
use ferry_protocol::batch::BatchHeader;
use ferry_protocol::v1::{Acks, PartitionAck, PublishRequest, PublishResponse};

use crate::channels::ferry_client;
use crate::client::{Client, Route};
use crate::error::ClientError;
use crate::publish_call::PublishFrames;

impl Client {
    /// Publishes `batch` (built with [`BatchBuilder`](ferry_protocol::batch::BatchBuilder)) to `partition`
    /// of `topic` and waits until it is as durable as `acks` asks. Retried on an unreachable or moved
    /// leader, so in rare cases (answer lost after the write) a batch without a producer stamp is stored
    /// twice; a stamped batch (idempotent producer) is recognized by the leader and stored once.
    pub async fn publish_batch(
        &self,
        topic: &str,
        partition: u32,
        acks: Acks,
        batch: Bytes,
    ) -> Result<PartitionAck, ClientError> {
        let header = BatchHeader::parse(&batch)
            .map_err(|e| ClientError::InvalidArgument(format!("not a record batch: {e}")))?;
        let known = Known {
            record_count: header.record_count,
            stamped: header.producer_id >= 0,
        };
        self.publish_known(topic, partition, acks, batch, known)
            .await
    }

    /// [`Client::publish_batch`] for a batch whose header the caller knows already (the producer built and
    /// stamped it): not parsed again on the way out.
    pub(crate) async fn publish_known(
        &self,
        topic: &str,
        partition: u32,
        acks: Acks,
        batch: Bytes,
        known: Known,
    ) -> Result<PartitionAck, ClientError> {
        let fields = PublishRequest {
            topic: topic.to_owned(),
            partition: Some(partition),
            acks: acks as i32,
            // The batch travels beside the other fields (`publish_call`).
            payload: None,
            // The broker's own durability deadline applies.
            timeout_ms: 0,
        };
        let frames = PublishFrames::new(fields, batch).map_err(ClientError::from)?;
        let timeout = self.config().request_timeout();
        let route = Route::Leader { topic, partition };
        // An idempotent producer's batch may be retried whatever became of the first attempt.
        let retry_when = if known.stamped {
            crate::retry::is_retriable_when_idempotent
        } else {
            crate::retry::is_retriable
        };
        let response = self
            .call_with(route, retry_when, timeout, |channel| {
                crate::publish_call::publish(channel, frames.clone())
            })
            .await?;
        check_ack(&response, partition, known.record_count)
    }
}

/// What a publisher knows of a batch's header.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Known {
    pub record_count: u32,
    /// It carries an idempotent producer's stamp.
    pub stamped: bool,
}

impl Client {
    /// A new producer id (and epoch) for idempotent publishing.
    pub async fn init_producer(&self) -> Result<(i64, i16), ClientError> {
        let timeout = self.config().request_timeout();
        let r = self
            .call(Route::Any, true, timeout, |channel| async move {
                ferry_client(channel)
                    .init_producer(ferry_protocol::v1::InitProducerRequest {})
                    .await
            })
            .await?;
        let epoch = i16::try_from(r.producer_epoch)
            .map_err(|_| ClientError::Protocol(format!("producer epoch {}", r.producer_epoch)))?;
        Ok((r.producer_id, epoch))
    }
}

/// The acknowledgement of a one-batch publish to `partition` of `record_count` records. Anything else in
/// the answer would make the computed offsets wrong, so it is a protocol error.
pub fn check_ack(
    response: &PublishResponse,
    partition: u32,
    record_count: u32,
) -> Result<PartitionAck, ClientError> {
    let ack = match response.acks.as_slice() {
        [ack] if ack.partition == partition => *ack,
        acks => {
            return Err(ClientError::Protocol(format!(
                "publish to partition {partition} was acknowledged as {acks:?}"
            )))
        }
    };
    if ack.record_count != record_count {
        return Err(ClientError::Protocol(format!(
            "published {record_count} records to partition {partition}; broker acknowledged {}",
            ack.record_count
        )));
    }
    Ok(ack)
}

/// Offset of the record at `index` (0-based, in push order) of an acknowledged batch.
pub fn record_offset(ack: &PartitionAck, index: u32) -> u64 {
    assert!(
        index < ack.record_count,
        "record index {index} outside a batch of {}",
        ack.record_count
    );
    ack.base_offset + u64::from(index)
}

/// The acknowledgement of `record_count` records stored from `base_offset` in `partition`.
#[cfg(test)]
pub(crate) fn ack(partition: u32, base_offset: u64, record_count: u32) -> PartitionAck {
    PartitionAck {
        partition,
        base_offset,
        record_count,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_count_up_from_the_base() {
        let a = ack(3, 100, 3);
        let offsets: Vec<u64> = (0..3).map(|i| record_offset(&a, i)).collect();
        assert_eq!(offsets, vec![100, 101, 102]);
    }

    #[test]
    fn a_wrong_acknowledgement_is_refused() {
        let ok = PublishResponse {
            acks: vec![ack(3, 7, 2)],
        };
        assert_eq!(check_ack(&ok, 3, 2).unwrap(), ack(3, 7, 2));
        assert!(check_ack(&ok, 4, 2).is_err(), "other partition");
        assert!(check_ack(&ok, 3, 5).is_err(), "other count");
        let none = PublishResponse { acks: vec![] };
        assert!(check_ack(&none, 3, 2).is_err());
    }
}
