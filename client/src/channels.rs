//! One HTTP/2 channel per broker address, shared by every request to that broker, and the generated gRPC
//! clients built over them with Ferry's message limits set. The only module that creates connections.
//!
//! Channels reconnect by themselves, so a pool entry is never replaced; there is one per broker the client
//! has heard of, which bounds the pool by the cluster size.

use std::collections::HashMap;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use ferry_protocol::limits::GRPC_MESSAGE_BYTES_MAX;
use ferry_protocol::v1::admin_client::AdminClient;
use ferry_protocol::v1::ferry_client::FerryClient;
use parking_lot::Mutex;
use tonic::transport::{Channel, Endpoint};

use crate::config::ClientConfig;
use crate::error::{error_chain, ClientError};
use crate::token::Tokens;

/// A channel to one broker that adds the client's bearer token (if any) to every request.
#[derive(Debug, Clone)]
pub struct BrokerChannel {
    channel: Channel,
    tokens: Option<Arc<Tokens>>,
}

type HttpRequest = http::Request<tonic::body::BoxBody>;

impl tower_service::Service<HttpRequest> for BrokerChannel {
    type Response = <Channel as tower_service::Service<HttpRequest>>::Response;
    type Error = <Channel as tower_service::Service<HttpRequest>>::Error;
    type Future = <Channel as tower_service::Service<HttpRequest>>::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        tower_service::Service::poll_ready(&mut self.channel, cx)
    }

    fn call(&mut self, mut req: HttpRequest) -> Self::Future {
        if let Some(tokens) = &self.tokens {
            match tokens.header() {
                Ok(v) => {
                    if let Ok(v) = http::HeaderValue::from_bytes(v.as_encoded_bytes()) {
                        req.headers_mut().insert(http::header::AUTHORIZATION, v);
                    }
                }
                // `Client` checks for a token before every attempt (`Channels::token_problem`), so this
                // only happens if the source failed in between, for the first time: the broker then
                // answers UNAUTHENTICATED or PERMISSION_DENIED, and this says why.
                Err(why) => tracing::warn!("no bearer token for this request: {why}"),
            }
        }
        tower_service::Service::call(&mut self.channel, req)
    }
}

/// Interval of HTTP/2 keep-alive pings, so a dead broker is noticed on an idle connection (milliseconds).
const KEEP_ALIVE_INTERVAL_MS: u64 = 30_000;
/// How long a keep-alive ping may go unanswered before the connection is dropped (milliseconds).
const KEEP_ALIVE_TIMEOUT_MS: u64 = 10_000;

/// The pool of channels, keyed by address as written (`host:port`).
#[derive(Debug)]
pub struct Channels {
    config: ClientConfig,
    tokens: Option<Arc<Tokens>>,
    by_address: Mutex<HashMap<String, BrokerChannel>>,
}

impl Channels {
    /// Why no bearer token can be sent, when one is configured and none can be had.
    pub fn token_problem(&self) -> Option<String> {
        self.tokens.as_ref().and_then(|t| t.header().err())
    }

    /// An empty pool whose connections use `config`'s timeouts.
    pub fn new(config: ClientConfig) -> Self {
        Channels {
            tokens: config.token.clone().map(|t| Arc::new(Tokens::new(t))),
            config,
            by_address: Mutex::new(HashMap::new()),
        }
    }

    /// Opens a connection to `address` now, failing within the connect timeout if nobody answers. Used for
    /// bootstrap, where the reason a broker is unreachable must be reported. The error is readable text.
    pub async fn connect(&self, address: &str) -> Result<BrokerChannel, String> {
        let endpoint = endpoint(address, &self.config).map_err(|e| match e {
            ClientError::InvalidArgument(why) => why,
            other => other.to_string(),
        })?;
        // The endpoint's connect timeout covers TCP; the outer one also covers the HTTP/2 handshake.
        let connecting = endpoint.connect();
        let channel = match tokio::time::timeout(self.config.connect_timeout(), connecting).await {
            Ok(Ok(channel)) => self.wrap(channel),
            Ok(Err(e)) => return Err(error_chain(&e)),
            Err(_) => {
                return Err(format!(
                    "no answer within {} ms",
                    self.config.connect_timeout_ms
                ))
            }
        };
        self.by_address
            .lock()
            .insert(address.to_owned(), channel.clone());
        Ok(channel)
    }

