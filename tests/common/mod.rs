//! Multi-process test harness: the test binary re-runs itself as a child in a named role.
//!
//! The parent spawns `current_exe child_entry --exact --nocapture` with `HSIPC_ROLE` (and any
//! other variables) set; the `child_entry` test runs that role and exits. Children report on
//! stdout with lines starting `@@` (found anywhere in a line, because libtest prints its own
//! text before them) and take commands on stdin. Every wait has a deadline, and a guard kills
//! and reaps its child on every path. The parent never joins a bus itself: ipmb's sockets are
//! inherited by children, so only children join.

#![allow(dead_code, unreachable_pub)] // each test binary uses a different part

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// A heartbeat far apart, for tests that count what a hub does (wake-ups, allocations): at most
/// one falls in a window of a few seconds after the first.
pub const QUIET_HEARTBEAT: Duration = Duration::from_secs(30);
/// The peer timeout that goes with [`QUIET_HEARTBEAT`].
pub const QUIET_PEER_TIMEOUT: Duration = Duration::from_secs(120);

/// A bus name no other test (or test run) uses.
pub fn unique_bus(test: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    format!("t-{}-{}-{}-{}", &test[..test.len().min(24)], std::process::id(), nanos, N.fetch_add(1, Ordering::Relaxed))
}

/// A running child process in a role.
pub struct Peer {
    pub name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: flume::Receiver<String>,
}

impl Peer {
    /// Spawns role `role` on `bus`, named `name`, with extra environment `env`.
    pub fn spawn(role: &str, bus: &str, name: &str, env: &[(&str, &str)]) -> Peer {
        let mut cmd = Command::new(std::env::current_exe().expect("test binary path"));
        cmd.args(["child_entry", "--exact", "--nocapture", "--test-threads=1"])
            .env("HSIPC_ROLE", role)
            .env("HSIPC_BUS", bus)
            .env("HSIPC_NAME", name)
            .env("HSIPC_PARENT", std::process::id().to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn child");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = flume::unbounded();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(i) = line.find("@@") {
                    let _ = tx.send(line[i + 2..].to_string());
                }
            }
        });
        let stdin = child.stdin.take();
        Peer { name: name.to_string(), child, stdin, lines }
    }

    /// Spawns and waits for its `READY` line.
    pub fn ready(role: &str, bus: &str, name: &str, env: &[(&str, &str)]) -> Peer {
        let mut p = Self::spawn(role, bus, name, env);
        p.expect("READY", Duration::from_secs(20));
        p
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The next report line, or a panic after `timeout`.
    pub fn line(&mut self, timeout: Duration) -> String {
        match self.lines.recv_timeout(timeout) {
            Ok(l) => l,
            Err(_) => panic!("{}: no report within {timeout:?} (exit: {:?})", self.name, self.child.try_wait()),
        }
    }

    /// Reads reports until one starts with `prefix`; returns the rest of that line.
    pub fn expect(&mut self, prefix: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.line(left);
            if let Some(rest) = line.strip_prefix(prefix) {
                return rest.trim().to_string();
            }
            eprintln!("{}: skipping report `{line}` while waiting for `{prefix}`", self.name);
        }
    }

    /// A report if one arrives within `timeout`.
    pub fn try_line(&mut self, timeout: Duration) -> Option<String> {
        self.lines.recv_timeout(timeout).ok()
    }

    /// Sends a command line.
    pub fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{line}").expect("write to child");
        stdin.flush().expect("flush child stdin");
    }

    /// Kills the child with SIGKILL and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits for the child to exit by itself; returns how long that took.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<Duration> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Ok(Some(status)) = self.child.try_wait() {
                assert!(status.success(), "{} exited with {status}", self.name);
                return Some(start.elapsed());
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        None
    }

    /// Resident memory of the child, in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        drop(self.stdin.take());
        self.kill();
    }
}

/// In a child: the role to run, if this process is one.
pub fn role() -> Option<String> {
    std::env::var("HSIPC_ROLE").ok()
}

/// In a child: an environment variable.
pub fn env(key: &str) -> String {
    std::env::var(key).unwrap_or_else(|_| panic!("child needs {key}"))
}

/// In a child: an optional environment variable parsed.
pub fn env_or<T: std::str::FromStr>(key: &str, default: T) -> T {
    std::env::var(key).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// In a child: reports a line to the parent.
pub fn report(line: impl AsRef<str>) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "@@{}", line.as_ref());
    let _ = out.flush();
}

/// In a child: exits if the parent dies (so a crashed test leaves no process behind), and
/// after `limit` in any case.
pub fn watch_parent(limit: Duration) {
    let parent: u32 = env_or("HSIPC_PARENT", 0);
    let start = Instant::now();
    std::thread::spawn(move || {
        loop {
            std::thread::sleep(Duration::from_millis(200));
            let alive = std::fs::metadata(format!("/proc/{parent}")).is_ok();
            if !alive || start.elapsed() > limit {
                std::process::exit(3);
            }
        }
    });
}

/// In a child: the next command line from the parent (None at end of input).
pub fn command() -> Option<String> {
    let mut line = String::new();
    match std::io::stdin().read_line(&mut line) {
        Ok(0) | Err(_) => None,
        Ok(_) => Some(line.trim().to_string()),
    }
}

/// A short name for an error, for reports.
pub fn kind(e: &hsipc::Error) -> &'static str {
    use hsipc::Error::*;
    match e {
        Timeout => "timeout",
        PeerLost => "peer_lost",
        NoSuchService { .. } => "no_such_service",
        NoSuchMethod { .. } => "no_such_method",
        Remote(_) => "remote",
        PayloadTooLarge { .. } => "too_large",
        Closed => "closed",
        Cancelled => "cancelled",
        Transport(_) => "transport",
        Protocol(_) => "protocol",
        _ => "other",
    }
}
