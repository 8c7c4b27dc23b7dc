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
use super::reader_signal::ReaderSignal;
use super::shared::Shared;
use super::stream_reader::{ItemSender, StreamMsg};
use super::subscription::{Delivery, SubscriptionQueue};
use crate::error::Result;

/// One thing to do once the state lock is released.
pub(super) enum Deferred {
    /// Wake a unary caller with its outcome.
    Response(oneshot::Sender<Result<Bytes>>, Result<Bytes>),
    /// Give a stream's or session's reader its next message.
    Stream(CallRef, ItemSender, StreamMsg),
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
                if tx.push(msg).is_err() {
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

/// Wakes the readers of the queues a run of deliveries pushes to (subscriptions' events,
/// streams' items), each once, when the run is over (when this drops): see
/// [`ReaderSignal`]. The first queue needs no allocation (most deliveries reach one).
#[derive(Default)]
pub(super) struct ReaderWakes {
    first: Option<Arc<ReaderSignal>>,
    more: Vec<Arc<ReaderSignal>>,
}

impl ReaderWakes {
    /// Call before `d` is completed: notes the queue it pushes to.
    pub(super) fn before(&mut self, d: &Deferred) {
        match d {
            Deferred::Publish(_, queue, _) | Deferred::Lost(_, queue, ..) => self.note(queue.signal()),
            Deferred::Stream(_, items, _) => self.note(items.signal()),
            _ => {}
        }
    }

    /// Notes that a queue is pushed to, to wake its readers once the run is over.
    fn note(&mut self, signal: &Arc<ReaderSignal>) {
        // An event for several subscriptions comes as one delivery each, in turn: the list is
        // short (the queues one delivery reached), and looked through.
        let known = |s: &Arc<ReaderSignal>| Arc::ptr_eq(s, signal);
        match &self.first {
            None => self.first = Some(signal.clone()),
            Some(s) if known(s) => {}
            Some(_) if self.more.iter().any(known) => {}
            Some(_) => self.more.push(signal.clone()),
        }
    }
}

impl Drop for ReaderWakes {
    fn drop(&mut self) {
        for signal in self.first.take().into_iter().chain(self.more.drain(..)) {
            signal.wake();
        }
    }
}

fn dispatch(shared: &Shared, call: IncomingCall) -> Option<Followup> {
    let id = call.id;
    // For a refusal's message (names up to 23 bytes are held inline, longer ones shared: no
    // copy per call). Not the context: an inline handler answers within `dispatch`, and the
    // engine keeps the context for a later call only if nothing else holds it then.
    let method = call.context.method_name().clone();
    let verdict = match (shared.dispatcher(), shared.this()) {
        (Some(d), Some(me)) => d.dispatch(call, &Handle::new(me)),
        _ => Err(Reject::Busy("the hub is closing".into())),
    };
    let refusal = match verdict {
        Ok(()) => return None,
        Err(Reject::NoSuchMethod) => RemoteError::new(ErrorCode::NO_SUCH_METHOD, format!("no handler for `{method}`")),
        Err(Reject::Busy(why)) => RemoteError::new(ErrorCode::BUSY, why),
        Err(Reject::WrongShape(why)) => RemoteError::new(ErrorCode::BAD_REQUEST, why),
    };
    Some(Followup::Refuse(id, refusal))
}

#[cfg(test)]
mod tests {
    use std::task::Context;

    use futures_core::Stream;
    use proto::{PeerId, Topic};

    use super::*;
    use crate::engine::reader_signal::counting;
    use crate::engine::subscription::{EventReceiver, Qos};

    /// A queue, and the wake-ups of a task waiting on its (returned) receiver.
    fn waited_on() -> (Arc<SubscriptionQueue>, EventReceiver, Arc<counting::Count>) {
        let (queue, mut rx) = SubscriptionQueue::new(Qos::Reliable, 8, Arc::default());
        let (waker, count) = counting::waker();
        assert!(std::pin::Pin::new(&mut rx).poll_next(&mut Context::from_waker(&waker)).is_pending());
        (Arc::new(queue), rx, count)
    }

    fn event() -> Delivery {
        Delivery { from: PeerId(1), topic: Topic::new("t").unwrap(), body: Bytes::new(), missed: 0, ticket: None }
    }

    #[test]
    fn each_subscription_a_run_reached_is_woken_once_when_it_is_over() {
        let (a, _rx_a, woken_a) = waited_on();
        let (b, _rx_b, woken_b) = waited_on();
        let mut wakes = ReaderWakes::default();
        // An event for two subscriptions comes as a delivery to each, in turn.
        for queue in [&a, &b, &a, &b, &a, &b] {
            wakes.note(queue.signal());
            assert!(queue.push(event()).is_ok());
        }
        assert_eq!((woken_a.get(), woken_b.get()), (0, 0));
        drop(wakes);
        assert_eq!((woken_a.get(), woken_b.get()), (1, 1));
    }
}
