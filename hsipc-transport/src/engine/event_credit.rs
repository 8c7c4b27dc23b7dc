//! Event credit on the subscriber's side (returning it as the application takes events) and
//! the publisher's (waiting for it).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Instant;

use proto::PeerId;

use super::alarm::Alarm;
use super::deferred::Deferred;
use crate::error::{Error, Result};

/// One event's claim on its publisher's credit: dropped once every reliable subscription it
/// went to has taken it (or dropped it), which counts it as taken.
#[derive(Debug)]
pub(crate) struct Ticket(Arc<CreditAccount>);

impl Drop for Ticket {
    fn drop(&mut self) {
        self.0.taken_one();
    }
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

/// The engine's side of event credit.
pub(super) struct EventCredit {
    /// Per publisher: the events of its this hub's application has taken.
    accounts: HashMap<PeerId, Arc<CreditAccount>>,
    /// Publishers waiting for a reliable subscriber's credit, with their deadlines. At the
    /// deadline they publish again, cutting the subscribers still without credit off.
    waiters: Vec<(flume::Sender<Result<()>>, Instant)>,
    batch: u32,
    wake_clock: Alarm,
}

impl EventCredit {
    pub(super) fn new(window: u32, wake_clock: Alarm) -> Self {
        EventCredit { accounts: HashMap::new(), waiters: Vec::new(), batch: (window / 8).max(1), wake_clock }
    }

    /// A ticket for an event `from` paid for with this hub's credit.
    pub(super) fn ticket(&mut self, from: PeerId) -> Arc<Ticket> {
        let account = self.accounts.entry(from).or_insert_with(|| {
            Arc::new(CreditAccount {
                from,
                taken: AtomicU32::new(0),
                batch: self.batch,
                wake_clock: self.wake_clock.clone(),
            })
        });
        Arc::new(Ticket(account.clone()))
    }

    /// What the application has taken since the last call, per publisher.
    pub(super) fn taken(&self) -> impl Iterator<Item = (PeerId, u32)> + '_ {
        self.accounts.values().map(|a| (a.from, a.taken.swap(0, Ordering::Relaxed))).filter(|(_, n)| *n > 0)
    }

    pub(super) fn forget(&mut self, peer: PeerId) {
        self.accounts.remove(&peer);
    }

    /// Has `done` complete when some subscriber gives credit back (or at `deadline`).
    pub(super) fn wait(&mut self, done: flume::Sender<Result<()>>, deadline: Instant, deferred: &mut Vec<Deferred>) {
        self.waiters.retain(|(w, _)| !w.is_disconnected());
        if self.waiters.len() < super::state::MAX_WATCHERS {
            self.waiters.push((done, deadline));
        } else {
            let why = format!("more than {} publishers wait for subscribers' credit", super::state::MAX_WATCHERS);
            deferred.push(Deferred::Done(done, Err(Error::LocalLimit(why))));
        }
    }

    /// Credit came back, or a subscriber left or changed: every waiting publisher tries again.
    pub(super) fn wake(&mut self, deferred: &mut Vec<Deferred>) {
        deferred.extend(self.waiters.drain(..).map(|(done, _)| Deferred::Done(done, Ok(()))));
    }

    /// Publishers whose deadline passed try again (and cut off who still has no credit).
    pub(super) fn expire(&mut self, now: Instant, deferred: &mut Vec<Deferred>) {
        let (late, waiting) = std::mem::take(&mut self.waiters).into_iter().partition(|(_, d)| *d <= now);
        self.waiters = waiting;
        deferred.extend(
            late.into_iter().map(|(done, _): (flume::Sender<Result<()>>, Instant)| Deferred::Done(done, Ok(()))),
        );
    }

    /// Publishers waiting (and still there to be woken).
    pub(super) fn waiting(&self) -> usize {
        self.waiters.iter().filter(|(w, _)| !w.is_disconnected()).count()
    }

    pub(super) fn deadlines(&self) -> impl Iterator<Item = Instant> + '_ {
        self.waiters.iter().map(|(_, d)| *d)
    }

    pub(super) fn close(&mut self, deferred: &mut Vec<Deferred>) {
        deferred.extend(self.waiters.drain(..).map(|(done, _)| Deferred::Done(done, Err(Error::Closed))));
    }
}
