//! One direction of a stream: sequencing and credit-based flow control.
//!
//! The receiver grants a window of credit; each item spends one; the receiver grants more as
//! its reader consumes items (in batches of half a window, so credit frames stay rare). A
//! sender out of credit is blocked, so the receiver's queue never holds more than a window.
//! Items are numbered from 1. Transports deliver in order per peer pair, so a gap means an
//! item was lost: it is reported, never skipped silently.

use crate::error::CommandError;

/// The most credit a sender may hold; more is a protocol violation.
const MAX_CREDIT: u64 = 1 << 32;

/// Why an item was not accepted.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Gap {
    /// Already received: drop it.
    Duplicate,
    /// Items between were lost.
    Lost { expected: u64, got: u64 },
    /// The sender had no credit for it.
    OverCredit,
}

/// The receiving side of one direction.
#[derive(Debug)]
pub(crate) struct RecvHalf {
    window: u32,
    received: u64,
    granted: u64,
    consumed: u64,
    unreported: u64,
    ended: bool,
}

impl RecvHalf {
    pub(crate) fn new(window: u32) -> Self {
        RecvHalf { window, received: 0, granted: u64::from(window), consumed: 0, unreported: 0, ended: false }
    }

    /// Accepts item `seq` if it is the next one and the sender had credit for it.
    pub(crate) fn accept(&mut self, seq: u64) -> Result<(), Gap> {
        let expected = self.received + 1;
        if seq < expected {
            return Err(Gap::Duplicate);
        }
        if seq > expected {
            return Err(Gap::Lost { expected, got: seq });
        }
        if self.received >= self.granted {
            return Err(Gap::OverCredit);
        }
        self.received = seq;
        Ok(())
    }

    /// The reader took `n` items; returns the credit to grant now (0 for none yet).
    pub(crate) fn consume(&mut self, n: u32) -> u64 {
        let n = u64::from(n).min(self.received - self.consumed);
        self.consumed += n;
        self.unreported += n;
        let threshold = u64::from((self.window / 2).max(1));
        if self.unreported >= threshold {
            let grant = self.unreported;
            self.granted += grant;
            self.unreported = 0;
            grant
        } else {
            0
        }
    }

    /// Credit the sender still holds.
    pub(crate) fn outstanding_credit(&self) -> u64 {
        self.granted - self.received
    }

    pub(crate) fn received(&self) -> u64 {
        self.received
    }

    /// Marks the end; false if it had already ended.
    pub(crate) fn end(&mut self) -> bool {
        !std::mem::replace(&mut self.ended, true)
    }
}

/// The sending side of one direction.
#[derive(Debug)]
pub(crate) struct SendHalf {
    credit: u64,
    sent: u64,
    blocked: bool,
    finished: bool,
}

impl SendHalf {
    pub(crate) fn new(credit: u64) -> Self {
        SendHalf { credit, sent: 0, blocked: false, finished: false }
    }

    /// Spends one credit; returns the new item's sequence number.
    pub(crate) fn take_credit(&mut self) -> Result<u64, CommandError> {
        if self.finished {
            return Err(CommandError::StreamFinished);
        }
        if self.credit == 0 {
            self.blocked = true;
            return Err(CommandError::Blocked);
        }
        self.credit -= 1;
        self.sent += 1;
        Ok(self.sent)
    }

    /// Undoes [`take_credit`](Self::take_credit) when the item could not be encoded.
    pub(crate) fn give_back(&mut self) {
        self.credit += 1;
        self.sent -= 1;
    }

    /// Adds credit; `Some(true)` if the sender was blocked and may now go on, `None` if the
    /// total is beyond reason (a protocol violation).
    pub(crate) fn grant(&mut self, n: u64) -> Option<bool> {
        let credit = self.credit.checked_add(n).filter(|c| *c <= MAX_CREDIT)?;
        self.credit = credit;
        let unblocked = self.blocked && n > 0;
        if unblocked {
            self.blocked = false;
        }
        Some(unblocked)
    }

    pub(crate) fn sent(&self) -> u64 {
        self.sent
    }

    pub(crate) fn finish(&mut self) {
        self.finished = true;
    }

    pub(crate) fn is_finished(&self) -> bool {
        self.finished
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receiver_detects_duplicates_gaps_and_overruns() {
        let mut r = RecvHalf::new(2);
        assert_eq!(r.accept(1), Ok(()));
        assert_eq!(r.accept(1), Err(Gap::Duplicate));
        assert_eq!(r.accept(3), Err(Gap::Lost { expected: 2, got: 3 }));
        assert_eq!(r.accept(2), Ok(()));
        assert_eq!(r.accept(3), Err(Gap::OverCredit));
        assert_eq!(r.consume(1), 1, "half a window (1) consumed: grant it");
        assert_eq!(r.accept(3), Ok(()));
    }

    #[test]
    fn credit_is_granted_in_half_window_batches_and_never_beyond_received() {
        let mut r = RecvHalf::new(8);
        for s in 1..=8 {
            r.accept(s).unwrap();
        }
        assert_eq!(r.consume(3), 0);
        assert_eq!(r.consume(1), 4);
        assert_eq!(r.consume(100), 4, "only 4 more were received");
        assert_eq!(r.outstanding_credit(), 8);
    }

    #[test]
    fn sender_blocks_at_zero_and_unblocks_on_credit() {
        let mut s = SendHalf::new(1);
        assert_eq!(s.take_credit(), Ok(1));
        assert_eq!(s.take_credit(), Err(CommandError::Blocked));
        assert_eq!(s.grant(2), Some(true));
        assert_eq!(s.grant(1), Some(false));
        assert_eq!(s.take_credit(), Ok(2));
        assert_eq!(s.grant(u64::MAX), None);
    }
}
