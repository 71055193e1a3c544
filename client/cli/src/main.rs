//! `ferry`, the command line of the Ferry message broker: topic administration, cluster status, producing
//! from stdin, consuming to stdout and a producer benchmark. A thin shell over `ferry-client`.
//!
//! # Layout
//! - [`args`]: the command line (clap).
//! - [`output`]: stdout buffering, text tables, JSON lines, broken-pipe handling.
//! - [`json`]: the JSON shapes of `-o json`, a contract for scripts.
//! - [`topic`], [`cluster`], [`group`], [`produce`], [`consume`], [`bench`], [`acl`]: one module per
//!   command group.
//! - [`context`]: named connection settings in the CLI's config file.
//!
//! Exit codes: 0 success (also when stdout's reader goes away), 1 any failure, with one line
//! `error: <message>` on stderr, 2 a usage error (from clap).

/// mimalloc: the client allocates on one thread what another frees (batches, request buffers; until
/// session 18 also each record's delivery), which cost glibc's allocator a lock and a consolidation pass.
/// A client A/B (one broker, 100 B and 1 KiB) won every pair, 2-28%.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod acl;
mod args;
mod bench;
mod cluster;
mod consume;
mod context;
mod group;
mod hand_off;
mod health;
mod json;
mod output;
mod produce;
mod topic;

use std::process::ExitCode;

use anyhow::Result;
use clap::Parser;
use ferry_client::Client;

use crate::args::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(cli));
    // Fetch loops may still be long-polling; the command is over, so do not wait for them.
    runtime.shutdown_background();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) if output::is_broken_pipe(&err) => ExitCode::SUCCESS,
        Err(err) if err.is::<health::Unhealthy>() => ExitCode::from(health::UNHEALTHY_EXIT),
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(mut cli: Cli) -> Result<()> {
    if let Command::Token {
        command: args::TokenCommand::Hash,
    } = cli.command
    {
        return acl::hash_token();
    }
    if let Command::Context { command } = cli.command {
        return context::run(command, cli.bootstrap, &cli.tls, cli.output);
    }
    // The current context applies only to its own brokers: brokers named by --bootstrap (or
    // FERRY_BOOTSTRAP) get none of its credentials unless the context is named for this command too.
    let named = cli.context.is_some();
    if named || cli.bootstrap.is_none() {
        if let Some(c) = context::selected(cli.context.as_deref())? {
            context::apply(&c, &mut cli.bootstrap, &mut cli.tls);
        }
    }
    let bootstrap = cli
        .bootstrap
        .take()
        .unwrap_or_else(|| vec![args::BOOTSTRAP_DEFAULT.to_owned()]);
    let mut config = ferry_client::ClientConfig::default();
    if let Some(ca) = &cli.tls.tls_ca {
        let a = &cli.tls;
        let mut tls =
            ferry_client::ClientTls::from_files(ca, a.tls_cert.as_deref(), a.tls_key.as_deref())?;
        tls.server_name = a.tls_server_name.clone();
        config.tls = Some(tls);
    } else if cli.tls.tls_cert.is_some() {
        anyhow::bail!("--tls-cert needs --tls-ca (the CA the brokers' certificates chain to)");
    }
    config.token = match (&cli.tls.token, &cli.tls.token_file) {
        (Some(t), _) => Some(ferry_client::Token::Static(t.clone())),
        (None, Some(f)) => Some(ferry_client::Token::File(f.clone())),
        (None, None) => None,
    };
    let client = Client::connect_with(bootstrap, config).await?;
    let format = cli.output;
    match cli.command {
        Command::Topic { command } => topic::run(&client, command, format).await,
        Command::Cluster { command } => cluster::run(&client, command, format).await,
        Command::Produce(args) => produce::run(client, args).await,
        Command::Consume(args) if args.group.is_some() => {
            group::consume(client, args, format).await
        }
        Command::Consume(args) => consume::run(client, args, format).await,
        Command::Group { command } => group::run(&client, command, format).await,
        Command::Bench { command } => bench::run(client, command, format).await,
        Command::Acl { command } => acl::run(&client, command, format).await,
        Command::Token { .. } | Command::Context { .. } => {
            unreachable!("handled before connecting")
        }
    }
}

/// Logs go to stderr, and only when `RUST_LOG` asks for them: by default stderr carries just the
/// command's own messages.
fn init_tracing() {
    if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_default_env() {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init();
    }
}
