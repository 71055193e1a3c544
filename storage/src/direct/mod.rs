//! Segment log files written with direct I/O (`O_DIRECT`), from memory the broker owns, not through the
//! page cache.
//!
//! Why: with buffered writes the kernel copies every appended byte into a newly allocated page-cache page,
//! accounts it dirty, writes it back at the fsync and later reclaims it. On this machine that costs
//! 0.55-1.0 s of CPU per GiB written against 0.11 s with direct I/O, and at 1 KiB publishes the copy
//! alone was 40% of the broker's CPU samples (docs/benchmarks.md, sessions 20 and 21). The log does not
//! need the page cache for what it reads back: Raft sends followers entries from its own tail cache,
//! recent bytes are read from the buffers below, and older data comes from the disk either way.
//!
//! How: an append only copies its bytes into a staging buffer, after a copy of the file's last partial
//! block. `sync_data` (on the blocking pool, off the partition's task) writes the staged bytes, padded
//! with zeros to a whole block, at the block-aligned position where they start, then fdatasyncs. So the
//! append path never waits for the device, and one fsync still covers a whole group commit. Staged bytes
//! past [`FLUSH_BYTES`] are written by the appender itself, which bounds the memory a file holds.
//!
//! On disk the file is longer than its data by less than one block of zeros: [`DiskFile::len`] answers
//! the data's length, and [`DiskFile::set_len`] (sealing a segment and a clean close call it) cuts the
//! padding. Dropping a file does no I/O: a replica restarted after a fence may have reopened the same file
//! while the old instance is still held somewhere, and the old one must not write or cut it. After a crash, the padding lies past the durable watermark and recovery cuts it as it cuts a
//! torn write. Rewriting the last partial block rewrites bytes already fsynced with the same values, so a
//! write torn inside that block leaves them as they were, as a page-cache write-back of that page would.
//!
//! Durability is unchanged: nothing is acknowledged before `fdatasync`, which on ext4 and XFS flushes the
//! device's cache even when only direct writes happened since the last one. Reads never touch a block a
//! write may be rewriting: bytes from the start of the staged (or in-flight) block on are copied from
//! memory, so a buffered read cannot race a direct write of the same page.

mod aligned;
#[cfg(test)]
mod tests;

use std::fs::{File, OpenOptions};
use std::io::{self, IoSlice};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Arc;

use memmap2::Mmap;
use parking_lot::Mutex;

use self::aligned::AlignedBuf;
use super::disk::{open_read_write, Disk, DiskFile, OsDisk};

pub use self::aligned::BLOCK_BYTES;

/// First size of a staging buffer (bytes): an idle partition's file holds no more than this.
const STAGE_MIN_BYTES: usize = 64 * 1024;

/// Staged bytes past which the appender writes them itself instead of leaving them to the next fsync
/// (bytes): bounds what a file holds in memory. A file being written holds two buffers (one staging, one
/// being written), each at most about this plus one append, like the Raft tail cache beside it; a file
/// that goes quiet shrinks back to [`STAGE_MIN_BYTES`] at its next small fsync, and a sealed one holds none.
pub const FLUSH_BYTES: usize = 4 * 1024 * 1024;

/// Largest buffer kept for reuse after its write (bytes); larger ones (one huge append) are freed.
const SPARE_MAX_BYTES: usize = 8 * 1024 * 1024;

/// Bytes of the file held in memory: `buf[..fill]` is the file's bytes `start..start + fill`, `start`
/// block-aligned.
struct Staged {
    buf: AlignedBuf,
    start: u64,
    fill: usize,
}

impl Staged {
    fn end(&self) -> u64 {
        self.start + self.fill as u64
    }

    /// Copies the file's bytes from `at` into `out` (the range lies inside this buffer).
    fn copy_to(&self, at: u64, out: &mut [u8]) {
        let from = (at - self.start) as usize;
        out.copy_from_slice(&self.buf.as_slice()[from..from + out.len()]);
    }
}

/// The state behind the lock.
struct State {
    /// Length of the data (bytes); the file on disk may be longer by its padding, or shorter by what is
    /// staged.
    len: u64,
    /// Bytes of data whose write completed (or that were on disk when the file was opened).
    written: u64,
    /// Appended bytes not yet handed to a write, after a copy of the last partial block before them. None
    /// when nothing is staged and that block was not read back yet (after opening or a length change).
    staged: Option<Staged>,
    /// What a flush is writing, outside the lock; readers copy from it meanwhile.
    writing: Option<Arc<Staged>>,
    /// A buffer to stage into next.
    spare: Option<AlignedBuf>,
    /// A write failed: what was staged may never reach the file, so nothing more is done with it (its
    /// replica is fenced on the error and reopens the file, which finds what reached the disk).
    failed: bool,
}

impl State {
    /// Below this position the file's blocks are on disk and no write in flight or to come rewrites them
    /// (later writes start at the staged block, a write in flight at its own).
    fn disk_limit(&self) -> u64 {
        let staged = self.staged.as_ref().map_or(self.len, |s| s.start);
        self.writing
            .as_ref()
            .map_or(staged, |w| w.start.min(staged))
    }

