//! What every part of the run shares: the topic and group under test.

/// The topic the load writes and the checker reads.
pub const TOPIC: &str = "chaos";
/// Its partitions.
pub const PARTITIONS: u32 = 3;
/// The consumer group that reads it.
pub const GROUP: &str = "chaos-readers";
