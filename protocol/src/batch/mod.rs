//! The packed record batch: Ferry's one data format, built by clients, checked and stored as it is by brokers,
//! served as it is to consumers. All fields are little-endian and fixed width; docs/design.md has the diagram.
//!
//! ```text
//! offset size field              CRC  set by
//!      0    8 base_offset u64     no   broker (offset of the first record)
//!      8    4 raft_term u32       no   broker (Raft term of the entry)
//!     12    4 stamp_crc u32       no   broker (checksum of bytes 0..12 and 16..32, see crate::stamp)
//!     16    8 raft_index u64      no   broker (Raft index of the entry)
//!     24    4 batch_len u32       no   client (whole batch, header included)
//!     28    4 crc u32             -    client (crc32 of bytes 32..batch_len)
//!     32    1 magic u8 = 1        yes
//!     33    1 reserved u8 = 0     yes
//!     34    2 attributes u16      yes  bits 0-2 compression (0 = none), bit 4 control batch
//!     36    4 record_count u32    yes
//!     40    8 base_timestamp i64  yes  (ms since the Unix epoch)
//!     48    8 max_timestamp i64   yes
//!     56    8 producer_id i64     yes  (-1: none)
//!     64    2 producer_epoch i16  yes
//!     66    4 base_sequence i32   yes  (-1: none)
//!     70      records             yes
//! ```
//!
//! The broker stamps `base_offset`, `raft_term` and `raft_index` when it appends, which the batch CRC does not
//! cover (as Kafka's base offset), so appending never re-encodes and the client's CRC is checked end to end.
//! The stamp has a checksum of its own ([`crate::stamp`]), over the stamp, `batch_len` and the CRC: a stored
//! batch is covered whole.
//!
//! Each record:
//! ```text
//!      0    4 record_len u32      bytes after this field
//!      4    4 offset_delta u32    offset - base_offset
//!      8    4 timestamp_delta i32 timestamp - base_timestamp (ms)
//!     12    4 key_len i32         -1: no key
//!     16    k key
//!   16+k    4 value_len u32
//!           v value
//!           2 header_count u16
//!             per header: key_len u16, key (UTF-8), value_len u32, value
//! ```
//! A control batch (attribute bit 4) carries Ferry's and Raft's own entries; it holds no records, takes no
//! offsets and is never shown to consumers. Its body is one entry-type byte followed by the entry's data.
//!
//! Files, bottom up: [`format`] (constants) → [`error`] → [`header`] (the fixed header and whole-batch
//! checks) → [`compress`] → [`scan`] (one record's layout) → [`records`] (record checks and the iterator) →
//! [`builder`] (building batches). This module only hands their names on.

pub mod builder;
pub mod compress;
pub mod error;
pub mod format;
pub mod header;
pub mod records;
pub mod scan;

pub use crate::stamp::STAMP_LEN;
pub use builder::{control_batch, control_payload, with_producer, BatchBuilder, ProducerStamp};
pub use compress::decompressed;
pub use error::BatchError;
pub use format::{
    Compression, ATTR_COMPRESSION_MASK, ATTR_CONTROL, CODEC_LZ4, CODEC_NONE, HEADER_LEN, MAGIC,
};
pub use header::{compute_crc, stamp, validate, validate_stored, BatchHeader};
pub use records::{validate_records, Record, RecordHeader, Records};

#[cfg(test)]
mod tests;
