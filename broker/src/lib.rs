//! The Ferry broker.
//!
//! # Layout (lower layers never import higher ones)
//! - [`storage`]: the segment log of a partition, and the disk seam.
pub mod consensus;
pub mod replica;
pub mod storage;
