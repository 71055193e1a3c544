//! `ferryd`'s settings, layered by figment: defaults < TOML file (`--config`) < `FERRY_*` environment <
//! flags. Every key is documented in docs/configuration.md; [`Settings`] prints as TOML
//! (`ferryd --print-config`) and reads back to the same settings.

pub mod auth;
pub mod listeners;
pub mod units;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::providers::{Format, Serialized, Toml};
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};
use serde::{Deserialize, Serialize};

use crate::config::{
    BrokerConfig, CONNECTIONS_MAX_DEFAULT, INFLIGHT_BYTES_MAX_DEFAULT, PARTITIONS_MAX_DEFAULT,
};
use crate::replica::FsyncPolicy;
use listeners::Listeners;
use units::{Bytes, Fsync, Millis, Peers, Retain};

/// The environment variables' prefix.
pub const ENV_PREFIX: &str = "FERRY_";

/// `FERRY_*` variables that are not settings (test seams, the config file's own path).
const ENV_NOT_SETTINGS: &[&str] = &["config", "fault_file", "fault_disk", "fault_fsync_delay_ms"];

/// Largest segment a topic may roll at (bytes): past it, one segment file holds too much to re-read on
/// repair (the topic-settings bound, docs/reliability.md H7).
pub const SEGMENT_BYTES_MAX: u64 = 1 << 30;
/// Smallest segment (bytes).
pub const SEGMENT_BYTES_MIN: u64 = 64 * 1024;

