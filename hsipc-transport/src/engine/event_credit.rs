//! Event credit on the subscriber's side: returning it as the application takes events.

use proto::fast_map::FastMap as HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use proto::PeerId;

use super::alarm::Alarm;

/// One event's claim on its publisher's credit: dropped once every reliable subscription it
/// went to has taken it (or dropped it), which counts it as taken.
#[derive(Debug)]
pub(crate) struct Ticket(Arc<CreditAccount>);

impl Drop for Ticket {
    fn drop(&mut self) {
        self.0.taken_one();
    }
}

/// A delivery's share of its event's ticket, held only for its drop: the ticket itself when one
/// reliable subscription got the event (no allocation), a shared one when several did (it
/// counts when the last share goes).
#[derive(Debug)]
pub(crate) enum Claim {
    One(#[allow(dead_code)] Ticket),
    Shared(#[allow(dead_code)] Arc<Ticket>),
}

/// The events one publisher's credit paid for that the application has taken since the engine
/// last told the protocol. The clock thread hands them over (see `State::return_credit`): a
/// ticket may drop anywhere, under the state lock too, so it only counts and, now and then,
/// wakes the clock.
#[derive(Debug)]
pub(crate) struct CreditAccount {
    from: PeerId,
    taken: AtomicU32,
    /// Wake the clock when this many are taken.
    batch: u32,
    wake_clock: Alarm,
}

impl CreditAccount {
    fn taken_one(&self) {
        if self.taken.fetch_add(1, Ordering::Relaxed) + 1 == self.batch {
            self.wake_clock.ring();
        }
    }
}

/// The engine's side of the event credit this hub grants its publishers.
pub(super) struct EventCredit {
    /// Per publisher: the events of its this hub's application has taken.
    accounts: HashMap<PeerId, Arc<CreditAccount>>,
    batch: u32,
    wake_clock: Alarm,
}

impl EventCredit {
    pub(super) fn new(window: u32, wake_clock: Alarm) -> Self {
        EventCredit { accounts: HashMap::default(), batch: (window / 8).max(1), wake_clock }
    }

    /// A ticket for an event `from` paid for with this hub's credit.
    pub(super) fn ticket(&mut self, from: PeerId) -> Ticket {
        let account = self.accounts.entry(from).or_insert_with(|| {
            Arc::new(CreditAccount {
                from,
                taken: AtomicU32::new(0),
                batch: self.batch,
                wake_clock: self.wake_clock.clone(),
            })
        });
        Ticket(account.clone())
    }

    /// What the application has taken since the last call, per publisher.
    pub(super) fn taken(&self) -> impl Iterator<Item = (PeerId, u32)> + '_ {
        self.accounts.values().map(|a| (a.from, a.taken.swap(0, Ordering::Relaxed))).filter(|(_, n)| *n > 0)
    }

    pub(super) fn forget(&mut self, peer: PeerId) {
        self.accounts.remove(&peer);
    }
}
