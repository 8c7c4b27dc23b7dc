//! `Handle`: how adapters command the engine.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use proto::{CallMode, IncomingId, PeerId, RemoteError, RequestId, SubscriptionId, Topic, TopicFilter};

use super::api::PeerSummary;
use super::queue::{EventReceiver, Overflow, SubscriptionQueue};
use super::receiver::ItemReceiver;
use super::{Sender, Shared};
use crate::error::{Error, Result};

/// The application's handle on a running engine. Cheap to clone.
///
/// Every method runs at once on the calling thread and never waits for the bus: a call that
/// cannot start fails immediately, and outcomes that come later arrive on channels that can
/// be waited on from a thread (`recv_deadline`) or a future (`recv_async`) alike.
#[derive(Clone, Debug)]
pub struct Handle {
    shared: Arc<Shared>,
}

/// The result of [`Handle::send_item`].
#[derive(Debug)]
pub enum ItemSent {
    /// The item was accepted.
    Now,
    /// The reader has granted no credit: the channel says when the item was accepted, or why
    /// it never will be.
    Later(flume::Receiver<Result<()>>),
}

impl Handle {
    pub(super) fn from_shared(shared: Arc<Shared>) -> Self {
        Handle { shared }
    }

    pub(super) fn shared(&self) -> &Shared {
        &self.shared
    }

    /// This hub's peer id.
    pub fn local(&self) -> PeerId {
        self.shared.local
    }

    /// This hub's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The largest payload that fits in a frame.
    pub fn max_payload_len(&self) -> usize {
        self.shared.max_frame_len.saturating_sub(proto::frame::HEADER_LEN)
    }

    /// The credit window of streams this hub reads.
    pub fn stream_window(&self) -> u32 {
        self.shared.window
    }

    /// Runs `f` on the core, then delivers its events and has its frames sent.
    fn with<T>(&self, sender: Sender, f: impl FnOnce(&mut super::Core, Instant) -> Result<T>) -> Result<T> {
        let now = Instant::now();
        let mut core = self.shared.lock();
        core.check_open()?;
        let r = f(&mut core, now);
        self.shared.finish(core, now, sender);
        r
    }

    /// Starts a unary call. Fails at once if it cannot start (no such service, too large,
    /// too many calls); otherwise the outcome arrives on the channel, at the latest at the
    /// deadline.
    pub fn call(&self, method: &str, body: Bytes, timeout: Duration) -> Result<flume::Receiver<Result<Bytes>>> {
        self.check_len(method.len() + body.len())?;
        let (done, rx) = flume::bounded(1);
        self.with(Sender::Writer, |core, now| {
            let id = core.endpoint.request(now, method, body, CallMode::Unary, timeout)?;
            core.calls.insert(id, done);
            Ok(rx)
        })
    }

    /// Starts a server-streaming call; its items and then its end arrive on the receiver.
    pub fn call_stream(&self, method: &str, body: Bytes, timeout: Duration) -> Result<ItemReceiver> {
        self.check_len(method.len() + body.len())?;
        // Credit bounds the items in flight to one window; +1 for the end.
        let (items, rx) = flume::bounded(self.shared.window as usize + 1);
        self.with(Sender::Writer, |core, now| {
            let id = core.endpoint.request(now, method, body, CallMode::ServerStream, timeout)?;
            core.streams.insert(id, items);
            Ok(id)
        })
        .map(|id| ItemReceiver::new(self.clone(), id, rx))
    }

    /// The reader of stream `id` took `n` items.
    pub fn consumed(&self, id: RequestId, n: u32) {
        let _ = self.with(Sender::Writer, |core, now| Ok(core.endpoint.consumed(now, id, n)?));
    }

    /// Cancels outgoing call `id` (the server is told).
    pub fn cancel(&self, id: RequestId) {
        let _ = self.with(Sender::Writer, |core, _| {
            core.streams.remove(&id);
            core.calls.remove(&id);
            Ok(core.endpoint.cancel(id)?)
        });
    }

    /// Answers a unary call.
    pub fn respond(&self, id: IncomingId, result: std::result::Result<Bytes, RemoteError>) {
        let r = self.with(Sender::Direct, |core, _| Ok(core.endpoint.respond(id, result)?));
        if let Err(e) = r {
            tracing::debug!(id = id.as_u64(), error = %e, "response not sent (the caller left or gave up)");
        }
    }

