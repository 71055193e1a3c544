//! `ferryd`: the Ferry broker binary. Flags, each also an environment variable `FERRY_<NAME>`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use anyhow::Context as _;
use clap::Parser;
use ferry_broker::broker::Broker;
use ferry_broker::config::BrokerConfig;
use ferry_broker::peer::Router;
use ferry_broker::replica::FsyncPolicy;
use ferry_broker::server;
use ferry_broker::storage::{OsDisk, SystemClock};
use tokio_util::sync::CancellationToken;

/// Ferry broker.
#[derive(Debug, Parser)]
#[command(name = "ferryd", version, about = "Ferry message broker")]
struct Args {
    /// Directory holding all of this broker's data.
    #[arg(long, env = "FERRY_DATA_DIR", default_value = "./ferry-data")]
    data_dir: PathBuf,
    /// Client gRPC listener (host:port).
    #[arg(long, env = "FERRY_LISTEN", default_value = "127.0.0.1:7400")]
    listen: SocketAddr,
    /// HTTP listener for /healthz, /readyz and /metrics (host:port).
    #[arg(long, env = "FERRY_HTTP_LISTEN", default_value = "127.0.0.1:7480")]
    http_listen: SocketAddr,
    /// This broker's id (a positive integer). Default: from a hostname ending in `-N` (a StatefulSet pod
    /// `ferry-N` is broker N+1), else 1.
    #[arg(long, env = "FERRY_NODE_ID", value_parser = clap::value_parser!(u64).range(1..))]
    node_id: Option<u64>,
    /// Host (or host:port) that clients are told to use for this broker (default: the listen address).
    #[arg(long, env = "FERRY_ADVERTISE")]
    advertise: Option<String>,
    /// Broker-to-broker listener (host:port), used when --peers is given.
    #[arg(long, env = "FERRY_PEER_LISTEN", default_value = "127.0.0.1:7401")]
    peer_listen: SocketAddr,
    /// The cluster's initial voters: `ID=HOST:PORT[,ID=HOST:PORT...]` (peer ports). Every broker gets the
    /// same list, a broker added later (`ferry cluster add-broker`) too: it is not in the list and joins.
    /// Empty: a cluster of one.
    #[arg(long, env = "FERRY_PEERS", default_value = "", value_parser = ferry_broker::config::parse_peers)]
    peers: std::collections::BTreeMap<u64, String>,
    /// Largest record batch accepted (bytes).
    #[arg(long, env = "FERRY_BATCH_BYTES_MAX", default_value_t = ferry_protocol::limits::BATCH_BYTES_DEFAULT_MAX)]
    batch_bytes_max: u32,
    /// Default segment size of new topics (bytes).
    #[arg(long, env = "FERRY_SEGMENT_BYTES", default_value_t = 256 * 1024 * 1024)]
    segment_bytes: u32,
    /// Default retention of new topics by size, per partition (bytes; 0: unlimited).
    #[arg(long, env = "FERRY_RETENTION_BYTES", default_value_t = 0)]
    retention_bytes: u64,
    /// Default retention of new topics by age (ms; 0: forever).
    #[arg(long, env = "FERRY_RETENTION_MS", default_value_t = 7 * 24 * 3600 * 1000)]
    retention_ms: u64,
    /// When to fsync: `batch` (default: before every acknowledgement, one fsync per group commit) or
    /// `interval:MS` (acknowledge after the write, fsync every MS ms: a power loss can lose acknowledged data).
    #[arg(long, env = "FERRY_FSYNC", default_value = "batch", value_parser = parse_fsync)]
    fsync: FsyncPolicy,
    /// Most partition replicas this broker hosts; topic creation past it is refused.
    #[arg(long, env = "FERRY_PARTITIONS_MAX", default_value_t = ferry_broker::config::PARTITIONS_MAX_DEFAULT)]
    partitions_max: usize,
    /// Most open client connections; more are closed at once.
    #[arg(long, env = "FERRY_CONNECTIONS_MAX", default_value_t = ferry_broker::config::CONNECTIONS_MAX_DEFAULT)]
    connections_max: usize,
    /// Bytes of publishes held at once, decoded and queued until acknowledged (more wait).
    #[arg(long, env = "FERRY_INFLIGHT_BYTES_MAX", default_value_t = ferry_broker::config::INFLIGHT_BYTES_MAX_DEFAULT)]
    inflight_bytes_max: u64,
    /// Log filter (tracing's EnvFilter syntax), e.g. `info` or `ferry_broker=debug`.
    #[arg(long, env = "FERRY_LOG", default_value = "info,raft=warn")]
    log: String,
}

