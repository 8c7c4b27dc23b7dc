//! Event credit: how each reliable subscriber holds its publishers back, how it gives credit
//! back as its application takes events, and what a publisher does with a subscriber that has
//! none left.
//!
//! A subscriber with a reliable subscription grants every publisher a window of
//! [`Config::event_window`] events and [`Config::event_window_bytes`] bytes of their payloads
//! (announced in its [`PeerInfo`]). A publish to a topic it subscribes to reliably takes one
//! event and its payload's bytes from that window (the frame says so with
//! [`Flags::CREDITED`]); the subscriber returns credit ([`FrameKind::EventCredit`]: events in
//! `seq`, bytes in `id`) once the application has taken the events
//! ([`Endpoint::events_taken`]). An event larger than the whole byte window goes once nothing
//! else is outstanding. A publisher without credit
//! for one of the subscribers either waits ([`NoCredit::Refuse`], then publishes again on
//! [`Event::EventCredit`]) or, at its publish timeout, cuts off the subscribers that have given
//! no credit back for that long ([`NoCredit::CutOff`]): the others get the event, the subscriber
//! is told at once ([`FrameKind::EventsLost`], read as [`Event::EventsLost`]), and until it has
//! taken half its window the publisher drops (and counts) the events it has no credit for
//! instead of waiting for it again. So one stuck subscriber holds its publishers back once, for
//! one timeout; one that reads, however slowly, is waited for.

use super::*;

/// How [`Endpoint::publish`] treats a reliable subscriber that has no credit left.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoCredit {
    /// Publish nothing and fail with [`CommandError::NoEventCredit`]: wait for
    /// [`Event::EventCredit`], then publish again.
    Refuse,
    /// Cut off the subscribers without credit that have given none back since `silent_since`
    /// (they are sent an [`FrameKind::EventsLost`] notice now, and are not waited for again
    /// until they have caught up: taken half their window), and publish to the others. If a
    /// subscriber without credit has given some back since, it is still reading: nothing is
    /// published, and the error says when to look again.
    CutOff {
        /// Subscribers silent since this instant are cut off.
        silent_since: Instant,
    },
}

/// What a publish did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Published {
    /// The peers it went to, the local one included.
    pub peers: usize,
    /// The reliable subscribers this publish cut off.
    pub cut_off: Vec<PeerId>,
}

/// A publisher's account with one reliable subscriber.
#[derive(Debug)]
pub(super) struct Granted {
    /// Events it may still be sent.
    available: u32,
    /// Its window.
    window: u32,
    /// Bytes of payload it may still be sent (when `window_bytes` is not 0).
    available_bytes: u64,
    /// Its window in bytes; 0 bounds nothing.
    window_bytes: u64,
    /// When it last gave credit back (or was first published to).
    last_credit: Instant,
    /// It had no credit at a publish timeout: events it has no credit for are dropped, not
    /// waited for, until it has taken half its window.
    cut_off: bool,
    /// Events dropped since the last frame sent to it.
    unreported: u64,
    /// The topic of the last event dropped.
    last_dropped: Option<Topic>,
}

/// A subscriber's account with one publisher.
#[derive(Debug, Default)]
pub(super) struct Owed {
    /// Credited events received and not yet taken.
    outstanding: u32,
    /// Taken and not yet returned.
    to_return: u32,
    /// Their payloads' bytes, received and not yet taken.
    outstanding_bytes: u64,
    /// Taken and not yet returned.
    to_return_bytes: u64,
}

impl Granted {
    /// Whether an event of `size` payload bytes may go.
    fn has_room(&self, size: u64) -> bool {
        self.available > 0
            && (self.window_bytes == 0 || size <= self.available_bytes || self.available_bytes == self.window_bytes)
    }
}

impl Endpoint {
    // Commands

