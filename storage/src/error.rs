//! Storage errors. An I/O error names the file; corruption names the file and the byte position, so an
//! operator can find it.

use std::io;
use std::path::{Path, PathBuf};

/// Why a storage operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("I/O error on {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("corrupt data in {path} at byte {position}: {why}; the partition is not served until repaired")]
    Corrupt {
        path: PathBuf,
        position: u64,
        why: String,
    },
    #[error("unreadable data in {path} at byte {position}: {source}; the partition is not served until repaired")]
    Unreadable {
        path: PathBuf,
        position: u64,
        source: io::Error,
    },
    #[error("offset {offset} is out of range [{start}, {end}]")]
    OffsetOutOfRange { offset: u64, start: u64, end: u64 },
    #[error("partition storage failed earlier and is fenced: {0}")]
    Failed(String),
}

impl StorageError {
    /// An I/O error on `path`.
    pub fn io(path: &Path, source: io::Error) -> Self {
        StorageError::Io {
            path: path.to_owned(),
            source,
        }
    }

    /// Whether this is damage to stored data (a batch failing its checks, or an unreadable block): the
    /// replica is fenced and repaired from its peers, never served from.
    pub fn is_damage(&self) -> bool {
        matches!(
            self,
            StorageError::Corrupt { .. } | StorageError::Unreadable { .. }
        )
    }

    /// Whether the disk is full (the write was refused, nothing was acknowledged).
    pub fn is_disk_full(&self) -> bool {
        matches!(self, StorageError::Io { source, .. } if source.raw_os_error() == Some(libc::ENOSPC))
    }
}
