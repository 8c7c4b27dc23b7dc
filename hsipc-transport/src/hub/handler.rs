//! Handler wrappers: a typed handler becomes one that takes a raw call and answers it.
//!
//! Written once for every hub: a request that does not decode is answered with
//! `BAD_REQUEST`; a handler's `Err` becomes a remote error with its message; a panic becomes a
//! remote error ("the handler panicked") and never takes a worker down; a response that does
//! not encode is reported as the handler's error. An async handler is dropped as soon as its
//! call is no longer wanted (cancelled, caller gone, deadline passed, hub closed).

use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::time::Duration;

use futures_lite::FutureExt;
use proto::{ErrorCode, RemoteError, codec};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::registry::{Slot, wanted};
use super::runtime::Spawner;
use crate::engine::{CallContext, Handle, IncomingCall, ItemReceiver, ItemSink};

/// Runs one call to completion on a worker thread and answers it through the handle. The
/// call's [`Slot`] is given back just before the answer goes out, so a caller that has its
/// answer never finds the place still taken.
pub(crate) type BlockingFn = dyn Fn(IncomingCall, &Handle, Slot) + Send + Sync;
/// Spawns the task that serves one call (giving its [`Slot`] back before answering).
type AsyncFn = dyn Fn(IncomingCall, Handle, Slot) + Send + Sync;

/// A type-erased handler, as the registry keeps it.
#[derive(Clone)]
pub(crate) enum Handler {
    /// Run on a worker thread.
    Blocking(Arc<BlockingFn>),
    /// Run on the thread that read the request, at once (a unary handler declared cheap).
    Inline(Arc<BlockingFn>),
    /// Spawned as a task on the runtime.
    Async(Arc<AsyncFn>),
}

const PANICKED: &str = "the handler panicked";

fn bad_request(e: codec::CodecError) -> RemoteError {
    RemoteError::new(ErrorCode::BAD_REQUEST, e.to_string())
}

fn encode_response<T: Serialize>(r: Result<T, String>) -> Result<proto::frame::Body, RemoteError> {
    match r {
        Ok(v) => codec::into_body(v).map_err(|e| RemoteError::handler(format!("cannot encode the response: {e}"))),
        Err(msg) => Err(RemoteError::handler(msg)),
    }
}

/// Decodes, runs and answers one unary call with a plain function: the body of a
/// [`Handler::Blocking`] (run on a worker) or a [`Handler::Inline`] one (run where the request
/// was read).
pub(crate) fn unary_fn<Req, Resp, E, F>(f: F) -> Arc<BlockingFn>
where
    Req: DeserializeOwned + 'static,
    Resp: Serialize + 'static,
    E: std::fmt::Display + 'static,
    F: Fn(Req, &CallContext) -> Result<Resp, E> + Send + Sync + 'static,
{
    Arc::new(move |call: IncomingCall, handle: &Handle, slot: Slot| {
        // Decoding and encoding run user code too (`Deserialize`, `Serialize` impls): a panic
        // anywhere answers the caller and leaves the worker alive.
        let result = catch_unwind(AssertUnwindSafe(|| {
            let req = codec::decode_from::<Req>(&call.body).map_err(bad_request)?;
            encode_response(f(req, &call.context).map_err(|e| e.to_string()))
        }))
        .unwrap_or_else(|_| Err(RemoteError::handler(PANICKED)));
        drop(slot);
        let id = call.id;
        drop(call); // before the answer: the engine may then keep the context for a later call
        handle.respond(id, result);
    })
}

/// A blocking streaming handler: it gets the call's [`ItemSink`].
pub(crate) fn blocking_stream<Req, E, F>(f: F, stall: Duration) -> Handler
where
    Req: DeserializeOwned + 'static,
    E: std::fmt::Display + 'static,
    F: Fn(Req, ItemSink) -> Result<(), E> + Send + Sync + 'static,
{
    Handler::Blocking(Arc::new(move |call: IncomingCall, handle: &Handle, slot: Slot| {
        let result = catch_unwind(AssertUnwindSafe(|| {
            let req = codec::decode_from::<Req>(&call.body).map_err(bad_request)?;
            let sink = handle.item_sink(call.id, stall, call.context.clone());
            f(req, sink).map_err(|e| RemoteError::handler(e.to_string()))
        }))
        .unwrap_or_else(|_| Err(RemoteError::handler(PANICKED)));
        drop(slot);
        handle.finish(call.id, result);
    }))
}

