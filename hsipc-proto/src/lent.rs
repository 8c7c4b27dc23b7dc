//! Bytes the application lends for the length of one call: a borrowed slice sent from its own
//! memory, and copied only if a frame still holds it when the call returns.
//!
//! A payload given as `&[u8]` used to be copied into a buffer of hsipc's own before anything
//! else happened, and then copied again into the lane's pool: two copies of a megabyte where
//! one does. Lending skips the first. While the lender's scope ([`lend`]) lasts, a frame's body
//! reads the slice itself; a transport that writes the frame then (nearly always: the sending
//! thread writes its own frames when the lane has room) copies it once, straight into the
//! lane. When the scope ends, it takes the body's lock and, if any frame still holds the body
//! (one queued behind a full lane, say), gives it a copy of the slice: from then on the body
//! reads that, and the slice can go.
//!
//! Every read of the slice happens under the body's lock, and the scope's end takes the same
//! lock before it lets the slice go, so no read can outlive the borrow.

use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;

/// The bytes of a lent body: the lender's slice while it is lent, a copy after.
pub(crate) struct Lent {
    len: usize,
    source: Mutex<Source>,
}

enum Source {
    /// The start of the lender's slice of `len` bytes, valid while the lender's scope lasts.
    Borrowed(*const u8),
    /// A copy, made when the scope ended while a frame still held the body.
    Copied(Bytes),
}

// SAFETY: the pointer is only read through `Lent::bytes`, under the mutex, and only while the
// lender's scope keeps the slice borrowed: the scope takes the mutex and puts a copy in the
// pointer's place before it lets the slice go (see `lend`). The slice is `&[u8]`, which is `Sync`.
unsafe impl Send for Source {}

impl std::fmt::Debug for Lent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lent").field("len", &self.len).finish_non_exhaustive()
    }
}

impl Lent {
    /// Its length in bytes.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Its bytes, readable while the returned guard lives (the lender's scope waits for it).
    pub(crate) fn bytes(&self) -> LentBytes<'_> {
        LentBytes { source: self.source.lock().unwrap_or_else(|e| e.into_inner()), len: self.len }
    }

    /// Whether it reads a copy (the scope ended while a frame held it).
    #[cfg(test)]
    pub(crate) fn is_copied(&self) -> bool {
        matches!(*self.bytes().source, Source::Copied(_))
    }
}

/// A lent body's bytes, held under its lock.
pub(crate) struct LentBytes<'a> {
    source: MutexGuard<'a, Source>,
    len: usize,
}

impl std::ops::Deref for LentBytes<'_> {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match &*self.source {
            // SAFETY: the lender's slice of `len` bytes, still borrowed: its scope replaces the
            // pointer (under this lock, which this guard holds) before it ends.
            Source::Borrowed(start) => unsafe { std::slice::from_raw_parts(*start, self.len) },
            Source::Copied(copy) => copy,
        }
    }
}

/// Lends `data` to `f` as a [`Lent`]; when `f` returns (or unwinds), whatever still holds the
/// `Lent` reads a copy of `data` from then on.
pub(crate) fn lend<R>(data: &[u8], f: impl FnOnce(Arc<Lent>) -> R) -> R {
    /// Ends the loan on drop, so also when `f` panics.
    struct Loan<'a> {
        lent: Arc<Lent>,
        data: &'a [u8],
    }

    impl Drop for Loan<'_> {
        fn drop(&mut self) {
            // Under the lock: a reader that read the slice has let go of it (the lock orders
            // its reads before this), and one that reads next finds the copy.
            let mut source = self.lent.source.lock().unwrap_or_else(|e| e.into_inner());
            // Only this loan holds it: nobody can read it any more (a holder is needed to
            // clone it), and it goes with the loan. Else a copy takes the slice's place. (No
            // `Weak` to a `Lent` may exist: one upgraded after this count would read the slice.)
            debug_assert_eq!(Arc::weak_count(&self.lent), 0, "a Weak to a Lent");
            if Arc::strong_count(&self.lent) > 1 {
                *source = Source::Copied(Bytes::copy_from_slice(self.data));
            }
        }
    }

    let lent = Arc::new(Lent { len: data.len(), source: Mutex::new(Source::Borrowed(data.as_ptr())) });
    let loan = Loan { lent, data };
    f(loan.lent.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lent_slice_is_read_in_place_and_copied_only_if_held_past_the_loan() {
        let mut data = vec![7u8; 100_000];
        let kept = lend(&data, |lent| {
            assert_eq!(lent.bytes().as_ptr(), data.as_ptr(), "read in place, not copied");
            let dropped = lent.clone();
            drop(dropped);
            lent
        });
        assert!(kept.is_copied(), "held past the loan: a copy");
        data.fill(0);
        assert!(kept.bytes().iter().all(|b| *b == 7), "the copy is what was lent");
        assert_eq!(kept.len(), 100_000);

        // Clones let go within the loan leave only the loan and its argument holding it: its
        // end finds no other holder, and makes no copy.
        let data = vec![1u8; 10];
        let holders = lend(&data, |lent| {
            drop(lent.clone());
            Arc::strong_count(&lent)
        });
        assert_eq!(holders, 2);
    }

    #[test]
    fn a_panic_within_the_loan_still_ends_it() {
        let data = vec![3u8; 64];
        let kept = Mutex::new(None);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            lend(&data, |lent| {
                *kept.lock().unwrap() = Some(lent);
                panic!("in the loan");
            })
        }));
        assert!(r.is_err());
        let kept = kept.into_inner().unwrap().unwrap();
        assert!(kept.is_copied());
        drop(data);
        assert_eq!(&kept.bytes()[..], &[3u8; 64][..]);
    }
}
