//! Limits and timings of an [`Endpoint`](crate::Endpoint).

use std::time::Duration;

/// Limits and timings. Every queue and table in the endpoint is bounded by one of these.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Config {
    /// Largest frame (header + name + payload) sent or accepted. Default 32 MiB.
    pub max_frame_len: usize,
    /// Credit window a stream receiver grants: how many items may be in flight. Default 64.
    pub stream_window: u32,
    /// Credit window this endpoint grants each publisher for events to its reliable
    /// subscriptions: how many such events from one publisher may be delivered and not yet taken
    /// by the application. Announced to every peer. Default 1024.
    pub event_window: u32,
    /// The same window in bytes (of event payloads): a publisher may have at most this many
    /// bytes of such events delivered and not yet taken, whatever their number (an event larger
    /// than the whole window still goes, once nothing else is outstanding). Announced to every
    /// peer; 0 bounds nothing (as a peer that announces none). Default 16 MiB.
    pub event_window_bytes: u64,
    /// Most calls this endpoint may have in flight. Default 10 000.
    pub max_outgoing_calls: usize,
    /// Most calls this endpoint serves at once; more are refused with a "busy" error. One
    /// caller may hold three quarters of them at most (the rest are for the others).
    /// Default 10 000.
    pub max_incoming_calls: usize,
    /// Most outputs (frames and events) queued for the driver. Default 65 536.
    pub max_queued_outputs: usize,
    /// How often this endpoint announces itself (its heartbeat). Default 250 ms.
    pub heartbeat_interval: Duration,
    /// A peer not heard from for this long is considered dead. Default 3 s.
    pub peer_timeout: Duration,
    /// How long a new endpoint waits at most for the bus to announce itself before it considers
    /// discovery complete (it usually completes much sooner; see
    /// [`Event::DiscoveryComplete`](crate::Event::DiscoveryComplete)). Default 500 ms.
    pub discovery_window: Duration,
}

impl Config {
    /// The same settings, with values that would break the protocol raised to the smallest
    /// that work: a heartbeat of at least 1 ms (a zero interval would fire forever), a peer
    /// timeout of at least two heartbeats, a stream and event window of at least 1, room for at least one
    /// call each way and one queued output, and frames of at least 256 bytes of payload.
    /// [`Endpoint::new`](crate::Endpoint::new) applies it.
    pub fn sanitized(mut self) -> Config {
        self.heartbeat_interval = self.heartbeat_interval.max(Duration::from_millis(1));
        self.peer_timeout = self.peer_timeout.max(self.heartbeat_interval * 2);
        self.stream_window = self.stream_window.max(1);
        self.event_window = self.event_window.max(1);
        self.max_outgoing_calls = self.max_outgoing_calls.max(1);
        self.max_incoming_calls = self.max_incoming_calls.max(1);
        self.max_queued_outputs = self.max_queued_outputs.max(1);
        self.max_frame_len = self.max_frame_len.max(crate::frame::HEADER_LEN + 256);
        self
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_frame_len: 32 << 20,
            stream_window: 64,
            event_window: 1024,
            event_window_bytes: 16 << 20,
            max_outgoing_calls: 10_000,
            max_incoming_calls: 10_000,
            max_queued_outputs: 65_536,
            heartbeat_interval: Duration::from_millis(250),
            peer_timeout: Duration::from_secs(3),
            discovery_window: Duration::from_millis(500),
        }
    }
}

/// The most of `max` places (calls served at once) one caller may hold: three quarters, so that
/// a caller that keeps calls open (or floods a server) leaves the others a quarter. At least one.
///
/// ```
/// assert_eq!(hsipc_proto::caller_share(1024), 768);
/// assert_eq!(hsipc_proto::caller_share(1), 1);
/// ```
pub fn caller_share(max: usize) -> usize {
    max - max / 4
}