    /// A buffer of at least `need` bytes for rounds of about `used` bytes: the spare if it is worth keeping.
    fn take_buf(&mut self, need: usize, used: usize) -> AlignedBuf {
        match self.spare.take() {
            Some(b) if b.len() >= need && worth_keeping(b.len(), used) => b,
            _ => AlignedBuf::new(need.max(STAGE_MIN_BYTES)),
        }
    }
}

/// Whether a buffer of `cap` bytes is worth keeping for rounds of `used` bytes: at most four times that (a
/// file that went quiet gives back what a burst made its buffers grow to), and at most [`SPARE_MAX_BYTES`].
fn worth_keeping(cap: usize, used: usize) -> bool {
    cap <= SPARE_MAX_BYTES && cap <= used.saturating_mul(4).max(STAGE_MIN_BYTES)
}

fn failed() -> io::Error {
    io::Error::other("an earlier write to this file failed: its replica must reopen it")
}

/// A log file written with direct I/O. Reads, fsyncs and length changes go through an ordinary descriptor
/// of the same file.
pub struct DirectFile {
    file: File,
    direct: File,
    state: Mutex<State>,
    /// Held by whoever writes staged bytes to the file: writes happen in the order they were staged, and
    /// a length change waits for the write in flight.
    io: Mutex<()>,
}

impl std::fmt::Debug for DirectFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirectFile")
            .field("file", &self.file)
            .finish_non_exhaustive()
    }
}

impl DirectFile {
    /// Opens `path` for direct writes. Fails with EINVAL where the file system does not support direct
    /// I/O (tmpfs); [`DirectDisk`] then uses buffered I/O.
    pub fn open(path: &Path, create: bool) -> io::Result<Self> {
        let file = open_read_write(path, create)?;
        let direct = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(path)?;
        let len = file.metadata()?.len();
        Ok(DirectFile {
            file,
            direct,
            state: Mutex::new(State {
                len,
                written: len,
                staged: None,
                writing: None,
                spare: None,
                failed: false,
            }),
            io: Mutex::new(()),
        })
    }

