//! The child processes of the `ipc` and `pinned` benches: this bench binary run again in a role
//! (`HSIPC_BENCH_ROLE`), reporting on stdout in lines that start `@@`. [`Proc`] is a child seen
//! from the bench process, killed and reaped when dropped; [`report`], [`bus`], [`kind`] and
//! [`watch_parent`] are for the child itself.

use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Mutex, mpsc};
use std::time::{Duration, Instant};

/// Which role a child process runs.
pub(crate) const ROLE_ENV: &str = "HSIPC_BENCH_ROLE";
/// The bus a child joins.
pub(crate) const BUS_ENV: &str = "HSIPC_BENCH_BUS";
/// The parent's pid, so a child can notice that it is gone.
pub(crate) const PARENT_ENV: &str = "HSIPC_BENCH_PARENT";
/// Which hub a child uses: `blocking`, `tokio` or `smol`.
pub(crate) const KIND_ENV: &str = "HSIPC_BENCH_KIND";
/// The number of an fd a child inherits (see [`Proc::start`]).
pub(crate) const FD_ENV: &str = "HSIPC_BENCH_FD";

/// A child process in a role; killed and reaped on drop.
pub(crate) struct Proc {
    role: String,
    pub(crate) child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    registry: Option<&'static Mutex<Vec<u32>>>,
}

impl Proc {
    /// Spawns `cmd` (this bench binary, with whatever else the caller tells it) as `role` on
    /// `bus` with hub kind `kind`, inheriting `pass` if given (its number in [`FD_ENV`]), and
    /// reads its reports. With `registry`, the child's pid is in it from its spawn until it is
    /// reaped (the list is locked meanwhile), so that a watchdog can kill and reap it.
    pub(crate) fn start(
        mut cmd: Command,
        role: &str,
        bus: &str,
        kind: &str,
        pass: Option<&OwnedFd>,
        registry: Option<&'static Mutex<Vec<u32>>>,
    ) -> Proc {
        mark_all_cloexec();
        cmd.env(ROLE_ENV, role)
            .env(BUS_ENV, bus)
            .env(PARENT_ENV, std::process::id().to_string())
            .env(KIND_ENV, kind)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Some(fd) = pass {
            cmd.env(FD_ENV, fd.as_raw_fd().to_string());
            set_cloexec(fd.as_raw_fd(), false);
        }
        let mut children = registry.map(|r| r.lock().unwrap_or_else(|e| e.into_inner()));
        let spawned = cmd.spawn();
        if let Some(fd) = pass {
            set_cloexec(fd.as_raw_fd(), true);
        }
        let mut child = spawned.expect("spawn a bench child");
        if let Some(children) = children.as_mut() {
            children.push(child.id());
        }
        drop(children);
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(i) = line.find("@@") {
                    if tx.send(line[i + 2..].to_string()).is_err() {
                        break;
                    }
                }
            }
        });
        Proc { role: role.to_string(), stdin: child.stdin.take(), child, lines, registry }
    }

    /// Waits up to `wait` for the child's `READY` report; panics without it.
    pub(crate) fn wait_ready(&mut self, wait: Duration) {
        let deadline = Instant::now() + wait;
        loop {
            match self.line_until(deadline) {
                Some(l) if l == "READY" => return,
                Some(_) => {}
                None => panic!("{}: no READY within {wait:?} (exit: {:?})", self.role, self.child.try_wait()),
            }
        }
    }

    /// The next report line, or None at `deadline` or if the child is gone.
    pub(crate) fn line_until(&mut self, deadline: Instant) -> Option<String> {
        let left = deadline.saturating_duration_since(Instant::now());
        self.lines.recv_timeout(left).ok()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let children = self.registry.map(|r| r.lock().unwrap_or_else(|e| e.into_inner()));
        drop(self.stdin.take());
        let _ = self.child.kill();
        if let Ok(status) = self.child.wait() {
            // Killed is the expected end; anything else means the child failed first.
            if status.code().is_some_and(|c| c != 0) {
                eprintln!("bench child {} exited with {status}", self.role);
            }
        }
        if let Some(mut children) = children {
            let pid = self.child.id();
            children.retain(|&p| p != pid);
        }
    }
}

/// Sets or clears `FD_CLOEXEC` on `fd` (a closed fd is left alone).
pub(crate) fn set_cloexec(fd: RawFd, on: bool) {
    // SAFETY: F_GETFD/F_SETFD only read and set a flag; a closed fd gives EBADF.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFD);
        if flags >= 0 {
            let new = if on { flags | libc::FD_CLOEXEC } else { flags & !libc::FD_CLOEXEC };
            if new != flags {
                libc::fcntl(fd, libc::F_SETFD, new);
            }
        }
    }
}

/// Marks every fd above stderr close-on-exec, so no child inherits a bus socket.
pub(crate) fn mark_all_cloexec() {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    let fds: Vec<i32> = dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect();
    for fd in fds.into_iter().filter(|&fd| fd > 2) {
        set_cloexec(fd, true);
    }
}

// ---------------------------------------------------------------------------------------------
// In the child

/// Reports `line` to the parent (a stdout line starting `@@`).
pub(crate) fn report(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "@@{line}");
    let _ = out.flush();
}

/// The bus this child joins.
pub(crate) fn bus() -> String {
    std::env::var(BUS_ENV).expect("child needs HSIPC_BENCH_BUS")
}

/// The hub kind this child uses.
pub(crate) fn kind() -> String {
    std::env::var(KIND_ENV).unwrap_or_else(|_| "blocking".into())
}

/// Exits when the parent dies or closes our stdin. Returns the parent's pid.
pub(crate) fn watch_parent() -> i32 {
    let parent: i32 = std::env::var(PARENT_ENV).ok().and_then(|p| p.parse().ok()).unwrap_or(0);
    // SAFETY: prctl(PR_SET_PDEATHSIG) only sets this process's parent-death signal;
    // getppid has no preconditions.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        if libc::getppid() != parent {
            std::process::exit(3);
        }
    }
    std::thread::spawn(|| {
        let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
        std::process::exit(0);
    });
    parent
}
