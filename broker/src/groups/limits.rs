//! Named limits and intervals of the consumer-group protocol.

/// Longest group name (bytes).
pub const GROUP_NAME_LEN_MAX: usize = 249;
/// How often a member should heartbeat (ms).
pub const HEARTBEAT_INTERVAL_MS: u32 = 500;
