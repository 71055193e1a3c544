//! Building batches: records into one buffer, header and CRC last; producer stamps; control batches.

use super::error::BatchError;
use super::format::{Compression, ATTR_CONTROL, CODEC_LZ4, HEADER_LEN, MAGIC, RECORD_FIXED_LEN};
use super::header::{compute_crc, BatchHeader};
use bytes::{BufMut, Bytes, BytesMut};

/// Producer identity carried by a batch, for idempotent publishing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerStamp {
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
}

impl ProducerStamp {
    /// No producer identity: the batch is not deduplicated.
    pub const NONE: ProducerStamp = ProducerStamp {
        producer_id: -1,
        producer_epoch: -1,
        base_sequence: -1,
    };
}

/// Builds a batch record by record into one buffer; [`BatchBuilder::finish`] writes the header and CRC.
pub struct BatchBuilder {
    buf: BytesMut,
    count: u32,
    base_timestamp: i64,
    max_timestamp: i64,
    producer: ProducerStamp,
}

impl BatchBuilder {
    /// A builder whose records' timestamps are stored relative to `base_timestamp` (ms).
    pub fn new(base_timestamp: i64) -> Self {
        Self::with_capacity(base_timestamp, 16 * 1024)
    }

    /// Like [`BatchBuilder::new`], reserving `bytes` up front.
    pub fn with_capacity(base_timestamp: i64, bytes: usize) -> Self {
        Self::with_buffer(base_timestamp, BytesMut::new(), bytes)
    }

    /// Like [`BatchBuilder::with_capacity`], building into `buf` (emptied first) when it has room for
    /// `bytes`; a smaller one is dropped for a new buffer of `bytes` (not grown: growing would copy its old
    /// contents and might double it). A producer hands back the buffers of batches it is done with, so its
    /// batches reuse memory already mapped instead of pages the kernel must zero afresh.
    pub fn with_buffer(base_timestamp: i64, mut buf: BytesMut, bytes: usize) -> Self {
        let bytes = bytes.max(HEADER_LEN);
        buf.clear();
        if buf.capacity() < bytes {
            buf = BytesMut::with_capacity(bytes);
        }
        buf.put_bytes(0, HEADER_LEN);
        BatchBuilder {
            buf,
            count: 0,
            base_timestamp,
            max_timestamp: base_timestamp,
            producer: ProducerStamp::NONE,
        }
    }

    /// Sets the producer identity and first sequence number of this batch.
    pub fn producer(&mut self, stamp: ProducerStamp) -> &mut Self {
        self.producer = stamp;
        self
    }

    /// Bytes the batch has so far, header included.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Bytes the batch can hold before its buffer grows.
    pub fn capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// Number of records added.
    pub fn record_count(&self) -> u32 {
        self.count
    }

    /// Whether no record has been added.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Bytes one record with these parts takes in a batch.
    pub fn record_size(key: Option<&[u8]>, value: &[u8], headers: &[(&str, &[u8])]) -> usize {
        RECORD_FIXED_LEN
            + key.map_or(0, <[u8]>::len)
            + value.len()
            + headers
                .iter()
                .map(|(k, v)| 2 + k.len() + 4 + v.len())
                .sum::<usize>()
    }

    /// Appends a record. Timestamps within ±24 days of the base fit; others are clamped.
    pub fn push(
        &mut self,
        timestamp_ms: i64,
        key: Option<&[u8]>,
        value: &[u8],
        headers: &[(&str, &[u8])],
    ) {
        let size = Self::record_size(key, value, headers);
        let delta = timestamp_ms
            .saturating_sub(self.base_timestamp)
            .clamp(i64::from(i32::MIN), i64::from(i32::MAX)) as i32;
        self.max_timestamp = self
            .max_timestamp
            .max(self.base_timestamp + i64::from(delta));
        let b = &mut self.buf;
        b.reserve(size);
        b.put_u32_le((size - 4) as u32);
        b.put_u32_le(self.count);
        b.put_i32_le(delta);
        match key {
            Some(k) => {
                b.put_i32_le(k.len() as i32);
                b.put_slice(k);
            }
            None => b.put_i32_le(-1),
        }
        b.put_u32_le(value.len() as u32);
        b.put_slice(value);
        b.put_u16_le(headers.len() as u16);
        for (k, v) in headers {
            b.put_u16_le(k.len() as u16);
            b.put_slice(k.as_bytes());
            b.put_u32_le(v.len() as u32);
            b.put_slice(v);
        }
        self.count += 1;
    }