/// Every setting of a broker, in the units a person writes them in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Directory holding all of this broker's data.
    pub data_dir: PathBuf,
    /// Client gRPC listener.
    pub listen: SocketAddr,
    /// HTTP listener: health, readiness, metrics.
    pub http_listen: SocketAddr,
    /// Broker-to-broker listener (used with `peers`).
    pub peer_listen: SocketAddr,
    /// This broker's id (≥ 1). Unset: from a hostname ending in `-N` (N + 1), else 1.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_id: Option<u64>,
    /// Host or host:port clients are told to use for this broker. Unset: the client listener's address,
    /// which then must not be unspecified (`0.0.0.0`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub advertise: Option<String>,
    /// The cluster's initial voters (peer ports); empty: a cluster of one.
    pub peers: Peers,
    /// Largest record batch accepted.
    pub batch_bytes_max: Bytes,
    /// Default segment size of new topics.
    pub segment_bytes: Bytes,
    /// Default retention of new topics by size, per partition.
    pub retention_bytes: Retain<Bytes>,
    /// Default retention of new topics by age (the key keeps its historic name; any duration unit works).
    pub retention_ms: Retain<Millis>,
    /// When to fsync.
    pub fsync: Fsync,
    /// Write segment logs with direct I/O, from the broker's own buffers rather than the page cache
    /// (storage/src/direct): less CPU per byte; reads of older data come from the disk. Needs
    /// `fsync = batch`.
    pub direct_io: bool,
    /// Most partition replicas this broker hosts.
    pub partitions_max: usize,
    /// Most open client connections.
    pub connections_max: usize,
    /// Bytes of publishes held at once until acknowledged.
    pub inflight_bytes_max: Bytes,
    /// Log filter (tracing's EnvFilter syntax).
    pub log: String,
    /// A broker not among `peers` adds itself to the cluster (as `ferry cluster add-broker` would).
    pub auto_join: bool,
    /// Named client listeners besides the main one (`listen`, `advertise`, named `internal`), each with
    /// its own bind and advertised address (settings/listeners.rs).
    #[serde(skip_serializing_if = "Listeners::is_empty")]
    pub listeners: Listeners,
    /// This broker's certificate chain (PEM, leaf first). With `tls_key` and `tls_ca`, every listener
    /// speaks TLS and the peer port requires mTLS (docs/security.md).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of `tls_cert` (PEM).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    /// The cluster's CA bundle (PEM): other brokers' certificates must chain to it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_ca: Option<PathBuf>,
    /// CA bundle of client certificates (PEM): set, every client must present a certificate (mTLS).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_client_ca: Option<PathBuf>,
    /// How a broker's certificate names its id: a DNS or URI SAN (or the common name) equal to this
    /// template with `{id}` (or `{ordinal}`, id - 1) filled in.
    pub tls_peer_name: String,
    /// How often the TLS files are checked for changes (a changed file is used from the next handshake).
    pub tls_reload_ms: Millis,
    /// Enforce ACLs: with it, nothing is allowed without a matching allow, except to superusers and
    /// brokers (docs/security.md). In a cluster it needs TLS: brokers prove who they are by certificate.
    pub authorization: bool,
    /// Principals allowed everything, e.g. `User:admin`.
    #[serde(skip_serializing_if = "auth::List::is_empty")]
    pub superusers: auth::List,
    /// Static bearer tokens, each `PRINCIPAL=sha256:HEX` (the token's SHA-256, never the token).
    #[serde(skip_serializing_if = "auth::List::is_empty")]
    pub auth_tokens: auth::List,
    /// PEM public keys (RSA, EC or Ed25519) that sign JWT bearer tokens.
    #[serde(skip_serializing_if = "auth::List::is_empty")]
    pub jwt_public_keys: auth::List,
    /// The `iss` every JWT must carry.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwt_issuer: Option<String>,
    /// The `aud` every JWT must carry (this cluster: a token for another is refused).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwt_audience: Option<String>,
    /// Clock skew allowed on a JWT's `exp` and `nbf`.
    pub jwt_leeway_ms: Millis,
    /// Byte rates per principal: `PRINCIPAL=publish:RATE` or `=fetch:RATE` (`*`: everyone without its
    /// own); responses past them are delayed.
    #[serde(skip_serializing_if = "auth::List::is_empty")]
    pub quotas: auth::List,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            data_dir: PathBuf::from("./ferry-data"),
            listen: SocketAddr::from(([127, 0, 0, 1], 7400)),
            http_listen: SocketAddr::from(([127, 0, 0, 1], 7480)),
            peer_listen: SocketAddr::from(([127, 0, 0, 1], 7401)),
            node_id: None,
            advertise: None,
            peers: Peers::default(),
            batch_bytes_max: Bytes(u64::from(ferry_protocol::limits::BATCH_BYTES_DEFAULT_MAX)),
            segment_bytes: Bytes(256 << 20),
            retention_bytes: Retain::Forever,
            retention_ms: Retain::Up(Millis(7 * 24 * 3600 * 1000)),
            fsync: Fsync(FsyncPolicy::PerBatch),
            direct_io: false,
            partitions_max: PARTITIONS_MAX_DEFAULT,
            connections_max: CONNECTIONS_MAX_DEFAULT,
            inflight_bytes_max: Bytes(INFLIGHT_BYTES_MAX_DEFAULT),
            log: "info,raft=warn".into(),
            auto_join: false,
            listeners: Listeners::default(),
            tls_cert: None,
            tls_key: None,
            tls_ca: None,
            tls_client_ca: None,
            tls_peer_name: crate::tls::names::PEER_NAME_DEFAULT.into(),
            tls_reload_ms: Millis(TLS_RELOAD_MS_DEFAULT),
            authorization: false,
            superusers: auth::List::default(),
            auth_tokens: auth::List::default(),
            jwt_public_keys: auth::List::default(),
            jwt_issuer: None,
            jwt_audience: None,
            jwt_leeway_ms: Millis(JWT_LEEWAY_MS_DEFAULT),
            quotas: auth::List::default(),
        }
    }
}

/// Default `jwt_leeway_ms`: a minute of clock skew between the token issuer and the brokers.
pub const JWT_LEEWAY_MS_DEFAULT: u64 = 60_000;
/// Most `jwt_leeway_ms`.
const JWT_LEEWAY_MS_MAX: u64 = 10 * 60_000;

/// Default `tls_reload_ms`: a rotated certificate is in use within 10 s.
pub const TLS_RELOAD_MS_DEFAULT: u64 = 10_000;
/// Shortest `tls_reload_ms`: each check reads the files' metadata.
const TLS_RELOAD_MS_MIN: u64 = 100;

/// A setting that cannot be used: the key and why, on one line.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("config: {0}")]
    Figment(String),
    #[error("config: `{key}` (--{flag}, {ENV_PREFIX}{env}): {reason}", flag = key.replace('_', "-"), env = key.to_ascii_uppercase())]
    Invalid { key: &'static str, reason: String },
    #[error("config file {path}: cannot read it: {reason}")]
    File { path: PathBuf, reason: String },
}

