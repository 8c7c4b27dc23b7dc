//! Several clients, one server: what a daemon serving a set of helper processes sees, beside a
//! raw Unix socket server in the same run.
//!
//! ```sh
//! cargo bench --bench clients --all-features                  # 1 and 3 and 8 clients, 1 and 2 CPUs
//! cargo bench --bench clients --all-features -- --quick       # a short run of each
//! ```
//!
//! The server is a process of its own (this binary run again in a role, `HSIPC_BENCH_ROLE`),
//! and so is each client; all of them are pinned to the first CPU this process may use
//! (`1 CPU`), or all may run on the first two (`2 CPUs`, where the scheduler places them). Each
//! client calls a 64 B echo in a loop, one call at a time, for the same stretch of time, and
//! reports its calls and their round trips; the table gives the calls per second of all
//! clients together, and the median and p99 round trip over all calls.
//!
//! Servers:
//! - **socket**: a `SOCK_STREAM` Unix socket server with a thread per client, reading and
//!   writing 64 B; clients are plain socket clients.
//! - **blocking / tokio / smol**: a hub of that kind serving `bench.echo` (`Bytes` in, the same
//!   `Bytes` out) on its workers or tasks (`+inline`: with `serve_inline`, on the thread that
//!   read the request). It is the first hub on its bus (the bus's controller). Clients are
//!   blocking hubs.
#![allow(missing_docs)]

#[path = "support/child_proc.rs"]
mod child_proc;
#[allow(dead_code)] // what only other benches use
#[path = "support/cpus.rs"]
mod cpus;

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use child_proc::{Proc, ROLE_ENV};
use cpus::allowed_cpus;

/// The CPUs a child may run on, comma-separated.
const CPUS_ENV: &str = "HSIPC_BENCH_CPUS";
/// How long each client calls (in milliseconds).
const SPAN_ENV: &str = "HSIPC_BENCH_SPAN_MS";
/// The longest any single wait in the bench process may take.
const WAIT: Duration = Duration::from_secs(20);
/// Calls each client makes before the measured stretch.
const WARMUP: usize = 2000;
/// Payload size.
const SIZE: usize = 64;
/// The servers measured.
const SERVERS: [&str; 7] = ["socket", "blocking", "blocking+inline", "tokio", "tokio+inline", "smol", "smol+inline"];

/// Children alive, by pid.
static CHILDREN: Mutex<Vec<u32>> = Mutex::new(Vec::new());

fn main() {
    if let Ok(role) = std::env::var(ROLE_ENV) {
        child::run(&role);
        return;
    }
    let quick = std::env::args().any(|a| a == "--quick");
    let allowed = allowed_cpus();
    let clients: &[usize] = if quick { &[3] } else { &[1, 3, 8] };
    let span = if quick { Duration::from_millis(300) } else { Duration::from_secs(2) };
    println!("# hsipc clients benchmark ({} mode)\n", if quick { "quick" } else { "default" });
    println!("{} CPUs usable ({allowed:?}); 64 B echo, each client one call at a time for {span:?}\n", allowed.len());
    for cpus in [1, 2] {
        let Some(set) = allowed.get(..cpus) else {
            println!("2 CPUs skipped: only one CPU is usable\n");
            continue;
        };
        let set: Vec<String> = set.iter().map(usize::to_string).collect();
        let set = set.join(",");
        pin_to(&set);
        println!("## {cpus} CPU{} (all processes on CPUs {set})\n", if cpus > 1 { "s" } else { "" });
        println!(
            "| server | {} |",
            clients
                .iter()
                .map(|k| format!("{k} client{}", if *k > 1 { "s" } else { "" }))
                .collect::<Vec<_>>()
                .join(" | ")
        );
        println!("|---|{}", "---:|".repeat(clients.len()));
        for server in SERVERS {
            let cells: Vec<String> = clients
                .iter()
                .map(|&k| {
                    eprintln!("[{cpus} CPU] {server}, {k} clients ...");
                    match run(server, k, &set, span) {
                        Ok(r) => r.cell(),
                        Err(e) => format!("failed: {e}"),
                    }
                })
                .collect();
            println!("| {server} | {} |", cells.join(" | "));
        }
        println!("\nEach cell: calls per second of all clients together; median and p99 round trip.\n");
    }
}

/// What a run of `k` clients measured.
struct Measured {
    calls: u64,
    span: Duration,
    rtts: Vec<Duration>,
}

