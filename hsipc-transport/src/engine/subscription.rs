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
use super::event_credit::Claim;
use super::reader_signal::{QueueReceiver, QueueSender, ReaderSignal};
use crate::error::{Error, Result};

/// One event delivered to a subscription.
#[derive(Debug)]
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
    /// For an event that took the publisher's credit: gives it back once every subscription
    /// it went to has taken it.
    pub(crate) ticket: Option<Claim>,
}

/// A copy carries no claim on the publisher's credit (the original gives it back).
impl Clone for Delivery {
    fn clone(&self) -> Self {
        Delivery {
            from: self.from,
            topic: self.topic.clone(),
            body: self.body.clone(),
            missed: self.missed,
            ticket: None,
        }
    }
}

/// How a subscription receives events when its reader falls behind the publishers.
///
/// `Reliable` (the default) never loses an event: publishers are held back. The others are for
/// sensor-style streams where the latest value matters more than every value: the publisher
/// never waits for such a subscriber, and what it drops is counted in `missed`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Qos {
    /// Every event, in order. Each publisher may have at most the subscribing hub's event
    /// window (`HubBuilder::event_window`, default 1024 events, and
    /// `HubBuilder::event_window_bytes`, default 16 MiB of payloads) of its events queued and
    /// not yet taken in the hub (the credit is the hub's, shared by its subscriptions); beyond
    /// that its `publish` waits. A hub that gives no credit back for the publisher's whole publish
    /// timeout is cut off: the other subscribers get the event, every subscription of this hub
    /// reads an [`Error::EventsLost`] after what is already queued for it, and the publisher
    /// does not wait for it again until it has caught up (events meant for it meanwhile are
    /// dropped and counted). The queue holds at most 64 windows (64 publishers bursting at
    /// once); beyond, or for events that took no credit (sent before the publisher learned of
    /// this subscription), it drops the newest and counts them in `missed`.
    ///
    /// Read it on a thread (or task) of its own: a thread that publishes to its own hub's
    /// reliable subscription and reads it only afterwards waits once the window is full.
    #[default]
    Reliable,
    /// Keep the latest `n` events: when the queue is full the oldest queued event is dropped
    /// (ROS's `KEEP_LAST`), and the next event taken says how many were `missed`.
    KeepLast(usize),
    /// Keep the first `n` events: when the queue is full the new event is dropped, and the next
    /// event queued says how many were `missed`.
    DropNewest(usize),
}

/// The engine's end of one subscription's queue. Pushed to by one thread at a time (the
/// engine's deliveries are serialized, under its delivery lock), with no state lock held.
///
/// Pushing wakes nobody (unless the queue is full): the engine wakes the readers through
/// [`signal`](Self::signal) once it has queued the events of a whole delivery (a
/// batch read from a lane). A reader woken per event preempts the delivering thread on its CPU
/// for each one.
pub(crate) struct SubscriptionQueue {
    /// The queue (its end, when this drops, ends the readers' once they have taken the rest).
    tx: QueueSender<Queued>,
    qos: Qos,
    /// For [`Qos::KeepLast`]: the engine's own receiver, to take the oldest event out.
    oldest: Option<flume::Receiver<Queued>>,
    /// Events dropped at the head, for the reader to add to the next event it takes.
    evicted: Arc<AtomicU64>,
    /// Events dropped at the tail, added to the next event queued (or, if none comes, reported
    /// by the reader once it has emptied the queue).
    refused: Arc<AtomicU64>,
    /// The hub's count of events its subscription queues dropped.
    dropped: Arc<AtomicU64>,
}

/// What a subscription's queue holds.
pub(crate) enum Queued {
    Event(Delivery),
    /// A publisher cut this hub off and dropped events meant for it.
    Lost {
        publisher: Arc<str>,
        missed: u64,
    },
}

/// The subscriber dropped its end.
pub(crate) struct Gone;

