//! The command line, as clap types. docs/cli.md documents every flag; keep the two in step.

use clap::{Args, Parser, Subcommand, ValueEnum};
use ferry_client::v1::Acks;

/// Default bootstrap address: a broker's client listener on this machine.
pub const BOOTSTRAP_DEFAULT: &str = "127.0.0.1:7400";

/// Ferry's command line: topics, cluster status, producing and consuming.
#[derive(Debug, Parser)]
#[command(name = "ferry", version, about, propagate_version = true)]
pub struct Cli {
    /// Brokers to bootstrap from, tried in order [default: the context's, else 127.0.0.1:7400].
    #[arg(
        long,
        global = true,
        env = "FERRY_BOOTSTRAP",
        value_delimiter = ',',
        value_name = "HOST:PORT[,HOST:PORT...]"
    )]
    pub bootstrap: Option<Vec<String>>,
    /// Connection settings from this context of the CLI's config file (`ferry context`) [default: the
    /// file's current context, if any].
    #[arg(long, global = true, env = "FERRY_CONTEXT", value_name = "NAME")]
    pub context: Option<String>,
    /// Output format.
    #[arg(short, long, global = true, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
    #[command(flatten)]
    pub tls: TlsArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// TLS to the brokers (docs/security.md). Without `--tls-ca`, plaintext.
#[derive(Debug, Default, Args)]
pub struct TlsArgs {
    /// CA bundle (PEM) the brokers' certificates chain to; turns TLS on.
    #[arg(long, global = true, env = "FERRY_TLS_CA", value_name = "FILE")]
    pub tls_ca: Option<std::path::PathBuf>,
    /// This client's certificate chain (PEM), for brokers that require client certificates.
    #[arg(
        long,
        global = true,
        env = "FERRY_TLS_CERT",
        value_name = "FILE",
        requires = "tls_key"
    )]
    pub tls_cert: Option<std::path::PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(
        long,
        global = true,
        env = "FERRY_TLS_KEY",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    pub tls_key: Option<std::path::PathBuf>,
    /// Name to check in every broker's certificate instead of the host dialed.
    #[arg(
        long,
        global = true,
        env = "FERRY_TLS_SERVER_NAME",
        value_name = "NAME"
    )]
    pub tls_server_name: Option<String>,
    /// Bearer token sent with every request (prefer --token-file or FERRY_TOKEN: flags show in `ps`).
    #[arg(
        long,
        global = true,
        env = "FERRY_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,
    /// File whose first line is the bearer token (re-read when it changes).
    #[arg(
        long,
        global = true,
        env = "FERRY_TOKEN_FILE",
        value_name = "FILE",
        conflicts_with = "token"
    )]
    pub token_file: Option<std::path::PathBuf>,
}

