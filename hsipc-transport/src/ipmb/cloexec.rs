//! Marking ipmb's file descriptors close-on-exec.
//!
//! ipmb creates its sockets, epoll and eventfds (and accepts connections, as bus controller)
//! without `CLOEXEC`. A child process would inherit them; if this process is the bus controller
//! and dies, the child's copies keep the bus name alive and the bus wedges until the child
//! exits (`shared/ipmb-on-linux.md`, experiment 2.l). We cannot change ipmb, so we mark its fds
//! close-on-exec: those opened by the join, and then, every second (and at once when a new peer is heard from), every socket or
//! anonymous-inode fd that is not close-on-exec and did not exist before this hub joined. Fds
//! 0-2 and the application's own earlier fds (say, sockets passed in by a service manager)
//! are never touched.

use std::collections::HashSet;

/// Marks ipmb's fds close-on-exec; remembers which fds were the application's.
#[derive(Debug)]
pub(super) struct Sweeper {
    before: HashSet<i32>,
}

impl Sweeper {
    /// Takes note of the fds open before joining.
    pub(super) fn before_join() -> Sweeper {
        Sweeper { before: open_fds() }
    }

    /// Marks every fd opened since [`before_join`](Self::before_join) close-on-exec.
    pub(super) fn after_join(&self) {
        for fd in open_fds() {
            if fd > 2 && !self.before.contains(&fd) {
                set_cloexec(fd);
            }
        }
    }

    /// Marks new socket and anonymous-inode fds close-on-exec (ipmb's later connections).
    pub(super) fn sweep(&self) {
        for fd in open_fds() {
            if fd > 2 && !self.before.contains(&fd) && !is_cloexec(fd) && is_socket_or_anon(fd) {
                set_cloexec(fd);
            }
        }
    }
}

/// Marks every socket and anonymous-inode fd of the process above 2 close-on-exec.
///
/// A hub does this for ipmb's fds by itself, every second and whenever a new peer shows up; a process on a bus that spawns
/// child processes can call it right before spawning to close that window. It also marks the
/// application's own sockets that lack the flag: a program that wants a child to inherit a
/// socket should set that up in the child (`dup2` in `pre_exec`), which clears the flag there.
pub fn mark_bus_fds_close_on_exec() {
    for fd in open_fds() {
        if fd > 2 && !is_cloexec(fd) && is_socket_or_anon(fd) {
            set_cloexec(fd);
        }
    }
}

fn is_socket_or_anon(fd: i32) -> bool {
    let Ok(target) = std::fs::read_link(format!("/proc/self/fd/{fd}")) else { return false };
    let t = target.to_string_lossy();
    t.starts_with("socket:") || t.starts_with("anon_inode:")
}

/// The process's open fds now (without the one the listing itself used).
fn open_fds() -> HashSet<i32> {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else { return HashSet::new() };
    let listed: Vec<i32> = dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect();
    // The directory's own fd is closed now; keep only fds that are still open.
    // SAFETY: F_GETFD only reads a flag; a closed fd gives -1.
    listed.into_iter().filter(|&fd| unsafe { libc::fcntl(fd, libc::F_GETFD) } >= 0).collect()
}

fn is_cloexec(fd: i32) -> bool {
    // SAFETY: F_GETFD only reads a flag; a closed fd gives -1.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    flags < 0 || flags & libc::FD_CLOEXEC != 0
}

fn set_cloexec(fd: i32) {
    // SAFETY: F_GETFD/F_SETFD only read and set a flag; an fd closed meanwhile gives EBADF.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFD);
        if flags >= 0 && flags & libc::FD_CLOEXEC == 0 {
            libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    use super::*;

    fn inheritable_socket() -> OwnedFd {
        let mut fds = [0; 2];
        // SAFETY: socketpair fills two new fds (checked); no CLOEXEC on purpose.
        assert_eq!(unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM, 0, fds.as_mut_ptr()) }, 0);
        // SAFETY: fresh fds owned by nothing else; the second is closed at once.
        unsafe {
            drop(OwnedFd::from_raw_fd(fds[1]));
            OwnedFd::from_raw_fd(fds[0])
        }
    }

    #[test]
    fn marks_new_sockets_and_spares_the_applications_own() {
        let app = inheritable_socket();
        let sweeper = Sweeper::before_join();
        let ipmb_like = inheritable_socket();
        sweeper.sweep();
        assert!(is_cloexec(ipmb_like.as_raw_fd()), "a socket opened after joining is marked");
        assert!(!is_cloexec(app.as_raw_fd()), "the application's earlier socket is left alone");
    }
}
