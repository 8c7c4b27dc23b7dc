//! The test bus: N endpoints wired together, a virtual clock and a seeded fault plan.
//!
//! `step` drains every endpoint, routes each transmit (with latency and faults), delivers what
//! has arrived, then jumps the clock to the next arrival or timer. Nothing sleeps; the only
//! real clock read is the epoch.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::frame::{Frame, FrameKind};
use crate::{Config, Dest, Endpoint, Event, Input, Output, PeerId};

/// What to do with one frame in flight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fault {
    Deliver,
    Drop,
    Duplicate,
    /// Deliver late by this much (later frames may overtake it: a reorder).
    Delay(Duration),
}

/// A frame on its way, as the fault plan sees it.
#[derive(Debug)]
pub(crate) struct InFlight<'a> {
    pub(crate) from: usize,
    pub(crate) to: usize,
    pub(crate) frame: &'a Frame,
}

type Plan = Box<dyn FnMut(&InFlight<'_>) -> Fault>;

pub(crate) struct Node {
    pub(crate) ep: Endpoint,
    pub(crate) events: Vec<(Instant, Event)>,
    pub(crate) alive: bool,
}

pub(crate) struct Bus {
    pub(crate) now: Instant,
    pub(crate) nodes: Vec<Node>,
    pub(crate) latency: Duration,
    /// (arrival, order) -> (from, to, bytes); the order keeps FIFO among equal arrivals.
    in_flight: BTreeMap<(Instant, u64), (usize, usize, Bytes)>,
    order: u64,
    plan: Plan,
    /// Frames rejected by receivers, for assertions.
    pub(crate) rejected: Vec<crate::FrameError>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bus").field("nodes", &self.nodes.len()).finish()
    }
}

pub(crate) fn peer(i: usize) -> PeerId {
    PeerId(i as u64 + 1)
}

impl Bus {
    pub(crate) fn new(n: usize) -> Self {
        Self::with_config(n, Config::default())
    }

    pub(crate) fn with_config(n: usize, config: Config) -> Self {
        #[allow(clippy::disallowed_methods)] // the epoch is the one real clock read
        let now = Instant::now();
        let mut bus = Bus {
            now,
            nodes: Vec::new(),
            latency: Duration::from_micros(50),
            in_flight: BTreeMap::new(),
            order: 0,
            plan: Box::new(|_| Fault::Deliver),
            rejected: Vec::new(),
        };
        for _ in 0..n {
            bus.add(config.clone());
        }
        bus
    }

    /// Adds a node (it announces itself with a probe).
    pub(crate) fn add(&mut self, config: Config) -> usize {
        let i = self.nodes.len();
        let ep = Endpoint::new(config, peer(i), &format!("node{i}"), 1000 + i as u32, self.now);
        self.nodes.push(Node { ep, events: Vec::new(), alive: true });
        i
    }

