//! Why bytes are not a valid batch.

use super::format::{HEADER_LEN, MAGIC};

/// Why bytes are not a valid batch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    #[error("batch is {0} bytes, shorter than the {HEADER_LEN}-byte header")]
    TooShort(usize),
    #[error("batch header says {declared} bytes but {available} are present")]
    LengthMismatch { declared: u32, available: usize },
    #[error("unknown batch format version (magic {0}); this broker reads version {MAGIC}")]
    BadMagic(u8),
    #[error("batch CRC mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    CrcMismatch { stored: u32, computed: u32 },
    #[error("unknown batch attributes {0:#06x}")]
    BadAttributes(u16),
    #[error("compression codec {0} is not supported by this version")]
    UnsupportedCompression(u16),
    #[error("compressed batch body is damaged: {0}")]
    BadCompression(String),
    #[error("batch record {index} is malformed: {why}")]
    BadRecord { index: u32, why: &'static str },
    #[error("batch declares {declared} records but holds {found}")]
    RecordCount { declared: u32, found: u32 },
    #[error("batch has {0} records; the limit is {max}", max = crate::limits::BATCH_RECORDS_MAX)]
    TooManyRecords(u32),
    #[error("batch offsets overflow: base offset {0} plus its records passes the largest offset")]
    OffsetOverflow(u64),
    #[error("a data batch needs at least one record")]
    Empty,
    #[error("control batch claims {0} records; control batches hold none")]
    ControlWithRecords(u32),
    #[error("broker stamp checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    StampMismatch { stored: u32, computed: u32 },
    #[error("raft term {0} does not fit the stamp's 32 bits")]
    TermOverflow(u64),
}
