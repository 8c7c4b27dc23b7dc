//! Waiting on a word of memory (Linux futexes): shared ones for a word in a mapping two
//! processes share (the kernel keys it by file and offset), private ones for a word in this
//! process's own memory.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Sleeps while `word` holds `expected`, for at most `timeout`: returns when woken, when the
/// word no longer holds `expected` (at once), on a signal, or at the timeout. The caller looks
/// again at whatever it waits for.
pub(super) fn wait(word: &AtomicU32, expected: u32, timeout: Duration) {
    wait_op(word, libc::FUTEX_WAIT, expected, timeout);
}

/// [`wait`] on a word in this process's own memory.
pub(super) fn wait_private(word: &AtomicU32, expected: u32, timeout: Duration) {
    wait_op(word, libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG, expected, timeout);
}

/// Sleeps while `word` (in this process's own memory) holds `value`, until `until` at the
/// latest, however often it is woken meanwhile.
pub(super) fn wait_while(word: &AtomicU32, value: u32, until: Instant) {
    while word.load(Ordering::SeqCst) == value {
        let now = Instant::now();
        if now >= until {
            return;
        }
        wait_private(word, value, until - now);
    }
}

fn wait_op(word: &AtomicU32, op: libc::c_int, expected: u32, timeout: Duration) {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs().min(i64::MAX as u64) as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: `word` is a live, aligned u32 for the whole call; the timeout is a valid relative
    // timespec; FUTEX_WAIT reads the word and never writes through the pointers.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            op,
            expected,
            &ts as *const libc::timespec,
            std::ptr::null::<u32>(),
            0u32,
        )
    };
}

/// Wakes whoever sleeps on `word` (in any process that maps it).
pub(super) fn wake(word: &AtomicU32) {
    wake_op(word, libc::FUTEX_WAKE);
}

/// [`wake`] for a word in this process's own memory.
pub(super) fn wake_private(word: &AtomicU32) {
    wake_op(word, libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG);
}

fn wake_op(word: &AtomicU32, op: libc::c_int) {
    // SAFETY: FUTEX_WAKE only uses the address as a key; `word` is live and aligned.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            op,
            i32::MAX,
            std::ptr::null::<libc::timespec>(),
            std::ptr::null::<u32>(),
            0u32,
        )
    };
}
