//! The log's recovery checkpoint: which segment is active and how many of its bytes are known clean.
//! Segments before it are sealed (fsynced, indexes trimmed). Written at every roll and at clean shutdown,
//! atomically (temporary file, fsync, rename, fsync of the directory).
//!
//! ```text
//! 0  4 magic "FCKP"   4 4 version u32 = 1   8 8 active_base_offset u64   16 4 clean_len u32
//! 20 1 clean u8 (1: written by a clean shutdown)   21 4 crc32 of bytes 0..21
//! ```

use std::io::IoSlice;
use std::path::Path;

use super::disk::Disk;
use super::error::StorageError;

const MAGIC: &[u8; 4] = b"FCKP";
const LEN: usize = 25;
/// File name of the checkpoint inside a partition directory.
pub const FILE_NAME: &str = "checkpoint";

/// A recovery checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checkpoint {
    pub active_base_offset: u64,
    pub clean_len: u32,
    pub clean: bool,
}

impl Checkpoint {
    fn encode(&self) -> [u8; LEN] {
        let mut b = [0u8; LEN];
        b[0..4].copy_from_slice(MAGIC);
        b[4..8].copy_from_slice(&1u32.to_le_bytes());
        b[8..16].copy_from_slice(&self.active_base_offset.to_le_bytes());
        b[16..20].copy_from_slice(&self.clean_len.to_le_bytes());
        b[20] = u8::from(self.clean);
        let crc = crc32fast::hash(&b[..21]);
        b[21..25].copy_from_slice(&crc.to_le_bytes());
        b
    }

    fn decode(b: &[u8]) -> Option<Self> {
        if b.len() != LEN
            || &b[0..4] != MAGIC
            || crc32fast::hash(&b[..21]).to_le_bytes() != b[21..25]
        {
            return None;
        }
        Some(Checkpoint {
            active_base_offset: u64::from_le_bytes(b[8..16].try_into().ok()?),
            clean_len: u32::from_le_bytes(b[16..20].try_into().ok()?),
            clean: b[20] == 1,
        })
    }

    /// Reads the checkpoint; None when missing or damaged (then every segment is scanned).
    pub fn read(disk: &dyn Disk, dir: &Path) -> Option<Self> {
        let f = disk.open(&dir.join(FILE_NAME), false).ok()?;
        let len = f.len().ok()? as usize;
        if len != LEN {
            return None;
        }
        let mut b = [0u8; LEN];
        f.read_exact_at(&mut b, 0).ok()?;
        Self::decode(&b)
    }

    /// Replaces the checkpoint atomically and durably.
    pub fn write(&self, disk: &dyn Disk, dir: &Path) -> Result<(), StorageError> {
        write_atomically(disk, dir, FILE_NAME, &self.encode())
    }

    /// Removes the checkpoint (the log is no longer clean as of it).
    pub fn remove(disk: &dyn Disk, dir: &Path) {
        let _ = disk.remove_file(&dir.join(FILE_NAME));
    }
}

/// Writes `name` in `dir` through a temporary file, fsync, rename and directory fsync.
pub fn write_atomically(
    disk: &dyn Disk,
    dir: &Path,
    name: &str,
    bytes: &[u8],
) -> Result<(), StorageError> {
    let tmp = dir.join(format!("{name}.tmp"));
    let path = dir.join(name);
    let on_tmp = |e| StorageError::io(&tmp, e);
    let f = disk.open(&tmp, true).map_err(on_tmp)?;
    f.set_len(0).map_err(on_tmp)?;
    f.write_all_vectored_at(&[IoSlice::new(bytes)], 0)
        .map_err(on_tmp)?;
    f.sync_data().map_err(on_tmp)?;
    disk.rename(&tmp, &path)
        .map_err(|e| StorageError::io(&path, e))?;
    disk.sync_dir(dir).map_err(|e| StorageError::io(dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::OsDisk;

    #[test]
    fn round_trip_and_damage() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Checkpoint::read(&OsDisk, dir.path()), None);
        let c = Checkpoint {
            active_base_offset: 42,
            clean_len: 4096,
            clean: true,
        };
        c.write(&OsDisk, dir.path()).unwrap();
        assert_eq!(Checkpoint::read(&OsDisk, dir.path()), Some(c));
        let p = dir.path().join(FILE_NAME);
        let mut b = std::fs::read(&p).unwrap();
        b[9] ^= 1;
        std::fs::write(&p, b).unwrap();
        assert_eq!(Checkpoint::read(&OsDisk, dir.path()), None);
    }
}
