//! [`Delivery`]: the future a [`Producer::send`](crate::Producer::send) returns, resolved when the record's
//! batch is acknowledged (with the record's partition and offset) or has failed.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::sync::oneshot;

use crate::error::ClientError;

/// Where an acknowledged record was stored: `(partition, offset)`.
pub type DeliveryResult = Result<(u32, u64), ClientError>;

/// The producer task's end of a [`Delivery`].
pub(crate) type DeliverySender = oneshot::Sender<DeliveryResult>;

/// Resolves to the record's `(partition, offset)` once acknowledged, or to why it was not stored.
/// Dropping it does not cancel the send.
#[derive(Debug)]
#[must_use = "a Delivery reports whether the record was stored; await it or drop it knowingly"]
pub struct Delivery {
    state: State,
}

#[derive(Debug)]
enum State {
    /// Failed before reaching the producer task.
    Failed(Option<ClientError>),
    Waiting(oneshot::Receiver<DeliveryResult>),
}

impl Delivery {
    pub(crate) fn failed(err: ClientError) -> Self {
        Delivery {
            state: State::Failed(Some(err)),
        }
    }

    pub(crate) fn waiting(receiver: oneshot::Receiver<DeliveryResult>) -> Self {
        Delivery {
            state: State::Waiting(receiver),
        }
    }
}

impl Future for Delivery {
    type Output = DeliveryResult;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.state {
            State::Failed(err) => {
                Poll::Ready(Err(err.take().expect("Delivery polled after it resolved")))
            }
            // A dropped sender means the producer task is gone without answering.
            State::Waiting(receiver) => Pin::new(receiver)
                .poll(cx)
                .map(|answer| answer.unwrap_or(Err(ClientError::ProducerClosed))),
        }
    }
}