impl SubscriptionQueue {
    /// A queue as `qos` says; a reliable one holds `reliable_capacity` events at most (credit
    /// keeps each publisher within its window, so this bounds only the unexpected: more
    /// publishers bursting at once than it has room for, or events that took no credit).
    pub(crate) fn new(qos: Qos, reliable_capacity: usize, dropped: Arc<AtomicU64>) -> (Self, EventReceiver) {
        let (tx, rx) = super::reader_signal::queue(match qos {
            // Full, it drops the newest and counts them, as `DropNewest` does.
            Qos::Reliable => reliable_capacity.max(1),
            Qos::KeepLast(n) | Qos::DropNewest(n) => n.max(1),
        });
        let oldest = matches!(qos, Qos::KeepLast(_)).then(|| rx.channel());
        let evicted = Arc::new(AtomicU64::new(0));
        let refused = Arc::new(AtomicU64::new(0));
        let queue = SubscriptionQueue { tx, qos, oldest, evicted: evicted.clone(), refused: refused.clone(), dropped };
        (queue, EventReceiver { queue: rx, evicted, refused, subscription: None })
    }

    /// What wakes its readers: the engine wakes it once the events of a delivery are queued
    /// (see `ReaderWakes`).
    pub(crate) fn signal(&self) -> &Arc<ReaderSignal> {
        self.tx.signal()
    }

    /// Whether events queued here hold their publisher back.
    pub(crate) fn is_reliable(&self) -> bool {
        self.qos == Qos::Reliable
    }

    /// Tells the reader that a publisher dropped events meant for it. A lossy queue that is
    /// full counts them in the next event instead.
    pub(crate) fn push_lost(&self, publisher: Arc<str>, missed: u64) -> Result<(), Gone> {
        match self.tx.try_send(Queued::Lost { publisher, missed }) {
            Ok(()) => Ok(()),
            Err(flume::TrySendError::Disconnected(_)) => Err(Gone),
            Err(flume::TrySendError::Full(_)) => {
                self.refused.fetch_add(missed, Ordering::Relaxed);
                Ok(())
            }
        }
    }

    /// Queues an event, never waiting.
    pub(crate) fn push(&self, mut d: Delivery) -> Result<(), Gone> {
        // Read first: the reader reads this counter for every event, and a swap would take
        // its cache line from the reader's CPU each time.
        if self.refused.load(Ordering::Relaxed) != 0 {
            d.missed += self.refused.swap(0, Ordering::Relaxed);
        }
        let (mut item, mut full) = (Queued::Event(d), false);
        loop {
            match self.tx.try_send(item) {
                Ok(()) => break,
                Err(flume::TrySendError::Disconnected(_)) => return Err(Gone),
                Err(flume::TrySendError::Full(back)) => {
                    item = back;
                    full = true;
                    let Some(rx) = &self.oldest else {
                        // Drop-newest: this event and what it had missed count for the next.
                        let missed = match &item {
                            Queued::Event(d) => d.missed + 1,
                            Queued::Lost { missed, .. } => *missed,
                        };
                        self.refused.fetch_add(missed, Ordering::Relaxed);
                        self.dropped.fetch_add(1, Ordering::Relaxed);
                        break;
                    };
                    // Drop-oldest: the loss is reported with the event that becomes the head.
                    // (If the reader took one meanwhile, there is room now and this finds none
                    // to drop, or drops the next oldest.)
                    match rx.try_recv() {
                        Ok(Queued::Event(old)) => {
                            self.evicted.fetch_add(old.missed + 1, Ordering::Relaxed);
                            self.dropped.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(Queued::Lost { missed, .. }) => {
                            self.evicted.fetch_add(missed, Ordering::Relaxed);
                        }
                        Err(_) => {}
                    }
                }
            }
        }
        if full {
            // A reader that waited for the rest of the delivery would leave the queue full
            // meanwhile: it is woken now (the event placed or counted), to take what it can.
            self.tx.signal().wake();
        }
        Ok(())
    }
}

/// The subscriber's end of a subscription's queue: [`Delivery`]s with every loss counted.
///
/// Under [`Qos::KeepLast`], events evicted from the head are counted in the `missed` of
/// the next event taken. The total is exact; if the reader takes an event at the very moment
/// another is evicted, the count may land one event early. Events dropped at the tail (a full
/// [`Qos::DropNewest`] queue) are counted in the next event queued, or, if the reader empties
/// the queue first, read as [`Error::EventsDropped`]. A publisher's cut-off of a reliable
/// subscription is read as [`Error::EventsLost`].
///
/// Dropping it unsubscribes.
#[derive(Debug)]
pub struct EventReceiver {
    /// The queue (a dropped receiver's task waker goes with it).
    queue: QueueReceiver<Queued>,
    evicted: Arc<AtomicU64>,
    /// Events the queue dropped at its tail and no later event has reported yet.
    refused: Arc<AtomicU64>,
    subscription: Option<(Handle, SubscriptionId)>,
}

impl std::fmt::Debug for Queued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Queued::Event(d) => d.fmt(f),
            Queued::Lost { publisher, missed } => write!(f, "Lost({missed} from {publisher})"),
        }
    }
}

