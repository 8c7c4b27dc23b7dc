//! Services and publish/subscribe: serving, subscribing, publishing, receiving events.

use super::*;
use crate::event::Matches;

impl Endpoint {
    // Commands

    /// Starts serving `service`: calls to `service.*` are routed here. Announced at once.
    pub fn serve(&mut self, service: &str) -> Result<(), CommandError> {
        self.check_open()?;
        validate_service(service)?;
        if self.services.insert(service.to_string()) {
            if let Err(e) = self.reannounce() {
                self.services.remove(service);
                self.refresh_info();
                return Err(e);
            }
        }
        Ok(())
    }

    /// Stops serving `service`.
    pub fn unserve(&mut self, service: &str) -> Result<(), CommandError> {
        self.check_open()?;
        if self.services.remove(service) {
            self.reannounce()?;
        }
        Ok(())
    }

    /// Subscribes to a topic pattern. Matching events arrive as [`Event::Published`].
    ///
    /// A `reliable` subscription holds its publishers back by this endpoint's event credit
    /// (see [`events_taken`](Self::events_taken)) instead of letting events be lost to it.
    pub fn subscribe(&mut self, filter: TopicFilter, reliable: bool) -> Result<SubscriptionId, CommandError> {
        self.check_open()?;
        let id = SubscriptionId(self.subscription_ids.next());
        let key = filter.as_str().to_string();
        let mut is_new = count_up(&mut self.patterns, &key);
        if reliable {
            is_new |= count_up(&mut self.reliable_patterns, &key);
        }
        self.subscriptions.insert(&filter, id);
        self.subscription_filters.insert(id, (filter, reliable));
        if is_new {
            if let Err(e) = self.reannounce() {
                self.remove_subscription(id);
                self.refresh_info();
                return Err(e);
            }
        }
        Ok(id)
    }

    /// Removes a subscription.
    pub fn unsubscribe(&mut self, id: SubscriptionId) -> Result<(), CommandError> {
        self.check_open()?;
        if self.remove_subscription(id) {
            self.reannounce()?;
        }
        Ok(())
    }

    /// Publishes an event to every peer with a matching pattern, and to local subscriptions.
    ///
    /// A peer with a reliable subscription to the topic must have event credit: if one has
    /// none, `no_credit` decides (see [`NoCredit`]).
    pub fn publish(
        &mut self,
        now: Instant,
        topic: &Topic,
        body: impl Into<Body>,
        no_credit: NoCredit,
    ) -> Result<Published, CommandError> {
        let body = body.into();
        self.check_open()?;
        let peers = self.directory.subscribers(topic);
        // One frame (an event or a notice) or local event per peer, at most.
        self.check_room(peers.len())?;
        let name = topic.as_str().as_bytes();
        let len = crate::frame::HEADER_LEN + name.len() + body.len();
        if len > self.config.max_frame_len {
            return Err(CommandError::PayloadTooLarge { len, max: self.config.max_frame_len });
        }
        let reliable = self.directory.reliable_subscribers(topic);
        // What the event costs a reliable subscriber's byte window.
        let size = body.len() as u64;
        // Those without credit, and of them those still reading (who gave some back since
        // `silent_since`: they are waited for, whatever the mode); the first of those.
        let silent_since = match no_credit {
            NoCredit::Refuse => None,
            NoCredit::CutOff { silent_since } => Some(silent_since),
        };
        let (mut waiting, mut first_reading) = (0, None::<Instant>);
        for last_credit in reliable.iter().filter_map(|p| self.waits_for(*p, size)) {
            waiting += 1;
            if silent_since.is_none_or(|s| last_credit > s) {
                first_reading = Some(first_reading.map_or(last_credit, |f| f.min(last_credit)));
            }
        }
        if let Some(first) = first_reading {
            // With a cut-off pending: when the first of them will have been silent as long.
            let recheck_at = silent_since.map(|s| now + first.saturating_duration_since(s));
            return Err(CommandError::NoEventCredit { subscribers: waiting, recheck_at });
        }
        // A large body sent to several peers: their frames share what a transport makes of it.
        let large = body.len() >= crate::frame::FAN_OUT_MIN;
        let fan_out =
            (large && peers.iter().filter(|p| **p != self.local).nth(1).is_some()).then(crate::frame::FanOut::default);
        let mut done = Published::default();
        for peer in peers {
            let credited = reliable.contains(&peer);
            if credited {
                let (sent, newly_cut_off) = self.take_event_credit(now, peer, topic, size);
                if !sent {
                    self.skip_event(peer);
                    if newly_cut_off {
                        self.report_lost(peer);
                        done.cut_off.push(peer);
                    }
                    continue;
                }
            }
            let missed = self.take_unreported(peer);
            if peer == self.local {
                let subscriptions = self.subscriptions.matches_cached(topic);
                if subscriptions.is_empty() {
                    if credited {
                        self.events_taken(now, peer, 1, size);
                    }
                    continue;
                }
                let from = self.local;
                let topic = topic.clone();
                let body = body.to_bytes();
                self.push_event(Event::Published {
                    from,
                    topic,
                    body,
                    subscriptions: Matches::new(subscriptions),
                    missed,
                    credited,
                });
                done.peers += 1;
                continue;
            }
            let seq = self.publish_seq_out.entry(peer).or_insert(0);
            *seq += 1;
            let seq = *seq;
            let flags = if credited { Flags::CREDITED } else { 0 };
            let frame = self.encode(FrameKind::Publish, flags, 0, 0, seq, name, &body)?.with_fan_out(fan_out.as_ref());
            self.transmit(Dest::Peer(peer), frame);
            done.peers += 1;
        }
        Ok(done)
    }

