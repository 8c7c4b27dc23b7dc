//! How the engine wakes the readers of a queue it fills (a subscription's events, a stream's
//! items): once per delivery, not once per message.
//!
//! A reader woken per message preempts the delivering thread on its CPU for each one (on two
//! CPUs, a futex wake and a context switch pair per message). So the engine pushes without
//! waking anybody, notes the queues a delivery (a batch read from a lane) reached, and wakes
//! each once when the delivery is over, after its lock (`ReaderWakes`).
//!
//! [`queue`] makes such a queue: a bounded flume channel with a [`ReaderSignal`] beside it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

/// What a queue's readers wait on, and what the engine wakes once it has queued a delivery's
/// messages (or the queue is full, or its sending end is gone). The wakers are taken out of
/// their list before they are woken: a reader that runs at once, on the waking thread's CPU,
/// never finds the list locked by a thread it preempted.
///
/// A reader that finds the queue empty registers its waker and arms the signal, then looks at
/// the queue once more before it sleeps; the engine queues, then wakes what is registered if
/// the signal is armed. Every look at the queue takes the flume channel's lock (flume is built
/// without its spinning options), so a reader whose second look found the queue empty took
/// that lock before the engine queued, and its arming is seen by the engine's wake-up. The
/// engine's end going is the same: flume marks the channel disconnected and takes its lock
/// before the wake-up, and a reader looks at the mark under that lock after it arms.
#[derive(Debug, Default)]
pub(crate) struct ReaderSignal {
    /// A reader registered and may sleep: the next wake-up takes the wakers and wakes them.
    pub(super) armed: AtomicBool,
    /// Who to wake.
    pub(super) wakers: Mutex<Wakers>,
}

/// Who waits for a queue: threads (one waker each, however often they wait) and the one task
/// that polls it (a receiver is polled by `&mut`: only its latest waker counts).
#[derive(Debug, Default)]
pub(super) struct Wakers {
    /// The task that polled the receiver last.
    pub(super) task: Option<Waker>,
    /// The first thread waiting.
    pub(super) thread: Option<Waker>,
    /// Threads beyond the first, for a receiver read from several threads at once.
    pub(super) more_threads: Vec<Waker>,
}

impl ReaderSignal {
    fn register_task(&self, waker: &Waker) {
        let mut wakers = self.wakers.lock().unwrap_or_else(|e| e.into_inner());
        if !wakers.task.as_ref().is_some_and(|w| w.will_wake(waker)) {
            wakers.task = Some(waker.clone());
        }
        drop(wakers);
        self.armed.store(true, Ordering::SeqCst);
    }

    fn register_thread(&self, waker: &Waker) {
        let mut wakers = self.wakers.lock().unwrap_or_else(|e| e.into_inner());
        let Wakers { thread, more_threads, .. } = &mut *wakers;
        match thread {
            None => *thread = Some(waker.clone()),
            Some(first) if first.will_wake(waker) => {}
            Some(_) if more_threads.iter().any(|w| w.will_wake(waker)) => {}
            Some(_) => more_threads.push(waker.clone()),
        }
        drop(wakers);
        self.armed.store(true, Ordering::SeqCst);
    }

    fn unregister_thread(&self, waker: &Waker) {
        let mut wakers = self.wakers.lock().unwrap_or_else(|e| e.into_inner());
        if wakers.thread.as_ref().is_some_and(|w| w.will_wake(waker)) {
            wakers.thread = wakers.more_threads.pop();
        } else {
            wakers.more_threads.retain(|w| !w.will_wake(waker));
        }
    }

    /// Wakes the readers that said they may sleep (none if none did).
    pub(crate) fn wake(&self) {
        if self.armed.load(Ordering::SeqCst) && self.armed.swap(false, Ordering::SeqCst) {
            let mut wakers = self.wakers.lock().unwrap_or_else(|e| e.into_inner());
            let (task, thread) = (wakers.task.take(), wakers.thread.take());
            let more = std::mem::take(&mut wakers.more_threads);
            drop(wakers);
            task.into_iter().chain(thread).chain(more).for_each(Waker::wake);
        }
    }

    /// Blocks this thread until `queued` gives something; `None` once `deadline` has passed
    /// (no deadline: waits as long as it takes). `queued` looks at the queue (taking the
    /// channel's lock) without waiting.
    fn wait_on_thread<T>(&self, deadline: Option<Instant>, mut queued: impl FnMut() -> Option<T>) -> Option<T> {
        loop {
            if let Some(q) = queued() {
                return Some(q);
            }
            // Before it sleeps, this thread lets others run once: on a shared CPU the thread
            // delivering to this queue (a lane's reader) then delivers more meanwhile, without
            // waking this one (a futex wake and a wait, and two context switches, saved per
            // delivery); alone on its CPU this returns at once. (Not past the deadline; the
            // time left is reckoned after it.)
            if deadline.is_none_or(|d| Instant::now() < d) {
                std::thread::yield_now();
                if let Some(q) = queued() {
                    return Some(q);
                }
            }
            let left = match deadline.map(|d| d.saturating_duration_since(Instant::now())) {
                Some(left) if left.is_zero() => {
                    // Given up: this thread's waker goes (a receiver shared by many short-lived
                    // threads on a quiet queue would otherwise keep one for each).
                    super::pending::with_thread_waker(|w| self.unregister_thread(w));
                    return None;
                }
                left => left,
            };
            super::pending::with_thread_waker(|w| self.register_thread(w));
            // Armed: what is queued from now on wakes this thread.
            if let Some(q) = queued() {
                return Some(q);
            }
            match left {
                None => std::thread::park(),
                Some(left) => std::thread::park_timeout(left),
            }
        }
    }

