//! The peer directory: announces, discovery, departures.

use super::*;

/// How many departed peers' processes an endpoint remembers (see `on_announce`).
const MAX_DEPARTED: usize = 1024;

impl Endpoint {
    /// Ends discovery now: the transport knows that no other peer was on the bus when this one
    /// joined, so there is nobody to wait for. Calls parked for a provider fail with
    /// `NoSuchService`.
    pub fn finish_discovery(&mut self, now: Instant) {
        if self.discovering.is_some() {
            self.discovery_done(now);
        }
    }

    pub(super) fn on_announce(&mut self, now: Instant, from: PeerId, f: Frame) -> Result<(), FrameError> {
        if from == self.local {
            return Ok(());
        }
        let info: PeerInfo = codec::decode(&f.payload).map_err(FrameError::BadAnnounce)?;
        let (name, pid, their_count) = (info.name.clone(), info.pid, info.peers as usize);
        // A peer id is one hub's, in one process for good: an announce that moves it to another
        // process (while it is known, or after it left) is another bus member claiming it
        // (whose lanes would then pass for that peer's), not news.
        let known_pid = match self.directory.get(from) {
            Some(known) => Some(known.info.pid),
            None => self.departed.iter().find(|(id, _)| *id == from).map(|(_, pid)| *pid),
        };
        if known_pid.is_some_and(|known| known != 0 && known != pid) {
            return Err(FrameError::Violation { peer: from, what: "an announce moved a peer to another process" });
        }
        let learned = self.directory.learn(now, from, f.seq, info);
        match learned {
            Learned::New => self.push_event(Event::PeerJoined { peer: from, name, pid }),
            Learned::Changed => self.push_event(Event::PeerChanged { peer: from }),
            Learned::Same => {}
        }
        // A newcomer (or one that asked) learns about us at once rather than at our next
        // heartbeat, so it can call us without a discovery delay.
        if f.flags.has(Flags::PROBE) || learned == Learned::New {
            self.announce(Dest::Peer(from), 0);
        }
        if let Some((expected, _)) = self.discovering.as_mut() {
            *expected = (*expected).max(their_count);
            if self.directory.len() >= *expected {
                self.discovery_done(now);
            }
        }
        if learned != Learned::Same {
            self.unpark(now);
        }
        Ok(())
    }

    // Private

    pub(super) fn peer_gone(&mut self, peer: PeerId, reason: LeaveReason) {
        if let Some(gone) = self.directory.get(peer) {
            if self.departed.len() >= MAX_DEPARTED {
                self.departed.pop_front();
            }
            self.departed.push_back((peer, gone.info.pid));
        }
        let known = self.directory.remove(peer);
        // A peer that broke the protocol did not die: what it had open says so.
        let (failed, cancelled) = match reason {
            LeaveReason::Broke(why) => (CallError::Protocol(why), CancelReason::Broken(CallError::Protocol(why))),
            _ => (CallError::PeerLost, CancelReason::PeerLost),
        };
        let calls: Vec<RequestId> = self.outgoing.iter().filter(|(_, o)| o.peer == peer).map(|(id, _)| *id).collect();
        for id in calls {
            if let Some(o) = self.outgoing.remove(&id) {
                self.disarm(id, o.deadline);
                self.finish_outgoing(id, o.mode, Err(failed.clone()));
            }
        }
        let served: Vec<IncomingId> = self.incoming.iter().filter(|(_, i)| i.peer == peer).map(|(id, _)| *id).collect();
        for id in served {
            self.drop_incoming(id, cancelled.clone());
        }
        self.publish_seq_out.remove(&peer);
        self.publish_seq_in.remove(&peer);
        self.forget_credit(peer);
        if known {
            self.push_event(Event::PeerLeft { peer, reason });
        }
    }

    pub(super) fn refresh_info(&mut self) {
        self.info.services = self.services.iter().cloned().collect();
        self.info.patterns = self.patterns.keys().cloned().collect();
        self.info.reliable = self.reliable_patterns.keys().cloned().collect();
    }

    /// Bumps the generation and announces the new state to everyone.
    pub(super) fn reannounce(&mut self) -> Result<(), CommandError> {
        self.refresh_info();
        let payload = codec::encode(&self.info).expect("PeerInfo always encodes");
        let len = crate::frame::HEADER_LEN + payload.len();
        if len > self.config.max_frame_len {
            return Err(CommandError::AnnounceTooLarge { len, max: self.config.max_frame_len });
        }
        self.generation += 1;
        // The local entry serves local calls and publishes like any other peer's.
        self.directory.learn_local(self.local, self.generation, self.info.clone());
        self.announce(Dest::All, 0);
        Ok(())
    }

    pub(super) fn discovery_done(&mut self, now: Instant) {
        if let Some((_, deadline)) = self.discovering.take() {
            self.timers.cancel(deadline, Timer::Discovery);
        }
        self.push_event(Event::DiscoveryComplete);
        self.unpark(now);
    }

    pub(super) fn announce(&mut self, dest: Dest, flags: u8) {
        self.info.peers = self.directory.len().min(u32::MAX as usize) as u32;
        let payload = codec::encode(&self.info).expect("PeerInfo always encodes");
        match self.encode(FrameKind::Announce, flags, 0, 0, self.generation, &[], &payload[..]) {
            Ok(frame) => self.transmit(dest, frame),
            Err(e) => tracing::warn!(error = %e, "announce does not fit in a frame"),
        }
    }
}
