//! Watching peer processes die, through Linux pidfds.
//!
//! ipmb reports nobody's death, and heartbeats take a peer timeout to notice one. On one
//! machine we can do better: every peer announces its process id, and a pidfd becomes readable
//! the moment that process exits. The engine's clock thread sleeps in `poll` on its pidfds
//! (beside its own wake-up), so a crashed or killed peer's calls fail at once. Heartbeat expiry stays as the fallback (a hung but
//! living process, or a peer in another pid namespace whose pid cannot be opened).

use std::collections::HashMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;

use proto::PeerId;

#[derive(Debug)]
pub(crate) struct Liveness {
    own_pid: u32,
    fds: HashMap<PeerId, Arc<OwnedFd>>,
}

impl Liveness {
    pub(crate) fn new(own_pid: u32) -> Self {
        Liveness { own_pid, fds: HashMap::new() }
    }

    /// Starts watching `peer`'s process. Peers in this process (or with no pid) are skipped.
    pub(crate) fn watch(&mut self, peer: PeerId, pid: u32) {
        if pid == 0 || pid == self.own_pid || pid > i32::MAX as u32 {
            return;
        }
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
        if fd < 0 {
            tracing::debug!(%peer, pid, error = %std::io::Error::last_os_error(), "cannot watch peer process; relying on heartbeats");
            return;
        }
        // SAFETY: the syscall returned a fresh fd that nothing else owns (pidfds are CLOEXEC).
        let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        self.fds.insert(peer, Arc::new(fd));
    }

    /// The pidfds watched, for a thread to sleep on (readable once the process exits).
    pub(crate) fn fds(&self) -> Vec<Arc<OwnedFd>> {
        self.fds.values().cloned().collect()
    }

    pub(crate) fn unwatch(&mut self, peer: PeerId) {
        self.fds.remove(&peer);
    }

    /// Peers whose process has exited since the last call. Does not block.
    pub(crate) fn dead(&mut self) -> Vec<PeerId> {
        if self.fds.is_empty() {
            return Vec::new();
        }
        let (peers, mut polls): (Vec<PeerId>, Vec<libc::pollfd>) = self
            .fds
            .iter()
            .map(|(p, fd)| (*p, libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 }))
            .unzip();
        // SAFETY: `polls` is a valid array of pollfd of the given length; timeout 0 never blocks.
        let n = unsafe { libc::poll(polls.as_mut_ptr(), polls.len() as libc::nfds_t, 0) };
        if n <= 0 {
            return Vec::new();
        }
        let dead: Vec<PeerId> = peers
            .into_iter()
            .zip(&polls)
            .filter(|(_, p)| p.revents & (libc::POLLIN | libc::POLLHUP) != 0)
            .map(|(p, _)| p)
            .collect();
        for p in &dead {
            self.fds.remove(p);
        }
        dead
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_child_that_exits_is_reported_dead_once() {
        let mut child = std::process::Command::new("sleep").arg("30").spawn().expect("spawn sleep");
        let mut l = Liveness::new(std::process::id());
        l.watch(PeerId(7), child.id());
        l.watch(PeerId(8), std::process::id()); // ourselves: never watched
        assert!(l.dead().is_empty());
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(l.dead(), vec![PeerId(7)]);
        assert!(l.dead().is_empty());
    }
}
