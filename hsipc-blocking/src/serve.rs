//! Serving: the handler table, the worker pool that runs handlers, and the stream sink.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use hsipc_transport::proto::{CallMode, ErrorCode, IncomingId, RemoteError, codec};
use hsipc_transport::{Dispatcher, Error, Handle, IncomingCall, ItemSent, Reject, Result};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// A type-erased handler: runs one call to completion and answers it through the handle.
pub(crate) type Handler = Arc<dyn Fn(IncomingCall, &Handle) + Send + Sync>;

/// Handlers by method name, shared by the hub (which registers) and the pool (which looks up).
#[derive(Clone, Default)]
pub(crate) struct Handlers(Arc<RwLock<HashMap<String, Handler>>>);

impl std::fmt::Debug for Handlers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handlers").finish_non_exhaustive()
    }
}

impl Handlers {
    pub(crate) fn insert(&self, method: &str, h: Handler) {
        self.0.write().unwrap_or_else(|e| e.into_inner()).insert(method.to_string(), h);
    }

    /// Removes a handler; whether there was one.
    pub(crate) fn remove(&self, method: &str) -> bool {
        self.0.write().unwrap_or_else(|e| e.into_inner()).remove(method).is_some()
    }

    /// Whether any handler of `service` is left.
    pub(crate) fn serves(&self, service: &str) -> bool {
        let map = self.0.read().unwrap_or_else(|e| e.into_inner());
        map.keys().any(|m| m.rsplit_once('.').is_some_and(|(s, _)| s == service))
    }

    fn get(&self, method: &str) -> Option<Handler> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).get(method).cloned()
    }
}

/// A bounded pool of worker threads; the engine's [`Dispatcher`] for blocking hubs.
pub(crate) struct Pool {
    handlers: Handlers,
    jobs: flume::Sender<(Handler, IncomingCall)>,
    rx: flume::Receiver<(Handler, IncomingCall)>,
    workers: usize,
    started: bool,
}

impl Pool {
    pub(crate) fn new(workers: usize, queue: usize, handlers: Handlers) -> Self {
        let (jobs, rx) = flume::bounded(queue);
        Pool { handlers, jobs, rx, workers, started: false }
    }

    /// Starts the workers on the first call (a hub that serves nothing starts no thread).
    fn start(&mut self, handle: &Handle) {
        self.started = true;
        for i in 0..self.workers {
            let rx = self.rx.clone();
            let handle = handle.clone();
            let spawned = std::thread::Builder::new().name(format!("hsipc-worker-{i}")).spawn(move || {
                // Ends when the engine drops the pool (the hub closed).
                while let Ok((handler, call)) = rx.recv() {
                    if Instant::now() >= call.deadline && call.mode == CallMode::Unary {
                        tracing::debug!(method = %call.method, "caller gave up before the handler could start");
                        continue;
                    }
                    handler(call, &handle);
                }
            });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot spawn a handler worker");
            }
        }
    }
}

impl Dispatcher for Pool {
    fn dispatch(&mut self, call: IncomingCall, handle: &Handle) -> std::result::Result<(), Reject> {
        let handler = self.handlers.get(&call.method).ok_or(Reject::NoSuchMethod)?;
        if !self.started {
            self.start(handle);
        }
        self.jobs.try_send((handler, call)).map_err(|_| {
            Reject::Busy(format!(
                "all {} workers are busy and {} calls are queued",
                self.workers,
                self.jobs.capacity().unwrap_or(0)
            ))
        })
    }
}

/// Runs `f`, turning a panic into an error message.
fn guarded<T>(f: impl FnOnce() -> std::result::Result<T, String>) -> std::result::Result<T, String> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|_| Err("the handler panicked".to_string()))
}

fn bad_request(e: codec::CodecError) -> RemoteError {
    RemoteError::new(ErrorCode::BAD_REQUEST, e.to_string())
}

/// Wraps a typed unary handler.
pub(crate) fn unary_handler<Req, Resp, E, F>(f: F) -> Handler
where
    Req: DeserializeOwned + 'static,
    Resp: Serialize + 'static,
    E: std::fmt::Display + 'static,
    F: Fn(Req) -> std::result::Result<Resp, E> + Send + Sync + 'static,
{
    Arc::new(move |call: IncomingCall, handle: &Handle| {
        let result = match codec::decode::<Req>(&call.body) {
            Err(e) => Err(bad_request(e)),
            Ok(req) => match guarded(|| f(req).map_err(|e| e.to_string())) {
                Ok(resp) => codec::encode(&resp).map_err(|e| RemoteError::handler(e.to_string())),
                Err(msg) => Err(RemoteError::handler(msg)),
            },
        };
        handle.respond(call.id, result);
    })
}

/// Wraps a typed streaming handler.
pub(crate) fn stream_handler<Req, Item, E, F>(f: F, stall: Duration) -> Handler
where
    Req: DeserializeOwned + 'static,
    Item: Serialize + 'static,
    E: std::fmt::Display + 'static,
    F: Fn(Req, &StreamSink<Item>) -> std::result::Result<(), E> + Send + Sync + 'static,
{
    Arc::new(move |call: IncomingCall, handle: &Handle| {
        let result = match codec::decode::<Req>(&call.body) {
            Err(e) => Err(bad_request(e)),
            Ok(req) => {
                let sink = StreamSink { handle: handle.clone(), id: call.id, stall, _item: PhantomData };
                guarded(|| f(req, &sink).map_err(|e| e.to_string())).map_err(RemoteError::handler)
            }
        };
        handle.finish(call.id, result);
    })
}

/// Where a streaming handler sends its items.
#[derive(Debug)]
pub struct StreamSink<Item> {
    handle: Handle,
    id: IncomingId,
    stall: Duration,
    _item: PhantomData<fn(&Item)>,
}

impl<Item: Serialize> StreamSink<Item> {
    /// Sends one item. Waits while the reader has granted no credit (so a slow reader slows
    /// the handler instead of filling memory), at most the hub's stream stall timeout.
    ///
    /// Fails with [`Error::Cancelled`] once the caller has cancelled, dropped the stream or
    /// died: return from the handler then.
    pub fn send(&self, item: &Item) -> Result<()> {
        let body = codec::encode(item)?;
        let done = match self.handle.send_item(self.id, body)? {
            ItemSent::Now => return Ok(()),
            ItemSent::Later(done) => done,
        };
        match done.recv_deadline(Instant::now() + self.stall) {
            Ok(r) => r,
            Err(flume::RecvTimeoutError::Timeout) => Err(Error::Timeout),
            Err(flume::RecvTimeoutError::Disconnected) => Err(Error::Closed),
        }
    }
}