    pub(crate) fn set_plan(&mut self, plan: impl FnMut(&InFlight<'_>) -> Fault + 'static) {
        self.plan = Box::new(plan);
    }

    pub(crate) fn ep(&mut self, i: usize) -> &mut Endpoint {
        &mut self.nodes[i].ep
    }

    /// Runs `f` on node `i`'s endpoint with the bus's current time.
    pub(crate) fn with<R>(&mut self, i: usize, f: impl FnOnce(&mut Endpoint, Instant) -> R) -> R {
        let now = self.now;
        f(&mut self.nodes[i].ep, now)
    }

    /// The node dies silently: no goodbye, frames to it vanish.
    pub(crate) fn kill(&mut self, i: usize) {
        self.nodes[i].alive = false;
    }

    /// Drains every node and routes the outputs. Returns whether anything was produced.
    fn drain(&mut self) -> bool {
        let mut any = false;
        for i in 0..self.nodes.len() {
            if !self.nodes[i].alive {
                while self.nodes[i].ep.poll_output().is_some() {}
                continue;
            }
            while let Some(out) = self.nodes[i].ep.poll_output() {
                any = true;
                match out {
                    Output::Event(e) => self.nodes[i].events.push((self.now, e)),
                    Output::Transmit(t) => {
                        let targets: Vec<usize> = match t.dest {
                            Dest::Peer(p) => (0..self.nodes.len()).filter(|&j| peer(j) == p).collect(),
                            Dest::All => (0..self.nodes.len()).filter(|&j| j != i).collect(),
                        };
                        for to in targets {
                            self.route(i, to, t.frame.to_bytes());
                        }
                    }
                }
            }
        }
        any
    }

    fn route(&mut self, from: usize, to: usize, bytes: Bytes) {
        let frame = Frame::decode(bytes.clone(), usize::MAX).expect("endpoints encode valid frames");
        let fault = (self.plan)(&InFlight { from, to, frame: &frame });
        let at = self.now + self.latency;
        match fault {
            Fault::Drop => {}
            Fault::Deliver => self.enqueue(at, from, to, bytes),
            Fault::Duplicate => {
                self.enqueue(at, from, to, bytes.clone());
                self.enqueue(at, from, to, bytes);
            }
            Fault::Delay(d) => self.enqueue(at + d, from, to, bytes),
        }
    }

    fn enqueue(&mut self, at: Instant, from: usize, to: usize, bytes: Bytes) {
        self.order += 1;
        self.in_flight.insert((at, self.order), (from, to, bytes));
    }

    /// Injects raw bytes as if sent by node `from` to node `to`.
    pub(crate) fn inject(&mut self, from: usize, to: usize, bytes: Bytes) {
        let at = self.now;
        self.enqueue(at, from, to, bytes);
    }

    /// One step: drain, deliver everything due, run due timers; if nothing happened, jump the
    /// clock to the next arrival or deadline (not past `limit`). Returns false when idle.
    pub(crate) fn step(&mut self, limit: Instant) -> bool {
        let mut progressed = self.drain();
        while let Some((&(at, order), _)) = self.in_flight.first_key_value() {
            if at > self.now {
                break;
            }
            let (from, to, bytes) = self.in_flight.remove(&(at, order)).expect("just seen");
            progressed = true;
            if self.nodes[to].alive {
                let now = self.now;
                if let Err(e) = self.nodes[to].ep.handle_input(now, Input::Frame { from: peer(from), bytes }) {
                    self.rejected.push(e);
                }
            }
        }
        for n in &mut self.nodes {
            if n.alive && n.ep.poll_timeout().is_some_and(|t| t <= self.now) {
                n.ep.handle_timeout(self.now);
                progressed = true;
            }
        }
        if progressed {
            return true;
        }
        let next_arrival = self.in_flight.keys().next().map(|k| k.0);
        let next_timer = self.nodes.iter().filter(|n| n.alive).filter_map(|n| n.ep.poll_timeout()).min();
        let next = [next_arrival, next_timer].into_iter().flatten().min();
        match next {
            Some(t) if t <= limit => {
                self.now = self.now.max(t);
                true
            }
            _ => false,
        }
    }

    /// Runs until nothing is in flight and every output is drained. Heartbeats keep timers
    /// armed forever, so "idle" means: no frame in flight and no output queued.
    pub(crate) fn settle(&mut self) {
        for _ in 0..1_000_000 {
            let any = self.drain();
            if !any && self.in_flight.is_empty() {
                return;
            }
            let limit = self.now + Duration::from_secs(3600);
            self.step(limit);
        }
        panic!("bus did not settle: livelock");
    }

    /// Runs the clock forward by `d`, processing everything on the way.
    pub(crate) fn run_for(&mut self, d: Duration) {
        let limit = self.now + d;
        let mut guard = 0u64;
        while self.step(limit) {
            guard += 1;
            assert!(guard < 10_000_000, "livelock while running for {d:?}");
        }
        self.now = self.now.max(limit);
        self.settle();
    }

    /// Takes node `i`'s events so far.
    pub(crate) fn events(&mut self, i: usize) -> Vec<Event> {
        self.drain();
        std::mem::take(&mut self.nodes[i].events).into_iter().map(|(_, e)| e).collect()
    }

    /// Takes node `i`'s events with the time each was emitted.
    pub(crate) fn timed_events(&mut self, i: usize) -> Vec<(Instant, Event)> {
        self.drain();
        std::mem::take(&mut self.nodes[i].events)
    }

    /// Asserts that no live node holds a call, stream, timer or queued output any more.
    pub(crate) fn assert_no_leaks(&mut self) {
        self.settle();
        for (i, n) in self.nodes.iter().enumerate() {
            if !n.alive {
                continue;
            }
            let t = n.ep.table_sizes();
            assert_eq!((t.outgoing, t.incoming, t.timers, t.queued), (0, 0, 0, 0), "node {i} leaked state: {t:?}");
        }
    }
}

/// Whether a frame is of a kind (for fault plans).
pub(crate) fn is(f: &Frame, kind: FrameKind) -> bool {
    f.kind == kind
}
