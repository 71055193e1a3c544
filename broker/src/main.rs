//! `ferryd`: the Ferry broker binary. Settings: a TOML file, `FERRY_<KEY>` environment variables and flags
//! (`ferry_broker::settings`, docs/configuration.md).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use anyhow::Context as _;
use clap::Parser;
use ferry_broker::broker::startup::{Phase, Startup};
use ferry_broker::broker::Broker;
use ferry_broker::config::BrokerConfig;
use ferry_broker::identity::Identity;
use ferry_broker::peer::Router;
use ferry_broker::server;
use ferry_broker::server::http::HttpState;
use ferry_broker::settings::Settings;
use ferry_broker::storage::{OsDisk, SystemClock};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

/// Ferry broker. Settings come from defaults < the `--config` TOML file < `FERRY_<KEY>` environment
/// variables < these flags (docs/configuration.md lists every key).
#[derive(Debug, Parser, Serialize)]
#[command(name = "ferryd", version, about = "Ferry message broker")]
struct Args {
    /// TOML file of settings (keys as in docs/configuration.md, e.g. `data_dir`, `segment_bytes`).
    #[arg(long, env = "FERRY_CONFIG")]
    #[serde(skip)]
    config: Option<PathBuf>,
    /// Print the effective settings as TOML (a file that gives the same settings back) and exit.
    #[arg(long)]
    #[serde(skip)]
    print_config: bool,
    /// Directory holding all of this broker's data [default: ./ferry-data].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    data_dir: Option<PathBuf>,
    /// Client gRPC listener, host:port [default: 127.0.0.1:7400].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    listen: Option<SocketAddr>,
    /// HTTP listener for /healthz, /readyz and /metrics, host:port [default: 127.0.0.1:7480].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    http_listen: Option<SocketAddr>,
    /// This broker's id (a positive integer). Default: from a hostname ending in `-N` (a StatefulSet pod
    /// `ferry-N` is broker N+1), else 1.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    #[serde(skip_serializing_if = "Option::is_none")]
    node_id: Option<u64>,
    /// Host (or host:port) that clients are told to use for this broker [default: the listen address,
    /// which must then not be unspecified].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    advertise: Option<String>,
    /// Broker-to-broker listener, host:port, used when --peers is given [default: 127.0.0.1:7401].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    peer_listen: Option<SocketAddr>,
    /// The cluster's initial voters: `ID=HOST:PORT[,ID=HOST:PORT...]` (peer ports). Every broker gets the
    /// same list, a broker added later (`ferry cluster add-broker`) too: it is not in the list and joins.
    /// Empty: a cluster of one.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    peers: Option<String>,
    /// Largest record batch accepted (bytes, or a size such as `1MiB`) [default: 1MiB].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    batch_bytes_max: Option<String>,
    /// Default segment size of new topics (bytes, or e.g. `256MiB`) [default: 256MiB].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    segment_bytes: Option<String>,
    /// Default retention of new topics by size, per partition (bytes, a size, or `forever`) [default:
    /// forever].
    #[arg(long, allow_hyphen_values = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    retention_bytes: Option<String>,
    /// Default retention of new topics by age (ms, a duration such as `7d`, or `forever`) [default: 7d].
    #[arg(long, allow_hyphen_values = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    retention_ms: Option<String>,
    /// When to fsync: `batch` (default: before every acknowledgement, one fsync per group commit) or
    /// `interval:DURATION` (acknowledge after the write, fsync every DURATION, ms if a plain number: a power
    /// loss can lose acknowledged data).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    fsync: Option<String>,
    /// Most partition replicas this broker hosts; topic creation past it is refused [default: 4096].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    partitions_max: Option<usize>,
    /// Most open client connections; more are closed at once [default: 4096].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    connections_max: Option<usize>,
    /// Bytes of publishes held at once, decoded and queued until acknowledged; more wait [default: 512MiB].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    inflight_bytes_max: Option<String>,
    /// A broker not among --peers adds itself to the cluster (what `ferry cluster add-broker` does) until
    /// it is a member: a StatefulSet scale-up joins on its own [default: false].
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    #[serde(skip_serializing_if = "Option::is_none")]
    auto_join: Option<bool>,
    /// Write segment logs with direct I/O: less CPU per byte written, no page cache for the log (reads of
    /// older data come from the disk); needs --fsync batch [default: false].
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    #[serde(skip_serializing_if = "Option::is_none")]
    direct_io: Option<bool>,
    /// Named client listeners besides the main one: `NAME=LISTEN[@ADVERTISE][,...]`, e.g.
    /// `external=0.0.0.0:9400@ferry-0.example.com:9400`. A client that comes in on one is told every
    /// broker's address on that listener [default: none].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    listeners: Option<String>,
    /// This broker's certificate chain (PEM). With --tls-key and --tls-ca, every listener speaks TLS and
    /// the peer port requires mTLS [default: none, plaintext].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    tls_key: Option<PathBuf>,
    /// The cluster's CA bundle (PEM): other brokers' certificates must chain to it.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    tls_ca: Option<PathBuf>,
    /// CA bundle of client certificates (PEM): set, clients must present a certificate (mTLS).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    tls_client_ca: Option<PathBuf>,
    /// How a broker's certificate names its id: a SAN or common name equal to this with `{id}` (or
    /// `{ordinal}`, id - 1) filled in [default: broker-{id}].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    tls_peer_name: Option<String>,
    /// How often the TLS files are checked for changes (ms, or a duration) [default: 10s].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    tls_reload_ms: Option<String>,
    /// Enforce ACLs (`ferry acl`): nothing is allowed without a matching allow, except to --superusers and
    /// brokers. A cluster needs TLS for it [default: false].
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    #[serde(skip_serializing_if = "Option::is_none")]
    authorization: Option<bool>,
    /// Principals allowed everything: `User:NAME[,User:NAME...]` [default: none].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    superusers: Option<String>,
    /// Static bearer tokens: `PRINCIPAL=sha256:HEX[,...]`, the SHA-256 of each token (`ferry token hash`),
    /// never the token itself [default: none].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    auth_tokens: Option<String>,
    /// PEM public keys (RSA, EC or Ed25519) that sign JWT bearer tokens: `FILE[,FILE...]` [default: none].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    jwt_public_keys: Option<String>,
    /// The issuer (`iss`) every JWT must carry.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    jwt_issuer: Option<String>,
    /// The audience (`aud`) every JWT must carry: this cluster.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    jwt_audience: Option<String>,
    /// Clock skew allowed on a JWT's expiry and not-before (ms, or a duration) [default: 1m].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    jwt_leeway_ms: Option<String>,
    /// Byte rates per principal: `PRINCIPAL=publish:RATE|fetch:RATE[,...]` (RATE per second, e.g. `10MiB`;
    /// `*` for everyone without its own); responses past them are delayed [default: none].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    quotas: Option<String>,
    /// Log filter (tracing's EnvFilter syntax), e.g. `info` or `ferry_broker=debug` [default: info,raft=warn].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    log: Option<String>,
}

