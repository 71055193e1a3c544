//! Sequential positioned reads of a segment file through one buffer: the recovery scan reads a segment
//! front to back with a few large `pread`s instead of two small ones per batch.

use std::io;

use super::disk::DiskFile;

/// Bytes read per refill.
const CHUNK_BYTES: usize = 4 << 20;

/// A read buffer over a file of `file_len` bytes.
pub struct ChunkReader<'a> {
    file: &'a dyn DiskFile,
    file_len: u64,
    /// File position of `buf[0]`.
    start: u64,
    buf: Vec<u8>,
}

impl<'a> ChunkReader<'a> {
    /// A reader over the first `file_len` bytes of `file`.
    pub fn new(file: &'a dyn DiskFile, file_len: u64) -> Self {
        ChunkReader {
            file,
            file_len,
            start: 0,
            buf: Vec::new(),
        }
    }

    /// Up to `len` bytes at `pos` (fewer at the end of the file). An unreadable block fails the read; the
    /// read of a whole chunk is retried as a read of just what was asked, so the error is placed exactly.
    pub fn get(&mut self, pos: u64, len: usize) -> io::Result<&[u8]> {
        let end = (pos.saturating_add(len as u64)).min(self.file_len);
        if pos >= end {
            return Ok(&[]);
        }
        let buffered_end = self.start + self.buf.len() as u64;
        if pos < self.start || end > buffered_end {
            let want = ((end - pos) as usize).max(CHUNK_BYTES);
            let n = (self.file_len - pos).min(want as u64) as usize;
            self.buf.resize(n, 0);
            self.start = pos;
            if let Err(e) = self.file.read_exact_at(&mut self.buf, pos) {
                // Narrow the read to what was asked: the damage may lie past it.
                let exact = (end - pos) as usize;
                self.buf.resize(exact, 0);
                if let Err(e2) = self.file.read_exact_at(&mut self.buf, pos) {
                    self.buf.clear();
                    return Err(if e2.kind() == e.kind() { e2 } else { e });
                }
            }
        }
        let from = (pos - self.start) as usize;
        Ok(&self.buf[from..from + (end - pos) as usize])
    }
}
