//! A subscription's bounded queue and what happens when it is full.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use futures_core::Stream;
use proto::{PeerId, SubscriptionId, Topic};

use super::Handle;
use crate::error::{Error, Result};

/// One event delivered to a subscription.
#[derive(Clone, Debug)]
pub struct Delivery {
    /// The publisher.
    pub from: PeerId,
    /// The topic it was published on.
    pub topic: Topic,
    /// The event body (CBOR).
    pub body: Bytes,
    /// Events lost before this one (dropped in transit, or because this subscription's queue
    /// was full).
    pub missed: u64,
}

/// What a full subscription queue does with one more event. Either way the subscriber is told
/// how many events it lost, in [`Delivery::missed`] of the next event it receives.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Overflow {
    /// Drop the oldest queued event to make room: a slow subscriber always sees the latest
    /// events (like ROS's `KEEP_LAST`). The default.
    #[default]
    DropOldest,
    /// Drop the new event: a slow subscriber sees the earliest events, then a gap.
    DropNewest,
}

/// The engine's end of one subscription's queue. Pushed to by one thread at a time (the
/// engine's deliveries are serialized), with no engine lock held.
pub(crate) struct SubscriptionQueue {
    tx: flume::Sender<Delivery>,
    /// For [`Overflow::DropOldest`]: the engine's own receiver, to take the oldest event out.
    oldest: Option<flume::Receiver<Delivery>>,
    /// Events dropped at the head, for the reader to add to the next event it takes.
    evicted: Arc<AtomicU64>,
    /// Events dropped at the tail, added to the next event queued.
    refused: AtomicU64,
    /// The hub's count of events its subscription queues dropped.
    dropped: Arc<AtomicU64>,
}

/// The subscriber dropped its end.
pub(crate) struct Gone;

impl SubscriptionQueue {
    pub(crate) fn new(capacity: usize, overflow: Overflow, dropped: Arc<AtomicU64>) -> (Self, EventReceiver) {
        let (tx, rx) = flume::bounded(capacity.max(1));
        let oldest = (overflow == Overflow::DropOldest).then(|| rx.clone());
        let evicted = Arc::new(AtomicU64::new(0));
        let queue = SubscriptionQueue { tx, oldest, evicted: evicted.clone(), refused: AtomicU64::new(0), dropped };
        (queue, EventReceiver { rx, evicted, stream: None, subscription: None })
    }

