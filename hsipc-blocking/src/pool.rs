//! The threads that run a blocking hub's handlers.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::task::{Context, Waker};
use std::time::{Duration, Instant};

use hsipc_transport::hub::{AnswersHeld, BlockingJob, BoxFuture, HeldAnswers, IdleLanes, Runtime};

/// How long an idle worker reads a lane at a stretch before it looks again which lane to read
/// (it also looks whenever it wakes; an idle hub should not wake often for nothing).
const IDLE_READ: Duration = Duration::from_secs(5);

thread_local! {
    /// The queue this thread waits on by reading a lane, if it does, and the thread's number
    /// among its workers (a job it queues there itself, from a request it read, it takes
    /// itself).
    static READING_FOR: std::cell::Cell<(*const Queue, usize)> = const { std::cell::Cell::new((std::ptr::null(), 0)) };
}

/// One unit of work for a worker.
enum Job {
    /// Queued by value: serving a call allocates nothing here (once the queue has grown).
    Blocking(BlockingJob),
    /// An async handler (registered through `#[service]` or the engine directly): driven to
    /// completion on the worker, which is what a blocking hub has to run it on.
    Future(BoxFuture),
}

/// The threads that run a blocking hub's handlers: the workers, and one thread for inline
/// handlers whose requests were read by one of the application's threads while it waited in a
/// call (see [`Runtime::run_aside`]). Each set starts with its first job (a hub that serves
/// nothing starts none) and ends when the pool is dropped. The queues need no bound of their
/// own: the dispatch policy refuses calls past `max_pending_calls` before they reach them.
pub(crate) struct Pool {
    workers: Threads,
    aside: Threads,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool").field("workers", &self.workers.count).finish_non_exhaustive()
    }
}

impl Pool {
    pub(crate) fn new(workers: usize) -> Self {
        Pool { workers: Threads::new("hsipc-worker", workers), aside: Threads::new("hsipc-inline", 1) }
    }
}

/// A fixed set of threads taking jobs from one queue.
///
/// The queue is a deque under a mutex with a condition variable, notified at most once per job
/// and only when a thread waits on it: a thread waiting for a job sleeps at once and allocates
/// nothing. (A
/// channel's receivers spin and yield before they sleep: with the caller, the lane's reader
/// and the worker on one CPU, each yield is a context switch; crossbeam's channel cost a 64 B
/// call with a worker about 2 µs that way. flume allocates a waiting hook per blocking wait.)
///
/// Idle workers wait by reading the lanes requests come through instead, each another
/// client's (see [`IdleLanes`]): a request then wakes its reader, not the lane's thread and
/// then a worker. A job a reader queued itself (from a request it read) it takes itself once
/// it has given the lane back; a job queued by another thread goes to a worker on the
/// condition variable if one is idle (a reader may be busy: an inline handler it read, say),
/// and wakes a reader too when more jobs wait than threads there.
struct Threads {
    name: &'static str,
    count: usize,
    queue: Arc<Queue>,
    started: OnceLock<()>,
    /// For the workers (not the inline handlers' thread): the lane to read while idle.
    lanes: Arc<OnceLock<IdleLanes>>,
}

struct Queue {
    state: Mutex<QueueState>,
    ready: Condvar,
}

struct QueueState {
    jobs: VecDeque<Job>,
    /// Threads waiting for a job on the condition variable.
    idle: usize,
    /// The threads waiting for a job by reading a lane, by number, each with what wakes it
    /// (set while it sleeps on its lane). At most one entry per worker.
    readers: Vec<(usize, Option<Waker>)>,
    /// The pool is gone: the threads end.
    closed: bool,
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The next job for worker `me`, waiting for one (reading one of `lanes` meanwhile, if one
    /// is free); `None` once the pool is gone. `answers` (what the last job left to send) go
    /// once a lane is taken, or before this thread runs another job or sleeps otherwise.
    fn next(&self, me: usize, lanes: Option<&IdleLanes>, answers: HeldAnswers) -> Option<Job> {
        let mut answers = Some(answers);
        let mut state = self.lock();
        // Cleared when a read of the lane ends without work (no lane to read, a large frame
        // for the lane's thread, the lane's end): the thread then waits for the next job on the
        // condition variable, and tries the lane again after it.
        let mut may_read = true;
        loop {
            if let Some(job) = state.jobs.pop_front() {
                drop(state);
                drop(answers);
                return Some(job);
            }
            if state.closed {
                return None;
            }
            if let Some(lanes) = lanes.filter(|_| may_read) {
                state.readers.push((me, None));
                drop(state);
                let until = Instant::now() + IDLE_READ;
                let answers = answers.take().unwrap_or_default();
                let read = self.read_while_idle(me, lanes, answers, until);
                state = self.lock();
                may_read = read == Some(true) || (read.is_some() && Instant::now() >= until);
                continue;
            }
            if answers.is_some() {
                drop(state);
                drop(answers.take());
                state = self.lock();
                continue;
            }
            state.idle += 1;
            state = self.ready.wait(state).unwrap_or_else(|e| e.into_inner());
            state.idle -= 1;
            may_read = true;
        }
    }

    /// Reads `lanes` until a job is queued (see [`IdleLanes::read_until`]), marked as the
    /// reader throughout. A panic in there (engine code; handlers catch their own) is caught:
    /// the mark is cleared and the worker goes on waiting for jobs.
    fn read_while_idle(&self, me: usize, lanes: &IdleLanes, answers: HeldAnswers, until: Instant) -> Option<bool> {
        READING_FOR.with(|r| r.set((self, me)));
        let read = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            lanes.read_until(answers, &mut |cx| self.work_or_wait(me, cx), until)
        }));
        READING_FOR.with(|r| r.set((std::ptr::null(), 0)));
        self.lock().readers.retain(|(reader, _)| *reader != me);
        read.unwrap_or_else(|_| {
            tracing::error!("a worker panicked while it read a lane; it waits for jobs on the queue now");
            None
        })
    }

    /// For worker `me`, reading a lane: whether a job is queued (or the pool gone); if not,
    /// `cx` wakes it when one is.
    fn work_or_wait(&self, me: usize, cx: &mut Context<'_>) -> bool {
        let mut state = self.lock();
        if !state.jobs.is_empty() || state.closed {
            return true;
        }
        if let Some((_, waker)) = state.readers.iter_mut().find(|(reader, _)| *reader == me) {
            if !waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                *waker = Some(cx.waker().clone());
            }
        }
        false
    }
}

