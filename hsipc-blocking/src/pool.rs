//! The worker threads that run a blocking hub's handlers.

use std::sync::OnceLock;

use hsipc_transport::hub::{BlockingJob, BoxFuture, Runtime};

/// One unit of work for a worker.
enum Job {
    /// Queued by value: serving a call allocates nothing here (the channel's blocks aside,
    /// one per 31 jobs).
    Blocking(BlockingJob),
    /// An async handler (registered through `#[service]` or the engine directly): driven to
    /// completion on the worker, which is what a blocking hub has to run it on.
    Future(BoxFuture),
}

/// A fixed set of worker threads, started with the first call served (a hub that serves
/// nothing starts none). The queue needs no bound of its own: the dispatch policy refuses
/// calls past `max_pending_calls` before they reach it. Workers end when the hub is gone.
///
/// The queue is crossbeam's: a worker waiting for a job allocates nothing (flume allocates a
/// waiting hook each time a receiver blocks, which is once per call on an idle hub).
pub(crate) struct Pool {
    jobs: crossbeam_channel::Sender<Job>,
    rx: crossbeam_channel::Receiver<Job>,
    workers: usize,
    started: OnceLock<()>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool").field("workers", &self.workers).finish_non_exhaustive()
    }
}

impl Pool {
    pub(crate) fn new(workers: usize) -> Self {
        let (jobs, rx) = crossbeam_channel::unbounded();
        Pool { jobs, rx, workers, started: OnceLock::new() }
    }

    fn submit(&self, job: Job) {
        self.started.get_or_init(|| self.start());
        if self.jobs.send(job).is_err() {
            tracing::error!("handler workers are gone; a call was dropped");
        }
    }

    fn start(&self) {
        for i in 0..self.workers {
            let rx = self.rx.clone();
            let spawned = std::thread::Builder::new().name(format!("hsipc-worker-{i}")).spawn(move || {
                // Ends when the pool (and with it the sender) is dropped.
                while let Ok(job) = rx.recv() {
                    // The handler wrappers catch handlers' panics and answer the caller; this
                    // only keeps the worker alive should anything else panic.
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
                tracing::error!(error = %e, "cannot spawn a handler worker");
            }
        }
    }
}

impl Runtime for Pool {
    fn spawn(&self, task: BoxFuture) {
        self.submit(Job::Future(task));
    }

    fn spawn_blocking(&self, job: BlockingJob) {
        self.submit(Job::Blocking(job));
    }

    fn handlers_send_inline(&self) -> bool {
        true
    }
}