    /// Queues an event, never waiting.
    pub(crate) fn push(&self, mut d: Delivery) -> Result<(), Gone> {
        d.missed += self.refused.load(Ordering::Relaxed);
        loop {
            match self.tx.try_send(d) {
                Ok(()) => {
                    self.refused.store(0, Ordering::Relaxed);
                    return Ok(());
                }
                Err(flume::TrySendError::Disconnected(_)) => return Err(Gone),
                Err(flume::TrySendError::Full(back)) => {
                    d = back;
                    let Some(rx) = &self.oldest else {
                        // Drop-newest: this event and what it had missed count for the next.
                        self.refused.store(d.missed + 1, Ordering::Relaxed);
                        self.dropped.fetch_add(1, Ordering::Relaxed);
                        return Ok(());
                    };
                    // Drop-oldest: the loss is reported with the event that becomes the head.
                    // (If the reader took one meanwhile, there is room now and this finds none
                    // to drop, or drops the next oldest.)
                    if let Ok(old) = rx.try_recv() {
                        self.evicted.fetch_add(old.missed + 1, Ordering::Relaxed);
                        self.dropped.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
    }
}

/// The subscriber's end of a subscription's queue: [`Delivery`]s with every loss counted.
///
/// Under [`Overflow::DropOldest`], events evicted from the head are counted in the `missed` of
/// the next event taken. The total is exact; if the reader takes an event at the very moment
/// another is evicted, the count may land one event early.
///
/// Dropping it unsubscribes.
#[derive(Debug)]
pub struct EventReceiver {
    rx: flume::Receiver<Delivery>,
    evicted: Arc<AtomicU64>,
    stream: Option<flume::r#async::RecvStream<'static, Delivery>>,
    subscription: Option<(Handle, SubscriptionId)>,
}

impl EventReceiver {
    /// Ties the receiver to its subscription, which ends when it drops.
    pub(crate) fn attach(mut self, handle: Handle, id: SubscriptionId) -> Self {
        self.subscription = Some((handle, id));
        self
    }

    /// Completes a delivery taken from the channel: adds the events evicted before it to its
    /// `missed`.
    fn take(&self, mut d: Delivery) -> Delivery {
        d.missed += self.evicted.swap(0, Ordering::Relaxed);
        d
    }

    /// The next event, waiting until `deadline`: [`Error::Timeout`] if none came,
    /// [`Error::Closed`] once the hub is closed.
    pub fn recv_deadline(&self, deadline: Instant) -> Result<Delivery> {
        match self.rx.recv_deadline(deadline) {
            Ok(d) => Ok(self.take(d)),
            Err(flume::RecvTimeoutError::Timeout) => Err(Error::Timeout),
            Err(flume::RecvTimeoutError::Disconnected) => Err(Error::Closed),
        }
    }

    /// The next event, waiting as long as it takes; `None` once the hub is closed.
    pub fn recv(&self) -> Option<Delivery> {
        self.rx.recv().ok().map(|d| self.take(d))
    }

    /// The next event if one is queued.
    pub fn try_recv(&self) -> Option<Delivery> {
        self.rx.try_recv().ok().map(|d| self.take(d))
    }
}

/// From async code: the events, ending when the hub closes.
impl Stream for EventReceiver {
    type Item = Delivery;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Delivery>> {
        let this = self.get_mut();
        let rx = &this.rx;
        let stream = this.stream.get_or_insert_with(|| rx.clone().into_stream());
        Pin::new(stream).poll_next(cx).map(|d| d.map(|d| this.take(d)))
    }
}

impl Drop for EventReceiver {
    fn drop(&mut self) {
        if let Some((handle, id)) = self.subscription.take() {
            handle.unsubscribe(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;
    use proto::{PeerId, Topic};

    use super::*;

    fn ev(n: u8, missed: u64) -> Delivery {
        Delivery { from: PeerId(1), topic: Topic::new("t").unwrap(), body: Bytes::from(vec![n]), missed }
    }

    fn drain(rx: &EventReceiver) -> Vec<(u8, u64)> {
        std::iter::from_fn(|| rx.try_recv()).map(|d| (d.body[0], d.missed)).collect()
    }

    #[test]
    fn drop_newest_reports_the_gap_on_the_next_event_queued() {
        let (q, rx) = SubscriptionQueue::new(2, Overflow::DropNewest, Arc::default());
        for (n, missed) in [(0, 0), (1, 0), (2, 0), (3, 5), (4, 0)] {
            assert!(q.push(ev(n, missed)).is_ok());
        }
        assert_eq!(drain(&rx), [(0, 0), (1, 0)]);
        q.push(ev(5, 1)).ok().unwrap();
        // Lost: 2, 3 and the 5 that 3 had missed, 4, and the 1 that 5 missed itself.
        assert_eq!(drain(&rx), [(5, 1 + 1 + 6 + 1)]);
    }

    #[test]
    fn drop_oldest_reports_the_gap_on_the_new_head() {
        let (q, rx) = SubscriptionQueue::new(2, Overflow::DropOldest, Arc::default());
        for (n, missed) in [(0, 0), (1, 3), (2, 0), (3, 0)] {
            assert!(q.push(ev(n, missed)).is_ok());
        }
        // 0 and 1 (which had missed 3) were evicted: 2 is the head and carries 1 + 4.
        assert_eq!(drain(&rx), [(2, 5), (3, 0)]);
        assert!(matches!(rx.recv_deadline(Instant::now() + Duration::from_millis(1)), Err(Error::Timeout)));
    }

    #[test]
    fn a_dropped_receiver_is_reported() {
        let (q, rx) = SubscriptionQueue::new(2, Overflow::DropNewest, Arc::default());
        drop(rx);
        assert!(q.push(ev(0, 0)).is_err());
    }
}