    /// The application took `n` credited events from `from` (an [`Event::Published`] with
    /// `credited`), of `bytes` payload bytes together: once enough are taken (a quarter of the
    /// window in events or in bytes), their credit goes back to the publisher. Each credited
    /// event must be reported exactly once, after every subscription it was delivered to has
    /// taken it (or dropped it).
    pub fn events_taken(&mut self, now: Instant, from: PeerId, n: u32, bytes: u64) {
        if from == self.local {
            self.regranted(now, from, n, bytes);
            return;
        }
        let batch = (self.config.event_window / 4).max(1);
        let batch_bytes = (self.config.event_window_bytes / 4).max(1);
        let Some(owed) = self.owed.get_mut(&from) else { return };
        let n = n.min(owed.outstanding);
        let bytes = bytes.min(owed.outstanding_bytes);
        owed.outstanding -= n;
        owed.to_return += n;
        owed.outstanding_bytes -= bytes;
        owed.to_return_bytes += bytes;
        if owed.to_return >= batch || (self.config.event_window_bytes > 0 && owed.to_return_bytes >= batch_bytes) {
            self.return_credit(from);
        }
    }

    /// Gives back every credit taken and not yet returned, however little (credit otherwise
    /// goes back a quarter window at a time). Call it now and then (the engine does on every
    /// clock tick), so that a subscriber that reads slowly still gives its publishers credit
    /// and is not taken for a stuck one.
    pub fn flush_event_credit(&mut self) {
        let owing: Vec<PeerId> =
            self.owed.iter().filter(|(_, o)| o.to_return > 0 || o.to_return_bytes > 0).map(|(p, _)| *p).collect();
        for from in owing {
            self.return_credit(from);
        }
    }

    fn return_credit(&mut self, from: PeerId) {
        let Some(owed) = self.owed.get_mut(&from) else { return };
        let grant = std::mem::take(&mut owed.to_return);
        let bytes = std::mem::take(&mut owed.to_return_bytes);
        if let Ok(frame) = self.encode(FrameKind::EventCredit, 0, 0, bytes, u64::from(grant), &[], &[]) {
            self.transmit(Dest::Peer(from), frame);
        }
    }

    // Private: the publisher's side

    /// Whether a publish of `size` payload bytes may go to reliable subscriber `peer` now (it
    /// has credit, or is cut off and not waited for); if not, when it last gave credit back.
    pub(super) fn waits_for(&self, peer: PeerId, size: u64) -> Option<Instant> {
        self.granted.get(&peer).filter(|g| !g.has_room(size) && !g.cut_off).map(|g| g.last_credit)
    }

    /// Takes a credit of reliable subscriber `peer` for an event on `topic` of `size` payload
    /// bytes. `false` if it has none: the event is dropped for it (counted), and it is cut off
    /// if it was not already. Returns whether it was cut off just now as the second value.
    pub(super) fn take_event_credit(&mut self, now: Instant, peer: PeerId, topic: &Topic, size: u64) -> (bool, bool) {
        let (window, window_bytes) = self.event_window_of(peer);
        let g = self.granted.entry(peer).or_insert_with(|| Granted {
            available: window,
            window,
            available_bytes: window_bytes,
            window_bytes,
            last_credit: now,
            cut_off: false,
            unreported: 0,
            last_dropped: None,
        });
        if g.has_room(size) {
            g.available -= 1;
            g.available_bytes = g.available_bytes.saturating_sub(size);
            return (true, false);
        }
        g.unreported += 1;
        g.last_dropped = Some(topic.clone());
        self.stats.events_cut_off += 1;
        let newly = !std::mem::replace(&mut g.cut_off, true);
        if newly {
            self.stats.subscribers_cut_off += 1;
        }
        (false, newly)
    }

    /// Events to `peer` were dropped: its per-peer sequence moves on, so the next frame it
    /// gets shows the gap.
    pub(super) fn skip_event(&mut self, peer: PeerId) {
        if peer != self.local {
            *self.publish_seq_out.entry(peer).or_insert(0) += 1;
        }
    }

    /// An event is going to `peer`: what it had lost since the last frame is reported by this
    /// one (remote: the sequence gap; local: the count returned here).
    pub(super) fn take_unreported(&mut self, peer: PeerId) -> u64 {
        self.granted.get_mut(&peer).map_or(0, |g| std::mem::take(&mut g.unreported))
    }