impl Measured {
    fn cell(mut self) -> String {
        self.rtts.sort();
        let at = |p: f64| self.rtts.get(((self.rtts.len() as f64 - 1.0) * p) as usize).copied().unwrap_or_default();
        let rate = self.calls as f64 / self.span.as_secs_f64();
        format!("{:.0} k/s; {:.1} / {:.1} µs", rate / 1e3, us(at(0.5)), us(at(0.99)))
    }
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Starts the server, then `k` clients, lets them call for `span`, and gathers their reports.
fn run(server: &str, k: usize, cpus: &str, span: Duration) -> Result<Measured, String> {
    let bus = unique_bus(server);
    let go = std::env::temp_dir().join(format!("{bus}.go"));
    let _ = std::fs::remove_file(&go);
    let mut srv = spawn("server", &bus, server, cpus, span, k);
    srv.wait_ready(WAIT);
    let mut clients: Vec<Proc> = (0..k).map(|_| spawn("client", &bus, server, cpus, span, k)).collect();
    for c in &mut clients {
        c.wait_ready(WAIT);
    }
    std::fs::write(&go, b"go").map_err(|e| format!("cannot write {}: {e}", go.display()))?;
    let deadline = Instant::now() + span + WAIT;
    let mut total = Measured { calls: 0, span, rtts: Vec::new() };
    for c in &mut clients {
        let line = c.line_until(deadline).ok_or("a client did not report")?;
        let mut words = line.split_whitespace();
        if words.next() != Some("DONE") {
            return Err(format!("a client said {line}"));
        }
        for ns in words {
            total.rtts.push(Duration::from_nanos(ns.parse().map_err(|_| format!("bad report {line}"))?));
            total.calls += 1;
        }
    }
    let _ = std::fs::remove_file(&go);
    drop(clients);
    drop(srv);
    Ok(total)
}

fn spawn(role: &str, bus: &str, server: &str, cpus: &str, span: Duration, k: usize) -> Proc {
    // This very binary (see `pinned`): a child runs the same code as its parent.
    let mut cmd = Command::new("/proc/self/exe");
    cmd.env(CPUS_ENV, cpus).env(SPAN_ENV, span.as_millis().to_string()).env("HSIPC_BENCH_CLIENTS", k.to_string());
    Proc::start(cmd, role, bus, server, None, Some(&CHILDREN))
}

/// Lets the calling thread (and every thread it starts later) run on the CPUs in `list`
/// (comma-separated).
fn pin_to(list: &str) {
    let set: Vec<usize> = list.split(',').filter_map(|c| c.parse().ok()).collect();
    cpus::pin_to(&set);
}

/// A bus name no other run uses.
fn unique_bus(what: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() % 1_000_000_000_000);
    format!("cl-{}-{}-{nanos}", what.replace('+', "-"), std::process::id())
}

mod child {
    use super::*;
    use child_proc::{bus, kind, report, watch_parent};

    pub(super) fn run(role: &str) {
        if let Ok(cpus) = std::env::var(CPUS_ENV) {
            pin_to(&cpus);
        }
        watch_parent();
        match role {
            "server" => server(),
            "client" => client(),
            other => panic!("unknown bench role {other}"),
        }
    }

    fn socket_path() -> std::path::PathBuf {
        std::env::temp_dir().join(format!("{}.sock", bus()))
    }

    fn server() {
        let kind = kind();
        let inline = kind.ends_with("+inline");
        let echo = |b: Bytes| Ok::<_, String>(b);
        match kind.trim_end_matches("+inline") {
            "socket" => {
                let path = socket_path();
                let _ = std::fs::remove_file(&path);
                let listener = UnixListener::bind(&path).expect("bind the bench socket");
                report("READY");
                for conn in listener.incoming() {
                    let mut conn = conn.expect("accept");
                    std::thread::spawn(move || {
                        let mut buf = [0u8; SIZE];
                        while conn.read_exact(&mut buf).is_ok() && conn.write_all(&buf).is_ok() {}
                    });
                }
            }
            "blocking" => {
                let hub = hsipc::SyncProcessHub::builder("server").bus(bus()).build().expect("server hub");
                if inline { hub.serve_inline("bench.echo", echo) } else { hub.serve("bench.echo", echo) }
                    .expect("serve");
                report("READY");
                std::thread::park();
            }
            "tokio" => {
                let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
                rt.block_on(async {
                    let hub = hsipc::tokio::ProcessHub::builder("server").bus(bus()).build().expect("server hub");
                    serve_async(&hub, inline).await;
                });
            }
            _ => smol::block_on(async {
                let hub = hsipc::smol::ProcessHub::builder("server").bus(bus()).build().expect("server hub");
                serve_async(&hub, inline).await;
            }),
        }
    }

    /// Serves the echo on an async hub (inline, or as a task), then waits for the end.
    async fn serve_async<K: hsipc::transport::hub::RuntimeKind>(
        hub: &hsipc::transport::hub::AsyncHub<K>,
        inline: bool,
    ) {
        let echo = |b: Bytes| Ok::<_, String>(b);
        if inline {
            hub.serve_inline("bench.echo", echo).await
        } else {
            hub.serve("bench.echo", move |b: Bytes| async move { echo(b) }).await
        }
        .expect("serve");
        report("READY");
        std::future::pending::<()>().await;
    }

    fn client() {
        let span = Duration::from_millis(std::env::var(SPAN_ENV).ok().and_then(|s| s.parse().ok()).unwrap_or(1000));
        let payload = Bytes::from(vec![7u8; SIZE]);
        let mut call: Box<dyn FnMut()> = if kind() == "socket" {
            let mut conn = UnixStream::connect(socket_path()).expect("connect to the bench socket");
            let mut buf = [0u8; SIZE];
            Box::new(move || {
                conn.write_all(&payload).expect("socket write");
                conn.read_exact(&mut buf).expect("socket read");
            })
        } else {
            let name = format!("client-{}", std::process::id());
            let hub = hsipc::SyncProcessHub::builder(&name).bus(bus()).build().expect("client hub");
            hub.wait_for_service("bench", WAIT).expect("the bench service");
            Box::new(move || {
                let back: Bytes = hub.call("bench.echo", &payload).expect("bench.echo");
                assert_eq!(back.len(), SIZE);
            })
        };
        for _ in 0..WARMUP {
            call();
        }
        report("READY");
        let go = std::env::temp_dir().join(format!("{}.go", bus()));
        let waiting = Instant::now();
        while !go.exists() {
            assert!(waiting.elapsed() < WAIT, "no go from the bench process");
            std::thread::sleep(Duration::from_micros(200));
        }
        let mut rtts = Vec::new();
        let start = Instant::now();
        while start.elapsed() < span {
            let t = Instant::now();
            call();
            rtts.push(t.elapsed().as_nanos() as u64);
        }
        let words: Vec<String> = rtts.iter().map(u64::to_string).collect();
        report(&format!("DONE {}", words.join(" ")));
        std::thread::park();
    }
}