    /// The receiver is dropped: the waker of the task that polled it last goes (it would keep
    /// that task alive until the engine's end of the queue goes).
    fn forget_task(&self) {
        let task = self.wakers.lock().unwrap_or_else(|e| e.into_inner()).task.take();
        drop(task);
    }

    /// Polls from a task: what `queued` gives, or `Pending` with the task's waker registered.
    fn poll_task<T>(&self, cx: &mut Context<'_>, mut queued: impl FnMut() -> Option<T>) -> Poll<T> {
        if let Some(q) = queued() {
            return Poll::Ready(q);
        }
        self.register_task(cx.waker());
        // Armed: what is queued from now on wakes this task.
        match queued() {
            Some(q) => Poll::Ready(q),
            None => Poll::Pending,
        }
    }
}

/// A bounded queue of `capacity` messages whose readers the engine wakes through its
/// [`ReaderSignal`], not per message: the engine's end and the reader's.
pub(super) fn queue<T>(capacity: usize) -> (QueueSender<T>, QueueReceiver<T>) {
    let (tx, rx) = flume::bounded(capacity);
    let signal = Arc::new(ReaderSignal::default());
    (QueueSender { tx, signal: signal.clone() }, QueueReceiver { rx, signal })
}

/// The engine's end of a [`queue`]. Pushing wakes nobody: the engine wakes the readers through
/// [`signal`](Self::signal) once a delivery is over (see `ReaderWakes`). Dropping it ends the
/// queue: the channel is disconnected (its only sender dropped, in place of a sender of
/// nothing), then the readers are woken, and take what is left before they see the end.
#[derive(Debug)]
pub(crate) struct QueueSender<T> {
    /// The channel (only this holds its sender).
    tx: flume::Sender<T>,
    /// What wakes the readers.
    signal: Arc<ReaderSignal>,
}

impl<T> QueueSender<T> {
    /// Queues a message, never waiting and waking nobody.
    pub(super) fn try_send(&self, msg: T) -> Result<(), flume::TrySendError<T>> {
        self.tx.try_send(msg)
    }

    /// What wakes the readers.
    pub(crate) fn signal(&self) -> &Arc<ReaderSignal> {
        &self.signal
    }
}

impl<T> Drop for QueueSender<T> {
    fn drop(&mut self) {
        drop(std::mem::replace(&mut self.tx, flume::bounded(0).0));
        self.signal.wake();
    }
}

/// The readers' end of a [`queue`].
#[derive(Debug)]
pub(crate) struct QueueReceiver<T> {
    /// The channel.
    rx: flume::Receiver<T>,
    /// What the engine wakes the readers with.
    pub(super) signal: Arc<ReaderSignal>,
}

impl<T> QueueReceiver<T> {
    /// What the queue holds now: its next message, `Some(None)` once it has ended (the
    /// engine's end gone with nothing left), `None` while it is empty.
    pub(super) fn try_take(&self) -> Option<Option<T>> {
        match self.rx.try_recv() {
            Ok(msg) => Some(Some(msg)),
            Err(flume::TryRecvError::Disconnected) => Some(None),
            Err(flume::TryRecvError::Empty) => None,
        }
    }

    /// Blocks this thread for the next message or the end (yielding its CPU once before it
    /// sleeps, see `ReaderSignal::wait_on_thread`); `None` once `deadline` has passed (no
    /// deadline: waits as long as it takes).
    pub(super) fn wait(&self, deadline: Option<Instant>) -> Option<Option<T>> {
        self.signal.wait_on_thread(deadline, || self.try_take())
    }

    /// From a task: the next message or the end, or `Pending` with the task's waker
    /// registered.
    pub(super) fn poll(&self, cx: &mut Context<'_>) -> Poll<Option<T>> {
        self.signal.poll_task(cx, || self.try_take())
    }

    /// Whether nothing is queued.
    pub(super) fn is_empty(&self) -> bool {
        self.rx.is_empty()
    }

    /// The channel itself, for the engine to take the oldest message out of a full queue.
    pub(super) fn channel(&self) -> flume::Receiver<T> {
        self.rx.clone()
    }
}

/// A dropped reader's task waker goes with it (it would keep the task alive until the
/// engine's end of the queue goes).
impl<T> Drop for QueueReceiver<T> {
    fn drop(&mut self) {
        self.signal.forget_task();
    }
}

/// For tests: a waker that counts its wake-ups.
#[cfg(test)]
pub(super) mod counting {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::{Wake, Waker};

    /// How often the waker of [`waker`] was woken.
    pub(in crate::engine) struct Count(AtomicUsize);

    impl Count {
        /// The wake-ups so far.
        pub(in crate::engine) fn get(&self) -> usize {
            self.0.load(Ordering::SeqCst)
        }
    }

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// A waker, and its count of wake-ups.
    pub(in crate::engine) fn waker() -> (Waker, Arc<Count>) {
        let count = Arc::new(Count(AtomicUsize::new(0)));
        (Waker::from(count.clone()), count)
    }
}