    /// The channel to `address`, created lazily (it connects on first use) when new.
    pub fn get(&self, address: &str) -> Result<BrokerChannel, ClientError> {
        if let Some(channel) = self.by_address.lock().get(address) {
            return Ok(channel.clone());
        }
        let channel = self.wrap(endpoint(address, &self.config)?.connect_lazy());
        // Another task may have raced us here; keep whichever was inserted first so all share one.
        let mut map = self.by_address.lock();
        Ok(map.entry(address.to_owned()).or_insert(channel).clone())
    }
}

impl Channels {
    fn wrap(&self, channel: Channel) -> BrokerChannel {
        BrokerChannel {
            channel,
            tokens: self.tokens.clone(),
        }
    }
}

/// HTTP/2 flow-control window of one stream (bytes): room for a whole batch or fetch response.
const STREAM_WINDOW_BYTES: u32 = 8 * 1024 * 1024;
/// HTTP/2 flow-control window of one connection (bytes): several partitions in flight at once.
const CONNECTION_WINDOW_BYTES: u32 = 32 * 1024 * 1024;

/// The endpoint for `host:port` (or a full `http://` or `https://` URI), with Ferry's connection
/// settings: over TLS when the config has TLS.
fn endpoint(address: &str, config: &ClientConfig) -> Result<Endpoint, ClientError> {
    let scheme = if config.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let uri = match address.split_once("://") {
        Some((_, rest)) => format!("{scheme}://{rest}"),
        None => format!("{scheme}://{address}"),
    };
    let bad = |e: tonic::transport::Error| {
        ClientError::InvalidArgument(format!("bad broker address '{address}': {e}"))
    };
    let mut endpoint = Endpoint::from_shared(uri).map_err(bad)?;
    if let Some(tls) = &config.tls {
        endpoint = endpoint.tls_config(tls.tonic_config()).map_err(|e| {
            ClientError::InvalidArgument(format!("TLS settings: {}", error_chain(&e)))
        })?;
    }
    Ok(endpoint
        .connect_timeout(config.connect_timeout())
        .tcp_nodelay(true)
        // HTTP/2's default 64 KiB windows would stall every large fetch response on window updates.
        .initial_stream_window_size(Some(STREAM_WINDOW_BYTES))
        .initial_connection_window_size(Some(CONNECTION_WINDOW_BYTES))
        .http2_keep_alive_interval(Duration::from_millis(KEEP_ALIVE_INTERVAL_MS))
        .keep_alive_timeout(Duration::from_millis(KEEP_ALIVE_TIMEOUT_MS))
        .keep_alive_while_idle(true))
}

/// The `Ferry` service client over `channel`, with Ferry's message size limits in both directions.
pub fn ferry_client(channel: BrokerChannel) -> FerryClient<BrokerChannel> {
    FerryClient::new(channel)
        .max_decoding_message_size(GRPC_MESSAGE_BYTES_MAX)
        .max_encoding_message_size(GRPC_MESSAGE_BYTES_MAX)
}

/// The `Admin` service client over `channel`, with Ferry's message size limits in both directions.
pub fn admin_client(channel: BrokerChannel) -> AdminClient<BrokerChannel> {
    AdminClient::new(channel)
        .max_decoding_message_size(GRPC_MESSAGE_BYTES_MAX)
        .max_encoding_message_size(GRPC_MESSAGE_BYTES_MAX)
}
