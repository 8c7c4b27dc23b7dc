//! Services and publish/subscribe: serving, subscribing, publishing, receiving events.

use super::*;

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
    pub fn subscribe(&mut self, filter: TopicFilter) -> Result<SubscriptionId, CommandError> {
        self.check_open()?;
        let id = SubscriptionId(self.subscription_ids.next());
        let count = self.patterns.entry(filter.as_str().to_string()).or_insert(0);
        *count += 1;
        let is_new = *count == 1;
        self.subscriptions.insert(&filter, id);
        self.subscription_filters.insert(id, filter);
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
    /// Returns how many peers (local one included) it was queued for.
    pub fn publish(&mut self, topic: &Topic, body: Bytes) -> Result<usize, CommandError> {
        self.check_open()?;
        let peers = self.directory.subscribers(topic);
        self.check_room(peers.len())?;
        let name = topic.as_str().as_bytes();
        let len = crate::frame::HEADER_LEN + name.len() + body.len();
        if len > self.config.max_frame_len {
            return Err(CommandError::PayloadTooLarge { len, max: self.config.max_frame_len });
        }
        let mut count = 0;
        for peer in peers {
            if peer == self.local {
                let subscriptions = self.subscriptions.matches(topic);
                if !subscriptions.is_empty() {
                    count += 1;
                    self.push_event(Event::Published {
                        from: self.local,
                        topic: topic.clone(),
                        body: body.clone(),
                        subscriptions,
                        missed: 0,
                    });
                }
                continue;
            }
            let seq = self.publish_seq_out.entry(peer).or_insert(0);
            *seq += 1;
            let seq = *seq;
            let frame = self.encode(FrameKind::Publish, 0, 0, 0, seq, name, &body)?;
            self.transmit(Dest::Peer(peer), frame);
            count += 1;
        }
        Ok(count)
    }

    pub(super) fn on_publish(&mut self, from: PeerId, f: Frame) -> Result<(), FrameError> {
        let topic = Topic::new(f.name()).map_err(FrameError::BadTopic)?;
        let last = self.publish_seq_in.entry(from).or_insert(0);
        if f.seq <= *last {
            self.stats.duplicates += 1;
            return Ok(());
        }
        let missed = f.seq - *last - 1;
        *last = f.seq;
        let subscriptions = self.subscriptions.matches(&topic);
        if subscriptions.is_empty() {
            self.stats.unmatched_events += 1;
            return Ok(());
        }
        self.push_event(Event::Published { from, topic, body: f.payload, subscriptions, missed });
        Ok(())
    }

    pub(super) fn remove_subscription(&mut self, id: SubscriptionId) -> bool {
        let Some(filter) = self.subscription_filters.remove(&id) else {
            return false;
        };
        self.subscriptions.remove(&filter, &id);
        let key = filter.as_str();
        match self.patterns.get_mut(key) {
            Some(n) if *n > 1 => {
                *n -= 1;
                false
            }
            Some(_) => {
                self.patterns.remove(key);
                true
            }
            None => false,
        }
    }
}