    /// Like [`BatchBuilder::finish`], compressing the records with `compression` when that makes the batch
    /// smaller (otherwise it stays uncompressed).
    pub fn finish_with(self, compression: Compression) -> Bytes {
        self.finish_compressed(compression).0
    }

    /// Like [`BatchBuilder::finish_with`], also handing back the buffer the records were built in when the
    /// batch was compressed into another one (for the next batch to be built in).
    pub fn finish_compressed(self, compression: Compression) -> (Bytes, Option<BytesMut>) {
        if compression == Compression::None || self.buf.len() <= HEADER_LEN {
            return (self.finish(), None);
        }
        let body = &self.buf[HEADER_LEN..];
        let packed = lz4_flex::block::compress(body);
        if packed.len() + 4 >= body.len() {
            return (self.finish(), None);
        }
        let mut buf = BytesMut::with_capacity(HEADER_LEN + 4 + packed.len());
        buf.extend_from_slice(&[0u8; HEADER_LEN]);
        buf.extend_from_slice(&(body.len() as u32).to_le_bytes());
        buf.extend_from_slice(&packed);
        write_header(
            &mut buf,
            CODEC_LZ4,
            self.count,
            self.base_timestamp,
            self.max_timestamp,
            self.producer,
        );
        (buf.freeze(), Some(self.buf))
    }

    /// Writes the header and CRC; the batch is done.
    pub fn finish(self) -> Bytes {
        let mut buf = self.buf;
        write_header(
            &mut buf,
            0,
            self.count,
            self.base_timestamp,
            self.max_timestamp,
            self.producer,
        );
        buf.freeze()
    }
}

fn write_header(
    buf: &mut BytesMut,
    attributes: u16,
    record_count: u32,
    base_timestamp: i64,
    max_timestamp: i64,
    producer: ProducerStamp,
) {
    let len = buf.len() as u32;
    let h = &mut buf[..HEADER_LEN];
    h[0..24].fill(0);
    h[24..28].copy_from_slice(&len.to_le_bytes());
    h[32] = MAGIC;
    h[33] = 0;
    h[34..36].copy_from_slice(&attributes.to_le_bytes());
    h[36..40].copy_from_slice(&record_count.to_le_bytes());
    h[40..48].copy_from_slice(&base_timestamp.to_le_bytes());
    h[48..56].copy_from_slice(&max_timestamp.to_le_bytes());
    h[56..64].copy_from_slice(&producer.producer_id.to_le_bytes());
    h[64..66].copy_from_slice(&producer.producer_epoch.to_le_bytes());
    h[66..70].copy_from_slice(&producer.base_sequence.to_le_bytes());
    let crc = compute_crc(buf);
    buf[28..32].copy_from_slice(&crc.to_le_bytes());
}

/// `batch` with its producer fields set to `stamp` and its CRC recomputed. Idempotent producers stamp a
/// batch when they send it (the sequence number depends on what went before), not when it is built. Copies
/// only if the bytes are shared.
pub fn with_producer(batch: Bytes, stamp: ProducerStamp) -> Result<Bytes, BatchError> {
    BatchHeader::parse(&batch)?;
    let mut buf = match batch.try_into_mut() {
        Ok(m) => m,
        Err(shared) => BytesMut::from(&shared[..]),
    };
    buf[56..64].copy_from_slice(&stamp.producer_id.to_le_bytes());
    buf[64..66].copy_from_slice(&stamp.producer_epoch.to_le_bytes());
    buf[66..70].copy_from_slice(&stamp.base_sequence.to_le_bytes());
    let crc = compute_crc(&buf);
    buf[28..32].copy_from_slice(&crc.to_le_bytes());
    Ok(buf.freeze())
}

/// Builds a control batch holding one entry of type `entry_type` (a Raft entry type) with `data`.
pub fn control_batch(entry_type: u8, data: &[u8], timestamp_ms: i64) -> BytesMut {
    let mut buf = BytesMut::with_capacity(HEADER_LEN + 1 + data.len());
    buf.put_bytes(0, HEADER_LEN);
    buf.put_u8(entry_type);
    buf.put_slice(data);
    write_header(
        &mut buf,
        ATTR_CONTROL,
        0,
        timestamp_ms,
        timestamp_ms,
        ProducerStamp::NONE,
    );
    buf
}

/// The entry type and data of a control batch (`batch` validated, control bit set).
pub fn control_payload(batch: &Bytes) -> Result<(u8, Bytes), BatchError> {
    if batch.len() < HEADER_LEN + 1 {
        return Err(BatchError::TooShort(batch.len()));
    }
    Ok((batch[HEADER_LEN], batch.slice(HEADER_LEN + 1..)))
}
