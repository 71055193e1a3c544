//! The storage format version of a data dir, in a file `ferry-format` at its root: a broker never reads a
//! data dir written in another format as if it were its own (a batch without a stamp checksum would read
//! as damage everywhere and be "repaired" away). A data dir without the file but with data in it was
//! written before the file existed (format 1).
//!
//! ```text
//! "ferry storage format 2\n"
//! ```

use std::path::Path;

use super::disk::{create_dir_durable, Disk};
use super::error::StorageError;

/// File name at the data dir's root.
pub const FILE_NAME: &str = "ferry-format";
/// The format this version writes and reads: batches with a stamp checksum, a durable watermark.
pub const VERSION: u32 = 2;

fn line(version: u32) -> String {
    format!("ferry storage format {version}\n")
}

/// Checks the format of the data dir `dir`, creating the file in a new or empty one. An error names the
/// format found and what to do.
pub fn check_or_create(disk: &dyn Disk, dir: &Path) -> Result<(), StorageError> {
    create_dir_durable(disk, dir).map_err(|e| StorageError::io(dir, e))?;
    let path = dir.join(FILE_NAME);
    let refuse = |found: &str| {
        StorageError::Corrupt {
        path: path.clone(),
        position: 0,
        why: format!(
            "this data dir holds Ferry storage format {found}; this ferryd reads format {VERSION} only: \
             start it on an empty data dir (docs/operations.md, \"Upgrading\")"
        ),
    }
    };
    match disk.open(&path, false) {
        Ok(f) => {
            let len = f.len().map_err(|e| StorageError::io(&path, e))?;
            let mut b = vec![0u8; (len as usize).min(64)];
            f.read_exact_at(&mut b, 0)
                .map_err(|e| StorageError::io(&path, e))?;
            let text = String::from_utf8_lossy(&b);
            if text == line(VERSION) {
                return Ok(());
            }
            let found = text
                .trim()
                .strip_prefix("ferry storage format ")
                .unwrap_or("unknown");
            Err(refuse(found))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let entries = disk.list(dir).map_err(|e| StorageError::io(dir, e))?;
            if entries.iter().any(|n| n == "__cluster" || n == "topics") {
                return Err(refuse("1 (no ferry-format file)"));
            }
            super::checkpoint::write_atomically(disk, dir, FILE_NAME, line(VERSION).as_bytes())
        }
        Err(e) => Err(StorageError::io(&path, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::OsDisk;

    #[test]
    fn a_new_dir_gets_the_format_and_an_old_or_foreign_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("data");
        check_or_create(&OsDisk, &d).unwrap();
        check_or_create(&OsDisk, &d).unwrap();
        std::fs::write(d.join(FILE_NAME), "ferry storage format 7\n").unwrap();
        let e = check_or_create(&OsDisk, &d).unwrap_err().to_string();
        assert!(e.contains("format 7") && e.contains("format 2"), "{e}");
        let old = dir.path().join("old");
        std::fs::create_dir_all(old.join("__cluster")).unwrap();
        let e = check_or_create(&OsDisk, &old).unwrap_err().to_string();
        assert!(e.contains("format 1"), "{e}");
    }
}
