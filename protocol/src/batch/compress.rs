//! Compressed batch bodies (LZ4 block), decompressed with a bounded size.

use super::error::BatchError;
use super::format::{u32_at, ATTR_COMPRESSION_MASK, CODEC_LZ4, CODEC_NONE, HEADER_LEN};
use super::header::BatchHeader;
use bytes::Bytes;

/// The batch with its body decompressed (header bytes kept as they are, so offsets and timestamps read the
/// same); an uncompressed batch is returned as it is. The uncompressed size is bounded by
/// [`crate::limits::BATCH_BYTES_HARD_MAX`], so a hostile batch cannot make a reader allocate more.
pub fn decompressed(batch: &Bytes, h: &BatchHeader) -> Result<Bytes, BatchError> {
    if h.attributes & ATTR_COMPRESSION_MASK == CODEC_NONE {
        return Ok(batch.clone());
    }
    decompress(batch, h).map(Bytes::from)
}

pub(super) fn decompress(b: &[u8], h: &BatchHeader) -> Result<Vec<u8>, BatchError> {
    let codec = h.attributes & ATTR_COMPRESSION_MASK;
    if codec != CODEC_LZ4 {
        return Err(BatchError::UnsupportedCompression(codec));
    }
    let body = &b[HEADER_LEN..];
    if body.len() < 4 {
        return Err(BatchError::BadCompression("no length prefix".into()));
    }
    let len = u32_at(body, 0) as usize;
    let max = crate::limits::BATCH_BYTES_HARD_MAX as usize;
    if len > max {
        return Err(BatchError::BadCompression(format!(
            "uncompressed body of {len} bytes exceeds {max}"
        )));
    }
    let mut out = vec![0u8; HEADER_LEN + len];
    out[..HEADER_LEN].copy_from_slice(&b[..HEADER_LEN]);
    let n = lz4_flex::block::decompress_into(&body[4..], &mut out[HEADER_LEN..])
        .map_err(|e| BatchError::BadCompression(e.to_string()))?;
    if n != len {
        return Err(BatchError::BadCompression(format!(
            "body decompressed to {n} bytes, not the {len} declared"
        )));
    }
    Ok(out)
}
