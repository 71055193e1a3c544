//! The storage seam: every byte the broker reads from or writes to disk goes through [`Disk`] and
//! [`DiskFile`]. [`OsDisk`] is the real thing; [`FaultyDisk`] wraps it so tests can inject torn writes, failed
//! fsyncs and a full disk without root or special file systems.

use std::collections::HashMap;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, IoSlice};
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use memmap2::{Mmap, MmapMut, MmapOptions};

/// A file system, narrowed to what the log needs.
pub trait Disk: Send + Sync + fmt::Debug + 'static {
    /// Opens `path` for reading and writing, creating it if `create`.
    fn open(&self, path: &Path, create: bool) -> io::Result<Arc<dyn DiskFile>>;
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
    /// Maps `len` bytes read-only. `len` may exceed the file: bytes past the end must not be touched until
    /// the file has grown over them (the log only reads what it wrote).
    fn map_read(&self, len: usize) -> io::Result<Mmap>;
    /// Maps the whole file read-write (indexes).
    fn map_write(&self) -> io::Result<MmapMut>;
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
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(create)
            .truncate(false)
            .open(path)?;
        Ok(Arc::new(OsFile { file }))
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
    fn map_read(&self, len: usize) -> io::Result<Mmap> {
        // SAFETY: the log never truncates below what readers were handed (only uncommitted tails on followers,
        // which no reader holds) and never writes over bytes it already handed out.
        unsafe { MmapOptions::new().len(len).map(&self.file) }
    }
    fn map_write(&self) -> io::Result<MmapMut> {
        // SAFETY: index files are written only through this map, by the one task that owns the segment.
        unsafe { MmapOptions::new().map_mut(&self.file) }
    }
}

/// Faults a [`FaultyDisk`] injects, shared with the test that drives it.
#[derive(Debug, Default)]
pub struct Faults {
    /// Every fsync fails with EIO.
    pub fail_fsync: AtomicBool,
    /// Bytes that may still be written before writes fail with ENOSPC (`u64::MAX`: unlimited).
    pub space_left_bytes: AtomicU64,
    /// When set, the next write writes only this many bytes of its data, then fails with EIO (a torn write).
    pub torn_write_bytes: AtomicU64,
    /// Number of fsyncs done (for assertions on group commit).
    pub fsyncs: AtomicU64,
    /// Per file written through this disk: (length made durable by its last fsync, length now). What lies
    /// between is only in the page cache, which [`Faults::power_cut`] throws away.
    written: Mutex<HashMap<PathBuf, (u64, u64)>>,
}

impl Faults {
    /// No faults.
    pub fn new() -> Arc<Self> {
        Arc::new(Faults {
            fail_fsync: AtomicBool::new(false),
            space_left_bytes: AtomicU64::new(u64::MAX),
            torn_write_bytes: AtomicU64::new(u64::MAX),
            fsyncs: AtomicU64::new(0),
            written: Mutex::new(HashMap::new()),
        })
    }

    /// A power cut, as LazyFS's `clear-cache` makes one: every file written through this disk loses what
    /// was written after its last fsync, except a prefix of that (`keep` picks its length from the durable
    /// and the current length), since some dirty pages may have reached the disk: a torn tail. Call after
    /// the broker stopped without a clean shutdown (its task aborted). Files renamed since are skipped.
    pub fn power_cut(&self, keep: impl Fn(u64, u64) -> u64) -> io::Result<()> {
        let mut written = self.written.lock();
        for (path, (durable, len)) in written.iter_mut() {
            if *len <= *durable || !path.exists() {
                continue;
            }
            let kept = keep(*durable, *len).clamp(*durable, *len);
            OpenOptions::new().write(true).open(path)?.set_len(kept)?;
            tracing::debug!(path = %path.display(), durable = *durable, len = *len, kept, "power cut");
            *len = kept;
            *durable = kept;
        }
        Ok(())
    }

    fn note_write(&self, path: &Path, end: u64) {
        let mut written = self.written.lock();
        let e = written.entry(path.to_owned()).or_insert((0, 0));
        e.1 = e.1.max(end);
    }

    fn note_sync(&self, path: &Path, len: u64) {
        let mut written = self.written.lock();
        let e = written.entry(path.to_owned()).or_insert((0, 0));
        *e = (len, len);
    }

    fn note_set_len(&self, path: &Path, len: u64) {
        let mut written = self.written.lock();
        let e = written.entry(path.to_owned()).or_insert((len, len));
        *e = (e.0.min(len), len);
    }
}

/// A [`Disk`] over the real one that injects the [`Faults`] it shares with a test.
#[derive(Debug, Clone)]
pub struct FaultyDisk {
    pub faults: Arc<Faults>,
}

#[derive(Debug)]
struct FaultyFile {
    inner: Arc<dyn DiskFile>,
    faults: Arc<Faults>,
    path: PathBuf,
}

impl Disk for FaultyDisk {
    fn open(&self, path: &Path, create: bool) -> io::Result<Arc<dyn DiskFile>> {
        let inner = OsDisk.open(path, create)?;
        Ok(Arc::new(FaultyFile {
            inner,
            faults: self.faults.clone(),
            path: path.to_owned(),
        }))
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        OsDisk.remove_file(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        OsDisk.rename(from, to)
    }
    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        if self.faults.fail_fsync.load(Ordering::SeqCst) {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
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

impl DiskFile for FaultyFile {
    fn write_all_vectored_at(&self, bufs: &[IoSlice<'_>], offset: u64) -> io::Result<()> {
        let total: u64 = bufs.iter().map(|b| b.len() as u64).sum();
        let torn = self
            .faults
            .torn_write_bytes
            .swap(u64::MAX, Ordering::SeqCst);
        let space = self.faults.space_left_bytes.load(Ordering::SeqCst);
        let allowed = torn.min(space);
        if allowed >= total {
            if space != u64::MAX {
                self.faults
                    .space_left_bytes
                    .fetch_sub(total, Ordering::SeqCst);
            }
            self.faults.note_write(&self.path, offset + total);
            return self.inner.write_all_vectored_at(bufs, offset);
        }
        // Write the prefix that "made it", then fail as the kernel would.
        let mut prefix = Vec::with_capacity(allowed as usize);
        for b in bufs {
            let room = allowed as usize - prefix.len();
            prefix.extend_from_slice(&b[..b.len().min(room)]);
        }
        self.faults
            .note_write(&self.path, offset + prefix.len() as u64);
        self.inner
            .write_all_vectored_at(&[IoSlice::new(&prefix)], offset)?;
        if space != u64::MAX {
            self.faults.space_left_bytes.store(0, Ordering::SeqCst);
        }
        let errno = if torn < space {
            libc::EIO
        } else {
            libc::ENOSPC
        };
        tracing::debug!(path = %self.path.display(), allowed, total, "injected write fault");
        Err(io::Error::from_raw_os_error(errno))
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.inner.read_exact_at(buf, offset)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.faults.fsyncs.fetch_add(1, Ordering::SeqCst);
        if self.faults.fail_fsync.load(Ordering::SeqCst) {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        self.inner.sync_data()?;
        self.faults.note_sync(&self.path, self.inner.len()?);
        Ok(())
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.inner.set_len(len)?;
        self.faults.note_set_len(&self.path, len);
        Ok(())
    }
    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }
    fn map_read(&self, len: usize) -> io::Result<Mmap> {
        self.inner.map_read(len)
    }
    fn map_write(&self) -> io::Result<MmapMut> {
        self.inner.map_write()
    }
}