/// Output format of every command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Human-readable text and aligned tables.
    Text,
    /// JSON, one document (or one object per line for streams and lists).
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create, list, describe and delete topics.
    Topic {
        #[command(subcommand)]
        command: TopicCommand,
    },
    /// Cluster-wide information.
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
    },
    /// Consumer groups.
    Group {
        #[command(subcommand)]
        command: GroupCommand,
    },
    /// Publish stdin to a topic, one message per line.
    Produce(ProduceArgs),
    /// Print a topic's messages.
    Consume(ConsumeArgs),
    /// Load generators.
    Bench {
        #[command(subcommand)]
        command: BenchCommand,
    },
    /// Access control lists: who may do what (docs/security.md).
    Acl {
        #[command(subcommand)]
        command: AclCommand,
    },
    /// Bearer tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Named connection settings in the CLI's config file (needs no broker).
    Context {
        #[command(subcommand)]
        command: ContextCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum ContextCommand {
    /// List the contexts (`*` marks the current one).
    List,
    /// Show a context's settings (default: the current one).
    Show {
        /// Context name.
        name: Option<String>,
    },
    /// Save the connection flags given (--bootstrap, --tls-*, --token-file, or their FERRY_* variables)
    /// as context NAME, replacing it; the first context saved becomes the current one.
    Set {
        /// Context name: 1-64 of a-z A-Z 0-9 . _ -
        name: String,
    },
    /// Make NAME the current context.
    Use {
        /// Context name.
        name: String,
    },
    /// Delete a context.
    Delete {
        /// Context name.
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Print the `sha256:HEX` of the token on stdin, for a broker's `auth_tokens` (needs no broker).
    Hash,
}

#[derive(Debug, Subcommand)]
pub enum TopicCommand {
    /// Create a topic.
    Create(CreateArgs),
    /// List topics.
    List,
    /// Show a topic's settings and partitions.
    Describe {
        /// Topic name.
        name: String,
    },
    /// Delete a topic and all its messages.
    Delete {
        /// Topic name.
        name: String,
    },
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Topic name: 1 to 249 characters of a-z A-Z 0-9 . _ -
    pub name: String,
    /// Number of partitions.
    #[arg(long)]
    pub partitions: u32,
    /// Replicas per partition (default: the broker's default).
    #[arg(long)]
    pub replicas: Option<u32>,
    /// Keep at most this many bytes per partition: bytes, a size (`10GiB`), or `forever` (also `-1`: kept
    /// whatever the broker's default) [default: the broker's default].
    #[arg(long, value_parser = parse_retention_bytes, allow_hyphen_values = true)]
    pub retention_bytes: Option<u64>,
    /// Keep messages at least this long: ms, a duration (`7d`, `12h`), or `forever` (also `-1`: kept
    /// whatever the broker's default) [default: the broker's default].
    #[arg(long, value_parser = parse_retention_ms, allow_hyphen_values = true)]
    pub retention_ms: Option<u64>,
    /// Size at which a partition's log segment is rolled: bytes or a size (`64MiB`) [default: the broker's
    /// default].
    #[arg(long, value_parser = parse_bytes)]
    pub segment_bytes: Option<u64>,
    /// Age at which a partition's log segment is rolled: ms or a duration (`1h`) [default: the broker's
    /// default].
    #[arg(long, value_parser = parse_ms)]
    pub segment_ms: Option<u64>,
}

/// The wire's "forever" in a retention field (`TopicConfig`; 0 there means the broker's default).
pub const FOREVER: u64 = u64::MAX;

fn parse_bytes(s: &str) -> Result<u64, String> {
    s.trim()
        .parse::<bytesize::ByteSize>()
        .map(|b| b.as_u64())
        .map_err(|_| format!("`{s}` is not a size (bytes, or e.g. `64KiB`, `256MiB`, `10GiB`)"))
}

fn parse_ms(s: &str) -> Result<u64, String> {
    if let Ok(ms) = s.trim().parse::<u64>() {
        return Ok(ms);
    }
    let d = humantime::parse_duration(s.trim())
        .map_err(|e| format!("`{s}` is not a duration ({e}; ms, or e.g. `500ms`, `12h`, `7d`)"))?;
    u64::try_from(d.as_millis()).map_err(|_| format!("`{s}` is too long"))
}

fn forever(s: &str) -> bool {
    matches!(s.trim(), "forever" | "-1")
}

fn parse_retention_bytes(s: &str) -> Result<u64, String> {
    if forever(s) {
        return Ok(FOREVER);
    }
    parse_bytes(s)
}

fn parse_retention_ms(s: &str) -> Result<u64, String> {
    if forever(s) {
        return Ok(FOREVER);
    }
    parse_ms(s)
}

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Brokers, whether each is up, and how many partitions each leads.
    Status,
    /// Leaderless and under-replicated partitions, brokers down, the controller's leader; exit status 10
    /// when any is wrong.
    Health,
    /// Move the answering broker's partition leaderships to in-sync replicas elsewhere (before stopping
    /// it: the StatefulSet's preStop hook).
    HandOff {
        /// Give up after this many seconds (what is left, ferryd hands off on SIGTERM).
        #[arg(long, default_value_t = 25)]
        timeout_secs: u64,
    },
    /// Move a partition's leadership to another of its replicas.
    TransferLeader {
        /// Topic name.
        topic: String,
        /// Partition number.
        partition: u32,
        /// Broker id of the replica that should lead.
        to: u64,
    },
    /// Add a broker: it joins once started (with the cluster's --peers and its own --node-id), then
    /// partitions move to it.
    AddBroker {
        /// The new broker's id.
        id: u64,
        /// host:port of the new broker's peer listener.
        peer_address: String,
    },
    /// Remove a broker: its partitions move to the others, then it leaves (stop it once `cluster status`
    /// no longer lists it).
    RemoveBroker {
        /// Broker id.
        id: u64,
    },
}

/// Durability a publish waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AcksArg {
    /// Durable on a quorum of replicas.
    All,
    /// Durable on the partition leader only.
    Leader,
}

impl From<AcksArg> for Acks {
    fn from(acks: AcksArg) -> Acks {
        match acks {
            AcksArg::All => Acks::All,
            AcksArg::Leader => Acks::Leader,
        }
    }
}

