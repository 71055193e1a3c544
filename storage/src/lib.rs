//! Partition storage: the segment log and the seam to the disk.
//!
//! Layers, bottom up: [`disk`] (the I/O seam) → [`direct`] (direct-I/O logs) → [`faulty`] (fault injection)
//! → [`reader`] → [`index`] → [`segment`] → [`checkpoint`] and
//! [`durable`] → [`log`] (steady state) and [`open`] (recovery); [`format`] marks a data dir's format.

pub mod checkpoint;
pub mod clock;
pub mod direct;
pub mod disk;
pub mod durable;
pub mod error;
pub mod faulty;
pub mod format;
pub mod index;
pub mod log;
pub mod open;
pub mod reader;
pub mod segment;

pub use clock::{ManualClock, SystemClock, WallClock};
pub use direct::DirectDisk;
pub use disk::{Disk, DiskFile, OsDisk};
pub use error::StorageError;
pub use faulty::{Faults, FaultyDisk};
pub use log::{Append, LogConfig, PartitionLog};
pub use open::{LogDamage, Recovery};

#[cfg(test)]
mod tests;
