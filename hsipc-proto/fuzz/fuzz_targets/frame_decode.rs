//! Arbitrary bytes as frames: decoding never panics, a decoded frame re-encodes to the same
//! bytes, and an endpoint fed the bytes as a peer's frame never panics either.
#![no_main]

use std::time::{Duration, Instant};

use bytes::Bytes;
use hsipc_proto::frame::Frame;
use hsipc_proto::{Config, Endpoint, Input, PeerId};
use libfuzzer_sys::fuzz_target;

const MAX: usize = 1 << 20;

fuzz_target!(|data: &[u8]| {
    let bytes = Bytes::copy_from_slice(data);
    if let Ok(frame) = Frame::decode(bytes.clone(), MAX) {
        let again = frame.encode(MAX).expect("a decoded frame re-encodes");
        assert_eq!(again, bytes, "decode/encode round trip");
    }
    #[allow(clippy::disallowed_methods)] // the fuzz harness is not the sans-IO core
    let now = Instant::now();
    let mut ep = Endpoint::new(Config::default(), PeerId(1), "fuzz", 1, now);
    ep.serve("svc").expect("serve");
    let _ = ep.handle_input(now, Input::Frame { from: PeerId(2), bytes });
    ep.handle_timeout(now + Duration::from_secs(60));
    while ep.poll_output().is_some() {}
});