#[derive(Debug, Args)]
pub struct ProduceArgs {
    /// Topic to publish to.
    pub topic: String,
    /// Key of every message (or of lines without the key separator).
    #[arg(long)]
    pub key: Option<String>,
    /// Split each line at the first SEP: the part before is the key, the rest the value.
    #[arg(long, value_name = "SEP")]
    pub key_separator: Option<String>,
    /// Publish every message to this partition.
    #[arg(long)]
    pub partition: Option<u32>,
    /// Durability to wait for.
    #[arg(long, value_enum, default_value_t = AcksArg::All)]
    pub acks: AcksArg,
    /// Batch compression.
    #[arg(long, value_enum, default_value_t = CompressionArg::None)]
    pub compression: CompressionArg,
}

/// `--compression`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CompressionArg {
    None,
    Lz4,
}

impl From<CompressionArg> for ferry_client::batch_compression::Compression {
    fn from(c: CompressionArg) -> Self {
        match c {
            CompressionArg::None => Self::None,
            CompressionArg::Lz4 => Self::Lz4,
        }
    }
}

/// Where consumption starts in each partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartFrom {
    /// The first message still stored.
    Beginning,
    /// After the last message committed when the command starts.
    End,
    /// This offset.
    Offset(u64),
}

fn parse_start_from(text: &str) -> Result<StartFrom, String> {
    match text {
        "beginning" => Ok(StartFrom::Beginning),
        "end" => Ok(StartFrom::End),
        _ => text
            .parse()
            .map(StartFrom::Offset)
            .map_err(|_| format!("expected 'beginning', 'end' or an offset, not '{text}'")),
    }
}

#[derive(Debug, Args)]
pub struct ConsumeArgs {
    /// Topic to read.
    pub topic: String,
    /// Where to start in each partition: beginning, end, or an offset.
    #[arg(long, value_name = "beginning|end|OFFSET", default_value = "end", value_parser = parse_start_from)]
    pub from: StartFrom,
    /// Read only this partition (default: all).
    #[arg(long)]
    pub partition: Option<u32>,
    /// Stop after printing this many messages.
    #[arg(long)]
    pub max: Option<u64>,
    /// Stop once every partition is read up to its end as of the start.
    #[arg(long)]
    pub exit_at_end: bool,
    /// In text output, print `key<TAB>value` instead of the value alone.
    #[arg(long)]
    pub print_key: bool,
    /// Consume as a member of this consumer group: partitions are shared with the group's other members,
    /// offsets are committed, and `--from` applies only to partitions without a committed offset.
    #[arg(long)]
    pub group: Option<String>,
    /// With --group: static membership under this stable id (a pod name).
    #[arg(long, requires = "group")]
    pub instance_id: Option<String>,
    /// With --group: the session timeout (ms).
    #[arg(long, requires = "group", default_value_t = ferry_client::group::SESSION_TIMEOUT_MS_DEFAULT)]
    pub session_timeout_ms: u32,
}

#[derive(Debug, Subcommand)]
pub enum GroupCommand {
    /// Every consumer group.
    List,
    /// Members, assignment, committed offset, end offset and lag per partition.
    Describe {
        /// Group name.
        group: String,
    },
    /// Move a group's committed offsets (only while it has no live members). Prints the plan; applies it
    /// only with --execute.
    ResetOffsets {
        /// Group name.
        group: String,
        /// Topic whose offsets move.
        #[arg(long)]
        topic: String,
        /// earliest, latest, an offset, or ts:MILLIS (the first record at or after that Unix time in ms).
        #[arg(long, value_parser = parse_reset_to)]
        to: ResetTo,
        /// Apply the plan (without it, only print it).
        #[arg(long)]
        execute: bool,
    },
    /// Delete a group without live members, with its committed offsets.
    Delete {
        /// Group name.
        group: String,
    },
}

/// Where `ferry group reset-offsets` moves offsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetTo {
    Earliest,
    Latest,
    Offset(u64),
    TimestampMs(i64),
}