/// The settings, from the file, the process's environment and the flags; the node id resolved.
fn settings(args: &Args) -> anyhow::Result<(Settings, Vec<String>)> {
    let loaded = ferry_broker::settings::load(args.config.as_deref(), std::env::vars(), args)?;
    let mut settings = loaded.settings;
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    settings.node_id = Some(settings.resolved_node_id(&hostname));
    Ok((settings, loaded.unknown_env))
}

/// Raises the open-file limit to its hard maximum: each replica holds files, each connection a socket, and
/// the distribution's default soft limit (often 1,024) is below what `--partitions-max` allows. Answers the
/// limit now in force, if it could be read.
fn raise_file_limit() -> Option<u64> {
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    unsafe {
        let mut l = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) != 0 {
            return None;
        }
        if l.rlim_cur < l.rlim_max {
            let soft = l.rlim_cur;
            l.rlim_cur = l.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &l) != 0 {
                tracing::warn!("could not raise the open-file limit");
                return Some(soft);
            }
        }
        Some(l.rlim_cur)
    }
}

/// Says, at start, when the open-file limit is below what the configured limits can use: past it, replicas
/// fail to open (EMFILE) and stay down, segment rolls fail and connections are refused, long after start.
fn check_file_limit(limit: Option<u64>, config: &ferry_broker::config::BrokerConfig) {
    let needed =
        ferry_broker::config::open_files_needed(config.partitions_max, config.connections_max);
    if let Some(limit) = limit.filter(|l| *l < needed) {
        tracing::warn!(
            limit,
            needed,
            "the open-file limit is below what partitions_max ({}) and connections_max ({}) can use: \
             past it, replicas fail to open and stay down; raise it (ulimit -n, systemd LimitNOFILE) or \
             lower partitions_max (docs/operations.md, \"Open files\")",
            config.partitions_max,
            config.connections_max
        );
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
    // Settings first: the log filter is one of them. A bad one is one line naming the key.
    let (settings, unknown_env) = match settings(&args) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("ferryd: error: {e:#}");
            std::process::exit(2);
        }
    };
    if args.print_config {
        print!("{}", settings.to_toml());
        return;
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&settings.log).unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    for name in unknown_env {
        tracing::warn!(
            "{name} is not a ferryd setting (docs/configuration.md lists them): ignored"
        );
    }
    if let Err(e) = run(settings).await {
        eprintln!("ferryd: error: {e:#}");
        std::process::exit(1);
    }
}

