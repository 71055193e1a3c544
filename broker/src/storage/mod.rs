//! Partition storage: the segment log and the seam to the disk.
//!
//! Layers, bottom up: [`disk`] (the I/O seam) → [`index`] → [`segment`] → [`checkpoint`] → [`log`].

pub mod checkpoint;
pub mod disk;
pub mod error;
pub mod index;
pub mod log;
pub mod segment;

pub use disk::{Disk, DiskFile, Faults, FaultyDisk, OsDisk};
pub use error::StorageError;
pub use log::{Append, LogConfig, PartitionLog};

#[cfg(test)]
mod tests;
