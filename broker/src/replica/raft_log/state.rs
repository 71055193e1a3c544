//! The small durable state of a Raft replica beside its log: hard state (term, vote, commit), conf state,
//! and the marker where the log starts (the Raft index and term just before the first stored batch, and the
//! offset the log starts at). Replaced atomically, CRC-checked; a damaged file refuses to start rather than
//! resetting term or vote.
//!
//! ```text
//! 0 4 magic "FRST"  4 4 version u32 = 1  8 8 term  16 8 vote  24 8 commit  32 8 marker_index
//! 40 8 marker_term  48 8 marker_offset  56 4 conf_len u32  60 conf_len conf state (raft-rs protobuf)
//! then 4 crc32 of everything before it
//! ```

use std::path::{Path, PathBuf};

use protobuf::Message as _;
use raft::eraftpb::{ConfState, HardState};

use crate::storage::checkpoint::write_atomically;
use crate::storage::{Disk, StorageError};

/// File name of the state file inside a partition directory.
pub const FILE_NAME: &str = "raft-state";
const MAGIC: &[u8; 4] = b"FRST";
const FIXED_LEN: usize = 60;
/// Largest conf state accepted (bytes): bounds what a damaged length field can ask for.
const CONF_BYTES_MAX: usize = 1 << 20;

/// The durable state.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RaftState {
    pub hard_state: HardState,
    pub conf_state: ConfState,
    pub marker_index: u64,
    pub marker_term: u64,
    pub marker_offset: u64,
}

impl RaftState {
    fn encode(&self) -> Vec<u8> {
        let conf = self
            .conf_state
            .write_to_bytes()
            .expect("conf state encodes");
        let mut b = Vec::with_capacity(FIXED_LEN + conf.len() + 4);
        b.extend_from_slice(MAGIC);
        b.extend_from_slice(&1u32.to_le_bytes());
        for v in [
            self.hard_state.term,
            self.hard_state.vote,
            self.hard_state.commit,
            self.marker_index,
            self.marker_term,
            self.marker_offset,
        ] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b.extend_from_slice(&(conf.len() as u32).to_le_bytes());
        b.extend_from_slice(&conf);
        let crc = crc32fast::hash(&b);
        b.extend_from_slice(&crc.to_le_bytes());
        b
    }

    fn decode(b: &[u8], path: &Path) -> Result<Self, StorageError> {
        let bad = |why: &str| StorageError::Corrupt {
            path: path.to_owned(),
            position: 0,
            why: why.to_owned(),
        };
        if b.len() < FIXED_LEN + 4 || &b[0..4] != MAGIC {
            return Err(bad("not a Ferry raft state file"));
        }
        let (body, crc) = b.split_at(b.len() - 4);
        if crc32fast::hash(body).to_le_bytes() != crc {
            return Err(bad(
                "raft state CRC mismatch: refusing to start rather than reset term or vote",
            ));
        }
        let u64_at = |at: usize| u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"));
        let conf_len = u32::from_le_bytes(b[56..60].try_into().expect("4 bytes")) as usize;
        if conf_len > CONF_BYTES_MAX || FIXED_LEN + conf_len != body.len() {
            return Err(bad("raft state conf length mismatch"));
        }
        let conf_state = ConfState::parse_from_bytes(&b[60..60 + conf_len])
            .map_err(|_| bad("bad conf state"))?;
        let hard_state = HardState {
            term: u64_at(8),
            vote: u64_at(16),
            commit: u64_at(24),
            ..Default::default()
        };
        Ok(RaftState {
            hard_state,
            conf_state,
            marker_index: u64_at(32),
            marker_term: u64_at(40),
            marker_offset: u64_at(48),
        })
    }

    /// Reads the state in `dir`; `Ok(None)` when there is none (a new replica).
    pub fn read(disk: &dyn Disk, dir: &Path) -> Result<Option<Self>, StorageError> {
        let path: PathBuf = dir.join(FILE_NAME);
        let f = match disk.open(&path, false) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StorageError::io(&path, e)),
        };
        let len = f.len().map_err(|e| StorageError::io(&path, e))? as usize;
        if len > FIXED_LEN + CONF_BYTES_MAX + 4 {
            return Err(StorageError::Corrupt {
                path,
                position: 0,
                why: "raft state file too large".into(),
            });
        }
        let mut b = vec![0u8; len];
        f.read_exact_at(&mut b, 0)
            .map_err(|e| StorageError::io(&path, e))?;
        Self::decode(&b, &path).map(Some)
    }

    /// Durably replaces the state in `dir`.
    pub fn write(&self, disk: &dyn Disk, dir: &Path) -> Result<(), StorageError> {
        write_atomically(disk, dir, FILE_NAME, &self.encode())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::OsDisk;

    #[test]
    fn round_trip_and_refuses_damage() {
        let dir = tempfile::tempdir().unwrap();
        assert!(RaftState::read(&OsDisk, dir.path()).unwrap().is_none());
        let mut s = RaftState::default();
        s.hard_state.term = 7;
        s.hard_state.vote = 2;
        s.hard_state.commit = 99;
        s.conf_state.voters = vec![1, 2, 3];
        s.marker_index = 10;
        s.marker_term = 3;
        s.marker_offset = 500;
        s.write(&OsDisk, dir.path()).unwrap();
        assert_eq!(RaftState::read(&OsDisk, dir.path()).unwrap().unwrap(), s);
        let p = dir.path().join(FILE_NAME);
        let mut b = std::fs::read(&p).unwrap();
        b[9] ^= 1;
        std::fs::write(&p, b).unwrap();
        assert!(matches!(
            RaftState::read(&OsDisk, dir.path()),
            Err(StorageError::Corrupt { .. })
        ));
    }
}