/// An async unary handler.
pub(crate) fn async_unary<S, Req, Resp, E, F, Fut>(spawner: S, f: F) -> Handler
where
    S: Spawner,
    Req: DeserializeOwned + Send + 'static,
    Resp: Serialize + 'static,
    E: std::fmt::Display + 'static,
    F: Fn(Req, CallContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Resp, E>> + Send + 'static,
{
    let f = Arc::new(f);
    Handler::Async(Arc::new(move |call: IncomingCall, handle: Handle, slot: Slot| {
        let f = f.clone();
        spawner.spawn(async move {
            let id = call.id;
            let ctx = call.context.clone();
            let run = |req| async move { encode_response(f(req, ctx).await.map_err(|e| e.to_string())) };
            let result = serve_async(&call, run).await;
            drop(slot);
            drop(call); // before the answer: the engine may then keep the context for a later call
            match result {
                Some(r) => handle.respond(id, r),
                None => handle.abandon(id),
            }
        })
    }))
}

/// An async streaming handler: it gets the call's [`ItemSink`].
pub(crate) fn async_stream<S, Req, E, F, Fut>(spawner: S, f: F, stall: Duration) -> Handler
where
    S: Spawner,
    Req: DeserializeOwned + Send + 'static,
    E: std::fmt::Display + 'static,
    F: Fn(Req, ItemSink) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
{
    let f = Arc::new(f);
    Handler::Async(Arc::new(move |call: IncomingCall, handle: Handle, slot: Slot| {
        let f = f.clone();
        spawner.spawn(async move {
            let id = call.id;
            let sink = handle.item_sink(id, stall, call.context.clone());
            let run = |req| async move { f(req, sink).await.map_err(|e| RemoteError::handler(e.to_string())) };
            let result = serve_async(&call, run).await;
            drop(slot);
            match result {
                Some(r) => handle.finish(id, r),
                None => handle.abandon(id),
            }
        })
    }))
}

/// Decodes the request and runs the handler's future while the call is wanted: its answer, or
/// `None` if the call went away first (the future is then dropped).
async fn serve_async<Req, T, Fut>(call: &IncomingCall, run: impl FnOnce(Req) -> Fut) -> Option<Result<T, RemoteError>>
where
    Req: DeserializeOwned,
    Fut: Future<Output = Result<T, RemoteError>>,
{
    // Decoding and making the future run user code too: a panic there answers the caller.
    let started = catch_unwind(AssertUnwindSafe(|| codec::decode_from::<Req>(&call.body).map(run)));
    match started {
        Err(_) => Some(Err(RemoteError::handler(PANICKED))),
        Ok(Err(e)) => Some(Err(bad_request(e))),
        Ok(Ok(fut)) => guarded(call, fut, |_| Err(RemoteError::handler(PANICKED))).await,
    }
}

/// Runs a handler's future while its call is wanted: `None` (and the future dropped) once the
/// call is cancelled, or if it was stale before it started; a panic becomes `on_panic`.
async fn guarded<T>(
    call: &IncomingCall,
    run: impl Future<Output = T>,
    on_panic: impl FnOnce(Box<dyn std::any::Any + Send>) -> T,
) -> Option<T> {
    if !wanted(call) {
        return None;
    }
    let ctx = call.context.clone();
    let finished = async { Some(AssertUnwindSafe(run).catch_unwind().await.unwrap_or_else(on_panic)) };
    let cancelled = async {
        ctx.cancelled().await;
        None
    };
    finished.or(cancelled).await
}

/// A blocking session handler: it gets the call's [`ItemSink`] (its messages to the client)
/// and the reader of the client's messages.
pub(crate) fn blocking_session<Req, E, F>(f: F, stall: Duration) -> Handler
where
    Req: DeserializeOwned + 'static,
    E: std::fmt::Display + 'static,
    F: Fn(Req, ItemSink, ItemReceiver) -> Result<(), E> + Send + Sync + 'static,
{
    Handler::Blocking(Arc::new(move |mut call: IncomingCall, handle: &Handle, slot: Slot| {
        let input = call.take_input(handle);
        let result = catch_unwind(AssertUnwindSafe(|| {
            let req = codec::decode_from::<Req>(&call.body).map_err(bad_request)?;
            let input =
                input.ok_or_else(|| RemoteError::new(ErrorCode::PROTOCOL, "a session was called as a plain call"))?;
            let sink = handle.item_sink(call.id, stall, call.context.clone());
            f(req, sink, input).map_err(|e| RemoteError::handler(e.to_string()))
        }))
        .unwrap_or_else(|_| Err(RemoteError::handler(PANICKED)));
        drop(slot);
        handle.finish(call.id, result);
    }))
}

/// An async session handler.
pub(crate) fn async_session<S, Req, E, F, Fut>(spawner: S, f: F, stall: Duration) -> Handler
where
    S: Spawner,
    Req: DeserializeOwned + Send + 'static,
    E: std::fmt::Display + 'static,
    F: Fn(Req, ItemSink, ItemReceiver) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
{
    let f = Arc::new(f);
    Handler::Async(Arc::new(move |mut call: IncomingCall, handle: Handle, slot: Slot| {
        let f = f.clone();
        let input = call.take_input(&handle);
        spawner.spawn(async move {
            let id = call.id;
            let sink = handle.item_sink(id, stall, call.context.clone());
            let run = |req| async move {
                let Some(input) = input else {
                    return Err(RemoteError::new(ErrorCode::PROTOCOL, "a session was called as a plain call"));
                };
                f(req, sink, input).await.map_err(|e| RemoteError::handler(e.to_string()))
            };
            let result = serve_async(&call, run).await;
            drop(slot);
            match result {
                Some(r) => handle.finish(id, r),
                None => handle.abandon(id),
            }
        })
    }))
}
