//! Deterministic scenarios: endpoints on a virtual bus with a fake clock and fault injection.
//! Each reads as a script and ends with a leak check.

mod calls;
mod event_credit;
mod limits;
mod peers;
mod pubsub;
mod streams;
mod topic;
mod util;

use std::time::Duration;

use bytes::Bytes;

use self::util::{Bus, Fault, is, peer};
use crate::frame::{Frame, FrameKind};
use crate::{
    CallError, CallMode, CallRef, CancelReason, CommandError, Config, ErrorCode, Event, IncomingId, LeaveReason,
    NoCredit, RemoteError, RequestId, Topic, TopicFilter,
};

const SECOND: Duration = Duration::from_secs(1);

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

/// A bus of `n` nodes where node 1 serves `calc`, everyone discovered everyone.
fn calc_bus(n: usize) -> Bus {
    let mut bus = Bus::new(n);
    bus.ep(1).serve("calc").unwrap();
    bus.settle();
    for i in 0..n {
        bus.events(i);
    }
    bus
}

fn requests(bus: &mut Bus, i: usize) -> Vec<(IncomingId, String, Bytes, CallMode)> {
    bus.events(i)
        .into_iter()
        .filter_map(|e| match e {
            Event::RequestReceived { id, method, body, mode, .. } => Some((id, method.to_string(), body, mode)),
            _ => None,
        })
        .collect()
}

fn response(events: &[Event], want: RequestId) -> Option<Result<Bytes, CallError>> {
    events.iter().find_map(|e| match e {
        Event::Response { id, outcome } if *id == want => Some(outcome.clone()),
        _ => None,
    })
}

fn items(events: &[Event], want: RequestId) -> Vec<Bytes> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Item { call: CallRef::Outgoing(id), body } if *id == want => Some(body.clone()),
            _ => None,
        })
        .collect()
}

fn stream_end(events: &[Event], want: RequestId) -> Option<Result<(), CallError>> {
    events.iter().find_map(|e| match e {
        Event::StreamEnded { id, outcome } if *id == want => Some(outcome.clone()),
        _ => None,
    })
}

/// Opens a server stream from node 0 to node 1; returns (client id, server id).
fn open_stream(bus: &mut Bus, timeout: Duration) -> (RequestId, IncomingId) {
    let now = bus.now;
    let id = bus.ep(0).request(now, "calc.count", b(""), CallMode::ServerStream, timeout).unwrap();
    bus.settle();
    let (inc, _, _, mode) = requests(bus, 1)[0].clone();
    assert_eq!(mode, CallMode::ServerStream);
    (id, inc)
}