fn parse_fsync(s: &str) -> Result<FsyncPolicy, String> {
    match s {
        "batch" => Ok(FsyncPolicy::PerBatch),
        _ => match s.strip_prefix("interval:").map(str::parse::<u64>) {
            Some(Ok(ms)) if ms > 0 => Ok(FsyncPolicy::IntervalMs(ms)),
            _ => Err(format!(
                "expected `batch` or `interval:MS` (MS > 0), got `{s}`"
            )),
        },
    }
}

fn config(args: &Args) -> anyhow::Result<BrokerConfig> {
    let hard = ferry_protocol::limits::BATCH_BYTES_HARD_MAX;
    anyhow::ensure!(
        args.batch_bytes_max >= 1024 && args.batch_bytes_max <= hard,
        "--batch-bytes-max must be between 1024 and {hard}"
    );
    anyhow::ensure!(
        args.segment_bytes >= 64 * 1024,
        "--segment-bytes must be at least 65536"
    );
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let node_id = args
        .node_id
        .or_else(|| ferry_broker::config::node_id_from_hostname(&hostname))
        .unwrap_or(1);
    let mut c = BrokerConfig::new(
        node_id,
        args.data_dir.clone(),
        args.listen,
        args.http_listen,
    );
    c.peer_listen = args.peer_listen;
    c.peers = args.peers.clone();
    c.batch_bytes_max = args.batch_bytes_max;
    c.replica.fsync = args.fsync;
    c.log.limits.segment_bytes = args.segment_bytes;
    c.log.retention_bytes = args.retention_bytes;
    c.log.retention_ms = args.retention_ms;
    anyhow::ensure!(
        args.partitions_max >= 1,
        "--partitions-max must be at least 1"
    );
    anyhow::ensure!(
        args.connections_max >= 1,
        "--connections-max must be at least 1"
    );
    anyhow::ensure!(
        args.inflight_bytes_max >= u64::from(args.batch_bytes_max),
        "--inflight-bytes-max must be at least --batch-bytes-max"
    );
    c.partitions_max = args.partitions_max;
    c.connections_max = args.connections_max;
    c.inflight_bytes_max = args.inflight_bytes_max;
    Ok(c)
}

/// Raises the open-file limit to its hard maximum: each replica holds files, each connection a socket, and
/// the distribution's default soft limit (often 1,024) is below what `--partitions-max` allows.
fn raise_file_limit() {
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    unsafe {
        let mut l = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) == 0 && l.rlim_cur < l.rlim_max {
            l.rlim_cur = l.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &l) != 0 {
                tracing::warn!("could not raise the open-file limit");
            }
        }
    }
}

/// Longest a stopping broker spends handing off its leaderships.
const HAND_OFF_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
    }
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&args.log).unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    if let Err(e) = run(args).await {
        eprintln!("ferryd: error: {e:#}");
        std::process::exit(1);
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let mut config = config(&args)?;
    raise_file_limit();
    let prometheus = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .context("installing the metrics recorder")?;
    let grpc = bind(config.listen).await?;
    let http = bind(config.http_listen).await?;
    // With port 0 the OS picks the ports: tell clients and the operator the real ones.
    let (client_addr, http_addr) = (grpc.local_addr()?, http.local_addr()?);
    config.advertise = client_advertise(args.advertise.as_deref(), client_addr);
    let peer = if config.peers.is_empty() {
        None
    } else {
        Some(bind(config.peer_listen).await?)
    };
    watch_fault_file();
    let cancel = CancellationToken::new();
    // The peer server runs before the broker starts: a starting broker waits for its controller to catch
    // up, which needs the other brokers' Raft messages.
    let router = Arc::new(Router::default());
    let started: Arc<OnceLock<Arc<Broker>>> = Arc::new(OnceLock::new());
    let peer_addr = match peer {
        Some(l) => {
            let addr = l.local_addr()?;
            config.peer_advertise = peer_advertise(&config, args.advertise.as_deref(), addr);
            let serve = server::peer::serve_peer(
                config.node_id,
                router.clone(),
                started.clone(),
                l,
                cancel.clone(),
            );
            tokio::spawn(serve);
            addr.to_string()
        }
        None => "-".to_owned(),
    };
    let broker = Broker::start(
        config.clone(),
        disk(),
        Arc::new(SystemClock),
        Arc::new(ferry_broker::server::dial::GrpcDialer::default()),
        router,
        cancel.child_token(),
    )
    .await
    .with_context(|| format!("starting the broker on {}", config.data_dir.display()))?;
    tracing::info!(node_id = config.node_id, listen = %client_addr, http = %http_addr,
        data_dir = %config.data_dir.display(), "ferryd serving");
    let _ = started.set(broker.clone());
    // One stable, machine-readable line on stdout (docs/operations.md): scripts and tests wait for it. A
    // test build says so (ferry-tests refuses a ferryd without its fault seam).
    let faults = if cfg!(feature = "fault-injection") {
        " faults=on"
    } else {
        ""
    };
    println!("ferryd listening client={client_addr} http={http_addr} peer={peer_addr}{faults}");
    serve_until_signal(broker, grpc, http, prometheus).await;
    cancel.cancel();
    tracing::info!("ferryd stopped cleanly");
    Ok(())
}

