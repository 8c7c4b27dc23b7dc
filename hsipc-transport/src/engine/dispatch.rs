//! Serving: a call as handed to the dispatcher, and the context its handler sees.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use event_listener::{Event, Listener};
use proto::{CallMode, IncomingId, MethodName, PeerId};

use super::Handle;

/// A call this hub serves, as handed to the [`Dispatcher`].
#[derive(Debug)]
pub struct IncomingCall {
    /// The call's id, for [`Handle::respond`], [`Handle::item_sink`] and [`Handle::finish`].
    pub id: IncomingId,
    /// The caller.
    pub from: PeerId,
    /// The request body (CBOR).
    pub body: Bytes,
    /// When the caller stops waiting.
    pub deadline: Instant,
    /// Unary, server stream or session.
    pub mode: CallMode,
    /// What the handler can see of its call while it runs.
    pub context: CallContext,
    /// For a session: the client's messages (see [`IncomingCall::take_input`]).
    pub(crate) input: Option<super::stream_reader::ItemSource>,
}

impl IncomingCall {
    /// `service.method`.
    pub fn method(&self) -> &str {
        self.context.method()
    }

    /// For a session: the reader of the client's messages (once; `None` for other calls).
    pub fn take_input(&mut self, handle: &Handle) -> Option<super::ItemReceiver> {
        let rx = self.input.take()?;
        // A session stays open while both ends live: the engine ends this reader when the
        // client closes, cancels, dies or the hub closes; `recv_timeout` bounds one wait.
        Some(super::ItemReceiver::new(handle.clone(), self.id.into(), rx, proto::MAX_TIMEOUT))
    }
}

/// Why a dispatcher did not take a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reject {
    /// No handler for this method.
    NoSuchMethod,
    /// Too many calls are already being served.
    Busy(String),
    /// The method exists but is of another kind (unary, streaming, session) than the call.
    WrongShape(String),
}

/// Who runs served calls. The engine calls it with none of its locks held, on whichever thread
/// delivered the request (the transport's reader, usually), so it must start the handler and
/// return at once; the handler answers through `handle` ([`Handle::respond`],
/// [`Handle::item_sink`], [`Handle::finish`]).
pub trait Dispatcher: Send + Sync + 'static {
    /// A call arrived.
    fn dispatch(&self, call: IncomingCall, handle: &Handle) -> Result<(), Reject>;
}

/// A handler's view of the call it is serving: who called, until when the caller waits, and
/// whether the call is still wanted. Cheap to clone.
///
/// The call stops being wanted when the caller cancels it (drops its call future or response
/// stream), when the caller's process dies or leaves, when its deadline passes, or when this
/// hub closes. An async handler is dropped at that moment by the hub; a blocking handler
/// should look at [`is_cancelled`](Self::is_cancelled) between steps of long work (its answer
/// would be discarded anyway).
#[derive(Clone, Debug)]
pub struct CallContext {
    inner: Arc<ContextInner>,
}

#[derive(Debug)]
struct ContextInner {
    method: MethodName,
    caller: PeerId,
    caller_name: Arc<str>,
    caller_pid: u32,
    deadline: Instant,
    cancelled: AtomicBool,
    on_cancel: Event,
}

impl CallContext {
    /// A context for a new call: `spare` (one that nobody else holds any more, see
    /// [`into_spare`](Self::into_spare)) filled in again if given, else a new one. Reusing a
    /// spare saves a served call its context's allocation.
    pub(super) fn new(
        spare: Option<CallContext>,
        method: MethodName,
        caller: PeerId,
        caller_name: Arc<str>,
        caller_pid: u32,
        deadline: Instant,
    ) -> Self {
        if let Some(mut spare) = spare {
            if let Some(inner) = Arc::get_mut(&mut spare.inner) {
                inner.method = method;
                inner.caller = caller;
                inner.caller_name = caller_name;
                inner.caller_pid = caller_pid;
                inner.deadline = deadline;
                // No listener is left (nobody else holds the context): the event is as new.
                *inner.cancelled.get_mut() = false;
                return spare;
            }
        }
        CallContext {
            inner: Arc::new(ContextInner {
                method,
                caller,
                caller_name,
                caller_pid,
                deadline,
                cancelled: AtomicBool::new(false),
                on_cancel: Event::new(),
            }),
        }
    }