impl EventReceiver {
    /// Ties the receiver to its subscription, which ends when it drops.
    pub(crate) fn attach(mut self, handle: Handle, id: SubscriptionId) -> Self {
        self.subscription = Some((handle, id));
        self
    }

    /// Completes what was taken from the channel: adds the events evicted before it to its
    /// `missed`, and gives the publisher its credit back.
    fn take(&self, q: Queued) -> Result<Delivery> {
        match q {
            Queued::Event(mut d) => {
                d.missed += self.evicted.swap(0, Ordering::Relaxed);
                match (d.ticket.take(), &self.subscription) {
                    // This thread holds no lock of the engine's: a batch of credit goes back
                    // from here, without waking the clock (two thread wake-ups less).
                    (Some(claim), Some((handle, _))) => {
                        if claim.taken_here() {
                            handle.return_event_credit();
                        }
                    }
                    (claim, None) => drop(claim),
                    (None, _) => {}
                }
                Ok(d)
            }
            Queued::Lost { publisher, missed } => Err(Error::EventsLost { publisher: publisher.to_string(), missed }),
        }
    }

    /// With the queue emptied: the events it dropped at its tail that no later event reported
    /// (a burst's lost end is told when the reader gets there, not with the next burst).
    fn dropped_tail(&self) -> Option<Error> {
        // The counter first: it is almost always zero, and looking at the queue takes its lock.
        if self.refused.load(Ordering::Relaxed) == 0 || !self.queue.is_empty() {
            return None;
        }
        let missed = self.refused.swap(0, Ordering::Relaxed);
        (missed > 0).then_some(Error::EventsDropped { missed })
    }

    /// The next event, waiting until `deadline`: [`Error::Timeout`] if none came,
    /// [`Error::Closed`] once the hub is closed.
    pub fn recv_deadline(&self, deadline: Instant) -> Result<Delivery> {
        if let Some(e) = self.dropped_tail() {
            return Err(e);
        }
        match self.queue.wait(Some(deadline)) {
            Some(Some(q)) => self.take(q),
            Some(None) => Err(Error::Closed),
            None => Err(Error::Timeout),
        }
    }

    /// The next event, waiting as long as it takes; `None` once the hub is closed.
    pub fn recv(&self) -> Option<Result<Delivery>> {
        if let Some(e) = self.dropped_tail() {
            return Some(Err(e));
        }
        self.queue.wait(None).flatten().map(|q| self.take(q))
    }

    /// The next event if one is queued.
    pub fn try_recv(&self) -> Option<Result<Delivery>> {
        match self.queue.try_take() {
            Some(Some(q)) => Some(self.take(q)),
            _ => self.dropped_tail().map(Err),
        }
    }
}

/// From async code: the events, ending when the hub closes.
impl Stream for EventReceiver {
    type Item = Result<Delivery>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Delivery>>> {
        let this = self.get_mut();
        if let Some(e) = this.dropped_tail() {
            return Poll::Ready(Some(Err(e)));
        }
        let queued = this.queue.poll(cx);
        queued.map(|q| q.map(|q| this.take(q)))
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
        Delivery { from: PeerId(1), topic: Topic::new("t").unwrap(), body: Bytes::from(vec![n]), missed, ticket: None }
    }

    /// The events queued now (not a tail report, which only an empty queue gives).
    fn drain(rx: &EventReceiver) -> Vec<(u8, u64)> {
        std::iter::from_fn(|| (!rx.queue.is_empty()).then(|| rx.try_recv()).flatten())
            .map(|d| d.unwrap())
            .map(|d| (d.body[0], d.missed))
            .collect()
    }

