//! Event credit on the subscriber's side: returning it as the application takes events.

use proto::fast_map::FastMap as HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use proto::PeerId;

use super::alarm::Alarm;

/// One event's claim on its publisher's credit (the event, and its payload's bytes): dropped
/// once every reliable subscription it went to has taken it (or dropped it), which counts it as
/// taken.
#[derive(Debug)]
pub(crate) struct Ticket(Option<Arc<CreditAccount>>, u64);

impl Ticket {
    /// Counts the event as taken, on a thread that holds none of the engine's locks (a
    /// subscription's receiver): returns whether that completed a batch, for the caller to
    /// give the credit back itself ([`Handle::return_event_credit`]) instead of waking the
    /// clock for it.
    ///
    /// [`Handle::return_event_credit`]: super::Handle::return_event_credit
    pub(crate) fn taken_here(mut self) -> bool {
        self.0.take().is_some_and(|account| account.count_one(self.1))
    }
}

impl Drop for Ticket {
    /// Dropped anywhere (under the engine's locks too): wakes the clock for a batch.
    fn drop(&mut self) {
        if let Some(account) = self.0.take() {
            if account.count_one(self.1) {
                account.wake_clock.ring();
            }
        }
    }
}

/// A delivery's share of its event's ticket, held for its drop (or counted by the receiver that
/// takes the delivery, [`Claim::taken_here`]): the ticket itself when one
/// reliable subscription got the event (no allocation), a shared one when several did (it
/// counts when the last share goes).
#[derive(Debug)]
pub(crate) enum Claim {
    One(Ticket),
    Shared(Arc<Ticket>),
}

impl Claim {
    /// Counts this share as taken where no engine lock is held (see [`Ticket::taken_here`]):
    /// whether the caller is to give the credit back. A share that is not the last one
    /// counts nothing.
    pub(crate) fn taken_here(self) -> bool {
        match self {
            Claim::One(ticket) => ticket.taken_here(),
            Claim::Shared(shared) => Arc::try_unwrap(shared).is_ok_and(Ticket::taken_here),
        }
    }
}

/// The events one publisher's credit paid for that the application has taken since the engine
/// last told the protocol (see `State::return_credit`). A ticket may drop anywhere, under the
/// state lock too, so it only counts and, now and then, wakes the clock to hand them over; a
/// subscription's receiver, which holds no lock, hands them over itself.
#[derive(Debug)]
pub(crate) struct CreditAccount {
    from: PeerId,
    taken: AtomicU32,
    /// The taken events' payload bytes.
    taken_bytes: AtomicU64,
    /// Give the credit back when this many are taken (the receiver that completes the batch
    /// does; a ticket dropped elsewhere wakes the clock for it), or this many bytes.
    batch: u32,
    batch_bytes: u64,
    wake_clock: Alarm,
}

impl CreditAccount {
    /// Counts one event of `size` payload bytes taken: whether that completes a batch to give
    /// back (by count, or the first event to reach the batch's bytes).
    fn count_one(&self, size: u64) -> bool {
        let bytes = self.taken_bytes.fetch_add(size, Ordering::Relaxed);
        let by_bytes = bytes < self.batch_bytes && bytes.saturating_add(size) >= self.batch_bytes;
        // Released after the bytes: whoever takes the count (`EventCredit::taken`) takes the
        // bytes with it, never an event's count without its bytes.
        self.taken.fetch_add(1, Ordering::Release) + 1 == self.batch || by_bytes
    }
}

/// The engine's side of the event credit this hub grants its publishers.
pub(super) struct EventCredit {
    /// Per publisher: the events of its this hub's application has taken.
    accounts: HashMap<PeerId, Arc<CreditAccount>>,
    batch: u32,
    batch_bytes: u64,
    wake_clock: Alarm,
}

impl EventCredit {
    /// Credit for windows of `window` events and `window_bytes` bytes (0: no bound), given back
    /// an eighth at a time.
    pub(super) fn new(window: u32, window_bytes: u64, wake_clock: Alarm) -> Self {
        let batch_bytes = if window_bytes == 0 { u64::MAX } else { (window_bytes / 8).max(1) };
        EventCredit { accounts: HashMap::default(), batch: (window / 8).max(1), batch_bytes, wake_clock }
    }

    /// A ticket for an event `from` paid for with this hub's credit, of `size` payload bytes.
    pub(super) fn ticket(&mut self, from: PeerId, size: u64) -> Ticket {
        let account = self.accounts.entry(from).or_insert_with(|| {
            Arc::new(CreditAccount {
                from,
                taken: AtomicU32::new(0),
                taken_bytes: AtomicU64::new(0),
                batch: self.batch,
                batch_bytes: self.batch_bytes,
                wake_clock: self.wake_clock.clone(),
            })
        });
        Ticket(Some(account.clone()), size)
    }

    /// What the application has taken since the last call, per publisher: events and bytes.
    /// An event being counted meanwhile may give its bytes now and its count next time (never
    /// the other way round): bytes without a count are handed on too, not lost.
    pub(super) fn taken(&self) -> impl Iterator<Item = (PeerId, u32, u64)> + '_ {
        self.accounts
            .values()
            .map(|a| {
                let n = a.taken.swap(0, Ordering::Acquire);
                (a.from, n, a.taken_bytes.swap(0, Ordering::Relaxed))
            })
            .filter(|(_, n, bytes)| *n > 0 || *bytes > 0)
    }

    pub(super) fn forget(&mut self, peer: PeerId) {
        self.accounts.remove(&peer);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An event counted while its credit is handed over gives its bytes first: they are handed
    /// on without its count (the count follows), not dropped (a publisher's byte window would
    /// shrink for good).
    #[test]
    fn bytes_taken_without_their_count_are_handed_on() {
        let mut credit = EventCredit::new(1024, 1 << 20, Alarm::new().unwrap());
        let ticket = credit.ticket(PeerId(7), 300);
        let account = ticket.0.clone().unwrap();
        // The first half of `count_one`: the bytes are in, the count not yet.
        account.taken_bytes.fetch_add(300, Ordering::Relaxed);
        assert_eq!(credit.taken().collect::<Vec<_>>(), [(PeerId(7), 0, 300)]);
        account.taken.fetch_add(1, Ordering::Release);
        assert_eq!(credit.taken().collect::<Vec<_>>(), [(PeerId(7), 1, 0)]);
        assert_eq!(credit.taken().count(), 0);
    }

    #[test]
    fn a_batch_is_complete_by_count_or_by_bytes() {
        let mut credit = EventCredit::new(16, 800, Alarm::new().unwrap());
        // Batches of 2 events or 100 bytes.
        assert!(!credit.ticket(PeerId(1), 10).taken_here());
        assert!(credit.ticket(PeerId(1), 10).taken_here(), "the second event completes a batch");
        let _ = credit.taken().count();
        assert!(credit.ticket(PeerId(1), 150).taken_here(), "150 bytes complete a batch of 100");
    }
}