    /// The last sequence number seen from publisher `from` (0 for a new one), if this endpoint
    /// keeps its sequence (and credit): any peer it tracks already or knows, and up to
    /// [`MAX_UNKNOWN_PUBLISHERS`] besides the peers it knows. A publisher announces itself before
    /// it publishes, so only ids no peer announced (a bus member making them up) go beyond:
    /// their events are dropped and counted, rather than each adding to this endpoint's tables
    /// for good (nothing ends a peer that never announced itself).
    pub(super) fn publisher_seq(&mut self, from: PeerId) -> Option<u64> {
        if let Some(last) = self.publish_seq_in.get(&from) {
            return Some(*last);
        }
        let admitted = from == self.local
            || self.directory.get(from).is_some()
            || self.publish_seq_in.len() < self.directory.len() + MAX_UNKNOWN_PUBLISHERS;
        if !admitted {
            self.stats.late_or_unknown += 1;
        }
        admitted.then_some(0)
    }

    pub(super) fn on_publish(&mut self, now: Instant, from: PeerId, f: Frame) -> Result<(), FrameError> {
        let topic = Topic::new(f.name()).map_err(FrameError::BadTopic)?;
        let Some(last) = self.publisher_seq(from) else { return Ok(()) };
        let credited = f.flags.has(Flags::CREDITED);
        if f.seq <= last {
            // A copy: the publisher spent no credit on it.
            self.stats.duplicates += 1;
            return Ok(());
        }
        let missed = f.seq - last - 1;
        self.publish_seq_in.insert(from, f.seq);
        let size = f.payload.len() as u64;
        if credited {
            self.credit_used(from, size);
        }
        let subscriptions = self.subscriptions.matches_cached(&topic);
        if subscriptions.is_empty() {
            self.stats.unmatched_events += 1;
            if credited {
                self.events_taken(now, from, 1, size);
            }
            return Ok(());
        }
        let subscriptions = Matches::new(subscriptions);
        self.push_event(Event::Published { from, topic, body: f.payload, subscriptions, missed, credited });
        Ok(())
    }

    pub(super) fn remove_subscription(&mut self, id: SubscriptionId) -> bool {
        let Some((filter, reliable)) = self.subscription_filters.remove(&id) else {
            return false;
        };
        self.subscriptions.remove(&filter, &id);
        let key = filter.as_str();
        let mut changed = count_down(&mut self.patterns, key);
        if reliable {
            changed |= count_down(&mut self.reliable_patterns, key);
        }
        changed
    }
}

/// Most publishers not in the directory whose events an endpoint tracks at once, beyond the
/// peers it knows (see [`Endpoint::publisher_seq`]).
pub(crate) const MAX_UNKNOWN_PUBLISHERS: usize = 1024;

/// Counts one more user of `key`; whether it is the first.
fn count_up(counts: &mut BTreeMap<String, usize>, key: &str) -> bool {
    let n = counts.entry(key.to_string()).or_insert(0);
    *n += 1;
    *n == 1
}

/// Counts one user of `key` less; whether it was the last.
fn count_down(counts: &mut BTreeMap<String, usize>, key: &str) -> bool {
    match counts.get_mut(key) {
        Some(n) if *n > 1 => {
            *n -= 1;
            false
        }
        Some(_) => {
            counts.remove(key);
            true
        }
        None => false,
    }
}