async fn run(settings: Settings) -> anyhow::Result<()> {
    let mut config = settings.broker_config(settings.node_id.unwrap_or(1));
    if let Some(files) = settings.tls_files() {
        let names = ferry_broker::tls::PeerNames::parse(&settings.tls_peer_name)
            .map_err(|e| anyhow::anyhow!("config: `tls_peer_name`: {e}"))?;
        config.tls = Some(ferry_broker::tls::Tls::load(files, names)?);
    }
    config.auth.jwt = settings.jwt()?.map(Arc::new);
    check_file_limit(raise_file_limit(), &config);
    let prometheus = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .context("installing the metrics recorder")?;
    let grpc = bind(config.listen).await?;
    let http = bind(config.http_listen).await?;
    // With port 0 the OS picks the ports: tell clients and the operator the real ones.
    let (client_addr, http_addr) = (grpc.local_addr()?, http.local_addr()?);
    config.advertise = client_advertise(settings.advertise.as_deref(), client_addr);
    let mut named = Vec::new();
    for (name, l) in &settings.listeners.0 {
        let listener = bind(l.listen).await?;
        let bound = listener.local_addr()?;
        config.listener_advertise.insert(
            name.clone(),
            client_advertise(l.advertise.as_deref(), bound),
        );
        named.push((name.clone(), bound, listener));
    }
    let peer = if config.peers.is_empty() {
        None
    } else {
        Some(bind(config.peer_listen).await?)
    };
    watch_fault_file();
    let cancel = CancellationToken::new();
    let serve_cancel = CancellationToken::new();
    if let Some(tls) = &config.tls {
        tls.watch(
            std::time::Duration::from_millis(settings.tls_reload_ms.0),
            cancel.clone(),
        );
    }
    let started: Arc<OnceLock<Arc<Broker>>> = Arc::new(OnceLock::new());
    // HTTP answers from the first second: a liveness probe must not kill a broker that is still
    // recovering, and /healthz says how far start-up got.
    let startup = Startup::default();
    let http_task = tokio::spawn(server::http::serve(
        http,
        config.tls.clone(),
        HttpState {
            broker: started.clone(),
            startup: startup.clone(),
            prometheus: Some(prometheus),
        },
        serve_cancel.clone(),
    ));
    println!("ferryd starting http={http_addr}");
    // The peer server runs before the broker starts: a starting broker waits for its controller to catch
    // up, which needs the other brokers' Raft messages.
    let router = Arc::new(Router::default());
    let disk = disk(config.direct_io);
    let identity = Identity::open_data_dir(disk.clone(), &config.data_dir, config.node_id)
        .with_context(|| format!("opening the data dir {}", config.data_dir.display()))?;
    let peer_addr = match peer {
        Some(l) => {
            let addr = l.local_addr()?;
            config.peer_advertise = peer_advertise(&config, settings.advertise.as_deref(), addr);
            anyhow::ensure!(
                !peer_advertise_unspecified(&config.peer_advertise),
                "config: `advertise`: other brokers would be told to dial {} (unspecified); set `advertise` \
                 or list this broker in `peers`",
                config.peer_advertise
            );
            let serve = server::peer::serve_peer(
                identity.clone(),
                router.clone(),
                started.clone(),
                (l, config.tls.clone()),
                cancel.clone(),
            );
            tokio::spawn(serve);
            addr.to_string()
        }
        None => "-".to_owned(),
    };
    let broker = Broker::start(
        config.clone(),
        Arc::new(SystemClock),
        Arc::new(ferry_broker::server::dial::GrpcDialer::new(
            config.tls.clone(),
        )),
        router,
        identity,
        startup.clone(),
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
    let mut listening = format!("client={client_addr} http={http_addr} peer={peer_addr}");
    if config.tls.is_some() {
        listening.push_str(" tls=on");
    }
    let mut grpc = vec![(None, grpc)];
    for (name, bound, listener) in named {
        listening.push_str(&format!(" listener.{name}={bound}"));
        grpc.push((Some(name), listener));
    }
    println!("ferryd listening {listening}{faults}");
    serve_until_signal(broker, grpc, startup, serve_cancel, http_task).await;
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

fn peer_advertise_unspecified(a: &str) -> bool {
    a.rsplit_once(':').is_some_and(|(h, _)| {
        h.trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_unspecified())
    })
}

/// The disk the broker runs on: the real one; in a fault-injection build with `FERRY_FAULT_DISK=JOURNAL`,
/// a [`FaultyDisk`](ferry_broker::storage::FaultyDisk) that tracks what each fsync made durable, and on
/// SIGUSR1 cuts the power: it stops every disk change, writes what a power cut loses to JOURNAL, and exits
/// at once with status 86 (the test applies the journal, `ferry_storage::faulty::apply_power_cut`, before
/// starting the broker again). `FERRY_FAULT_FSYNC_DELAY_MS=N` makes each of its fsyncs first wait up to N ms.
/// With `direct_io`, segment logs are written with direct I/O (either way).
fn disk(direct_io: bool) -> Arc<dyn ferry_broker::storage::Disk> {
    #[cfg(feature = "fault-injection")]
    if let Some(journal) = std::env::var_os("FERRY_FAULT_DISK") {
        use tokio::signal::unix::{signal, SignalKind};
        let faults = ferry_broker::storage::Faults::new();
        if let Some(ms) = std::env::var("FERRY_FAULT_FSYNC_DELAY_MS")
            .ok()
            .and_then(|v| v.parse().ok())
        {
            faults
                .fsync_delay_max_ms
                .store(ms, std::sync::atomic::Ordering::Relaxed);
        }
        faults
            .direct_logs
            .store(direct_io, std::sync::atomic::Ordering::Relaxed);
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
    if direct_io {
        return Arc::new(ferry_broker::storage::DirectDisk);
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

/// Serves gRPC (HTTP already serves) until SIGTERM or SIGINT, then stops in order: not ready (Kubernetes
/// takes the pod out of its Services), leaderships handed to caught-up followers (clients see a short
/// redirect rather than an election timeout), no new requests, every partition closed cleanly (fsync,
/// clean checkpoints).
async fn serve_until_signal(
    broker: Arc<Broker>,
    grpc: Vec<(Option<String>, tokio::net::TcpListener)>,
    startup: Startup,
    serve_cancel: CancellationToken,
    http_task: tokio::task::JoinHandle<std::io::Result<()>>,
) {
    // One bound on client connections for all client listeners together.
    let connections = Arc::new(tokio::sync::Semaphore::new(broker.config.connections_max));
    // One authenticator for all of them: quotas are per broker, not per listener.
    let auth = server::auth::Auth::new(broker.config.auth.clone(), broker.config.tls.clone());
    let grpc_tasks: Vec<_> = grpc
        .into_iter()
        .map(|(name, listener)| {
            tokio::spawn(server::serve_grpc(
                broker.clone(),
                listener,
                name,
                (connections.clone(), auth.clone()),
                serve_cancel.clone(),
            ))
        })
        .collect();
    shutdown_signal().await;
    startup.set(Phase::Stopping);
    broker.hand_off_leadership(HAND_OFF_WAIT).await;
    serve_cancel.cancel();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        futures::future::join_all(grpc_tasks),
    )
    .await;
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), http_task).await;
    broker.shutdown().await;
}
