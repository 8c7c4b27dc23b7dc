//! How the engine's threads sleep: in `poll` on an eventfd (their wake-up) and on what else
//! they wait for, until a deadline. The clock thread also waits for the peers' pidfds, so a
//! peer's death wakes it at once and an idle hub's clock wakes only for its timers (the
//! heartbeat); the writer also waits for full lanes to have room again.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::Instant;

/// Wakes a sleeping engine thread; cheap to clone, never blocks.
#[derive(Clone, Debug)]
pub(crate) struct Alarm(Arc<OwnedFd>);

impl Alarm {
    pub(crate) fn new() -> io::Result<Alarm> {
        // SAFETY: eventfd takes an initial value and flags and returns a new fd or -1.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh fd that nothing else owns.
        Ok(Alarm(Arc::new(unsafe { OwnedFd::from_raw_fd(fd) })))
    }

    /// Wakes the thread (if it is asleep; else its next sleep returns at once).
    pub(crate) fn ring(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64; a full counter (EAGAIN) is already a wake-up.
        unsafe { libc::write(self.0.as_raw_fd(), &one as *const u64 as *const libc::c_void, 8) };
    }

    /// Sleeps until rung, until one of `readable` or `also_readable` is readable (a peer process
    /// exited; a peer says it made room in a ring), one of `writable` is writable (a full lane
    /// has room), or until `deadline`.
    pub(crate) fn sleep(
        &self,
        readable: &[Arc<OwnedFd>],
        also_readable: &[RawFd],
        writable: &[RawFd],
        deadline: Instant,
    ) {
        let mut polls: Vec<libc::pollfd> = std::iter::once(&self.0)
            .chain(readable)
            .map(|fd| libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 })
            .chain(also_readable.iter().map(|&fd| libc::pollfd { fd, events: libc::POLLIN, revents: 0 }))
            .chain(writable.iter().map(|&fd| libc::pollfd { fd, events: libc::POLLOUT, revents: 0 }))
            .collect();
        let left = deadline.saturating_duration_since(Instant::now());
        // Rounded up, so the clock never wakes just before its deadline and sleeps again.
        let ms = left.as_nanos().div_ceil(1_000_000).min(i32::MAX as u128) as libc::c_int;
        // SAFETY: `polls` is a valid array of pollfds for the duration of the call. The fds in
        // `readable` are kept open by the caller; one in `also_readable` or `writable` may close
        // meanwhile (the poll then reports it, or the deadline ends the sleep).
        let n = unsafe { libc::poll(polls.as_mut_ptr(), polls.len() as libc::nfds_t, ms) };
        if n > 0 && polls[0].revents & libc::POLLIN != 0 {
            let mut count: u64 = 0;
            // SAFETY: reads 8 bytes into a live u64 (resets the counter); non-blocking.
            unsafe { libc::read(self.0.as_raw_fd(), &mut count as *mut u64 as *mut libc::c_void, 8) };
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_ring_before_the_sleep_is_not_lost() {
        let alarm = Alarm::new().unwrap();
        alarm.ring();
        let far = Instant::now() + Duration::from_secs(3600);
        // Returns at once (else the test hangs until its harness kills it).
        alarm.sleep(&[], &[], &[], far);
        // And the ring was consumed: a short sleep now runs to its deadline.
        let soon = Instant::now() + Duration::from_millis(5);
        alarm.sleep(&[], &[], &[], soon);
        assert!(Instant::now() >= soon);
    }
}