    #[test]
    fn drop_newest_reports_the_gap_on_the_next_event_queued() {
        let (q, rx) = SubscriptionQueue::new(Qos::DropNewest(2), 1, Arc::default());
        for (n, missed) in [(0, 0), (1, 0), (2, 0), (3, 5), (4, 0)] {
            assert!(q.push(ev(n, missed)).is_ok());
        }
        assert_eq!(rx.try_recv().unwrap().unwrap().body[0], 0);
        q.push(ev(5, 1)).ok().unwrap();
        // Lost before 5: 2, 3 and the 5 that 3 had missed, 4, and the 1 that 5 missed itself.
        assert_eq!(drain(&rx), [(1, 0), (5, 1 + 1 + 6 + 1)]);
    }

    #[test]
    fn a_drop_newest_tail_is_told_once_the_queue_is_empty() {
        let (q, rx) = SubscriptionQueue::new(Qos::DropNewest(2), 1, Arc::default());
        for n in 0..5 {
            assert!(q.push(ev(n, 0)).is_ok());
        }
        assert_eq!(drain(&rx), [(0, 0), (1, 0)]);
        assert!(matches!(rx.try_recv(), Some(Err(Error::EventsDropped { missed: 3 }))));
        assert!(rx.try_recv().is_none());
    }

    #[test]
    fn drop_oldest_reports_the_gap_on_the_new_head() {
        let (q, rx) = SubscriptionQueue::new(Qos::KeepLast(2), 1, Arc::default());
        for (n, missed) in [(0, 0), (1, 3), (2, 0), (3, 0)] {
            assert!(q.push(ev(n, missed)).is_ok());
        }
        // 0 and 1 (which had missed 3) were evicted: 2 is the head and carries 1 + 4.
        assert_eq!(drain(&rx), [(2, 5), (3, 0)]);
        assert!(matches!(rx.recv_deadline(Instant::now() + Duration::from_millis(1)), Err(Error::Timeout)));
    }

    /// How long a woken reader's wait may take here: a reader that is not woken waits out its
    /// deadline (`WAIT`) and finds the events only then, so it must be back well before.
    const WAIT: Duration = Duration::from_secs(60);

    fn well_before_the_deadline(started: Instant) {
        assert!(started.elapsed() < WAIT / 2, "the reader was not woken: it waited out its deadline");
    }

    /// Until a reader on another thread has armed `rx`'s signal (it is about to sleep).
    fn until_armed(signal: &ReaderSignal) {
        let start = Instant::now();
        while !signal.armed.load(Ordering::SeqCst) {
            assert!(start.elapsed() < Duration::from_secs(60), "the reader never waited");
            std::thread::yield_now();
        }
    }

    #[test]
    fn a_reader_waiting_on_another_thread_gets_what_a_delivery_queued() {
        let (q, rx) = SubscriptionQueue::new(Qos::Reliable, 8, Arc::default());
        let signal = rx.queue.signal.clone();
        let started = Instant::now();
        let reader = std::thread::spawn(move || {
            (0..3).map(|_| rx.recv_deadline(started + WAIT).map(|d| d.body[0])).collect::<Vec<_>>()
        });
        until_armed(&signal);
        for n in 0..3 {
            q.push(ev(n, 0)).ok().unwrap();
        }
        q.signal().wake();
        let got: Vec<u8> = reader.join().unwrap().into_iter().map(|r| r.unwrap()).collect();
        well_before_the_deadline(started);
        assert_eq!(got, [0, 1, 2]);
    }

    #[test]
    fn a_waiting_reader_takes_what_is_queued_then_ends_with_the_engine_s_end() {
        let (q, rx) = SubscriptionQueue::new(Qos::Reliable, 8, Arc::default());
        let signal = rx.queue.signal.clone();
        let started = Instant::now();
        let reader = std::thread::spawn(move || {
            std::iter::from_fn(|| match rx.recv_deadline(started + WAIT) {
                Ok(d) => Some(d.body[0]),
                Err(Error::Closed) => None,
                Err(e) => panic!("{e}"),
            })
            .collect::<Vec<_>>()
        });
        until_armed(&signal);
        q.push(ev(7, 0)).ok().unwrap();
        // No wake-up for the event: the engine's end going wakes the reader, which takes it.
        drop(q);
        assert_eq!(reader.join().unwrap(), [7]);
        well_before_the_deadline(started);
    }

