//! The batch format's constants: header size, version, attribute bits, codecs; little-endian field reads.

/// Size of the fixed batch header (bytes).
pub const HEADER_LEN: usize = 70;
/// Start of the CRC-covered region.
pub(super) const CRC_START: usize = 32;
/// The batch format version this code reads and writes.
pub const MAGIC: u8 = 1;
/// Attribute bits that select the compression codec.
pub const ATTR_COMPRESSION_MASK: u16 = 0b111;
/// Compression codec values (attribute bits 0-2).
pub const CODEC_NONE: u16 = 0;
/// LZ4 block format: the body after the header is the uncompressed body's length (u32 LE) followed by one
/// LZ4 block.
pub const CODEC_LZ4: u16 = 1;

/// How a producer compresses its batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    #[default]
    None,
    Lz4,
}

/// Attribute bit of a control batch.
pub const ATTR_CONTROL: u16 = 1 << 4;
/// Every attribute bit this version defines.
pub(super) const ATTR_KNOWN: u16 = ATTR_COMPRESSION_MASK | ATTR_CONTROL;
/// Fixed bytes of one record besides key, value and headers.
pub(super) const RECORD_FIXED_LEN: usize = 4 + 4 + 4 + 4 + 4 + 2;

pub(super) fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
pub(super) fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
pub(super) fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}
