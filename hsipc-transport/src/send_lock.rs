//! A send lock whose holder acts for the threads that found it taken: the engine's send lock
//! (the transport), and each direct lane's own lock (see `ipmb::out_lanes`).
//!
//! Threads that produce frames send them themselves (a handler its answer, a caller its
//! request), one at a time under such a lock. One that finds the lock taken used to wake the
//! writer thread to send its frames: a context switch, and on two CPUs a wake-up across them.
//! Now it asks the holder instead ([`SendLock::try_lock`] sets a flag), and the holder, once it
//! has let go, sees the request ([`SendLock::asked`]) and sends what was queued meanwhile.
//!
//! No request is lost: the asking thread sets the flag and then tries the lock once more; the
//! holder lets go and then looks at the flag, with a sequentially consistent fence between the
//! two steps on both sides. Either the second try finds the lock free (the asking thread sends
//! itself), or the holder at that moment sees the flag after it lets go.

use std::sync::atomic::{AtomicBool, Ordering, fence};
use std::sync::{Mutex, MutexGuard, TryLockError};

/// A mutex whose holder is told, once it has let go, that threads found it taken meanwhile.
#[derive(Debug, Default)]
pub(crate) struct SendLock<T> {
    inner: Mutex<T>,
    asked: AtomicBool,
}

impl<T> SendLock<T> {
    pub(crate) fn new(value: T) -> Self {
        SendLock { inner: Mutex::new(value), asked: AtomicBool::new(false) }
    }

    /// Waits for the lock (a poisoned one is taken all the same: the transport stays usable).
    pub(crate) fn lock(&self) -> MutexGuard<'_, T> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The lock if it is free; if not, asks its holder to act for this thread once it lets go
    /// (`None`: the holder will). Whoever gets the lock must act for every thread that asked
    /// before (the engine: take everything queued, after locking).
    pub(crate) fn try_lock(&self) -> Option<MutexGuard<'_, T>> {
        if let Some(guard) = self.take() {
            return Some(guard);
        }
        self.asked.store(true, Ordering::SeqCst);
        // Paired with the fence in `asked`: the holder that lets go after this sees the flag,
        // or this sees the lock free.
        fence(Ordering::SeqCst);
        let guard = self.take()?;
        // Had by the second try: this thread acts for whoever asked so far (they queued before
        // they asked, and the swap orders that before what this thread takes), so the request
        // is taken back rather than answered with an empty round after the release.
        self.asked.swap(false, Ordering::SeqCst);
        Some(guard)
    }

    /// For a thread that has just let go of the lock: whether a thread found it taken since
    /// the last time this said yes (then act for it: take the lock again, with
    /// [`try_lock`](Self::try_lock)). Says yes to one thread only.
    pub(crate) fn asked(&self) -> bool {
        // Paired with the fence in `try_lock`.
        fence(Ordering::SeqCst);
        self.asked.load(Ordering::Relaxed) && self.asked.swap(false, Ordering::SeqCst)
    }

    fn take(&self) -> Option<MutexGuard<'_, T>> {
        match self.inner.try_lock() {
            Ok(guard) => Some(guard),
            Err(TryLockError::Poisoned(e)) => Some(e.into_inner()),
            Err(TryLockError::WouldBlock) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::AtomicU64;

    use super::*;

    #[test]
    fn a_thread_that_finds_the_lock_taken_asks_its_holder() {
        let lock = SendLock::new(0u32);
        let held = lock.lock();
        assert!(lock.try_lock().is_none());
        drop(held);
        assert!(lock.asked(), "the holder is asked once it lets go");
        assert!(!lock.asked(), "and only once");
        // Free: taken at once, nobody asked.
        drop(lock.try_lock().expect("free"));
        assert!(!lock.asked());
    }

    /// Threads queue work and send it under the lock, or leave it to the holder, in rounds:
    /// at the end of every round nothing queued is left unsent (a lost request leaves some).
    #[test]
    fn no_request_is_lost() {
        const THREADS: usize = 4;
        let lock = Arc::new(SendLock::new(()));
        let queued = Arc::new(AtomicU64::new(0));
        let sent = Arc::new(AtomicU64::new(0));
        let round = Arc::new(std::sync::Barrier::new(THREADS));
        let threads: Vec<_> = (0..THREADS)
            .map(|i| {
                let (lock, queued, sent, round) = (lock.clone(), queued.clone(), sent.clone(), round.clone());
                std::thread::spawn(move || {
                    for _ in 0..10_000 {
                        queued.fetch_add(1, Ordering::SeqCst);
                        // Send everything queued, as often as asked to.
                        while let Some(guard) = lock.try_lock() {
                            sent.store(queued.load(Ordering::SeqCst), Ordering::SeqCst);
                            drop(guard);
                            if !lock.asked() {
                                break;
                            }
                        }
                        round.wait();
                        if i == 0 {
                            assert_eq!(sent.load(Ordering::SeqCst), queued.load(Ordering::SeqCst), "work left unsent");
                        }
                        round.wait();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
    }
}
