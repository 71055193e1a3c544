//! [`Delivery`]: the future a [`Producer::send`](crate::Producer::send) returns, resolved when the record's
//! batch is acknowledged (with the record's partition and offset) or has failed.
//!
//! A batch's records share one [`BatchOutcome`], made when the batch opens; each record's `Delivery` holds
//! it with the record's index in the batch. Nothing is allocated or signalled per record: the producer
//! task sets the outcome once per batch and wakes the deliveries that were polled before it.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, Waker};

use ferry_protocol::v1::PartitionAck;
use parking_lot::Mutex;

use crate::error::ClientError;
use crate::publish::record_offset;

/// Where an acknowledged record was stored: `(partition, offset)`.
pub type DeliveryResult = Result<(u32, u64), ClientError>;

/// How one batch ended, shared by its records' deliveries.
#[derive(Debug, Default)]
pub(crate) struct BatchOutcome {
    /// Set once, by the producer task.
    result: OnceLock<Result<PartitionAck, ClientError>>,
    /// Deliveries polled before the result was set, one slot each (a delivery polled again replaces its
    /// waker): bounded by the batch's records.
    wakers: Mutex<Vec<Waker>>,
}

impl BatchOutcome {
    /// Records how the batch ended and wakes the deliveries waiting for it. Only the first call counts:
    /// a batch ends once.
    pub(crate) fn complete(&self, result: Result<PartitionAck, ClientError>) {
        if self.result.set(result).is_err() {
            debug_assert!(false, "a batch completed twice");
            return;
        }
        // A delivery checks the result under this lock before it leaves a waker, so none is left behind.
        let wakers = std::mem::take(&mut *self.wakers.lock());
        for waker in wakers {
            waker.wake();
        }
    }

    /// Fails the batch with `err` unless it already ended: for a producer task that stops before it
    /// finished (its records can no longer be sent, and must not wait forever).
    pub(crate) fn abandon(&self, err: ClientError) {
        if self.result.get().is_none() {
            self.complete(Err(err));
        }
    }
}

/// Resolves to the record's `(partition, offset)` once acknowledged, or to why it was not stored.
/// Dropping it does not cancel the send.
#[derive(Debug)]
#[must_use = "a Delivery reports whether the record was stored; await it or drop it knowingly"]
pub struct Delivery {
    state: State,
}

#[derive(Debug)]
enum State {
    /// Failed before joining a batch.
    Failed(Option<ClientError>),
    Waiting {
        batch: Arc<BatchOutcome>,
        /// The record's index in its batch.
        index: u32,
        /// Its slot in `batch.wakers` and a copy of the waker it left there, once it left one: polled again
        /// with a waker that wakes the same task, it need not take the lock (the one it left is woken).
        registered: Option<(usize, Waker)>,
    },
}

impl Delivery {
    pub(crate) fn failed(err: ClientError) -> Self {
        Delivery {
            state: State::Failed(Some(err)),
        }
    }

    pub(crate) fn waiting(batch: Arc<BatchOutcome>, index: u32) -> Self {
        Delivery {
            state: State::Waiting {
                batch,
                index,
                registered: None,
            },
        }
    }
}

/// A record's answer from its batch's.
fn answer(result: &Result<PartitionAck, ClientError>, index: u32) -> DeliveryResult {
    match result {
        Ok(ack) => Ok((ack.partition, record_offset(ack, index))),
        Err(err) => Err(err.clone()),
    }
}

impl Future for Delivery {
    type Output = DeliveryResult;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.state {
            State::Failed(err) => {
                Poll::Ready(Err(err.take().expect("Delivery polled after it resolved")))
            }
            State::Waiting {
                batch,
                index,
                registered,
            } => {
                if let Some(result) = batch.result.get() {
                    return Poll::Ready(answer(result, *index));
                }
                // The result is not set, so the waker left earlier is still in the list or being woken.
                if registered
                    .as_ref()
                    .is_some_and(|(_, waker)| waker.will_wake(cx.waker()))
                {
                    return Poll::Pending;
                }
                let mut wakers = batch.wakers.lock();
                // Checked again under the lock `complete` takes after setting the result.
                if let Some(result) = batch.result.get() {
                    return Poll::Ready(answer(result, *index));
                }
                let waker = cx.waker().clone();
                match registered {
                    Some((i, left)) => {
                        wakers[*i] = waker.clone();
                        *left = waker;
                    }
                    None => {
                        *registered = Some((wakers.len(), waker.clone()));
                        wakers.push(waker);
                    }
                }
                Poll::Pending
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::publish::ack;
    use futures::FutureExt;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn every_record_of_a_batch_gets_its_own_offset() {
        let batch = Arc::new(BatchOutcome::default());
        let mut deliveries: Vec<Delivery> = (0..3)
            .map(|i| Delivery::waiting(batch.clone(), i))
            .collect();
        // Polled before the batch ends: each leaves a waker, and polling again keeps one slot each.
        for d in &mut deliveries {
            assert!(d.now_or_never_ref().is_none());
            assert!(d.now_or_never_ref().is_none());
        }
        assert_eq!(batch.wakers.lock().len(), 3);
        batch.complete(Ok(ack(4, 100, 3)));
        assert!(batch.wakers.lock().is_empty(), "woken and gone");
        let got: Vec<DeliveryResult> = futures::future::join_all(deliveries).await;
        let got: Vec<(u32, u64)> = got.into_iter().map(Result::unwrap).collect();
        assert_eq!(got, vec![(4, 100), (4, 101), (4, 102)]);
    }

    #[tokio::test]
    async fn a_failed_batch_fails_each_record_with_its_error() {
        let batch = Arc::new(BatchOutcome::default());
        let waiting = tokio::spawn(Delivery::waiting(batch.clone(), 0));
        let late = Delivery::waiting(batch.clone(), 1);
        batch.complete(Err(ClientError::ProducerClosed));
        assert!(matches!(
            waiting.await.unwrap(),
            Err(ClientError::ProducerClosed)
        ));
        assert!(matches!(late.await, Err(ClientError::ProducerClosed)));
    }

    struct CountWakes(AtomicUsize);

    impl std::task::Wake for CountWakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn a_delivery_polled_by_another_task_leaves_that_task_s_waker_in_its_slot() {
        let batch = Arc::new(BatchOutcome::default());
        let mut delivery = Delivery::waiting(batch.clone(), 0);
        let first = Arc::new(CountWakes(AtomicUsize::new(0)));
        let second = Arc::new(CountWakes(AtomicUsize::new(0)));
        let mut poll = |count: &Arc<CountWakes>| {
            let waker = Waker::from(count.clone());
            Pin::new(&mut delivery).poll(&mut Context::from_waker(&waker))
        };
        for count in [&first, &second, &second] {
            assert!(poll(count).is_pending());
        }
        assert_eq!(batch.wakers.lock().len(), 1, "one slot per delivery");
        batch.complete(Ok(ack(0, 7, 1)));
        let woken = |c: &Arc<CountWakes>| c.0.load(Ordering::SeqCst);
        assert_eq!((woken(&first), woken(&second)), (0, 1), "the latest waker");
        assert!(matches!(poll(&second), Poll::Ready(Ok((0, 7)))));
    }

    impl Delivery {
        /// Polls once with a no-op waker, keeping the delivery.
        fn now_or_never_ref(&mut self) -> Option<DeliveryResult> {
            (&mut *self).now_or_never()
        }
    }
}