    /// Stages an append at the end of the data.
    fn stage(&self, st: &mut State, bufs: &[IoSlice<'_>], total: usize) -> io::Result<()> {
        let mut staged = match st.staged.take() {
            Some(s) => s,
            None => {
                // Nothing staged: everything is on disk and nothing is being written; read the last
                // partial block back to write it again with what follows.
                let start = st.len - st.len % BLOCK_BYTES as u64;
                let fill = (st.len - start) as usize;
                let mut buf = st.take_buf(fill + total, fill + total);
                if fill > 0 {
                    self.file
                        .read_exact_at(&mut buf.as_mut_slice()[..fill], start)?;
                }
                Staged { buf, start, fill }
            }
        };
        let need = staged.fill + total;
        if need > staged.buf.len() {
            let mut bigger = match st.spare.take() {
                Some(b) if b.len() >= need => b,
                other => {
                    st.spare = other;
                    AlignedBuf::new(need.next_power_of_two())
                }
            };
            bigger.as_mut_slice()[..staged.fill]
                .copy_from_slice(&staged.buf.as_slice()[..staged.fill]);
            staged.buf = bigger;
        }
        for b in bufs {
            staged.buf.as_mut_slice()[staged.fill..staged.fill + b.len()].copy_from_slice(b);
            staged.fill += b.len();
        }
        st.len += total as u64;
        debug_assert_eq!(staged.end(), st.len);
        st.staged = Some(staged);
        Ok(())
    }

    /// Writes what is staged to the file. The caller holds `io`.
    fn flush(&self) -> io::Result<()> {
        let mut st = self.state.lock();
        if st.failed {
            return Err(failed());
        }
        let Some(mut staged) = st.staged.take() else {
            return Ok(());
        };
        if staged.end() <= st.written {
            // Only a copy of the last partial block, already written.
            st.staged = Some(staged);
            return Ok(());
        }
        // The next staging starts with a copy of the last partial block.
        let tail = staged.fill % BLOCK_BYTES;
        let padded = staged.fill.next_multiple_of(BLOCK_BYTES);
        let mut next = st.take_buf(tail, padded);
        next.as_mut_slice()[..tail]
            .copy_from_slice(&staged.buf.as_slice()[staged.fill - tail..staged.fill]);
        staged.buf.as_mut_slice()[staged.fill..padded].fill(0);
        st.staged = Some(Staged {
            buf: next,
            start: staged.end() - tail as u64,
            fill: tail,
        });
        let writing = Arc::new(staged);
        st.writing = Some(writing.clone());
        drop(st);
        let written = self.write_blocks(&writing.buf.as_slice()[..padded], writing.start);
        let mut st = self.state.lock();
        if let Err(e) = written {
            // Readers keep reading these bytes from memory: the disk may hold any part of them.
            st.failed = true;
            return Err(e);
        }
        st.writing = None;
        st.written = writing.end();
        if let Ok(done) = Arc::try_unwrap(writing) {
            if worth_keeping(done.buf.len(), padded) {
                st.spare = Some(done.buf);
            }
        }
        Ok(())
    }

    /// Writes whole blocks at a block-aligned position.
    fn write_blocks(&self, mut blocks: &[u8], mut pos: u64) -> io::Result<()> {
        debug_assert!(blocks.len().is_multiple_of(BLOCK_BYTES));
        debug_assert!(pos.is_multiple_of(BLOCK_BYTES as u64));
        while !blocks.is_empty() {
            match self.direct.write_at(blocks, pos) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "pwrite wrote nothing",
                    ))
                }
                // A short write that ends off a block cannot be continued aligned.
                Ok(w) if !w.is_multiple_of(BLOCK_BYTES) => {
                    return Err(io::Error::other(format!(
                        "a direct write of {} bytes wrote {w}",
                        blocks.len()
                    )))
                }
                Ok(w) => {
                    blocks = &blocks[w..];
                    pos += w as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Writes what is staged and frees the buffers: the file is all on disk. A length change (sealing a
    /// segment, a cut, a clean close) is where a file stops being written for a while, or for good.
    fn flush_all(&self) -> io::Result<()> {
        self.flush()?;
        let mut st = self.state.lock();
        if st.staged.as_ref().is_some_and(|s| s.end() <= st.written) {
            st.staged = None;
        }
        st.spare = None;
        Ok(())
    }
}

impl DiskFile for DirectFile {
    fn write_all_vectored_at(&self, bufs: &[IoSlice<'_>], offset: u64) -> io::Result<()> {
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        let mut st = self.state.lock();
        if st.failed {
            return Err(failed());
        }
        if offset == st.len {
            self.stage(&mut st, bufs, total)?;
            let big = st.staged.as_ref().is_some_and(|s| s.fill > FLUSH_BYTES);
            drop(st);
            if big {
                let _io = self.io.lock();
                self.flush()?;
            }
            return Ok(());
        }
        // Not an append (the log only appends): everything staged goes first, then this through the page
        // cache, which the kernel writes back before any later direct write to the same blocks.
        drop(st);
        let _io = self.io.lock();
        self.flush_all()?;
        let mut at = offset;
        for b in bufs {
            self.file.write_all_at(b, at)?;
            at += b.len() as u64;
        }
        let mut st = self.state.lock();
        st.len = st.len.max(at);
        st.written = st.len;
        Ok(())
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        let end = offset + buf.len() as u64;
        let disk_end = {
            let st = self.state.lock();
            if end > st.len {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("read of {offset}..{end} past the end ({})", st.len),
                ));
            }
            let limit = st.disk_limit();
            let mut at = offset.max(limit);
            while at < end {
                let out = &mut buf[(at - offset) as usize..];
                // The staged bytes start at or before the end of the write in flight.
                let from = match (&st.staged, &st.writing) {
                    (Some(s), _) if at >= s.start => s,
                    (_, Some(w)) if at >= w.start && at < w.end() => w.as_ref(),
                    _ => unreachable!("bytes {at}.. past the disk limit {limit} are in memory"),
                };
                let n = out.len().min((from.end() - at) as usize);
                from.copy_to(at, &mut out[..n]);
                at += n as u64;
            }
            limit.min(end)
        };
        if offset < disk_end {
            self.file
                .read_exact_at(&mut buf[..(disk_end - offset) as usize], offset)?;
        }
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        {
            let _io = self.io.lock();
            self.flush()?;
        }
        self.file.sync_data()
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let _io = self.io.lock();
        self.flush_all()?;
        self.file.set_len(len)?;
        let mut st = self.state.lock();
        st.len = len;
        st.written = len;
        Ok(())
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.state.lock().len)
    }

    fn map_read(&self) -> io::Result<Mmap> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "a log file is read with positioned reads, never mapped",
        ))
    }
}

/// The operating system's file system, with segment logs written by direct I/O ([`DirectFile`]) where
/// the file system supports it, and every other file (indexes, checkpoints, state) as [`OsDisk`] does.
#[derive(Debug, Default, Clone, Copy)]
pub struct DirectDisk;

impl Disk for DirectDisk {
    fn open(&self, path: &Path, create: bool) -> io::Result<Arc<dyn DiskFile>> {
        OsDisk.open(path, create)
    }
    fn open_log(&self, path: &Path, create: bool) -> io::Result<Arc<dyn DiskFile>> {
        match DirectFile::open(path, create) {
            Ok(f) => Ok(Arc::new(f)),
            // tmpfs and some others refuse O_DIRECT with EINVAL.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => OsDisk.open(path, create),
            Err(e) => Err(e),
        }
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        OsDisk.remove_file(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        OsDisk.rename(from, to)
    }
    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        OsDisk.sync_dir(path)
    }
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        OsDisk.create_dir_all(path)
    }
    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        OsDisk.remove_dir_all(path)
    }
    fn list(&self, path: &Path) -> io::Result<Vec<String>> {
        OsDisk.list(path)
    }
}