    /// Sends one item of a stream this hub serves.
    pub fn send_item(&self, id: IncomingId, body: Bytes) -> Result<ItemSent> {
        self.check_len(body.len())?;
        self.with(Sender::Direct, |core, _| match core.endpoint.send_item(id, body.clone()) {
            Ok(()) => Ok(ItemSent::Now),
            Err(proto::CommandError::Blocked) => {
                let (done, rx) = flume::bounded(1);
                core.blocked_items.insert(id, (body, done));
                Ok(ItemSent::Later(rx))
            }
            Err(e) => Err(e.into()),
        })
    }

    /// Ends a stream this hub serves.
    pub fn finish(&self, id: IncomingId, result: std::result::Result<(), RemoteError>) {
        let _ = self.with(Sender::Direct, |core, _| {
            if let Some((_, done)) = core.blocked_items.remove(&id) {
                let _ = done.send(Err(Error::Cancelled));
            }
            Ok(core.endpoint.finish(id, result)?)
        });
    }

    /// Publishes an event; returns how many peers (this one included) it was queued for.
    pub fn publish(&self, topic: &Topic, body: Bytes) -> Result<usize> {
        self.check_len(topic.as_str().len() + body.len())?;
        self.with(Sender::Writer, |core, _| Ok(core.endpoint.publish(topic, body)?))
    }

    /// Subscribes; events arrive on the receiver, which holds at most `capacity`; when it is
    /// full, `overflow` decides which event is dropped (either way the loss is reported as
    /// `missed` with the next event delivered). Dropping the receiver unsubscribes.
    pub fn subscribe(&self, filter: TopicFilter, capacity: usize, overflow: Overflow) -> Result<EventReceiver> {
        let (queue, rx) = SubscriptionQueue::new(capacity, overflow);
        let id = self.with(Sender::Writer, |core, _| {
            let id = core.endpoint.subscribe(filter)?;
            core.subscriptions.insert(id, queue);
            Ok(id)
        })?;
        Ok(rx.attach(self.clone(), id))
    }

    /// Removes a subscription.
    pub fn unsubscribe(&self, id: SubscriptionId) {
        let _ = self.with(Sender::Writer, |core, _| {
            core.subscriptions.remove(&id);
            Ok(core.endpoint.unsubscribe(id)?)
        });
    }

    /// Starts serving a service (announced to the bus at once).
    pub fn serve(&self, service: &str) -> Result<()> {
        self.with(Sender::Writer, |core, _| {
            core.endpoint.serve(service)?;
            core.notify_watchers();
            Ok(())
        })
    }

    /// Stops serving a service (announced to the bus at once).
    pub fn unserve(&self, service: &str) -> Result<()> {
        self.with(Sender::Writer, |core, _| Ok(core.endpoint.unserve(service)?))
    }

    /// A snapshot of the peer directory.
    pub fn peers(&self) -> Result<Vec<PeerSummary>> {
        let core = self.shared.lock();
        core.check_open()?;
        let local = core.endpoint.local();
        Ok(core
            .endpoint
            .peers()
            .map(|p| PeerSummary {
                id: p.id,
                name: p.info.name.clone(),
                pid: p.info.pid,
                services: p.info.services.clone(),
                patterns: p.info.patterns.clone(),
                is_local: p.id == local,
            })
            .collect())
    }

    /// Counters of what the protocol saw and dropped (bad frames, late responses, ...).
    pub fn stats(&self) -> proto::Stats {
        self.shared.lock().endpoint.stats()
    }

    /// The channel yields `()` as soon as some peer serves `service` (at once if one does).
    pub fn watch_service(&self, service: &str) -> Result<flume::Receiver<()>> {
        let (done, rx) = flume::bounded(1);
        self.with(Sender::Writer, |core, _| {
            core.add_watcher(service.to_string(), done);
            Ok(rx)
        })
    }

    fn check_len(&self, len: usize) -> Result<()> {
        let max = self.max_payload_len();
        if len > max { Err(Error::PayloadTooLarge { len, max }) } else { Ok(()) }
    }
}
