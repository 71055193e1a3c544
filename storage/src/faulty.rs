//! [`FaultyDisk`]: a [`Disk`] over the real one that injects the faults a test sets in [`Faults`] (failed or
//! slow fsyncs, a full disk, torn writes, unreadable blocks, power cuts), without root or special file
//! systems. It sits above [`crate::direct`], so that its log files can be written with direct I/O as
//! [`crate::DirectDisk`] writes them.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, IoSlice};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use memmap2::Mmap;
use parking_lot::{Mutex, RwLock};

use super::direct::DirectDisk;
use super::disk::{Disk, DiskFile, OsDisk};

/// A rename not yet made durable: (directory, target, what the target held before, if anything).
type PendingRename = (PathBuf, PathBuf, Option<Vec<u8>>);

/// Faults a [`FaultyDisk`] injects, shared with the test that drives it.
#[derive(Debug, Default)]
pub struct Faults {
    /// Every fsync fails with EIO.
    pub fail_fsync: AtomicBool,
    /// Every fsync fails with ENOSPC: a direct-I/O log writes its staged bytes at the fsync, so a full
    /// disk shows there.
    pub fsync_no_space: AtomicBool,
    /// Each fsync first waits a spread of times below this many milliseconds (0: none): a slow, uneven disk,
    /// so that replicas fall out of step and a power cut finds some of them one fsync behind the others.
    pub fsync_delay_max_ms: AtomicU64,
    /// Bytes that may still be written before writes fail with ENOSPC (`u64::MAX`: unlimited).
    pub space_left_bytes: AtomicU64,
    /// When set, the next write writes only this many bytes of its data, then fails with EIO (a torn write).
    pub torn_write_bytes: AtomicU64,
    /// Number of fsyncs done (for assertions on group commit).
    pub fsyncs: AtomicU64,
    /// Log files are written with direct I/O, as [`crate::DirectDisk`] writes them.
    pub direct_logs: AtomicBool,
    /// Byte ranges of files that read back as EIO (a latent sector error).
    unreadable: Mutex<Vec<(PathBuf, std::ops::Range<u64>)>>,
    /// Renames not yet made durable by a directory fsync: (directory, target, what the target held before,
    /// if anything). A power cut undoes them.
    renames: Mutex<Vec<PendingRename>>,
    /// Files and directories created whose parent directory was not fsynced since: (parent, path). A power
    /// cut removes them (their directory entry never reached the disk).
    created: Mutex<Vec<(PathBuf, PathBuf)>>,
    /// Per file written through this disk: (length made durable by its last fsync, length now). What lies
    /// between is only in the page cache, which [`Faults::power_cut`] throws away.
    written: Mutex<HashMap<PathBuf, (u64, u64)>>,
    /// Every change to the disk holds this shared; a power cut of a live process holds it exclusively and
    /// sets it, after which every change fails with EIO (the machine is off).
    off: RwLock<bool>,
}

impl Faults {
    /// No faults.
    pub fn new() -> Arc<Self> {
        Arc::new(Faults {
            fail_fsync: AtomicBool::new(false),
            fsync_no_space: AtomicBool::new(false),
            fsync_delay_max_ms: AtomicU64::new(0),
            space_left_bytes: AtomicU64::new(u64::MAX),
            torn_write_bytes: AtomicU64::new(u64::MAX),
            fsyncs: AtomicU64::new(0),
            direct_logs: AtomicBool::new(false),
            written: Mutex::new(HashMap::new()),
            unreadable: Mutex::new(Vec::new()),
            renames: Mutex::new(Vec::new()),
            created: Mutex::new(Vec::new()),
            off: RwLock::new(false),
        })
    }

    /// Holds off a power cut for one change to the disk; EIO once the power is off.
    fn on(&self) -> io::Result<parking_lot::RwLockReadGuard<'_, bool>> {
        let g = self.off.read();
        if *g {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        Ok(g)
    }

