//! Protocol-aware repair of a replica whose log is damaged inside (Alagappan et al., FAST'18). A torn tail
//! is cut at open (it was never acknowledged); damage further in may be committed data, so the replica cuts
//! its log at the damaged batch, records in a `repair` file the last Raft index it held, and rejoins as a
//! *repairing* replica: it neither votes nor campaigns (its shorter log must not decide an election) until
//! the leader has sent it everything up to that index again. The file survives a crash mid-repair.
//!
//! ```text
//! 0 8 repair_until u64   4 crc32 of bytes 0..8
//! ```

use std::path::Path;

use crate::storage::checkpoint::write_atomically;
use crate::storage::{Disk, StorageError};

/// File name of the repair marker in a partition directory.
pub const FILE_NAME: &str = "repair";

/// Records that the replica in `dir` repairs up to Raft index `until`.
pub fn mark(disk: &dyn Disk, dir: &Path, until: u64) -> Result<(), StorageError> {
    let mut b = until.to_le_bytes().to_vec();
    let crc = crc32fast::hash(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    write_atomically(disk, dir, FILE_NAME, &b)
}

/// The index a replica in `dir` repairs up to, if it is repairing. A damaged marker counts as repairing up to
/// `u64::MAX` (never vote again until an operator looks): safer than forgetting.
pub fn read(disk: &dyn Disk, dir: &Path) -> Result<Option<u64>, StorageError> {
    let path = dir.join(FILE_NAME);
    let f = match disk.open(&path, false) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StorageError::io(&path, e)),
    };
    let mut b = [0u8; 12];
    if f.read_exact_at(&mut b, 0).is_err() {
        tracing::error!(path = %path.display(), "repair marker unreadable; the replica stays repairing");
        return Ok(Some(u64::MAX));
    }
    let until = u64::from_le_bytes(b[..8].try_into().expect("8 bytes"));
    let crc = u32::from_le_bytes(b[8..].try_into().expect("4 bytes"));
    if crc != crc32fast::hash(&b[..8]) {
        tracing::error!(path = %path.display(), "repair marker damaged; the replica stays repairing");
        return Ok(Some(u64::MAX));
    }
    Ok(Some(until))
}

/// Ends the repair of the replica in `dir`.
pub fn clear(disk: &dyn Disk, dir: &Path) -> Result<(), StorageError> {
    let path = dir.join(FILE_NAME);
    match disk.remove_file(&path) {
        Ok(()) => disk.sync_dir(dir).map_err(|e| StorageError::io(dir, e)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StorageError::io(&path, e)),
    }
}