    /// This context, to be filled in again for a later call, if nothing else holds it (its
    /// handler, a sink, a listener): the engine's copy was the last.
    pub(super) fn into_spare(mut self) -> Option<CallContext> {
        Arc::get_mut(&mut self.inner).is_some().then_some(self)
    }

    /// The method called (`service.method`).
    pub fn method(&self) -> &str {
        &self.inner.method
    }

    /// The method called, as the protocol holds it.
    pub(super) fn method_name(&self) -> &MethodName {
        &self.inner.method
    }

    /// The calling hub's peer id.
    pub fn caller(&self) -> PeerId {
        self.inner.caller
    }

    /// The calling hub's name, as it announced itself (empty if it was not known yet).
    pub fn caller_name(&self) -> &str {
        &self.inner.caller_name
    }

    /// The calling hub's process id, as it announced itself (0 if not known).
    pub fn caller_pid(&self) -> u32 {
        self.inner.caller_pid
    }

    /// The user id the calling process runs as, read from `/proc` when asked (`None` if the
    /// process is gone or not visible). Advisory: the pid is the one the caller announced about
    /// itself. What hsipc enforces is that direct lanes are accepted only from processes of
    /// this process's own (effective) user.
    pub fn caller_uid(&self) -> Option<u32> {
        let pid = self.inner.caller_pid;
        if pid == 0 {
            return None;
        }
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let line = status.lines().find(|l| l.starts_with("Uid:"))?;
        line.split_whitespace().nth(2)?.parse().ok() // real, effective, ...: the effective one
    }

    /// When the caller stops waiting for the answer.
    pub fn deadline(&self) -> Instant {
        self.inner.deadline
    }

    /// How long until the deadline (zero once it has passed).
    pub fn remaining(&self) -> Duration {
        self.inner.deadline.saturating_duration_since(Instant::now())
    }

    /// Whether the call is no longer wanted: cancelled, its caller gone, its deadline passed,
    /// or this hub closed.
    pub fn is_cancelled(&self) -> bool {
        self.inner.cancelled.load(Ordering::Acquire)
    }

    /// Blocks until the call is cancelled or `timeout` passes; whether it was cancelled.
    pub fn wait_cancelled(&self, timeout: Duration) -> bool {
        let until = super::deadline_in(timeout);
        loop {
            if self.is_cancelled() {
                return true;
            }
            let listener = self.inner.on_cancel.listen();
            if self.is_cancelled() {
                return true;
            }
            if listener.wait_deadline(until).is_none() {
                return self.is_cancelled();
            }
        }
    }

    /// Completes when the call is cancelled (never, if it is answered first).
    pub async fn cancelled(&self) {
        loop {
            if self.is_cancelled() {
                return;
            }
            let listener = self.inner.on_cancel.listen();
            if self.is_cancelled() {
                return;
            }
            listener.await;
        }
    }

    pub(super) fn cancel(&self) {
        self.inner.cancelled.store(true, Ordering::Release);
        self.inner.on_cancel.notify(usize::MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context(spare: Option<CallContext>, method: &str, caller: u64) -> CallContext {
        let method = MethodName::new(method);
        CallContext::new(spare, method, PeerId(caller), Arc::from("caller"), 7, Instant::now())
    }

    #[test]
    fn a_context_is_spare_only_once_nothing_else_holds_it() {
        let ctx = context(None, "a.b", 1);
        let held = ctx.clone();
        assert!(ctx.into_spare().is_none(), "a handler still holds it");
        assert!(held.into_spare().is_some(), "the last holder");
    }

    #[test]
    fn a_spare_context_is_filled_in_as_new() {
        let first = context(None, "a.b", 1);
        first.cancel();
        let spare = first.into_spare().unwrap();
        let again = context(Some(spare), "c.d", 2);
        assert_eq!((again.method(), again.caller(), again.is_cancelled()), ("c.d", PeerId(2), false));
        // A cancel of the new call still reaches a listener of it.
        let waiter = again.clone();
        let t = std::thread::spawn(move || waiter.wait_cancelled(Duration::from_secs(60)));
        again.cancel();
        assert!(t.join().unwrap());
    }
}
