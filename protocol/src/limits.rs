//! Protocol limits, each with its unit. Brokers may configure lower ones; none may be higher.

/// Largest gRPC message a broker or client decodes or encodes (bytes). Bigger than the largest batch so a
/// publish of one maximal batch plus its envelope fits.
pub const GRPC_MESSAGE_BYTES_MAX: usize = 16 * 1024 * 1024;

/// Default largest record batch a broker accepts (bytes); configurable per broker, at most
/// [`BATCH_BYTES_HARD_MAX`].
pub const BATCH_BYTES_DEFAULT_MAX: u32 = 4 * 1024 * 1024;

/// Absolute largest record batch (bytes): the format could carry more, the broker never accepts more.
pub const BATCH_BYTES_HARD_MAX: u32 = 15 * 1024 * 1024;

/// Largest number of records in one batch.
pub const BATCH_RECORDS_MAX: u32 = 1 << 20;

/// Largest number of partitions of one topic.
pub const TOPIC_PARTITIONS_MAX: u32 = 10_000;

/// Largest fetch response a broker builds (bytes).
pub const FETCH_BYTES_MAX: u32 = 8 * 1024 * 1024;

/// Longest long-poll wait of a fetch (milliseconds).
pub const FETCH_WAIT_MS_MAX: u32 = 30_000;
