//! The fixed header of a batch, its CRC, and the checks of a whole batch.

use super::error::BatchError;
use super::format::{
    u16_at, u32_at, u64_at, ATTR_CONTROL, ATTR_KNOWN, CRC_START, HEADER_LEN, MAGIC,
};
use crate::stamp::STAMP_LEN;

/// The decoded fixed header of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: u64,
    pub raft_term: u64,
    /// Checksum of the broker stamp ([`crate::stamp`]); 0 in a batch a client sent.
    pub stamp_crc: u32,
    pub raft_index: u64,
    pub batch_len: u32,
    pub crc: u32,
    pub magic: u8,
    pub attributes: u16,
    pub record_count: u32,
    pub base_timestamp: i64,
    pub max_timestamp: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
}

impl BatchHeader {
    /// Reads the header without checking the CRC (use [`validate`] for that).
    pub fn parse(b: &[u8]) -> Result<Self, BatchError> {
        if b.len() < HEADER_LEN {
            return Err(BatchError::TooShort(b.len()));
        }
        Ok(BatchHeader {
            base_offset: u64_at(b, 0),
            raft_term: u64::from(u32_at(b, 8)),
            stamp_crc: u32_at(b, 12),
            raft_index: u64_at(b, 16),
            batch_len: u32_at(b, 24),
            crc: u32_at(b, 28),
            magic: b[32],
            attributes: u16_at(b, 34),
            record_count: u32_at(b, 36),
            base_timestamp: u64_at(b, 40) as i64,
            max_timestamp: u64_at(b, 48) as i64,
            producer_id: u64_at(b, 56) as i64,
            producer_epoch: u16_at(b, 64) as i16,
            base_sequence: u32_at(b, 66) as i32,
        })
    }

    /// Whether this is a control batch (never shown to consumers).
    pub fn is_control(&self) -> bool {
        self.attributes & ATTR_CONTROL != 0
    }

    /// The offset after the last record of this batch.
    pub fn next_offset(&self) -> u64 {
        // Wrapping: a corrupt stamp (not covered by the CRC) must not panic; validate() refuses it anyway.
        self.base_offset.wrapping_add(u64::from(self.record_count))
    }
}

/// The CRC of a batch as it should be stored in its header.
pub fn compute_crc(batch: &[u8]) -> u32 {
    crc32fast::hash(&batch[CRC_START..])
}

/// Checks that `b` is exactly one whole, intact batch of a known version: length, magic, attributes and CRC.
/// A control batch must claim no records. Records are not walked (see [`validate_records`]).
pub fn validate(b: &[u8]) -> Result<BatchHeader, BatchError> {
    let h = BatchHeader::parse(b)?;
    if h.batch_len as usize != b.len() || (h.batch_len as usize) < HEADER_LEN {
        return Err(BatchError::LengthMismatch {
            declared: h.batch_len,
            available: b.len(),
        });
    }
    if h.magic != MAGIC {
        return Err(BatchError::BadMagic(h.magic));
    }
    let computed = compute_crc(b);
    if computed != h.crc {
        return Err(BatchError::CrcMismatch {
            stored: h.crc,
            computed,
        });
    }
    if h.attributes & !ATTR_KNOWN != 0 {
        return Err(BatchError::BadAttributes(h.attributes));
    }
    // A control batch takes a Raft index but no offset: readers skip it and the log's next offset does not
    // move. One claiming records would move the log's end past offsets nothing serves (found by fuzzing).
    if h.is_control() && h.record_count != 0 {
        return Err(BatchError::ControlWithRecords(h.record_count));
    }
    if h.base_offset
        .checked_add(u64::from(h.record_count))
        .is_none()
    {
        return Err(BatchError::OffsetOverflow(h.base_offset));
    }
    Ok(h)
}

/// [`validate`] for a batch read back from storage: the broker stamp's checksum too.
pub fn validate_stored(b: &[u8]) -> Result<BatchHeader, BatchError> {
    crate::stamp::check(b)?;
    validate(b)
}

/// The stamp a broker writes in front of batch `h`'s remaining bytes (`batch[STAMP_LEN..]`): see
/// [`crate::stamp::stamp`].
pub fn stamp(
    h: &BatchHeader,
    base_offset: u64,
    raft_term: u64,
    raft_index: u64,
) -> Result<[u8; STAMP_LEN], BatchError> {
    crate::stamp::stamp(base_offset, raft_term, raft_index, h.batch_len, h.crc)
}
