//! The one error type of the SDK. Expected conditions (an unknown topic, a refused argument, a broker that
//! answered with a gRPC status) are variants a caller can match on; nothing here is a bare string error.
//!
//! `ClientError` is `Clone` because one failed publish fails every record of its batch, and each record's
//! [`Delivery`](crate::Delivery) receives its own copy of the error.

use std::fmt;

use ferry_protocol::batch::BatchError;

/// One bootstrap address the client tried, and why it did not answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectAttempt {
    /// The address as given (`host:port`).
    pub address: String,
    /// Why the attempt failed, with the causes of the underlying error.
    pub reason: String,
}

/// Everything that can go wrong in the Ferry client.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    /// No bootstrap broker answered a metadata request.
    #[error("could not reach any bootstrap broker: {}", attempts_text(.attempts))]
    Connect {
        /// Every address tried, in order, with the reason it failed.
        attempts: Vec<ConnectAttempt>,
    },
    /// A broker answered with a gRPC status other than OK.
    #[error("{}", status_text(*.code, .message))]
    Status {
        /// The gRPC status code.
        code: tonic::Code,
        /// The status message the broker sent (or the transport's reason).
        message: String,
    },
    /// The caller passed an argument the client refuses before asking a broker.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The topic is not in the cluster metadata.
    #[error("topic '{0}' does not exist")]
    UnknownTopic(String),
    /// The partition is out of range for the topic.
    #[error("topic '{topic}' has {partitions} partitions; partition {partition} does not exist")]
    UnknownPartition {
        /// The topic.
        topic: String,
        /// The partition asked for.
        partition: u32,
        /// How many partitions the topic has.
        partitions: u32,
    },
    /// A batch read from a broker failed validation. Never skipped: a consumer must not silently lose data.
    #[error("corrupt batch in topic '{topic}' partition {partition}: {reason}")]
    CorruptBatch {
        /// The topic.
        topic: String,
        /// The partition.
        partition: u32,
        /// What the validation found. Part of the message rather than a `source`, so the reason is
        /// printed once whether or not the printer walks error sources.
        reason: BatchError,
    },
    /// One record would not fit in the largest batch the producer builds.
    #[error("record is {size_bytes} bytes; the producer's batch limit allows {max_bytes} bytes per record")]
    RecordTooLarge {
        /// Size of the record in a batch (bytes).
        size_bytes: usize,
        /// Largest record the producer accepts (bytes).
        max_bytes: usize,
    },
    /// The producer was closed (or its background task stopped) before the record was acknowledged.
    #[error("producer is closed")]
    ProducerClosed,
    /// The group consumer was closed.
    #[error("the group consumer is closed")]
    Closed,
    /// A call did not complete within the client's deadline.
    #[error("request timed out after {timeout_ms} ms")]
    Timeout {
        /// The deadline that passed (milliseconds).
        timeout_ms: u64,
    },
    /// A broker's answer broke the protocol (for example a publish acknowledgement for the wrong partition).
    #[error("unexpected answer from broker: {0}")]
    Protocol(String),
    /// The configured bearer token could not be had (its file unreadable or empty, its callback failing)
    /// and none was had before: the request is not sent anonymously.
    #[error("no bearer token: {0}")]
    Token(String),
}

impl ClientError {
    /// The gRPC status code, when the error is a broker's status.
    pub fn code(&self) -> Option<tonic::Code> {
        match self {
            ClientError::Status { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// Builds the error from a gRPC status, keeping the transport's causes when the message alone says
    /// little (a refused connection arrives as a bare "transport error").
    pub fn from_status(status: &tonic::Status) -> Self {
        let mut message = status.message().to_owned();
        let mut source = std::error::Error::source(status);
        while let Some(cause) = source {
            let text = cause.to_string();
            if !message.contains(&text) {
                if !message.is_empty() {
                    message.push_str(": ");
                }
                message.push_str(&text);
            }
            source = cause.source();
        }
        ClientError::Status {
            code: status.code(),
            message,
        }
    }
}

impl From<tonic::Status> for ClientError {
    fn from(status: tonic::Status) -> Self {
        ClientError::from_status(&status)
    }
}

/// Text of a transport-level error with all its causes, `outer: inner: root`.
pub(crate) fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

fn attempts_text(attempts: &[ConnectAttempt]) -> String {
    if attempts.is_empty() {
        return "no addresses given".to_owned();
    }
    let parts: Vec<String> = attempts
        .iter()
        .map(|a| format!("{} ({})", a.address, a.reason))
        .collect();
    parts.join("; ")
}

/// The status message as a user should read it: the broker's own words, which already name the topic or
/// partition. Only an unreachable broker gets a prefix, because its message comes from the transport.
fn status_text(code: tonic::Code, message: &str) -> StatusText<'_> {
    StatusText { code, message }
}

struct StatusText<'a> {
    code: tonic::Code,
    message: &'a str,
}

impl fmt::Display for StatusText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.code, self.message.is_empty()) {
            (tonic::Code::Unavailable, true) => write!(f, "broker unavailable"),
            (tonic::Code::Unavailable, false) => write!(f, "broker unavailable: {}", self.message),
            (code, true) => write!(f, "{}", code.description()),
            (_, false) => write!(f, "{}", self.message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_prints_the_broker_message_only() {
        let err = ClientError::from(tonic::Status::not_found("topic 'x' does not exist"));
        assert_eq!(err.to_string(), "topic 'x' does not exist");
        assert_eq!(err.code(), Some(tonic::Code::NotFound));
        let err = ClientError::from(tonic::Status::unavailable("tcp connect error"));
        assert_eq!(err.to_string(), "broker unavailable: tcp connect error");
    }

    #[test]
    fn connect_lists_every_address() {
        let err = ClientError::Connect {
            attempts: vec![
                ConnectAttempt {
                    address: "a:1".into(),
                    reason: "refused".into(),
                },
                ConnectAttempt {
                    address: "b:2".into(),
                    reason: "timed out".into(),
                },
            ],
        };
        assert_eq!(
            err.to_string(),
            "could not reach any bootstrap broker: a:1 (refused); b:2 (timed out)"
        );
    }
}
