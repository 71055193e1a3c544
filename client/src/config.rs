//! Client-wide settings: timeouts and the retry budget, each a named field with its unit last.

use std::time::Duration;

/// Default time to open a TCP + HTTP/2 connection to one broker (milliseconds).
pub const CONNECT_TIMEOUT_MS_DEFAULT: u64 = 3_000;
/// Default deadline of one unary call, not counting a fetch's long-poll wait (milliseconds).
pub const REQUEST_TIMEOUT_MS_DEFAULT: u64 = 30_000;
/// Default number of retries after a retriable error (so at most this + 1 attempts).
pub const RETRIES_MAX_DEFAULT: u32 = 5;
/// Default first retry pause (milliseconds); it doubles per retry.
pub const RETRY_BACKOFF_MS_MIN_DEFAULT: u64 = 50;
/// Default longest retry pause (milliseconds).
pub const RETRY_BACKOFF_MS_MAX_DEFAULT: u64 = 1_000;

/// How a [`Client`](crate::Client) connects, waits and retries.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Time to open a connection to one broker (milliseconds). Also bounds each bootstrap attempt's
    /// metadata request, so a dead address costs at most twice this.
    pub connect_timeout_ms: u64,
    /// Deadline of one unary call (milliseconds); a fetch gets its `max_wait_ms` on top.
    pub request_timeout_ms: u64,
    /// Retries after `UNAVAILABLE` or "not leader" before the error is returned.
    pub retries_max: u32,
    /// First pause between retries (milliseconds); doubles each retry up to `retry_backoff_ms_max`.
    pub retry_backoff_ms_min: u64,
    /// Longest pause between retries (milliseconds).
    pub retry_backoff_ms_max: u64,
    /// TLS to every broker; `None`: plaintext.
    pub tls: Option<crate::tls::ClientTls>,
    /// The bearer token sent with every request (docs/security.md); `None`: none.
    pub token: Option<crate::token::Token>,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            connect_timeout_ms: CONNECT_TIMEOUT_MS_DEFAULT,
            request_timeout_ms: REQUEST_TIMEOUT_MS_DEFAULT,
            retries_max: RETRIES_MAX_DEFAULT,
            retry_backoff_ms_min: RETRY_BACKOFF_MS_MIN_DEFAULT,
            retry_backoff_ms_max: RETRY_BACKOFF_MS_MAX_DEFAULT,
            tls: None,
            token: None,
        }
    }
}

impl ClientConfig {
    pub(crate) fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }

    pub(crate) fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }
}
