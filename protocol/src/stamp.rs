//! The broker stamp: the first 24 bytes of a stored batch, which the broker writes when it appends (a client
//! sends zeros there). It places the batch in the log and in Raft, and carries its own checksum, so that
//! with the client's CRC (bytes 32 to the end) every byte of a stored batch is covered: a damaged offset,
//! term, index or length is detected like damaged records (docs/design.md, "Record batch").
//!
//! ```text
//! offset size field
//!      0    8 base_offset u64   offset of the batch's first record
//!      8    4 raft_term u32     Raft term of the entry
//!     12    4 stamp_crc u32     crc32 of bytes 0..12 and 16..32 (this stamp, batch_len and the batch CRC)
//!     16    8 raft_index u64    Raft index of the entry
//! ```
//!
//! A term is stored in 32 bits (Kafka's leader epoch is as wide): a partition would need four billion
//! elections to pass it, and a term that does not fit is refused, never wrapped.

use crate::batch::BatchError;

/// Bytes at the start of a batch that the broker stamps.
pub const STAMP_LEN: usize = 24;
/// Bytes the stamp checksum covers: the stamp, `batch_len` and the batch CRC.
pub const COVERED_LEN: usize = 32;
/// Where the stamp checksum is.
const CRC_AT: usize = 12;

/// The stamp checksum of a stored batch's first [`COVERED_LEN`] bytes.
pub fn checksum(header: &[u8; COVERED_LEN]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&header[..CRC_AT]);
    h.update(&header[CRC_AT + 4..]);
    h.finalize()
}

/// The 24 bytes a broker writes in front of a batch's remaining bytes (`batch[STAMP_LEN..]`) whose
/// `batch_len` and `crc` fields are given.
pub fn stamp(
    base_offset: u64,
    raft_term: u64,
    raft_index: u64,
    batch_len: u32,
    crc: u32,
) -> Result<[u8; STAMP_LEN], BatchError> {
    let term = u32::try_from(raft_term).map_err(|_| BatchError::TermOverflow(raft_term))?;
    let mut h = [0u8; COVERED_LEN];
    h[0..8].copy_from_slice(&base_offset.to_le_bytes());
    h[8..12].copy_from_slice(&term.to_le_bytes());
    h[16..24].copy_from_slice(&raft_index.to_le_bytes());
    h[24..28].copy_from_slice(&batch_len.to_le_bytes());
    h[28..32].copy_from_slice(&crc.to_le_bytes());
    let sum = checksum(&h);
    h[CRC_AT..CRC_AT + 4].copy_from_slice(&sum.to_le_bytes());
    let mut s = [0u8; STAMP_LEN];
    s.copy_from_slice(&h[..STAMP_LEN]);
    Ok(s)
}

/// Checks the stamp checksum of a stored batch (its first [`COVERED_LEN`] bytes at least).
pub fn check(b: &[u8]) -> Result<(), BatchError> {
    let Some(h) = b.get(..COVERED_LEN) else {
        return Err(BatchError::TooShort(b.len()));
    };
    let h: &[u8; COVERED_LEN] = h.try_into().expect("COVERED_LEN bytes");
    let stored = u32::from_le_bytes(h[CRC_AT..CRC_AT + 4].try_into().expect("4 bytes"));
    let computed = checksum(h);
    if stored != computed {
        return Err(BatchError::StampMismatch { stored, computed });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamped() -> [u8; COVERED_LEN] {
        let s = stamp(10, 3, 99, 200, 0xdead_beef).unwrap();
        let mut h = [0u8; COVERED_LEN];
        h[..STAMP_LEN].copy_from_slice(&s);
        h[24..28].copy_from_slice(&200u32.to_le_bytes());
        h[28..32].copy_from_slice(&0xdead_beefu32.to_le_bytes());
        h
    }

    #[test]
    fn every_covered_bit_is_checked() {
        let good = stamped();
        check(&good).unwrap();
        for byte in 0..COVERED_LEN {
            for bit in 0..8 {
                let mut bad = good;
                bad[byte] ^= 1 << bit;
                assert!(
                    check(&bad).is_err(),
                    "flip of bit {bit} in byte {byte} passed"
                );
            }
        }
        assert!(
            check(&[0u8; COVERED_LEN]).is_err(),
            "a zeroed header passed"
        );
    }

    #[test]
    fn a_term_past_32_bits_is_refused() {
        assert_eq!(
            stamp(0, 1 << 32, 1, 100, 0),
            Err(BatchError::TermOverflow(1 << 32))
        );
        assert!(stamp(0, u64::from(u32::MAX), 1, 100, 0).is_ok());
    }
}