    #[test]
    fn every_thread_waiting_on_a_shared_receiver_is_woken() {
        let (q, rx) = SubscriptionQueue::new(Qos::Reliable, 8, Arc::default());
        let (rx, started) = (Arc::new(rx), Instant::now());
        let readers: Vec<_> = (0..3)
            .map(|_| {
                let rx = rx.clone();
                std::thread::spawn(move || rx.recv_deadline(started + WAIT).map(|d| d.body[0]))
            })
            .collect();
        // Until all three wait.
        while {
            let w = rx.queue.signal.wakers.lock().unwrap();
            w.thread.iter().count() + w.more_threads.len() < 3
        } {
            assert!(started.elapsed() < WAIT / 2, "the readers never waited");
            std::thread::yield_now();
        }
        for n in 0..3 {
            q.push(ev(n, 0)).ok().unwrap();
        }
        q.signal().wake();
        let mut got: Vec<u8> = readers.into_iter().map(|r| r.join().unwrap().unwrap()).collect();
        well_before_the_deadline(started);
        got.sort();
        assert_eq!(got, [0, 1, 2]);
    }

    #[test]
    fn a_reader_that_gives_up_leaves_no_waker_behind() {
        let (_q, rx) = SubscriptionQueue::new(Qos::Reliable, 8, Arc::default());
        let rx = Arc::new(rx);
        for _ in 0..3 {
            let rx = rx.clone();
            let t = std::thread::spawn(move || rx.recv_deadline(Instant::now() + Duration::from_millis(1)).is_err());
            assert!(t.join().unwrap(), "nothing was queued: a timeout");
        }
        let w = rx.queue.signal.wakers.lock().unwrap();
        assert!(w.thread.is_none() && w.more_threads.is_empty());
    }

    #[test]
    fn a_full_lossy_queue_wakes_its_reader() {
        let (q, rx) = SubscriptionQueue::new(Qos::KeepLast(1), 8, Arc::default());
        let signal = rx.queue.signal.clone();
        let started = Instant::now();
        let reader = std::thread::spawn(move || rx.recv_deadline(started + WAIT).is_ok());
        until_armed(&signal);
        q.push(ev(0, 0)).ok().unwrap();
        // Full: this push wakes the reader, with no wake-up of a delivery.
        q.push(ev(1, 0)).ok().unwrap();
        assert!(reader.join().unwrap());
        well_before_the_deadline(started);
    }

    /// A dropped receiver leaves no task waker behind (it would keep the task alive until the
    /// engine's end of the queue goes).
    #[test]
    fn a_dropped_receiver_s_task_waker_goes() {
        let (waker, _count) = crate::engine::reader_signal::counting::waker();
        let (q, mut rx) = SubscriptionQueue::new(Qos::Reliable, 8, Arc::default());
        assert!(Pin::new(&mut rx).poll_next(&mut Context::from_waker(&waker)).is_pending());
        assert!(q.signal().wakers.lock().unwrap().task.is_some());
        drop(rx);
        assert!(q.signal().wakers.lock().unwrap().task.is_none());
    }

    #[test]
    fn an_async_reader_is_woken_by_a_delivery_and_not_by_a_push_alone() {
        let (waker, count) = crate::engine::reader_signal::counting::waker();
        let mut cx = Context::from_waker(&waker);
        let (q, mut rx) = SubscriptionQueue::new(Qos::Reliable, 8, Arc::default());
        assert!(Pin::new(&mut rx).poll_next(&mut cx).is_pending());
        q.push(ev(1, 0)).ok().unwrap();
        q.push(ev(2, 0)).ok().unwrap();
        assert_eq!(count.get(), 0, "queued, not yet woken");
        q.signal().wake();
        assert_eq!(count.get(), 1, "one wake-up for the delivery");
        let mut take = || match Pin::new(&mut rx).poll_next(&mut cx) {
            Poll::Ready(Some(Ok(d))) => d.body[0],
            other => panic!("expected an event, got {other:?}"),
        };
        assert_eq!([take(), take()], [1, 2]);
        // Nobody armed the signal since: a wake-up finds no reader to wake.
        q.signal().wake();
        assert_eq!(count.get(), 1);
    }

    #[test]
    fn a_dropped_receiver_is_reported() {
        let (q, rx) = SubscriptionQueue::new(Qos::DropNewest(2), 1, Arc::default());
        drop(rx);
        assert!(q.push(ev(0, 0)).is_err());
    }
}