async fn bind(addr: std::net::SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))
}

/// The client address this broker advertises: `--advertise` as given when it names a port, its host with
/// the bound client port otherwise, the bound address without it.
fn client_advertise(advertise: Option<&str>, bound: std::net::SocketAddr) -> String {
    match advertise {
        None => bound.to_string(),
        Some(a)
            if a.rsplit_once(':')
                .is_some_and(|(_, p)| p.parse::<u16>().is_ok()) =>
        {
            a.to_owned()
        }
        Some(host) => format!("{host}:{}", bound.port()),
    }
}

/// What other brokers dial: the --peers entry of an initial voter, else the advertised host with the bound
/// peer port, else the bound peer address.
fn peer_advertise(
    config: &BrokerConfig,
    advertise: Option<&str>,
    bound: std::net::SocketAddr,
) -> String {
    match (config.peers.get(&config.node_id), advertise) {
        (Some(a), _) => a.clone(),
        (None, Some(a)) => {
            let host = a.rsplit_once(':').map_or(a, |(h, _)| h);
            format!("{host}:{}", bound.port())
        }
        (None, None) => bound.to_string(),
    }
}

/// The disk the broker runs on: the real one; in a fault-injection build with `FERRY_FAULT_DISK=JOURNAL`,
/// a [`FaultyDisk`](ferry_broker::storage::FaultyDisk) that tracks what each fsync made durable, and on
/// SIGUSR1 cuts the power: it stops every disk change, writes what a power cut loses to JOURNAL, and exits
/// at once with status 86 (the test applies the journal, `ferry_storage::disk::apply_power_cut`, before
/// starting the broker again).
fn disk() -> Arc<dyn ferry_broker::storage::Disk> {
    #[cfg(feature = "fault-injection")]
    if let Some(journal) = std::env::var_os("FERRY_FAULT_DISK") {
        use tokio::signal::unix::{signal, SignalKind};
        let faults = ferry_broker::storage::Faults::new();
        let mut usr1 = signal(SignalKind::user_defined1()).expect("SIGUSR1 handler");
        let cut = faults.clone();
        tokio::spawn(async move {
            usr1.recv().await;
            let journal = std::path::PathBuf::from(journal);
            let status = match cut.power_off_to_journal(&journal) {
                Ok(()) => POWER_CUT_EXIT,
                Err(e) => {
                    eprintln!("ferryd: power cut journal {}: {e}", journal.display());
                    1
                }
            };
            // SAFETY: _exit ends the process without running destructors or flushing anything: a power cut.
            unsafe { libc::_exit(status) }
        });
        return Arc::new(ferry_broker::storage::FaultyDisk { faults });
    }
    Arc::new(OsDisk)
}

/// Exit status of a broker whose power was cut (`FERRY_FAULT_DISK`).
#[cfg(feature = "fault-injection")]
const POWER_CUT_EXIT: i32 = 86;

/// The fault-injection seam reads `FERRY_FAULT_FILE` in test builds; a release build says it ignores it.
fn watch_fault_file() {
    #[cfg(feature = "fault-injection")]
    if let Some(path) = std::env::var_os("FERRY_FAULT_FILE") {
        ferry_broker::peer::faults::watch(path.into());
    }
    #[cfg(not(feature = "fault-injection"))]
    if std::env::var_os("FERRY_FAULT_FILE").is_some() {
        tracing::error!(
            "FERRY_FAULT_FILE is ignored: this ferryd is built without fault injection"
        );
    }
}

/// Serves gRPC and HTTP until SIGTERM or SIGINT, then stops in order: leaderships handed to caught-up
/// followers (clients see a short redirect rather than an election timeout), no new requests, every
/// partition closed cleanly (fsync, clean checkpoints).
async fn serve_until_signal(
    broker: Arc<Broker>,
    grpc: tokio::net::TcpListener,
    http: tokio::net::TcpListener,
    prometheus: metrics_exporter_prometheus::PrometheusHandle,
) {
    let serve_cancel = CancellationToken::new();
    let grpc_task = tokio::spawn(server::serve_grpc(
        broker.clone(),
        grpc,
        serve_cancel.clone(),
    ));
    let router = server::http::router(broker.clone(), Some(prometheus));
    let http_cancel = serve_cancel.clone();
    let http_task = tokio::spawn(async move {
        axum::serve(http, router)
            .with_graceful_shutdown(http_cancel.cancelled_owned())
            .await
    });
    shutdown_signal().await;
    broker.hand_off_leadership(HAND_OFF_WAIT).await;
    serve_cancel.cancel();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), grpc_task).await;
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), http_task).await;
    broker.shutdown().await;
}
