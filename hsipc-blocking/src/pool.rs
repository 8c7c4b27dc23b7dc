//! The threads that run a blocking hub's handlers.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};

use hsipc_transport::hub::{BlockingJob, BoxFuture, Runtime};

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
/// The queue is a deque under a mutex with a condition variable, woken once per job and only
/// when a thread is idle: a thread waiting for a job sleeps at once and allocates nothing. (A
/// channel's receivers spin and yield before they sleep: with the caller, the lane's reader
/// and the worker on one CPU, each yield is a context switch; crossbeam's channel cost a 64 B
/// call with a worker about 2 µs that way. flume allocates a waiting hook per blocking wait.)
struct Threads {
    name: &'static str,
    count: usize,
    queue: Arc<Queue>,
    started: OnceLock<()>,
}

struct Queue {
    state: Mutex<QueueState>,
    ready: Condvar,
}

struct QueueState {
    jobs: VecDeque<Job>,
    /// Threads waiting for a job.
    idle: usize,
    /// The pool is gone: the threads end.
    closed: bool,
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The next job, waiting for one; `None` once the pool is gone.
    fn next(&self) -> Option<Job> {
        let mut state = self.lock();
        loop {
            if let Some(job) = state.jobs.pop_front() {
                return Some(job);
            }
            if state.closed {
                return None;
            }
            state.idle += 1;
            state = self.ready.wait(state).unwrap_or_else(|e| e.into_inner());
            state.idle -= 1;
        }
    }
}

impl Threads {
    fn new(name: &'static str, count: usize) -> Self {
        let state = QueueState { jobs: VecDeque::new(), idle: 0, closed: false };
        let queue = Arc::new(Queue { state: Mutex::new(state), ready: Condvar::new() });
        Threads { name, count, queue, started: OnceLock::new() }
    }

    fn submit(&self, job: Job) {
        self.started.get_or_init(|| self.start());
        let mut state = self.queue.lock();
        state.jobs.push_back(job);
        let wake = state.idle > 0;
        drop(state);
        if wake {
            self.queue.ready.notify_one();
        }
    }

    fn start(&self) {
        for i in 0..self.count {
            let queue = self.queue.clone();
            let spawned = std::thread::Builder::new().name(format!("{}-{i}", self.name)).spawn(move || {
                while let Some(job) = queue.next() {
                    // The handler wrappers catch handlers' panics and answer the caller; this
                    // only keeps the thread alive should anything else panic.
                    let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match job {
                        Job::Blocking(job) => job.run(),
                        Job::Future(task) => futures_lite::future::block_on(task),
                    }));
                    if ran.is_err() {
                        tracing::error!("a handler job panicked outside its handler");
                    }
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
        self.queue.lock().closed = true;
        self.queue.ready.notify_all();
    }
}

impl Runtime for Pool {
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
}