/// What [`load`] found besides the settings: `FERRY_*` variables that are no setting (a typo, most often),
/// to be logged once logging is set up.
#[derive(Debug, Default)]
pub struct Loaded {
    pub settings: Settings,
    pub unknown_env: Vec<String>,
}

/// Layers defaults, the file, the environment `env` (name, value pairs; the process's in `ferryd`) and
/// `flags` (only those given), then checks the result.
pub fn load(
    file: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
    flags: &impl Serialize,
) -> Result<Loaded, SettingsError> {
    let mut figment = Figment::from(Serialized::defaults(Settings::default()));
    if let Some(path) = file {
        // figment treats a missing file as empty; a named config file that is not there is a mistake.
        std::fs::metadata(path).map_err(|e| SettingsError::File {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        figment = figment.merge(Toml::file_exact(path));
    }
    let keys = setting_keys();
    let mut known = Vec::new();
    let mut unknown_env = Vec::new();
    for (name, value) in env {
        let Some(key) = name.strip_prefix(ENV_PREFIX).map(str::to_ascii_lowercase) else {
            continue;
        };
        if keys.contains(&key.as_str()) {
            known.push((key, value));
        } else if !ENV_NOT_SETTINGS.contains(&key.as_str()) {
            unknown_env.push(name);
        }
    }
    // The variables are read from the list given, not the process: tests pass their own. Values parse as
    // figment's `Env` provider parses them.
    let env_dict: Dict = known
        .into_iter()
        .map(|(k, v)| (k, v.parse::<Value>().expect("infallible")))
        .collect();
    figment = figment.merge(Layer {
        name: "the FERRY_* environment",
        dict: env_dict,
    });
    let flags = match Value::serialize(flags) {
        Ok(Value::Dict(_, d)) => d,
        _ => Dict::new(),
    };
    figment = figment.merge(Layer {
        name: "the command line",
        dict: flags,
    });
    let settings: Settings = figment
        .extract()
        .map_err(|e| SettingsError::Figment(one_line(&e)))?;
    settings.validate()?;
    Ok(Loaded {
        settings,
        unknown_env,
    })
}

/// One layer of settings (the environment, the flags), named as the source in errors.
struct Layer {
    name: &'static str,
    dict: Dict,
}

impl Provider for Layer {
    fn metadata(&self) -> Metadata {
        Metadata::named(self.name)
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Ok(Profile::Default.collect(self.dict.clone()))
    }
}

/// The first error of a figment failure, with the key and where the value came from, on one line.
fn one_line(e: &figment::Error) -> String {
    let first = e.clone().into_iter().next();
    let e = first.as_ref().unwrap_or(e);
    let key = e.path.join(".");
    let from = e
        .metadata
        .as_ref()
        .map(|m| match &m.source {
            Some(src) => format!(" (from {src})"),
            None => format!(" (from {})", m.name),
        })
        .unwrap_or_default();
    let what = e.kind.to_string().replace('\n', " ");
    if key.is_empty() {
        format!("{what}{from}")
    } else {
        format!("`{key}`: {what}{from}")
    }
}

/// The keys a file or `FERRY_*` variable may set.
pub fn setting_keys() -> Vec<&'static str> {
    vec![
        "data_dir",
        "listen",
        "http_listen",
        "peer_listen",
        "node_id",
        "advertise",
        "peers",
        "batch_bytes_max",
        "segment_bytes",
        "retention_bytes",
        "retention_ms",
        "fsync",
        "direct_io",
        "partitions_max",
        "connections_max",
        "inflight_bytes_max",
        "log",
        "auto_join",
        "listeners",
        "tls_cert",
        "tls_key",
        "tls_ca",
        "tls_client_ca",
        "tls_peer_name",
        "tls_reload_ms",
        "authorization",
        "superusers",
        "auth_tokens",
        "jwt_public_keys",
        "jwt_issuer",
        "jwt_audience",
        "jwt_leeway_ms",
        "quotas",
    ]
}

impl Settings {
    /// Checks every bound; the error names the key.
    pub fn validate(&self) -> Result<(), SettingsError> {
        let bad = |key, reason: String| Err(SettingsError::Invalid { key, reason });
        let hard = u64::from(ferry_protocol::limits::BATCH_BYTES_HARD_MAX);
        if !(1024..=hard).contains(&self.batch_bytes_max.0) {
            return bad(
                "batch_bytes_max",
                format!(
                    "must be between 1KiB and {hard} bytes (got {})",
                    self.batch_bytes_max.0
                ),
            );
        }
        if self.direct_io && self.fsync.0 != FsyncPolicy::PerBatch {
            return bad(
                "direct_io",
                "needs `fsync = batch`: with direct I/O appended bytes stay in the broker's memory until \
                 the fsync, so with an fsync interval a crash of the process would lose acknowledged \
                 publishes"
                    .into(),
            );
        }
        if !(SEGMENT_BYTES_MIN..=SEGMENT_BYTES_MAX).contains(&self.segment_bytes.0) {
            return bad(
                "segment_bytes",
                format!(
                    "must be between 64KiB and 1GiB (got {} bytes)",
                    self.segment_bytes.0
                ),
            );
        }
        if self.node_id == Some(0) {
            return bad("node_id", "broker ids start at 1".into());
        }
        if self.partitions_max == 0 {
            return bad("partitions_max", "must be at least 1".into());
        }
        if self.connections_max == 0 {
            return bad("connections_max", "must be at least 1".into());
        }
        if self.inflight_bytes_max.0 < self.batch_bytes_max.0 {
            return bad(
                "inflight_bytes_max",
                "must be at least batch_bytes_max".into(),
            );
        }
        if let Some(a) = &self.advertise {
            if let Err(reason) = check_advertise(a) {
                return bad("advertise", reason);
            }
        } else if self.listen.ip().is_unspecified() {
            return bad(
                "advertise",
                format!(
                    "must be set when `listen` is {} (clients cannot connect to an unspecified address)",
                    self.listen
                ),
            );
        }
        if let Err(reason) = self.listeners.validate(check_advertise) {
            return bad("listeners", reason);
        }
        self.validate_tls()?;
        if tracing_subscriber::EnvFilter::try_new(&self.log).is_err() {
            return bad(
                "log",
                format!(
                    "`{}` is not a log filter (e.g. `info,ferry_broker=debug`)",
                    self.log
                ),
            );
        }
        Ok(())
    }

    fn validate_tls(&self) -> Result<(), SettingsError> {
        let bad = |key, reason: String| Err(SettingsError::Invalid { key, reason });
        let parts = [&self.tls_cert, &self.tls_key, &self.tls_ca];
        let set = parts.iter().filter(|p| p.is_some()).count();
        if set != 0 && set != parts.len() {
            let key = if self.tls_cert.is_none() {
                "tls_cert"
            } else if self.tls_key.is_none() {
                "tls_key"
            } else {
                "tls_ca"
            };
            return bad(
                key,
                "TLS needs all of tls_cert, tls_key and tls_ca (this one is missing)".into(),
            );
        }
        if self.tls_client_ca.is_some() && set == 0 {
            return bad(
                "tls_client_ca",
                "client certificates need TLS: set tls_cert, tls_key and tls_ca too".into(),
            );
        }
        if let Err(reason) = auth::superusers(&self.superusers) {
            return bad("superusers", reason);
        }
        if let Err(reason) = auth::quotas(&self.quotas) {
            return bad("quotas", reason);
        }
        if let Err(reason) = auth::tokens(&self.auth_tokens) {
            return bad("auth_tokens", reason);
        }
        if !self.jwt_public_keys.is_empty() {
            for (key, v) in [
                ("jwt_issuer", &self.jwt_issuer),
                ("jwt_audience", &self.jwt_audience),
            ] {
                if v.as_deref().is_none_or(str::is_empty) {
                    return bad(
                        key,
                        "JWTs are checked for an issuer and an audience: set both".into(),
                    );
                }
            }
        }
        if self.jwt_leeway_ms.0 > JWT_LEEWAY_MS_MAX {
            return bad("jwt_leeway_ms", format!("at most {JWT_LEEWAY_MS_MAX} ms"));
        }
        if self.authorization && set == 0 && !self.peers.0.is_empty() {
            return bad(
                "authorization",
                "a cluster enforcing ACLs needs TLS (tls_cert, tls_key, tls_ca): brokers prove who they \
                 are to each other by certificate"
                    .into(),
            );
        }
        if let Err(reason) = crate::tls::PeerNames::parse(&self.tls_peer_name) {
            return bad(
                "tls_peer_name",
                format!("`{}` {reason}", self.tls_peer_name),
            );
        }
        if self.tls_reload_ms.0 < TLS_RELOAD_MS_MIN {
            return bad(
                "tls_reload_ms",
                format!("must be at least {TLS_RELOAD_MS_MIN} ms"),
            );
        }
        Ok(())
    }

    /// The JWT verifier, when keys are configured (reads the key files).
    pub fn jwt(&self) -> Result<Option<crate::jwt::Jwt>, SettingsError> {
        if self.jwt_public_keys.is_empty() {
            return Ok(None);
        }
        let paths: Vec<PathBuf> = self.jwt_public_keys.0.iter().map(PathBuf::from).collect();
        crate::jwt::Jwt::load(
            &paths,
            self.jwt_issuer.as_deref().unwrap_or_default(),
            self.jwt_audience.as_deref().unwrap_or_default(),
            self.jwt_leeway_ms.0,
        )
        .map(Some)
        .map_err(|reason| SettingsError::Invalid {
            key: "jwt_public_keys",
            reason,
        })
    }

    /// The TLS files, when TLS is on.
    pub fn tls_files(&self) -> Option<crate::tls::TlsFiles> {
        Some(crate::tls::TlsFiles {
            cert: self.tls_cert.clone()?,
            key: self.tls_key.clone()?,
            ca: self.tls_ca.clone()?,
            client_ca: self.tls_client_ca.clone(),
        })
    }

    /// The node id: as set, else from the hostname (`ferry-N` → N + 1), else 1.
    pub fn resolved_node_id(&self, hostname: &str) -> u64 {
        self.node_id
            .or_else(|| crate::config::node_id_from_hostname(hostname))
            .unwrap_or(1)
    }

    /// The broker's configuration (the advertised addresses are filled in once the listeners are bound).
    pub fn broker_config(&self, node_id: u64) -> BrokerConfig {
        let mut c = BrokerConfig::new(
            node_id,
            self.data_dir.clone(),
            self.listen,
            self.http_listen,
        );
        c.peer_listen = self.peer_listen;
        c.peers = self.peers.0.clone();
        c.batch_bytes_max =
            u32::try_from(self.batch_bytes_max.0).expect("validated: at most the hard limit");
        c.replica.fsync = self.fsync.0;
        c.log.limits.segment_bytes =
            u32::try_from(self.segment_bytes.0).expect("validated: at most 1 GiB");
        c.log.retention_bytes = self.retention_bytes.or_zero(|b| b.0);
        c.log.retention_ms = self.retention_ms.or_zero(|m| m.0);
        c.partitions_max = self.partitions_max;
        c.connections_max = self.connections_max;
        c.inflight_bytes_max = self.inflight_bytes_max.0;
        c.auto_join = self.auto_join;
        c.direct_io = self.direct_io;
        c.auth = crate::config::AuthConfig {
            authorization: self.authorization,
            superusers: auth::superusers(&self.superusers).expect("validated"),
            tokens: auth::tokens(&self.auth_tokens).expect("validated"),
            jwt: None,
            quotas: auth::quotas(&self.quotas).expect("validated"),
        };
        c.listeners = self
            .listeners
            .0
            .iter()
            .map(|(name, l)| (name.clone(), l.listen))
            .collect();
        c
    }

    /// The settings as a TOML file that reads back to them.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("settings serialize to TOML")
    }
}

/// An advertised address names a host clients can reach: not empty, not unspecified, a valid port if any.
fn check_advertise(a: &str) -> Result<(), String> {
    let host = match a.rsplit_once(':') {
        Some((h, _)) if !h.ends_with(']') && h.contains(':') => a, // a bare IPv6 address
        Some((h, p)) => {
            p.parse::<u16>()
                .map_err(|_| format!("`{a}`: `{p}` is not a port"))?;
            h
        }
        None => a,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err("must name a host".into());
    }
    if host
        .parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_unspecified())
    {
        return Err(format!(
            "`{a}` is unspecified: clients cannot connect to it; name this broker's host"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
