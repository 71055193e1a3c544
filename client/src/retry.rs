//! Which errors are worth another attempt, and how long to wait before it. Pure: the loops that retry live
//! in [`client`](crate::client) and [`subscribe`](crate::subscribe).
//!
//! Only two conditions are retried: the broker could not be reached (`UNAVAILABLE`) and the broker is not
//! the partition's leader (`FAILED_PRECONDITION` saying "not leader"). Both mean "ask again elsewhere once
//! metadata is fresh". Anything else is the broker's considered answer and goes back to the caller.
//!
//! A retried publish can be stored twice when the first attempt reached the leader but its answer was lost,
//! unless it comes from an idempotent producer (the default): the leader recognizes the retry by its
//! producer id and sequence number. Those publishes are also retried after a broken connection or a
//! timed-out attempt ([`is_retriable_when_idempotent`]).

use std::time::Duration;

use crate::config::ClientConfig;
use crate::error::ClientError;

/// Whether `err` may succeed if tried again after refreshing metadata.
pub fn is_retriable(err: &ClientError) -> bool {
    match err {
        ClientError::Status { code, message } => match code {
            tonic::Code::Unavailable => true,
            tonic::Code::FailedPrecondition => message.to_ascii_lowercase().contains("not leader"),
            _ => false,
        },
        _ => false,
    }
}

/// Whether `err` may succeed if tried again, for a request that is safe to repeat even when its first
/// attempt may have taken effect (an idempotent producer's publish: the leader recognizes the retry).
/// Besides [`is_retriable`]: a connection broken mid-request, a timed-out attempt, a replica that fenced
/// itself (full disk, storage failure: another replica takes over the partition), and ABORTED: a batch
/// ahead of its sequence whose predecessors had not arrived yet (they may be in flight or retrying).
pub fn is_retriable_when_idempotent(err: &ClientError) -> bool {
    is_retriable(err)
        || matches!(err, ClientError::Timeout { .. })
        || matches!(err, ClientError::Status { code, .. }
            if matches!(code, tonic::Code::Unknown | tonic::Code::Cancelled | tonic::Code::DeadlineExceeded
                | tonic::Code::ResourceExhausted | tonic::Code::DataLoss | tonic::Code::Aborted))
}

/// The pause before retry number `retry` (1 for the first retry): exponential from the configured minimum,
/// capped at the configured maximum.
pub fn backoff(config: &ClientConfig, retry: u32) -> Duration {
    let shift = retry.saturating_sub(1).min(20);
    let ms = config
        .retry_backoff_ms_min
        .saturating_mul(1u64 << shift)
        .min(config.retry_backoff_ms_max);
    Duration::from_millis(ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: tonic::Code, message: &str) -> ClientError {
        ClientError::Status {
            code,
            message: message.to_owned(),
        }
    }

    #[test]
    fn retries_only_unavailable_and_not_leader() {
        assert!(is_retriable(&status(tonic::Code::Unavailable, "")));
        assert!(is_retriable(&status(
            tonic::Code::FailedPrecondition,
            "broker 2 is not leader of orders/3"
        )));
        assert!(!is_retriable(&status(
            tonic::Code::FailedPrecondition,
            "partition is corrupt"
        )));
        assert!(!is_retriable(&status(tonic::Code::NotFound, "not leader")));
        assert!(!is_retriable(&ClientError::Timeout { timeout_ms: 1 }));
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let config = ClientConfig::default();
        let ms: Vec<u128> = (1..=7).map(|r| backoff(&config, r).as_millis()).collect();
        assert_eq!(ms, vec![50, 100, 200, 400, 800, 1000, 1000]);
        assert_eq!(backoff(&config, 1_000).as_millis(), 1000);
    }
}