    /// A power cut of a live process, in two halves so it works across processes: this half, in the
    /// broker, waits for the disk changes in flight, turns the power off (every later change fails) and
    /// writes what a power cut would lose to `journal`; the caller then exits at once, and the test applies
    /// the journal to the files with [`apply_power_cut`] before the broker starts again.
    pub fn power_off_to_journal(&self, journal: &Path) -> io::Result<()> {
        let mut off = self.off.write();
        *off = true;
        let mut out = String::new();
        for (path, (durable, _)) in self.written.lock().iter() {
            out.push_str(&format!("file {durable} {}\n", path.display()));
        }
        for (_, to, before) in self.renames.lock().iter() {
            let before = before.as_ref().map_or("-".to_owned(), |b| hex(b));
            out.push_str(&format!("rename {before} {}\n", to.display()));
        }
        for (_, path) in self.created.lock().iter() {
            out.push_str(&format!("created {}\n", path.display()));
        }
        let mut f = File::create(journal)?;
        std::io::Write::write_all(&mut f, out.as_bytes())?;
        f.sync_all()
    }

    /// Waits before an fsync as `fsync_delay_max_ms` says, outside the power lock: a power cut during the
    /// wait finds the fsync not done.
    fn delay_fsync(&self) {
        let max = self.fsync_delay_max_ms.load(Ordering::Relaxed);
        if max == 0 {
            return;
        }
        // A spread of waits without a random source: the fsync count through a multiplicative hash.
        let n = self
            .fsyncs
            .load(Ordering::Relaxed)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15);
        std::thread::sleep(std::time::Duration::from_millis((n >> 32) % max));
    }

    fn note_created(&self, path: &Path) {
        let parent = path.parent().unwrap_or(Path::new(".")).to_owned();
        self.created.lock().push((parent, path.to_owned()));
    }

    /// Makes bytes `range` of the file at `path` read back as EIO from now on.
    pub fn make_unreadable(&self, path: &Path, range: std::ops::Range<u64>) {
        self.unreadable.lock().push((path.to_owned(), range));
    }

    /// A block rewritten (or cut away) reads back again, as a disk remaps a bad sector on write.
    fn note_rewritten(&self, path: &Path, range: std::ops::Range<u64>) {
        self.unreadable
            .lock()
            .retain(|(p, r)| !(p == path && r.start < range.end && range.start < r.end));
    }

    fn is_unreadable(&self, path: &Path, range: std::ops::Range<u64>) -> bool {
        self.unreadable
            .lock()
            .iter()
            .any(|(p, r)| p == path && r.start < range.end && range.start < r.end)
    }

    /// A power cut, as LazyFS's `clear-cache` makes one: every file written through this disk loses what
    /// was written after its last fsync, except a prefix of that (`keep` picks its length from the durable
    /// and the current length), since some dirty pages may have reached the disk: a torn tail. Call after
    /// the broker stopped without a clean shutdown (its task aborted). Renames whose directory was not
    /// fsynced since are undone first (the target gets back what it held), as a journal replay would.
    pub fn power_cut(&self, keep: impl Fn(u64, u64) -> u64) -> io::Result<()> {
        let renames: Vec<(PathBuf, Option<Vec<u8>>)> = self
            .renames
            .lock()
            .drain(..)
            .map(|(_, to, before)| (to, before))
            .collect();
        let created: Vec<PathBuf> = self.created.lock().drain(..).map(|(_, p)| p).collect();
        let mut written = self.written.lock();
        for (to, _) in &renames {
            written.remove(to);
        }
        let durable: Vec<(PathBuf, u64)> =
            written.iter().map(|(p, (d, _))| (p.clone(), *d)).collect();
        let lost = Lost {
            renames,
            created,
            durable,
        };
        lost.apply(keep)?;
        // What is left is durable now.
        for (path, w) in written.iter_mut() {
            if let Ok(m) = std::fs::metadata(path) {
                *w = (m.len(), m.len());
            }
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

impl FaultyDisk {
    fn open_file(&self, path: &Path, create: bool, log: bool) -> io::Result<Arc<dyn DiskFile>> {
        let new = create && !path.exists();
        let _on = self.faults.on()?;
        let inner = if log && self.faults.direct_logs.load(Ordering::Relaxed) {
            DirectDisk.open_log(path, create)?
        } else {
            OsDisk.open(path, create)?
        };
        if new {
            self.faults.note_created(path);
        } else {
            // A file from before this disk saw it is as durable as it is long (a power cut before it was
            // applied to it already).
            let len = inner.len()?;
            self.faults
                .written
                .lock()
                .entry(path.to_owned())
                .or_insert((len, len));
        }
        Ok(Arc::new(FaultyFile {
            inner,
            faults: self.faults.clone(),
            path: path.to_owned(),
        }))
    }
}

impl Disk for FaultyDisk {
    fn open(&self, path: &Path, create: bool) -> io::Result<Arc<dyn DiskFile>> {
        self.open_file(path, create, false)
    }
    fn open_log(&self, path: &Path, create: bool) -> io::Result<Arc<dyn DiskFile>> {
        self.open_file(path, create, true)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let _on = self.faults.on()?;
        OsDisk.remove_file(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let _on = self.faults.on()?;
        let before = std::fs::read(to).ok();
        OsDisk.rename(from, to)?;
        let dir = to.parent().unwrap_or(Path::new(".")).to_owned();
        self.faults
            .renames
            .lock()
            .push((dir, to.to_owned(), before));
        // The renamed file is durable as far as it was fsynced under its old name.
        let mut written = self.faults.written.lock();
        if let Some(w) = written.remove(from) {
            written.insert(to.to_owned(), w);
        }
        Ok(())
    }
    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        let _on = self.faults.on()?;
        if self.faults.fail_fsync.load(Ordering::SeqCst) {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        OsDisk.sync_dir(path)?;
        self.faults.renames.lock().retain(|(dir, _, _)| dir != path);
        self.faults.created.lock().retain(|(dir, _)| dir != path);
        Ok(())
    }
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        let _on = self.faults.on()?;
        let mut new = Vec::new();
        let mut p = path;
        while !p.exists() {
            new.push(p.to_owned());
            match p.parent() {
                Some(parent) => p = parent,
                None => break,
            }
        }
        OsDisk.create_dir_all(path)?;
        for d in new.iter().rev() {
            self.faults.note_created(d);
        }
        Ok(())
    }
    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        let _on = self.faults.on()?;
        OsDisk.remove_dir_all(path)
    }
    fn list(&self, path: &Path) -> io::Result<Vec<String>> {
        OsDisk.list(path)
    }
}

impl DiskFile for FaultyFile {
    fn write_all_vectored_at(&self, bufs: &[IoSlice<'_>], offset: u64) -> io::Result<()> {
        let _on = self.faults.on()?;
        let total: u64 = bufs.iter().map(|b| b.len() as u64).sum();
        let torn = self
            .faults
            .torn_write_bytes
            .swap(u64::MAX, Ordering::SeqCst);
        let space = self.faults.space_left_bytes.load(Ordering::SeqCst);
        let allowed = torn.min(space);
        self.faults
            .note_rewritten(&self.path, offset..offset + total);
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
        if self
            .faults
            .is_unreadable(&self.path, offset..offset + buf.len() as u64)
        {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        self.inner.read_exact_at(buf, offset)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.faults.delay_fsync();
        let _on = self.faults.on()?;
        self.faults.fsyncs.fetch_add(1, Ordering::SeqCst);
        if self.faults.fail_fsync.load(Ordering::SeqCst) {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        if self.faults.fsync_no_space.load(Ordering::SeqCst) {
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        // What the fsync covers is what was written before it: bytes appended while it runs are not.
        let len = self.inner.len()?;
        self.inner.sync_data()?;
        self.faults.note_sync(&self.path, len);
        Ok(())
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        let _on = self.faults.on()?;
        self.inner.set_len(len)?;
        self.faults.note_set_len(&self.path, len);
        self.faults.note_rewritten(&self.path, len..u64::MAX);
        Ok(())
    }
    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }
    fn map_read(&self) -> io::Result<Mmap> {
        self.inner.map_read()
    }
}

/// What a power cut loses: renames and new directory entries whose directory was not fsynced since, and
/// every byte written past each file's durable length.
#[derive(Debug, Default)]
struct Lost {
    /// Renamed-to paths and what each held before (none: it did not exist).
    renames: Vec<(PathBuf, Option<Vec<u8>>)>,
    created: Vec<PathBuf>,
    /// Files written, each with the length its last fsync made durable.
    durable: Vec<(PathBuf, u64)>,
}

impl Lost {
    /// Undoes renames (latest first: the target gets back what it held, as a journal replay would), removes
    /// entries never made durable, then cuts each file to its durable length plus the prefix of the rest
    /// that `keep` picks from (durable, current length): some dirty pages may have reached the disk.
    fn apply(&self, keep: impl Fn(u64, u64) -> u64) -> io::Result<()> {
        for (to, before) in self.renames.iter().rev() {
            match before {
                Some(bytes) => std::fs::write(to, bytes)?,
                None => match std::fs::remove_file(to) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                },
            }
            tracing::debug!(path = %to.display(), "power cut undid a rename");
        }
        for path in self.created.iter().rev() {
            let gone = if path.is_dir() {
                std::fs::remove_dir_all(path)
            } else {
                std::fs::remove_file(path)
            };
            match gone {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {
                    tracing::debug!(path = %path.display(), "power cut lost an entry whose directory was not fsynced")
                }
            }
        }
        let renamed: Vec<&PathBuf> = self.renames.iter().map(|(p, _)| p).collect();
        for (path, durable) in &self.durable {
            if renamed.contains(&path) {
                continue;
            }
            let Ok(len) = std::fs::metadata(path).map(|m| m.len()) else {
                continue;
            };
            if len <= *durable {
                continue;
            }
            let kept = keep(*durable, len).clamp(*durable, len);
            OpenOptions::new().write(true).open(path)?.set_len(kept)?;
            tracing::debug!(path = %path.display(), durable, len, kept, "power cut");
        }
        Ok(())
    }

    /// Reads a journal [`Faults::power_off_to_journal`] wrote.
    fn read(journal: &Path) -> io::Result<Lost> {
        let bad = |line: &str| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("bad power-cut journal line: {line}"),
            )
        };
        let mut lost = Lost::default();
        for line in std::fs::read_to_string(journal)?.lines() {
            let (kind, rest) = line.split_once(' ').ok_or_else(|| bad(line))?;
            match kind {
                "file" => {
                    let (len, path) = rest.split_once(' ').ok_or_else(|| bad(line))?;
                    let len = len.parse().map_err(|_| bad(line))?;
                    lost.durable.push((PathBuf::from(path), len));
                }
                "rename" => {
                    let (before, path) = rest.split_once(' ').ok_or_else(|| bad(line))?;
                    let before = match before {
                        "-" => None,
                        h => Some(unhex(h).ok_or_else(|| bad(line))?),
                    };
                    lost.renames.push((PathBuf::from(path), before));
                }
                "created" => lost.created.push(PathBuf::from(rest)),
                _ => return Err(bad(line)),
            }
        }
        Ok(lost)
    }
}

/// Applies the power cut a broker journalled with [`Faults::power_off_to_journal`] (the broker has exited):
/// `keep` as in [`Faults::power_cut`].
pub fn apply_power_cut(journal: &Path, keep: impl Fn(u64, u64) -> u64) -> io::Result<()> {
    Lost::read(journal)?.apply(keep)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}