    /// Tells `peer` now that events to it were dropped.
    pub(super) fn report_lost(&mut self, peer: PeerId) {
        let Some(g) = self.granted.get_mut(&peer) else { return };
        let (missed, Some(topic)) = (std::mem::take(&mut g.unreported), g.last_dropped.clone()) else { return };
        if missed == 0 {
            return;
        }
        if peer == self.local {
            let subscriptions = self.subscription_filters.keys().copied().collect();
            self.push_event(Event::EventsLost { from: self.local, topic, missed, subscriptions });
            return;
        }
        let seq = self.publish_seq_out.get(&peer).copied().unwrap_or(0);
        match self.encode(FrameKind::EventsLost, 0, 0, 0, seq, topic.as_str().as_bytes(), &[]) {
            Ok(frame) => self.transmit(Dest::Peer(peer), frame),
            Err(e) => tracing::warn!(error = %e, "events-lost notice does not fit in a frame"),
        }
    }

    pub(super) fn on_event_credit(&mut self, now: Instant, from: PeerId, f: Frame) -> Result<(), FrameError> {
        let n =
            u32::try_from(f.seq).map_err(|_| FrameError::Violation { peer: from, what: "event credit overflow" })?;
        self.regranted(now, from, n, f.id);
        Ok(())
    }

    /// Subscriber `peer` gave `n` credits back, and `bytes` of payload.
    fn regranted(&mut self, now: Instant, peer: PeerId, n: u32, bytes: u64) {
        let Some(g) = self.granted.get_mut(&peer) else { return };
        g.available = g.available.saturating_add(n).min(g.window);
        g.available_bytes = g.available_bytes.saturating_add(bytes).min(g.window_bytes);
        // Nothing outstanding by count: nothing by bytes either (a subscriber returns an
        // event's bytes no later than its count), whatever was lost on the way.
        if g.available == g.window {
            g.available_bytes = g.window_bytes;
        }
        g.last_credit = now;
        // Caught up: half its window free again, in events and in bytes.
        let half_bytes = g.window_bytes == 0 || g.available_bytes >= g.window_bytes.div_ceil(2);
        if g.cut_off && g.available >= g.window.div_ceil(2) && half_bytes {
            g.cut_off = false;
            self.report_lost(peer);
        }
        self.push_event(Event::EventCredit { peer });
    }

    /// The window `peer` grants: events, and bytes (0: no bound).
    fn event_window_of(&self, peer: PeerId) -> (u32, u64) {
        if peer == self.local {
            return (self.config.event_window, self.config.event_window_bytes);
        }
        self.directory.get(peer).map_or((1, 0), |p| (p.info.event_window.max(1), p.info.event_window_bytes))
    }

    // Private: the subscriber's side

    /// A credited event arrived from `from`. One beyond the window this endpoint granted (the
    /// publisher forgot this endpoint and started afresh, say) is still delivered (nothing is
    /// lost for a publisher's mistake, and the subscription's queue bounds the memory) and
    /// counted; the account stays within the window, so the two sides agree again.
    pub(super) fn credit_used(&mut self, from: PeerId, size: u64) {
        let owed = self.owed.entry(from).or_default();
        if owed.outstanding.saturating_add(owed.to_return) >= self.config.event_window {
            self.stats.credit_overruns += 1;
            return;
        }
        owed.outstanding += 1;
        owed.outstanding_bytes = owed.outstanding_bytes.saturating_add(size);
    }

    pub(super) fn on_events_lost(&mut self, from: PeerId, f: Frame) -> Result<(), FrameError> {
        let topic = Topic::new(f.name()).map_err(FrameError::BadTopic)?;
        let Some(last) = self.publisher_seq(from) else { return Ok(()) };
        if f.seq <= last {
            return Ok(());
        }
        let missed = f.seq - last;
        self.publish_seq_in.insert(from, f.seq);
        // Credit is this endpoint's, not one subscription's: every subscription may have lost
        // events, whichever topic they were on.
        let subscriptions = self.subscription_filters.keys().copied().collect();
        self.push_event(Event::EventsLost { from, topic, missed, subscriptions });
        Ok(())
    }

    /// Forgets the credit accounts with a departed peer.
    pub(super) fn forget_credit(&mut self, peer: PeerId) {
        self.granted.remove(&peer);
        self.owed.remove(&peer);
    }
}
