//! The durable watermark: how far the active segment is known to be fsynced. Recovery after an unclean stop
//! may cut a bad tail only where nothing durable can be, i.e. at or past this length: a bad batch below it
//! was fsynced (and so may have been acknowledged and committed) and is damage, repaired from peers, never
//! a torn tail (Protocol-Aware Recovery, FAST'18).
//!
//! The watermark is rewritten in place after every fsync of the active segment, before anything that fsync
//! made durable is acknowledged, and fsynced itself only at roll, open and close (one `pwrite` per group
//! commit, no extra fsync). After a process crash the page cache holds the latest watermark; after a power
//! cut it may be older, which only makes recovery take a real torn tail for one: what lies between an old
//! watermark and the end was fsynced, so it is intact unless the disk also damaged it in those same
//! moments (docs/design.md, "Recovery").
//!
//! ```text
//! 0 4 magic "FDUR"   4 4 version u32 = 1   8 8 active_base_offset u64   16 4 durable_len u32
//! 20 4 flags u32 (bit 0: an fsync failed after this was written)   24 8 durable_raft_index u64
//! 32 4 crc32 of bytes 0..32
//! ```

use std::io::IoSlice;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::disk::{Disk, DiskFile};
use super::error::StorageError;

/// File name of the watermark inside a partition directory.
pub const FILE_NAME: &str = "durable";
const MAGIC: &[u8; 4] = b"FDUR";
const LEN: usize = 36;
const FLAG_FSYNC_FAILED: u32 = 1;

/// How far the active segment is durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Watermark {
    /// Base offset of the segment this is about (the active one when written).
    pub base_offset: u64,
    /// Bytes of that segment known fsynced.
    pub len: u32,
    /// Raft index of the last batch within `len` (0: none).
    pub raft_index: u64,
    /// An fsync failed after this was written: what lies past `len` may read back from the page cache while
    /// the disk never got it (fsyncgate), so recovery trusts nothing past `len`.
    pub fsync_failed: bool,
}

/// What the watermark file held at open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    /// No file: a log that never had one (recovery cannot tell a torn tail from damage).
    Missing,
    /// A file that fails its checks.
    Damaged,
    Valid(Watermark),
}

impl Watermark {
    fn encode(&self) -> [u8; LEN] {
        let mut b = [0u8; LEN];
        b[0..4].copy_from_slice(MAGIC);
        b[4..8].copy_from_slice(&1u32.to_le_bytes());
        b[8..16].copy_from_slice(&self.base_offset.to_le_bytes());
        b[16..20].copy_from_slice(&self.len.to_le_bytes());
        let flags = if self.fsync_failed {
            FLAG_FSYNC_FAILED
        } else {
            0
        };
        b[20..24].copy_from_slice(&flags.to_le_bytes());
        b[24..32].copy_from_slice(&self.raft_index.to_le_bytes());
        let crc = crc32fast::hash(&b[..32]);
        b[32..36].copy_from_slice(&crc.to_le_bytes());
        b
    }

    fn decode(b: &[u8; LEN]) -> Option<Self> {
        let u32_at = |at: usize| u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"));
        let u64_at = |at: usize| u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"));
        if &b[0..4] != MAGIC || u32_at(4) != 1 || crc32fast::hash(&b[..32]) != u32_at(32) {
            return None;
        }
        let flags = u32_at(20);
        if flags & !FLAG_FSYNC_FAILED != 0 {
            return None;
        }
        Some(Watermark {
            base_offset: u64_at(8),
            len: u32_at(16),
            fsync_failed: flags & FLAG_FSYNC_FAILED != 0,
            raft_index: u64_at(24),
        })
    }
}

/// The open watermark file of a partition.
#[derive(Debug)]
pub struct DurableFile {
    path: PathBuf,
    file: Arc<dyn DiskFile>,
}

impl DurableFile {
    /// Reads the watermark in `dir` (without creating anything).
    pub fn read(disk: &dyn Disk, dir: &Path) -> Result<Found, StorageError> {
        let path = dir.join(FILE_NAME);
        let f = match disk.open(&path, false) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Found::Missing),
            Err(e) => return Err(StorageError::io(&path, e)),
        };
        if f.len().map_err(|e| StorageError::io(&path, e))? != LEN as u64 {
            return Ok(Found::Damaged);
        }
        let mut b = [0u8; LEN];
        if f.read_exact_at(&mut b, 0).is_err() {
            return Ok(Found::Damaged);
        }
        Ok(Watermark::decode(&b).map_or(Found::Damaged, Found::Valid))
    }

    /// Opens (creating) the watermark file in `dir`; its directory entry is made durable.
    pub fn open(disk: &dyn Disk, dir: &Path) -> Result<Self, StorageError> {
        let path = dir.join(FILE_NAME);
        let created = !path.exists();
        let file = disk
            .open(&path, true)
            .map_err(|e| StorageError::io(&path, e))?;
        if created {
            disk.sync_dir(dir).map_err(|e| StorageError::io(dir, e))?;
        }
        Ok(DurableFile { path, file })
    }

    /// Rewrites the watermark in place (not fsynced: see the module doc).
    pub fn write(&self, w: &Watermark) -> Result<(), StorageError> {
        self.file
            .write_all_vectored_at(&[IoSlice::new(&w.encode())], 0)
            .map_err(|e| StorageError::io(&self.path, e))
    }

    /// Rewrites the watermark and makes it durable.
    pub fn write_durably(&self, w: &Watermark) -> Result<(), StorageError> {
        self.write(w)?;
        self.file
            .sync_data()
            .map_err(|e| StorageError::io(&self.path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::OsDisk;

    #[test]
    fn round_trip_and_every_damaged_byte_is_caught() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            DurableFile::read(&OsDisk, dir.path()).unwrap(),
            Found::Missing
        );
        let w = Watermark {
            base_offset: 1234,
            len: 99_000,
            raft_index: 77,
            fsync_failed: true,
        };
        DurableFile::open(&OsDisk, dir.path())
            .unwrap()
            .write_durably(&w)
            .unwrap();
        assert_eq!(
            DurableFile::read(&OsDisk, dir.path()).unwrap(),
            Found::Valid(w)
        );
        let p = dir.path().join(FILE_NAME);
        let good = std::fs::read(&p).unwrap();
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x10;
            std::fs::write(&p, &bad).unwrap();
            assert_eq!(
                DurableFile::read(&OsDisk, dir.path()).unwrap(),
                Found::Damaged,
                "byte {i}"
            );
        }
        std::fs::write(&p, &good[..20]).unwrap();
        assert_eq!(
            DurableFile::read(&OsDisk, dir.path()).unwrap(),
            Found::Damaged
        );
    }
}
