//! Broker settings. `ferryd` fills them from flags and `FERRY_*` environment variables.

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::replica::ReplicaConfig;
use crate::storage::LogConfig;

/// Everything a broker needs to start.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    pub node_id: u64,
    pub data_dir: PathBuf,
    /// Client gRPC listener.
    pub listen: SocketAddr,
    /// HTTP listener (health, readiness, metrics).
    pub http_listen: SocketAddr,
    /// host:port clients are told to use for this broker.
    pub advertise: String,
    /// Largest batch accepted (bytes).
    pub batch_bytes_max: u32,
    /// Default log settings of new topics.
    pub log: LogConfig,
    pub replica: ReplicaConfig,
    /// How long a publish may wait for durability by default (ms).
    pub publish_timeout_ms: u64,
}

impl BrokerConfig {
    /// Settings for a broker on the given listeners, with defaults for everything else.
    pub fn new(
        node_id: u64,
        data_dir: PathBuf,
        listen: SocketAddr,
        http_listen: SocketAddr,
    ) -> Self {
        BrokerConfig {
            node_id,
            data_dir,
            listen,
            http_listen,
            advertise: listen.to_string(),
            batch_bytes_max: ferry_protocol::limits::BATCH_BYTES_DEFAULT_MAX,
            log: LogConfig::default(),
            replica: ReplicaConfig {
                node_id,
                ..ReplicaConfig::default()
            },
            publish_timeout_ms: 30_000,
        }
    }
}
