//! The storage seam: every byte the broker reads from or writes to disk goes through [`Disk`] and
//! [`DiskFile`]. [`OsDisk`] is the real thing; [`crate::DirectDisk`] writes segment logs with direct I/O;
//! [`crate::FaultyDisk`] wraps them so tests can inject torn writes, failed fsyncs, a full disk, unreadable
//! blocks and power cuts without root or special file systems.
//!
//! Log data is read with positioned reads (`pread`) into buffers, never through a memory map: an unreadable
//! sector is then an error the replica fences on and repairs from its peers, not a SIGBUS that kills the
//! broker. Only the small index files are mapped, read-only, and written with `pwrite` (a full disk is an
//! error, not a fault on a page of a sparse file).

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, IoSlice};
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::sync::Arc;

use memmap2::{Mmap, MmapOptions};

/// A file system, narrowed to what the log needs.
pub trait Disk: Send + Sync + fmt::Debug + 'static {
    /// Opens `path` for reading and writing, creating it if `create`.
    fn open(&self, path: &Path, create: bool) -> io::Result<Arc<dyn DiskFile>>;
    /// Opens a segment's log file: appended to at its end, read back with positioned reads, never mapped.
    /// A disk may write these with direct I/O ([`crate::direct`]); by default they are opened like any
    /// other file.
    fn open_log(&self, path: &Path, create: bool) -> io::Result<Arc<dyn DiskFile>> {
        self.open(path, create)
    }
    /// Removes a file.
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Atomically renames a file.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Makes the entries of a directory (creations, renames, removals) durable.
    fn sync_dir(&self, path: &Path) -> io::Result<()>;
    /// Creates a directory and its parents.
    fn create_dir_all(&self, path: &Path) -> io::Result<()>;
    /// Removes a directory and everything in it.
    fn remove_dir_all(&self, path: &Path) -> io::Result<()>;
    /// The file names (not paths) in a directory.
    fn list(&self, path: &Path) -> io::Result<Vec<String>>;
}

/// One open file.
#[allow(clippy::len_without_is_empty)] // a file's emptiness is an I/O question too: len() answers it
pub trait DiskFile: Send + Sync + fmt::Debug {
    /// Writes all of `bufs` at `offset`, or fails (a failed write may have written a prefix: a torn write).
    fn write_all_vectored_at(&self, bufs: &[IoSlice<'_>], offset: u64) -> io::Result<()>;
    /// Reads exactly `buf.len()` bytes at `offset`.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// fdatasync: makes written data durable.
    fn sync_data(&self) -> io::Result<()>;
    /// Sets the file length.
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// The file length.
    fn len(&self) -> io::Result<u64>;
    /// Maps the whole file read-only (indexes only: log data is read with `read_exact_at`). The file is not
    /// shrunk while the map lives.
    fn map_read(&self) -> io::Result<Mmap>;
}

/// Creates directory `dir` and its missing parents, and makes each new entry durable: POSIX leaves a new
/// directory's entry in its parent undurable until the parent is fsynced, and a partition directory lost in
/// a power cut would come back empty (term and vote forgotten).
pub fn create_dir_durable(disk: &dyn Disk, dir: &Path) -> io::Result<()> {
    let mut new = Vec::new();
    let mut p = Some(dir);
    while let Some(d) = p.filter(|d| !d.as_os_str().is_empty() && !d.exists()) {
        new.push(d.to_owned());
        p = d.parent();
    }
    if new.is_empty() {
        return Ok(());
    }
    disk.create_dir_all(dir)?;
    for d in new.iter().rev() {
        let parent = d.parent().filter(|p| !p.as_os_str().is_empty());
        disk.sync_dir(parent.unwrap_or(Path::new(".")))?;
    }
    Ok(())
}

/// Opens `path` for reading and writing (never truncated), creating it if `create`.
pub(crate) fn open_read_write(path: &Path, create: bool) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(create)
        .truncate(false)
        .open(path)
}

/// The operating system's file system.
#[derive(Debug, Default, Clone, Copy)]
pub struct OsDisk;

#[derive(Debug)]
struct OsFile {
    file: File,
}

impl Disk for OsDisk {
    fn open(&self, path: &Path, create: bool) -> io::Result<Arc<dyn DiskFile>> {
        Ok(Arc::new(OsFile {
            file: open_read_write(path, create)?,
        }))
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }
    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        File::open(path)?.sync_all()
    }
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        std::fs::create_dir_all(path)
    }
    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_dir_all(path)
    }
    fn list(&self, path: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for e in std::fs::read_dir(path)? {
            if let Some(n) = e?.file_name().to_str() {
                names.push(n.to_owned());
            }
        }
        names.sort();
        Ok(names)
    }
}

/// Largest number of buffers one `pwritev` takes (Linux's IOV_MAX).
const IOV_MAX: usize = 1024;

impl DiskFile for OsFile {
    fn write_all_vectored_at(&self, bufs: &[IoSlice<'_>], offset: u64) -> io::Result<()> {
        let mut offset = offset;
        let mut owned: Vec<IoSlice<'_>> = bufs.iter().filter(|b| !b.is_empty()).copied().collect();
        let mut slices: &mut [IoSlice<'_>] = &mut owned;
        while !slices.is_empty() {
            let n = slices.len().min(IOV_MAX);
            // SAFETY: IoSlice is ABI-compatible with iovec; the fd is open for writing for self's lifetime.
            let written = unsafe {
                libc::pwritev(
                    self.file.as_raw_fd(),
                    slices.as_ptr().cast::<libc::iovec>(),
                    n as libc::c_int,
                    offset as libc::off_t,
                )
            };
            if written < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if written == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "pwritev wrote nothing",
                ));
            }
            offset += written as u64;
            IoSlice::advance_slices(&mut slices, written as usize);
        }
        Ok(())
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.file.sync_data()
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.file.set_len(len)
    }
    fn len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }
    fn map_read(&self) -> io::Result<Mmap> {
        // SAFETY: an index file is only written with pwrite by the one task that owns its segment, and is
        // unmapped before it is shrunk; readers only touch entries below the count written.
        unsafe { MmapOptions::new().map(&self.file) }
    }
}
