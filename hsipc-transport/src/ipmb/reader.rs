//! The reader thread: ipmb `recv` → the engine (through its [`Ingress`]). It waits for nothing else.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use proto::PeerId;

use super::{Msg, cloexec, envelope};
use crate::ingress::Ingress;
use crate::transport::TransportError;

/// How often the reader re-marks the process's bus fds close-on-exec.
const CLOEXEC_SWEEP: Duration = Duration::from_millis(100);

pub(super) fn spawn(
    mut receiver: ipmb::EndpointReceiver<Msg>,
    local: PeerId,
    ingress: Ingress,
    max_len: usize,
    timeout: Duration,
    stop: Arc<AtomicBool>,
    sweeper: cloexec::Sweeper,
) -> Result<JoinHandle<()>, TransportError> {
    std::thread::Builder::new()
        .name("hsipc-ipmb-reader".into())
        .spawn(move || {
            let mut next_sweep = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                if Instant::now() >= next_sweep {
                    sweeper.sweep();
                    next_sweep = Instant::now() + CLOEXEC_SWEEP;
                }
                let received = catch_unwind(AssertUnwindSafe(|| receiver.recv(Some(timeout))));
                let msg = match received {
                    Ok(Ok(msg)) => msg,
                    // A timeout only means "nothing yet": the loop never ends on one.
                    Ok(Err(ipmb::RecvError::Timeout)) => continue,
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e, "ipmb recv failed; retrying");
                        std::thread::sleep(Duration::from_millis(10));
                        continue;
                    }
                    Err(_) => {
                        tracing::error!("ipmb panicked in recv; this hub no longer receives");
                        return;
                    }
                };
                match envelope::unwrap(msg, max_len) {
                    Ok((from, _)) if from == local => {} // our own broadcast
                    Ok((from, bytes)) => {
                        if !ingress.deliver(from, bytes) {
                            return; // the engine is gone
                        }
                    }
                    Err(envelope::Unwrap::Foreign) => {}
                    Err(envelope::Unwrap::Malformed(why)) => {
                        tracing::debug!(why, "dropped a malformed message")
                    }
                }
            }
        })
        .map_err(|source| TransportError::Io { what: "spawning the ipmb reader thread", source })
}