impl Threads {
    fn new(name: &'static str, count: usize) -> Self {
        let state = QueueState { jobs: VecDeque::new(), idle: 0, readers: Vec::new(), closed: false };
        let queue = Arc::new(Queue { state: Mutex::new(state), ready: Condvar::new() });
        Threads { name, count, queue, started: OnceLock::new(), lanes: Arc::default() }
    }

    fn submit(&self, job: Job) {
        self.started.get_or_init(|| self.start());
        let mut state = self.queue.lock();
        state.jobs.push_back(job);
        // A reader queued this itself: it sees the job once it has read the frame.
        let (queue, me) = READING_FOR.with(|r| r.get());
        let from_reader = std::ptr::eq(queue, &*self.queue);
        let reader_takes = from_reader && state.jobs.len() == 1;
        let notify = state.idle > 0 && !reader_takes;
        // More jobs than threads waiting on the condition variable (a notified one counts as
        // waiting until it runs): a reader (another than this thread) takes one too. It may be
        // one busy with an inline handler it read (its waker stays set while it is awake);
        // inline handlers never wait, so the job waits for that handler at most.
        let reader = if reader_takes || state.jobs.len() <= state.idle {
            None
        } else {
            state.readers.iter_mut().filter(|(reader, _)| !from_reader || *reader != me).find_map(|(_, w)| w.take())
        };
        drop(state);
        if notify {
            self.queue.ready.notify_one();
        }
        if let Some(reader) = reader {
            reader.wake();
        }
    }

    fn start(&self) {
        for i in 0..self.count {
            let queue = self.queue.clone();
            let lanes = self.lanes.clone();
            let spawned = std::thread::Builder::new().name(format!("{}-{i}", self.name)).spawn(move || {
                let mut answers = HeldAnswers::default();
                while let Some(job) = queue.next(i, lanes.get(), answers) {
                    // The job's answer goes once this thread reads the lane again (see
                    // `AnswersHeld`), or before it does anything else; a thread that reads no
                    // lane sends it at once.
                    let held = lanes.get().map(|_| AnswersHeld::start());
                    // The handler wrappers catch handlers' panics and answer the caller; this
                    // only keeps the thread alive should anything else panic.
                    let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match job {
                        Job::Blocking(job) => job.run(),
                        Job::Future(task) => futures_lite::future::block_on(task),
                    }));
                    if ran.is_err() {
                        tracing::error!("a handler job panicked outside its handler");
                    }
                    answers = held.map(AnswersHeld::end).unwrap_or_default();
                }
            });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot spawn a handler thread");
            }
        }
    }
}

impl Drop for Threads {
    fn drop(&mut self) {
        let mut state = self.queue.lock();
        state.closed = true;
        let readers: Vec<Waker> = state.readers.iter_mut().filter_map(|(_, w)| w.take()).collect();
        drop(state);
        self.queue.ready.notify_all();
        for reader in readers {
            reader.wake();
        }
    }
}

impl Runtime for Pool {
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn spawn(&self, task: BoxFuture) {
        self.workers.submit(Job::Future(task));
    }

    fn spawn_blocking(&self, job: BlockingJob) {
        self.workers.submit(Job::Blocking(job));
    }

    /// On a thread of its own: never behind the workers, which may all be busy (one of them
    /// may be the very caller that read this request).
    fn run_aside(&self, job: BlockingJob) {
        self.aside.submit(Job::Blocking(job));
    }

    fn handlers_send_inline(&self) -> bool {
        true
    }

    fn idle_lanes(&self, lanes: IdleLanes) {
        let _ = self.workers.lanes.set(lanes);
    }
}
