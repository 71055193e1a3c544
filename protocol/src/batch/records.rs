//! The records of a batch: full validation of a client batch, and the iterator over its records.

use super::compress::{decompress, decompressed};
use super::error::BatchError;
use super::format::{u16_at, u32_at, ATTR_COMPRESSION_MASK, CODEC_NONE, HEADER_LEN};
use super::header::{validate, BatchHeader};
use super::scan::{scan_record, walk_records};
use bytes::Bytes;

/// Full check of a client batch before a broker accepts it: [`validate`], no control bit, no compression this
/// version cannot read, and every record well formed and counted.
pub fn validate_records(b: &[u8]) -> Result<BatchHeader, BatchError> {
    let h = validate(b)?;
    if h.is_control() {
        return Err(BatchError::BadAttributes(h.attributes));
    }
    if h.record_count == 0 {
        return Err(BatchError::Empty);
    }
    if h.record_count > crate::limits::BATCH_RECORDS_MAX {
        return Err(BatchError::TooManyRecords(h.record_count));
    }
    let plain;
    let b = if h.attributes & ATTR_COMPRESSION_MASK == CODEC_NONE {
        b
    } else {
        plain = decompress(b, &h)?;
        &plain[..]
    };
    let (found, end) = walk_records(b, h.record_count)?;
    if found != h.record_count || end != b.len() {
        return Err(BatchError::RecordCount {
            declared: h.record_count,
            found,
        });
    }
    Ok(h)
}

/// One header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordHeader {
    pub key: String,
    pub value: Bytes,
}

/// One decoded record; key, value and header values are slices of the batch, not copies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub offset: u64,
    pub timestamp_ms: i64,
    pub key: Option<Bytes>,
    pub value: Bytes,
    pub headers: Vec<RecordHeader>,
}

/// Iterator over the records of a validated batch (decompressing a compressed one first).
pub struct Records {
    batch: Bytes,
    header: BatchHeader,
    pos: usize,
    index: u32,
    /// Why a compressed body could not be read (reported by the first `next`).
    broken: Option<BatchError>,
}

impl Records {
    /// Iterates `batch`, whose header is `header` (from [`validate`]).
    pub fn new(batch: Bytes, header: BatchHeader) -> Self {
        // A control batch or an empty one has no records to decompress.
        let (batch, broken) = if header.is_control() || header.record_count == 0 {
            (batch, None)
        } else {
            match decompressed(&batch, &header) {
                Ok(b) => (b, None),
                Err(e) => (batch, Some(e)),
            }
        };
        let pos = if header.is_control() {
            batch.len()
        } else {
            HEADER_LEN
        };
        Records {
            batch,
            header,
            pos,
            index: 0,
            broken,
        }
    }

    fn bad(&mut self, why: &'static str) -> Option<Result<Record, BatchError>> {
        let index = self.index;
        self.pos = self.batch.len();
        Some(Err(BatchError::BadRecord { index, why }))
    }
}

impl Iterator for Records {
    type Item = Result<Record, BatchError>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(e) = self.broken.take() {
            self.pos = self.batch.len();
            return Some(Err(e));
        }
        if self.index >= self.header.record_count || self.pos >= self.batch.len() {
            return None;
        }
        let span = match scan_record(&self.batch, self.pos) {
            Ok(span) => span,
            Err(why) => return self.bad(why),
        };
        if span.offset_delta != self.index {
            return self.bad("offset deltas must count up from 0");
        }
        let b = &self.batch;
        let mut headers = Vec::with_capacity(usize::from(span.header_count));
        let mut p = span.headers_start;
        for _ in 0..span.header_count {
            // Bounds and UTF-8 were checked by scan_record.
            let kl = usize::from(u16_at(b, p));
            let key = std::str::from_utf8(&b[p + 2..p + 2 + kl])
                .unwrap_or_default()
                .to_owned();
            p += 2 + kl;
            let vl = u32_at(b, p) as usize;
            headers.push(RecordHeader {
                key,
                value: b.slice(p + 4..p + 4 + vl),
            });
            p += 4 + vl;
        }
        let record = Record {
            offset: self
                .header
                .base_offset
                .wrapping_add(u64::from(span.offset_delta)),
            timestamp_ms: self
                .header
                .base_timestamp
                .wrapping_add(i64::from(span.timestamp_delta)),
            key: span.key.map(|(s, e)| b.slice(s..e)),
            value: b.slice(span.value.0..span.value.1),
            headers,
        };
        self.pos = span.end;
        self.index += 1;
        Some(Ok(record))
    }
}