fn parse_reset_to(text: &str) -> Result<ResetTo, String> {
    match text {
        "earliest" => Ok(ResetTo::Earliest),
        "latest" => Ok(ResetTo::Latest),
        t => {
            if let Some(ms) = t.strip_prefix("ts:") {
                return ms
                    .parse()
                    .map(ResetTo::TimestampMs)
                    .map_err(|_| format!("'{t}' is not ts:MILLIS"));
            }
            t.parse()
                .map(ResetTo::Offset)
                .map_err(|_| format!("'{t}' is not earliest, latest, an offset or ts:MILLIS"))
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Publish generated messages as fast as the producer allows and report throughput and latency.
    Produce(BenchProduceArgs),
    /// Read a topic's stored messages as whole batches from every partition at once (nothing printed,
    /// nothing committed) and report throughput.
    Consume(BenchConsumeArgs),
}

#[derive(Debug, Args)]
pub struct BenchConsumeArgs {
    /// Topic to read (it must exist).
    #[arg(long)]
    pub topic: String,
    /// Stop after this many messages [default: everything stored when the run starts].
    #[arg(long)]
    pub messages: Option<u64>,
    /// Bytes asked for in one fetch (at most 8 MiB; a fetch returns at least one whole batch).
    #[arg(long, default_value_t = 1 << 20)]
    pub fetch_bytes: u32,
}

#[derive(Debug, Args)]
pub struct BenchProduceArgs {
    /// Topic to publish to (it must exist).
    #[arg(long)]
    pub topic: String,
    /// Number of messages.
    #[arg(long, default_value_t = 1_000_000)]
    pub messages: u64,
    /// Value size of each message (bytes).
    #[arg(long, default_value_t = 100)]
    pub size: usize,
    /// Publish every message to this partition (default: round robin over all).
    #[arg(long)]
    pub partition: Option<u32>,
    /// Durability to wait for.
    #[arg(long, value_enum, default_value_t = AcksArg::All)]
    pub acks: AcksArg,
    /// Producer linger (milliseconds).
    #[arg(long, default_value_t = ferry_client::producer::LINGER_MS_DEFAULT)]
    pub linger_ms: u64,
    /// Batch compression.
    #[arg(long, value_enum, default_value_t = CompressionArg::None)]
    pub compression: CompressionArg,
    /// Producer batch limit (bytes).
    #[arg(long, default_value_t = ferry_client::producer::BATCH_BYTES_MAX_DEFAULT)]
    pub batch_bytes: usize,
    /// Batches of a partition in flight at once (1-5).
    #[arg(long, default_value_t = ferry_client::producer::IN_FLIGHT_PER_PARTITION_MAX_DEFAULT)]
    pub in_flight: usize,
    /// Wait for each message's acknowledgement before sending the next (one in flight: measures the
    /// latency of a single durable publish rather than throughput; with a linger, each message waits it).
    #[arg(long)]
    pub sync: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn start_positions_parse() {
        assert_eq!(parse_start_from("beginning"), Ok(StartFrom::Beginning));
        assert_eq!(parse_start_from("end"), Ok(StartFrom::End));
        assert_eq!(parse_start_from("42"), Ok(StartFrom::Offset(42)));
        assert!(parse_start_from("-1").is_err());
        assert!(parse_start_from("start").is_err());
    }

    #[test]
    fn bootstrap_splits_on_commas() {
        let cli =
            Cli::try_parse_from(["ferry", "--bootstrap", "a:1,b:2", "topic", "list"]).unwrap();
        assert_eq!(
            cli.bootstrap,
            Some(vec!["a:1".to_owned(), "b:2".to_owned()])
        );
        assert_eq!(cli.output, OutputFormat::Text);
    }
}

#[derive(Debug, Subcommand)]
pub enum AclCommand {
    /// Allow (or deny) a principal operations on a resource.
    Create(CreateAcl),
    /// List ACLs (all, or those matching the filter flags).
    List(Resource),
    /// Delete the ACLs matching the filter flags (at least one).
    Delete(Resource),
}

#[derive(Debug, Args)]
pub struct CreateAcl {
    /// Deny instead of allow (a deny wins over every allow).
    #[arg(long)]
    pub deny: bool,
    /// Operations: read, write, create, delete, alter, describe, cluster-admin (repeat or comma-separate).
    #[arg(long = "operation", value_delimiter = ',', required = true)]
    pub operations: Vec<String>,
    #[command(flatten)]
    pub resource: Resource,
}

/// Which principal and resource an ACL is about (for list and delete: a filter).
#[derive(Debug, Args)]
pub struct Resource {
    /// `User:NAME` (a token's or a certificate's principal), or `*` for everyone.
    #[arg(long)]
    pub principal: Option<String>,
    /// A topic name, or with --prefix the start of topic names.
    #[arg(long, conflicts_with_all = ["group", "cluster", "producer_ids"])]
    pub topic: Option<String>,
    /// A consumer group, or with --prefix the start of group names.
    #[arg(long, conflicts_with_all = ["cluster", "producer_ids"])]
    pub group: Option<String>,
    /// The cluster itself (brokers, ACLs, creating any topic).
    #[arg(long, conflicts_with = "producer_ids")]
    pub cluster: bool,
    /// Idempotent producer ids (InitProducer).
    #[arg(long)]
    pub producer_ids: bool,
    /// The name is a prefix (`orders.` covers `orders.created`), not a literal name.
    #[arg(long)]
    pub prefix: bool,
}
