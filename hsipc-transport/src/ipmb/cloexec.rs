//! Marking ipmb's file descriptors close-on-exec.
//!
//! ipmb creates its sockets, epoll and eventfds (and receives fds) without `CLOEXEC`. A child
//! process would inherit them; if this process is the bus controller and dies, the child's
//! copies keep the bus name alive and the bus wedges until the child exits. We cannot change
//! ipmb, so we mark every socket and anonymous-inode fd of the process close-on-exec. Rust's
//! own fds are already close-on-exec, and a program that wants a child to inherit an fd sets
//! that up explicitly in the child (dup2), which clears the flag there.

use std::collections::HashSet;

/// The process's open fds now.
pub(super) fn open_fds() -> HashSet<i32> {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return HashSet::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect()
}

/// Marks fds opened since `before` close-on-exec.
pub(super) fn mark_new(before: &HashSet<i32>) {
    for fd in open_fds() {
        if !before.contains(&fd) {
            set_cloexec(fd);
        }
    }
}

/// Marks every socket and anonymous-inode fd close-on-exec.
pub(super) fn mark_bus_fds() {
    for fd in open_fds() {
        let Ok(target) = std::fs::read_link(format!("/proc/self/fd/{fd}")) else {
            continue;
        };
        let t = target.to_string_lossy();
        if t.starts_with("socket:") || t.starts_with("anon_inode:") {
            set_cloexec(fd);
        }
    }
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
