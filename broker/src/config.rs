//! Broker settings. `ferryd` fills them from flags and `FERRY_*` environment variables.

use std::collections::BTreeMap;
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
    /// Peer listener (broker-to-broker Raft traffic).
    pub peer_listen: SocketAddr,
    /// The initial voters: broker id → host:port of its peer listener, this broker included. Empty: a
    /// cluster of one.
    pub peers: BTreeMap<u64, String>,
    /// host:port other brokers reach this broker's peer listener at.
    pub peer_advertise: String,
    /// Most partition replicas this broker hosts (each holds file descriptors, index maps, a Raft group
    /// and caches): topic creation refuses a placement past it.
    pub partitions_max: usize,
    /// Bytes of publish requests this broker holds at once, decoded and queued until they are acknowledged
    /// (more wait: backpressure, not memory growth).
    pub inflight_bytes_max: u64,
    /// Most open client connections; more are closed at once.
    pub connections_max: usize,
    /// A broker not among the initial voters asks the controller to add it (what `ferry cluster
    /// add-broker` does) until it is a member: a StatefulSet scale-up joins on its own.
    pub auto_join: bool,
    /// Segment logs are written with direct I/O (`ferry_storage::DirectDisk`).
    pub direct_io: bool,
    /// Named client listeners besides the main one: name → bind address.
    pub listeners: BTreeMap<String, SocketAddr>,
    /// Named listeners' advertised host:port (filled once they are bound): what a client that came in
    /// on one is told for this broker.
    pub listener_advertise: BTreeMap<String, String>,
    /// TLS for every listener and every connection to another broker; `None`: plaintext.
    pub tls: Option<std::sync::Arc<crate::tls::Tls>>,
    /// Who clients are (tokens) and whether ACLs are enforced.
    pub auth: AuthConfig,
}

/// Authentication and authorization settings (docs/security.md).
#[derive(Debug, Clone, Default)]
pub struct AuthConfig {
    /// Enforce ACLs: nothing is allowed without a matching allow, except to superusers and brokers.
    pub authorization: bool,
    /// Principals allowed everything (`User:admin`).
    pub superusers: std::collections::BTreeSet<String>,
    /// The SHA-256 of each static bearer token, and the principal it stands for.
    pub tokens: BTreeMap<[u8; 32], String>,
    /// The verifier of signed JWT bearer tokens, when keys are configured.
    pub jwt: Option<std::sync::Arc<crate::jwt::Jwt>>,
    /// Byte rates per principal (responses past them are delayed).
    pub quotas: crate::quota::QuotaConfig,
}

/// Default [`BrokerConfig::connections_max`].
pub const CONNECTIONS_MAX_DEFAULT: usize = 4_096;

/// Default [`BrokerConfig::partitions_max`].
pub const PARTITIONS_MAX_DEFAULT: usize = 4_096;
/// Open files each segment of a replica keeps (its log, offset index and time index), and each replica once
/// more besides: 4 for a replica of one segment (`benches/scripts/scale.sh` counts them).
pub const FILES_PER_SEGMENT: u64 = 3;
pub const FILES_PER_REPLICA: u64 = 1;
/// Open files a broker uses besides replicas and client connections (listeners, peer links, the runtime).
pub const FILES_RESERVE: u64 = 256;

/// The fewest open files a broker needs to host `partitions_max` replicas (one segment each: more segments
/// need more) and `connections_max` client connections at once.
pub fn open_files_needed(partitions_max: usize, connections_max: usize) -> u64 {
    let replicas = partitions_max as u64 * (FILES_PER_SEGMENT + FILES_PER_REPLICA);
    replicas + connections_max as u64 + FILES_RESERVE
}

/// Default [`BrokerConfig::inflight_bytes_max`] (bytes).
pub const INFLIGHT_BYTES_MAX_DEFAULT: u64 = 512 * 1024 * 1024;

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
            peer_listen: SocketAddr::from(([127, 0, 0, 1], 7401)),
            peers: BTreeMap::new(),
            peer_advertise: "127.0.0.1:7401".into(),
            partitions_max: PARTITIONS_MAX_DEFAULT,
            inflight_bytes_max: INFLIGHT_BYTES_MAX_DEFAULT,
            connections_max: CONNECTIONS_MAX_DEFAULT,
            auto_join: false,
            direct_io: false,
            listeners: BTreeMap::new(),
            listener_advertise: BTreeMap::new(),
            tls: None,
            auth: AuthConfig::default(),
        }
    }

    /// Ids of the controller's initial voters, sorted. A broker not among them (one added later) starts
    /// its controller replica from the same configuration and learns the rest from the log.
    pub fn voters(&self) -> Vec<u64> {
        if self.peers.is_empty() {
            vec![self.node_id]
        } else {
            self.peers.keys().copied().collect()
        }
    }
}

/// Parses `--peers`: `ID=HOST:PORT[,ID=HOST:PORT...]`.
pub fn parse_peers(s: &str) -> Result<BTreeMap<u64, String>, String> {
    let mut peers = BTreeMap::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (id, addr) = part
            .split_once('=')
            .ok_or_else(|| format!("`{part}` is not ID=HOST:PORT"))?;
        let id: u64 = id
            .trim()
            .parse()
            .map_err(|_| format!("`{id}` is not a broker id"))?;
        if id == 0 {
            return Err("broker ids start at 1".into());
        }
        let addr = addr.trim();
        let port_ok = addr
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
        if !port_ok {
            return Err(format!("`{addr}` is not HOST:PORT"));
        }
        if peers.insert(id, addr.to_owned()).is_some() {
            return Err(format!("broker id {id} appears twice"));
        }
    }
    Ok(peers)
}

/// The broker id a StatefulSet pod gets from its hostname: `ferry-N` → N + 1.
pub fn node_id_from_hostname(hostname: &str) -> Option<u64> {
    let (_, ordinal) = hostname.trim().rsplit_once('-')?;
    ordinal.parse::<u64>().ok().map(|n| n + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_files_needed_counts_replicas_connections_and_a_reserve() {
        assert_eq!(open_files_needed(0, 0), FILES_RESERVE);
        assert_eq!(open_files_needed(1000, 0), 4000 + 256);
        // The defaults need more than the 20,000 files some hosts allow.
        let defaults = open_files_needed(PARTITIONS_MAX_DEFAULT, CONNECTIONS_MAX_DEFAULT);
        assert_eq!(defaults, 4096 * 4 + 4096 + 256);
    }

    #[test]
    fn peers_and_hostnames() {
        let p = parse_peers("1=127.0.0.1:7401, 2=b:7401,3=[::1]:9").unwrap();
        assert_eq!(p.len(), 3);
        assert_eq!(p[&2], "b:7401");
        assert!(parse_peers("1=x").is_err());
        assert!(parse_peers("0=a:1").is_err());
        assert!(parse_peers("1=a:1,1=b:2").is_err());
        assert!(parse_peers("one=a:1").is_err());
        assert_eq!(node_id_from_hostname("ferry-0"), Some(1));
        assert_eq!(node_id_from_hostname("my-ferry-12\n"), Some(13));
        assert_eq!(node_id_from_hostname("ferry"), None);
    }
}
