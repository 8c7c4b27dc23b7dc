//! Publishers waiting for something the state will tell them (room in the send queue, a
//! subscriber's credit), each until its deadline.

use std::time::Instant;

use super::deferred::Deferred;
use super::state::MAX_WATCHERS;
use crate::error::{Error, Result};

/// One kind of wait: who waits, and until when.
pub(super) struct Waiters {
    list: Vec<(flume::Sender<Result<()>>, Instant)>,
    /// What they wait for, for the error past [`MAX_WATCHERS`].
    what: &'static str,
}

impl Waiters {
    pub(super) fn new(what: &'static str) -> Self {
        Waiters { list: Vec::new(), what }
    }

    /// Has `done` complete when the waits end, or at `deadline`.
    pub(super) fn add(&mut self, done: flume::Sender<Result<()>>, deadline: Instant, deferred: &mut Vec<Deferred>) {
        self.list.retain(|(w, _)| !w.is_disconnected());
        if self.list.len() < MAX_WATCHERS {
            self.list.push((done, deadline));
        } else {
            let why = format!("more than {MAX_WATCHERS} publishers wait for {}", self.what);
            deferred.push(Deferred::Done(done, Err(Error::LocalLimit(why))));
        }
    }

    /// Ends every wait with what `outcome` makes.
    pub(super) fn end_all(&mut self, outcome: impl Fn() -> Result<()>, deferred: &mut Vec<Deferred>) {
        deferred.extend(self.list.drain(..).map(|(done, _)| Deferred::Done(done, outcome())));
    }

    /// Ends the waits whose deadline has passed with what `outcome` makes.
    pub(super) fn expire(&mut self, now: Instant, outcome: impl Fn() -> Result<()>, deferred: &mut Vec<Deferred>) {
        self.list.retain(|(done, deadline)| {
            let late = *deadline <= now;
            if late {
                deferred.push(Deferred::Done(done.clone(), outcome()));
            }
            !late
        });
    }

    /// Waiters still there to be woken.
    pub(super) fn live(&self) -> usize {
        self.list.iter().filter(|(w, _)| !w.is_disconnected()).count()
    }

    pub(super) fn deadlines(&self) -> impl Iterator<Item = Instant> + '_ {
        self.list.iter().map(|(_, d)| *d)
    }
}
