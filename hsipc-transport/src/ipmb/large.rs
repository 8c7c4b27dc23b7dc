//! How a lane's writer sends each frame: small ones in chunks, large ones through the lane's
//! pool, sealed in a memfd of their own, or in chunks, whichever the reader and the moment allow.
//!
//! A frame of [`sealed::SEALED_MIN`] bytes or more, once the reader has said it takes them:
//! 1. into the lane's pool (see `pool`), if it fits ([`pool::POOLED_MAX`]) and a run is free:
//!    one copy, no page allocated;
//! 2. else sealed in a memfd of its own (see `sealed`), if fewer than
//!    [`sealed::MAX_UNMAPPED`] of those wait to be mapped;
//! 3. else in chunks, like a small frame.
//!
//! Every way goes through the lane's socket, in order with everything else on it.

use std::io;
use std::os::fd::OwnedFd;

use proto::frame::WireFrame;

use super::lane::{self, Back};
use super::pool::{self, SendPool};
use super::sealed;

/// A frame on its way into a lane, and how it goes.
pub(super) struct Outgoing {
    pub(super) frame: WireFrame,
    how: How,
}

enum How {
    Chunks,
    Sealed(OwnedFd),
    /// In the pool at `offset`; `offer`: the pool itself goes first (the lane's first pooled
    /// frame).
    Pooled {
        offset: u64,
        offer: bool,
    },
}

impl Outgoing {
    /// How many lane messages it takes.
    pub(super) fn parts(&self) -> usize {
        match self.how {
            How::Chunks => lane::chunk_count(&self.frame),
            How::Sealed(_) => 1,
            How::Pooled { offer, .. } => 1 + usize::from(offer),
        }
    }
}

/// One lane's writer's state for large frames.
#[derive(Debug, Default)]
pub(super) struct LargeFrames {
    /// The reader takes sealed and pooled frames (it said so).
    takes: bool,
    /// Sealed frames made for this lane that its reader has not said it mapped.
    unmapped: usize,
    pool: Option<SendPool>,
    /// A pool cannot be made or handed over: do not try again.
    no_pool: bool,
}

impl LargeFrames {
    /// Decides how `frame` goes (and copies it into the pool or a memfd, if that is the way).
    pub(super) fn prepare(&mut self, lane_fd: &OwnedFd, frame: &WireFrame) -> Outgoing {
        let chunks = || Outgoing { frame: frame.clone(), how: How::Chunks };
        if frame.len() < pool::POOLED_MIN {
            return chunks();
        }
        self.read_back(lane_fd);
        if !self.takes {
            return chunks();
        }
        if let Some(how) = self.pooled(frame) {
            return Outgoing { frame: frame.clone(), how };
        }
        if frame.len() < sealed::SEALED_MIN || self.unmapped >= sealed::MAX_UNMAPPED {
            return chunks();
        }
        match sealed::seal(frame) {
            Ok(memfd) => {
                self.unmapped += 1;
                Outgoing { frame: frame.clone(), how: How::Sealed(memfd) }
            }
            Err(e) => {
                tracing::debug!(error = %e, "cannot seal a large frame; it goes in chunks");
                chunks()
            }
        }
    }

    /// Puts `frame` into the pool (made on first use), if it fits.
    fn pooled(&mut self, frame: &WireFrame) -> Option<How> {
        let offer = self.pool.is_none();
        if offer {
            if self.no_pool {
                return None;
            }
            match SendPool::new() {
                Ok(pool) => self.pool = Some(pool),
                Err(e) => {
                    tracing::debug!(error = %e, "cannot make a lane pool; large frames go sealed");
                    self.no_pool = true;
                    return None;
                }
            }
        }
        let offset = self.pool.as_mut()?.put(frame)?;
        Some(How::Pooled { offset, offer })
    }

    /// Takes in what the reader has said.
    fn read_back(&mut self, lane_fd: &OwnedFd) {
        lane::read_back(lane_fd, |back| match back {
            Back::TakesSealed => self.takes = true,
            Back::Mapped => self.unmapped = self.unmapped.saturating_sub(1),
        });
    }

    /// Writes `out` from part `from` on, as far as the lane takes it now; returns the parts
    /// written in all.
    pub(super) fn write(&mut self, lane_fd: &OwnedFd, out: &mut Outgoing, from: usize) -> io::Result<usize> {
        let len = out.frame.len();
        let fallback = match &out.how {
            How::Chunks => return lane::write_chunks(lane_fd, &out.frame, from),
            How::Sealed(memfd) => match lane::write_sealed(lane_fd, memfd, len) {
                Ok(sent) => return Ok(usize::from(sent)),
                Err(e) if too_many_fds(&e) => {
                    self.unmapped = self.unmapped.saturating_sub(1);
                    e
                }
                Err(e) => return Err(e),
            },
            &How::Pooled { offset, offer } => {
                let Some(pool) = &self.pool else {
                    return Err(io::Error::other("a pooled frame without a pool"));
                };
                if offer && from == 0 {
                    match lane::write_pool(lane_fd, pool.memfds(), super::pool::POOL_SIZE) {
                        Ok(true) => {}
                        Ok(false) => return Ok(0),
                        Err(e) if too_many_fds(&e) => {
                            self.pool = None;
                            self.no_pool = true;
                            out.how = How::Chunks;
                            tracing::debug!("too many fds in flight; large frames on this lane go in chunks");
                            return lane::write_chunks(lane_fd, &out.frame, 0);
                        }
                        Err(e) => return Err(e),
                    }
                }
                let done = usize::from(offer);
                return Ok(done + usize::from(lane::write_pooled(lane_fd, offset, len)?));
            }
        };
        tracing::debug!(error = %fallback, "too many fds in flight; a sealed frame goes in chunks");
        out.how = How::Chunks;
        lane::write_chunks(lane_fd, &out.frame, from)
    }
}

/// The user has too many fds in flight in Unix sockets (the kernel refuses to pass another).
fn too_many_fds(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::ETOOMANYREFS)
}
