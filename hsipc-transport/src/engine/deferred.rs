//! What the state decides under its lock and the engine carries out after releasing it:
//! waking callers, feeding readers and subscribers, handing requests to the dispatcher.
//!
//! Waking a thread is a system call, and a dispatcher spawns work: neither belongs under the
//! lock every other thread needs. Deliveries of one commit run in order, and commits deliver in
//! the order they took the lock (see [`Shared::commit`](super::shared::Shared::commit)), so a
//! reader sees items and its end in protocol order.

use std::sync::Arc;

use bytes::Bytes;
use proto::{CallRef, ErrorCode, IncomingId, RemoteError, SubscriptionId};

use super::dispatch::{CallContext, IncomingCall, Reject};
use super::handle::Handle;
use super::shared::Shared;
use super::stream_reader::StreamMsg;
use super::subscription::{Delivery, SubscriptionQueue};
use crate::error::Result;

/// One thing to do once the state lock is released.
pub(super) enum Deferred {
    /// Wake a unary caller with its outcome.
    Response(oneshot::Sender<Result<Bytes>>, Result<Bytes>),
    /// Give a stream's or session's reader its next message.
    Stream(CallRef, flume::Sender<StreamMsg>, StreamMsg),
    /// Queue an event for a subscription.
    Publish(SubscriptionId, Arc<SubscriptionQueue>, Delivery),
    /// Tell a subscription that a publisher dropped events meant for it.
    Lost(SubscriptionId, Arc<SubscriptionQueue>, Arc<str>, u64),
    /// End a wait (a sink's item accepted, a watched service up, or their deadline passed).
    Done(flume::Sender<Result<()>>, Result<()>),
    /// Tell a served call's handler that its call is gone.
    Cancel(CallContext),
    /// Hand a request to the dispatcher.
    Dispatch(IncomingCall),
}

/// What a delivery found that needs the state again (taken after the delivery lock is free).
pub(super) enum Followup {
    /// The reader is gone, or broke the credit contract: cancel the stream (or, for a served
    /// session, stop taking the client's messages).
    CancelStream(CallRef),
    /// The subscriber dropped its end: unsubscribe.
    Unsubscribe(SubscriptionId),
    /// The dispatcher refused the call: answer it with this error.
    Refuse(IncomingId, RemoteError),
}

impl Deferred {
    /// Carries it out, with no state lock held.
    pub(super) fn complete(self, shared: &Shared) -> Option<Followup> {
        match self {
            Deferred::Response(tx, outcome) => {
                let _ = tx.send(outcome);
            }
            Deferred::Stream(id, tx, msg) => {
                if tx.try_send(msg).is_err() {
                    return Some(Followup::CancelStream(id));
                }
            }
            Deferred::Publish(id, queue, delivery) => {
                if queue.push(delivery).is_err() {
                    return Some(Followup::Unsubscribe(id));
                }
            }
            Deferred::Lost(id, queue, publisher, missed) => {
                if queue.push_lost(publisher, missed).is_err() {
                    return Some(Followup::Unsubscribe(id));
                }
            }
            Deferred::Done(tx, outcome) => {
                let _ = tx.send(outcome);
            }
            Deferred::Cancel(ctx) => ctx.cancel(),
            Deferred::Dispatch(call) => return dispatch(shared, call),
        }
        None
    }
}

/// Wakes the readers of the subscriptions a run of deliveries queues events for, each once,
/// when the run is over (when this drops): see [`SubscriptionQueue::wake_reader`].
#[derive(Default)]
pub(super) struct ReaderWakes(Vec<Arc<SubscriptionQueue>>);

impl ReaderWakes {
    /// Call before `d` is completed: notes the subscription it queues for.
    pub(super) fn before(&mut self, d: &Deferred) {
        let (Deferred::Publish(_, queue, _) | Deferred::Lost(_, queue, ..)) = d else {
            return;
        };
        // An event for several subscriptions comes as one delivery each, in turn: the list is
        // short (the subscriptions one delivery reached), and looked through.
        if !self.0.iter().any(|q| Arc::ptr_eq(q, queue)) {
            self.0.push(queue.clone());
        }
    }
}

impl Drop for ReaderWakes {
    fn drop(&mut self) {
        for queue in self.0.drain(..) {
            queue.wake_reader();
        }
    }
}

fn dispatch(shared: &Shared, call: IncomingCall) -> Option<Followup> {
    let id = call.id;
    // For a refusal's message (a handle on the context: no copy of the name per call).
    let context = call.context.clone();
    let verdict = match (shared.dispatcher(), shared.this()) {
        (Some(d), Some(me)) => d.dispatch(call, &Handle::new(me)),
        _ => Err(Reject::Busy("the hub is closing".into())),
    };
    let refusal = match verdict {
        Ok(()) => return None,
        Err(Reject::NoSuchMethod) => {
            RemoteError::new(ErrorCode::NO_SUCH_METHOD, format!("no handler for `{}`", context.method()))
        }
        Err(Reject::Busy(why)) => RemoteError::new(ErrorCode::BUSY, why),
        Err(Reject::WrongShape(why)) => RemoteError::new(ErrorCode::BAD_REQUEST, why),
    };
    Some(Followup::Refuse(id, refusal))
}
