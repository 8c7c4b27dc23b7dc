//! The timer table: every deadline the endpoint keeps, earliest first.

use std::collections::BTreeSet;
use std::time::Instant;

use crate::id::{IncomingId, RequestId};

/// What a deadline is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Timer {
    /// An outgoing call's deadline (or a stream's idle deadline).
    Call(RequestId),
    /// An incoming unary call's deadline: the caller stops waiting then.
    Incoming(IncomingId),
    /// Announce ourselves and expire silent peers.
    Heartbeat,
    /// Give up waiting for more announces: discovery is complete.
    Discovery,
}

/// Deadlines in order. Set when the logical change happens, never in `poll_*`; a timer is due
/// when `deadline <= now`.
#[derive(Debug, Default)]
pub(crate) struct Timers {
    set: BTreeSet<(Instant, Timer)>,
}

impl Timers {
    pub(crate) fn set(&mut self, at: Instant, timer: Timer) {
        self.set.insert((at, timer));
    }

    pub(crate) fn cancel(&mut self, at: Instant, timer: Timer) {
        self.set.remove(&(at, timer));
    }

    pub(crate) fn pop_due(&mut self, now: Instant) -> Option<Timer> {
        let &(at, timer) = self.set.first()?;
        if at <= now {
            self.set.pop_first();
            Some(timer)
        } else {
            None
        }
    }

    pub(crate) fn next(&self) -> Option<Instant> {
        self.set.first().map(|(at, _)| *at)
    }

    pub(crate) fn len(&self) -> usize {
        self.set.len()
    }

    pub(crate) fn clear(&mut self) {
        self.set.clear();
    }
}
