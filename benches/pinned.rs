//! A pinned cross-process benchmark that a reader can rerun and compare: every transport side by
//! side, in one run, on one CPU or on two.
//!
//! ```sh
//! cargo bench --bench pinned --all-features                     # both CPU modes, 2-7 min
//! cargo bench --bench pinned --all-features -- --quick          # CI: a few seconds per mode
//! cargo bench --bench pinned --all-features -- --cpus 1         # one mode; `--only tokio,socket`
//! ```
//!
//! The bench process pins itself to the first CPU it may use. For each transport it spawns its
//! peer: this binary run again in a role (`HSIPC_BENCH_ROLE`), told which CPU to pin itself to
//! (`HSIPC_BENCH_CPU`): the same CPU in `--cpus 1` mode, the second one in `--cpus 2` mode. An
//! ipmb bus's bystander (its controller, which relays every message) is pinned with the peer.
//!
//! Transports:
//! - **raw socket**: a `SOCK_STREAM` socketpair with a 4-byte length prefix, written here; the
//!   baseline. One `write` per message (two above 64 KiB: prefix, then payload); the reader
//!   buffers, so a small message costs one `read`.
//! - **raw ipmb**: both ends ipmb clients, a bystander process is the controller, every message
//!   carries a duplicate of an eventfd (ipmb 0.8.5 drops fd-less messages between two clients),
//!   as in `benches/ipc.rs`. Messages over 120 KiB are not sent (ipmb hangs on them): n/a.
//! - **hsipc blocking / tokio / smol**: a bystander hub (controller), a peer process with a hub
//!   of the same kind that serves `bench.echo` (`Bytes` in, the same `Bytes` out) and
//!   subscribes to `bench/#`, and this process's hub. Async calls are awaited on a
//!   current-thread runtime in this thread (tokio) or `smol::block_on`, the round trips of a size
//!   one after another in one task, as an application's task makes them (one `block_on` per
//!   call would time async-io's hand-over of its reactor thread at each call instead), and
//!   their one-way messages and events are published from one task too.
//! - **hsipc blocking+inline / tokio+inline / smol+inline**: the same, with `bench.echo` served by
//!   `serve_inline` (run on the thread that read the request, not handed to a worker or task).
//! - **hsipc blocking+vec**: the blocking hub with the payload sent as `&[u8]` and received as
//!   `Vec<u8>` (echo and subscriber typed `Vec<u8>`), against `Bytes` in the same run.
//! - **raw socket, tokio / smol both ends** (`socket+tokio`, `socket+smol`; `+task`: the peer
//!   echoes from a task spawned per request, as an hsipc async handler runs): the raw socket's
//!   framing with both ends awaiting on the runtime an hsipc client and server of that kind
//!   use (round trips of a size in one task, as the hubs' are). The floor an async hub stands
//!   on: what the runtime's reactor and task wake-ups cost against the blocking socket. Round
//!   trips and pipelined calls only.
//! - **tarpc** (`tarpc`): tarpc 0.38's echo of a `Bytes`, bincode over the same kind of socket
//!   pair (tarpc's length-delimited framing), called from a current-thread tokio runtime here
//!   and served on tokio's multi-thread runtime, a task per request (tarpc's way), in the peer:
//!   the RPC framework the issue compares hsipc with. Round trips and pipelined calls only.
//!
//! Metrics (percentiles from raw sample vectors, nearest rank):
//! - **round trip** p50 / p99 at 64 B, 4 KiB, 64 KiB and 1 MiB: send a payload, wait for it
//!   to come back.
//! - **one-way, unpaced**: send N messages (64 B, 4 KiB, 64 KiB, 1 MiB) as fast as the sender can, the last
//!   one a marker; the peer timestamps each message it receives (`CLOCK_MONOTONIC`, shared by
//!   both processes). Rate = messages delivered / (last delivery - first send). What was not
//!   delivered is reported as lost.
//! - **calls/s with 64 in flight**: raw transports send 64 requests, then read 64 replies;
//!   async hubs poll 64 call futures on one task; the blocking hub has no way to start a call
//!   without waiting for it, so 64 threads call at once.
//! - **server stream items/s** (hubs only): the bench process calls `bench.items`, a
//!   server-streaming method whose handler sends N items of 64 B as fast as the stream's
//!   credit lets it; rate = items read / (call to last item).
//! - **events/s delivered**: 64 B events (publish for hsipc, one-way messages for raw) in
//!   batches of 1000 ending with a marker; each batch waits for the peer's report before the
//!   next, so a subscription queue (1024) never overflows; time counts from each batch's
//!   first send to its last delivery.
//!
//! Every wait in the bench process has a deadline (socket timeouts, ipmb `recv` timeouts, call
//! timeouts, report waits; ipmb's `send` has none, so the watchdog covers it) and a watchdog ends
//! the whole run, killing and reaping the children, if it overruns. A child exits when its parent dies (`PR_SET_PDEATHSIG`, and a check of its
//! parent pid), when its stdin closes, or after [`CHILD_LIFETIME`]. Children are killed and
//! reaped when their transport is done, including when a measurement fails (the failure is
//! shown in the table and the run goes on). Every transport runs on its own bus.

#![allow(missing_docs)]

#[path = "support/async_socket.rs"]
mod async_socket;
#[path = "support/child_proc.rs"]
mod child_proc;
#[allow(dead_code)] // what only other benches use
#[path = "support/cpus.rs"]
mod cpus;
#[path = "support/hub_client.rs"]
mod hub_client;
#[path = "support/raw_ipmb.rs"]
mod raw_ipmb;
#[path = "support/tarpc_echo.rs"]
mod tarpc_echo;

use std::future::Future;
use std::io::{BufReader, Read, Write};
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::process::Command;
use std::sync::{Barrier, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant};

use async_socket::{AsyncSocket, Sampling};
use bytes::Bytes;
use child_proc::{FD_ENV, Proc, ROLE_ENV, mark_all_cloexec, set_cloexec};
use cpus::allowed_cpus;
use futures_lite::StreamExt;
use hsipc::SyncProcessHub;
use hub_client::Client;
use raw_ipmb::{new_eventfd, raw_join, raw_send};

/// The CPU a child pins itself to.
const CPU_ENV: &str = "HSIPC_BENCH_CPU";

/// The longest any single wait in the bench process may take.
const WAIT: Duration = Duration::from_secs(20);
/// How long a marker may be silent before it is sent again (see [`await_report`]).
const RESEND: Duration = Duration::from_millis(500);
/// A child exits after this long whatever happens.
const CHILD_LIFETIME: Duration = Duration::from_secs(15 * 60);
/// Raw ipmb messages above this are not sent: ipmb 0.8.5 hangs on messages over ~131 040 bytes.
const RAW_IPMB_MAX: usize = 120 * 1024;
/// Requests in flight in the pipelined metric.
const IN_FLIGHT: usize = 64;
/// Events per batch in the events metric (below hsipc's subscription queue of 1024).
const EVENT_BATCH: u64 = 1000;
/// Round trips timed at least, whatever the time budget.
const MIN_SAMPLES: usize = 10;
const MIB: usize = 1 << 20;
/// Round-trip payload sizes.
const SIZES: [usize; 4] = [64, 4 << 10, 64 << 10, MIB];
/// Size of small one-way messages and events.
const SMALL: usize = 64;
/// The hsipc hub kinds measured.
const KINDS: [&str; 3] = ["blocking", "tokio", "smol"];
/// The same hubs with the echo served inline (`serve_inline`: on the thread that read the
/// request, no hop to a worker or task).
const INLINE_KINDS: [&str; 3] = ["blocking+inline", "tokio+inline", "smol+inline"];
/// The blocking hub with the payload sent as `&[u8]` and received as `Vec<u8>` (the echo serves
/// `Vec<u8>`, the subscriber takes `Vec<u8>`), to compare with `Bytes` in the same run.
const VEC_KIND: &str = "blocking+vec";

// Byte 0 of every payload says what it is; bytes 1..9 of a marker carry its batch.
/// One-way data: counted.
const TAG_DATA: u8 = 0;
/// The last message of a batch: counted, and the peer reports the batch.
const TAG_MARK: u8 = 1;
/// A marker sent again because the first was not reported: not counted, the peer reports.
const TAG_FLUSH: u8 = 2;
/// A round-trip request: echoed by the raw peers (hsipc echoes by method).
const TAG_ECHO: u8 = 3;

/// Children alive, by pid, so the watchdog can kill and reap them.
static CHILDREN: Mutex<Vec<u32>> = Mutex::new(Vec::new());

fn main() {
    if let Ok(role) = std::env::var(ROLE_ENV) {
        child::run(&role);
        return;
    }
    let args = match Args::parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!(
                "pinned: {e}\nusage: pinned [--quick] [--cpus 1|2|both] [--only socket,ipmb,blocking,tokio,smol,blocking+inline,tokio+inline,smol+inline,blocking+vec,socket+tokio,socket+tokio+task,socket+smol,socket+smol+task,tarpc]"
            );
            std::process::exit(2);
        }
    };
    // Pin before any thread exists: every thread started later inherits the affinity.
    let allowed = allowed_cpus();
    let Some(&cpu_a) = allowed.first() else {
        eprintln!("pinned: sched_getaffinity gave no CPU");
        std::process::exit(2);
    };
    pin_to(cpu_a);
    // A failed measurement is reported in its table; one line is enough here.
    std::panic::set_hook(Box::new(|info| eprintln!("pinned: {info}")));
    start_watchdog(if args.quick { Duration::from_secs(4 * 60) } else { Duration::from_secs(30 * 60) });
    let params = Params::new(args.quick);

    println!(
        "# hsipc pinned benchmark ({} mode)\n\nhost: {}, {} CPUs usable ({:?}), kernel {}; bench process pinned to CPU {cpu_a}\n",
        if args.quick { "quick" } else { "default" },
        cpu_model(),
        allowed.len(),
        allowed,
        std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
    );
    for &cpus in &args.cpus {
        let peer_cpu = match cpus {
            1 => cpu_a,
            _ => match allowed.get(1) {
                Some(&b) => b,
                None => {
                    println!("--cpus 2 skipped: only one CPU is usable\n");
                    continue;
                }
            },
        };
        let mode = Mode { cpus, peer_cpu, parent_cpu: cpu_a };
        let mut rows = Vec::new();
        for t in Transport::ALL.into_iter().filter(|t| args.wants(*t)) {
            eprintln!("[{} CPU] {} ...", cpus, t.name());
            let started = Instant::now();
            let row = run_transport(t, &mode, &params);
            eprintln!("[{} CPU] {} done in {:.1} s", cpus, t.name(), started.elapsed().as_secs_f64());
            rows.push(row);
        }
        let table = render(&mode, &params, &rows);
        println!("{table}");
    }
}

// ---------------------------------------------------------------------------------------------
// Arguments, parameters, pinning

struct Args {
    quick: bool,
    cpus: Vec<usize>,
    only: Option<Vec<String>>,
}

impl Args {
    fn parse() -> Result<Args, String> {
        let mut args = Args { quick: false, cpus: vec![1, 2], only: None };
        let mut it = std::env::args().skip(1);
        while let Some(a) = it.next() {
            let (key, inline) = match a.split_once('=') {
                Some((k, v)) => (k.to_string(), Some(v.to_string())),
                None => (a.clone(), None),
            };
            let mut value = || inline.clone().or_else(|| it.next()).ok_or(format!("{key} needs a value"));
            match key.as_str() {
                // `cargo bench` passes `--bench` to every bench binary.
                "--bench" => {}
                "--quick" => args.quick = true,
                "--cpus" => {
                    args.cpus = match value()?.as_str() {
                        "1" => vec![1],
                        "2" => vec![2],
                        "both" | "1,2" => vec![1, 2],
                        other => return Err(format!("--cpus takes 1, 2 or both, not {other}")),
                    }
                }
                "--only" => args.only = Some(value()?.split(',').map(str::to_string).collect()),
                other => return Err(format!("unknown argument {other}")),
            }
        }
        Ok(args)
    }

    fn wants(&self, t: Transport) -> bool {
        self.only.as_ref().is_none_or(|only| only.iter().any(|o| o == t.key()))
    }
}

/// How much to measure.
struct Params {
    quick: bool,
    /// Round trips timed per size (at most; see `budget`).
    rt_samples: [usize; 4],
    /// Untimed round trips before them.
    rt_warmup: [usize; 4],
    /// Time allowed per metric (a metric stops early when over it, after [`MIN_SAMPLES`]).
    budget: Duration,
    /// Batches of [`IN_FLIGHT`] calls, at most.
    pipelined_batches: usize,
    /// One-way messages of each of [`SIZES`], at most.
    stream: [u64; 4],
    /// Event batches, at most.
    event_batches: u64,
    /// Items of one server stream.
    stream_items: u64,
}

impl Params {
    fn new(quick: bool) -> Params {
        if quick {
            Params {
                quick,
                rt_samples: [500, 300, 100, 20],
                rt_warmup: [50, 20, 10, 3],
                budget: Duration::from_millis(500),
                pipelined_batches: 30,
                stream: [5_000, 2_000, 400, 16],
                event_batches: 5,
                stream_items: 5_000,
            }
        } else {
            Params {
                quick,
                rt_samples: [60_000, 20_000, 6_000, 1_500],
                rt_warmup: [1_000, 300, 100, 20],
                budget: Duration::from_secs(5),
                pipelined_batches: 3_000,
                stream: [300_000, 100_000, 16_000, 1_024],
                event_batches: 300,
                stream_items: 300_000,
            }
        }
    }
}

/// Where the two processes run.
struct Mode {
    cpus: usize,
    parent_cpu: usize,
    peer_cpu: usize,
}

/// Pins the calling thread (and every thread it starts later) to `cpu`.
fn pin_to(cpu: usize) {
    cpus::pin_to(&[cpu]);
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

/// `CLOCK_MONOTONIC` in nanoseconds: the same clock in every process of the machine.
fn mono_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Ends the run if it takes longer than `limit`: kills and reaps every child, then exits.
fn start_watchdog(limit: Duration) {
    std::thread::spawn(move || {
        std::thread::sleep(limit);
        eprintln!("pinned: the run took longer than {limit:?}; killing the children and giving up");
        let pids = CHILDREN.lock().unwrap_or_else(|e| e.into_inner());
        for &pid in pids.iter() {
            // SAFETY: kill and waitpid on our own child, which is not reaped yet (a child leaves
            // the list only after it was reaped, under this lock).
            unsafe {
                libc::kill(pid as i32, libc::SIGKILL);
                libc::waitpid(pid as i32, std::ptr::null_mut(), 0);
            }
        }
        std::process::exit(3);
    });
}

/// A bus name no other run uses.
fn unique_bus(what: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() % 1_000_000_000_000);
    format!("pin-{what}-{}-{nanos}", std::process::id())
}

// ---------------------------------------------------------------------------------------------
// Transports and what was measured

#[derive(Clone, Copy, PartialEq, Eq)]
enum Transport {
    Socket,
    RawIpmb,
    Hub(&'static str),
    /// A raw socket under an async runtime (see `support/async_socket.rs`): round trips and
    /// pipelined calls only.
    AsyncSocket(&'static str),
    /// tarpc, bincode over a Unix socket (see `support/tarpc_echo.rs`): round trips and
    /// pipelined calls only.
    Tarpc,
}

impl Transport {
    const ALL: [Transport; 14] = [
        Transport::Socket,
        Transport::RawIpmb,
        Transport::Hub(KINDS[0]),
        Transport::Hub(KINDS[1]),
        Transport::Hub(KINDS[2]),
        Transport::Hub(INLINE_KINDS[0]),
        Transport::Hub(INLINE_KINDS[1]),
        Transport::Hub(INLINE_KINDS[2]),
        Transport::Hub(VEC_KIND),
        Transport::AsyncSocket(async_socket::KINDS[0]),
        Transport::AsyncSocket(async_socket::KINDS[1]),
        Transport::AsyncSocket(async_socket::KINDS[2]),
        Transport::AsyncSocket(async_socket::KINDS[3]),
        Transport::Tarpc,
    ];

    fn key(self) -> &'static str {
        match self {
            Transport::Socket => "socket",
            Transport::RawIpmb => "ipmb",
            Transport::Tarpc => "tarpc",
            Transport::Hub(kind) | Transport::AsyncSocket(kind) => kind,
        }
    }

    /// The largest payload this transport can carry.
    fn max_payload(self) -> usize {
        match self {
            Transport::RawIpmb => RAW_IPMB_MAX,
            _ => usize::MAX,
        }
    }

    fn name(self) -> String {
        match self {
            Transport::Socket => "raw Unix socket".into(),
            Transport::RawIpmb => "raw ipmb".into(),
            Transport::Tarpc => "tarpc (bincode, Unix socket)".into(),
            Transport::Hub(kind) => format!("hsipc {kind}"),
            Transport::AsyncSocket(kind) => {
                let runtime = if kind.contains("tokio") { "tokio" } else { "smol" };
                let task = if kind.ends_with("+task") { ", echo by a task" } else { "" };
                format!("raw socket, {runtime} both ends{task}")
            }
        }
    }
}

/// One metric of one transport.
#[derive(Clone, Default)]
enum Cell<T> {
    /// Not measured (the transport failed before it).
    #[default]
    Missing,
    /// The transport cannot do it.
    Na,
    Value(T),
}

/// What a one-way measurement saw.
#[derive(Clone, Copy)]
struct Flow {
    sent: u64,
    delivered: u64,
    /// hsipc: the sum of `Event::missed` the subscriber saw.
    missed: u64,
    elapsed: Duration,
    size: usize,
}

impl Flow {
    fn per_sec(&self) -> f64 {
        self.delivered as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
    fn gib_per_sec(&self) -> f64 {
        self.per_sec() * self.size as f64 / (1u64 << 30) as f64
    }
    fn lost(&self) -> u64 {
        self.sent.saturating_sub(self.delivered)
    }
}

/// Everything measured for one transport in one CPU mode.
struct Row {
    transport: Transport,
    rt: [Cell<Vec<Duration>>; 4],
    /// One-way, at each of [`SIZES`].
    stream: [Cell<Flow>; 4],
    /// (calls, elapsed)
    pipelined: Cell<(u64, Duration)>,
    events: Cell<Flow>,
    /// (items, elapsed)
    server_stream: Cell<(u64, Duration)>,
    error: Option<String>,
}

fn run_transport(t: Transport, mode: &Mode, p: &Params) -> Row {
    let mut row = Row {
        transport: t,
        rt: Default::default(),
        stream: Default::default(),
        pipelined: Cell::Missing,
        events: Cell::Missing,
        server_stream: Cell::Missing,
        error: None,
    };
    // What the transport cannot carry is n/a, whatever happens below.
    for (i, &size) in SIZES.iter().enumerate() {
        if size > t.max_payload() {
            (row.rt[i], row.stream[i]) = (Cell::Na, Cell::Na);
        }
    }
    if let Transport::AsyncSocket(_) | Transport::Tarpc = t {
        // The runtime's floor under a call, and tarpc: no one-way traffic, no events.
        row.stream.iter_mut().for_each(|c| *c = Cell::Na);
        row.events = Cell::Na;
    }
    // Only hubs have server streams (and the `Vec<u8>` row's would measure the hub again).
    if !matches!(t, Transport::Hub(kind) if kind != VEC_KIND) {
        row.server_stream = Cell::Na;
    }
    let result = catch_unwind(AssertUnwindSafe(|| {
        let what = format!("{}-c{}", t.key().replace('+', "-"), mode.cpus);
        let mut link: Box<dyn Link> = match t {
            Transport::Socket => Box::new(SocketLink::start(mode.peer_cpu)),
            Transport::RawIpmb => Box::new(IpmbLink::start(&what, mode.peer_cpu)),
            Transport::Hub(kind) => Box::new(HubLink::start(&what, kind, mode.peer_cpu)),
            Transport::AsyncSocket(kind) => Box::new(AsyncSocketLink::start(kind, mode.peer_cpu)),
            Transport::Tarpc => Box::new(TarpcLink::start(mode.peer_cpu)),
        };
        measure_all(link.as_mut(), p, &mut row);
    }));
    if let Err(panic) = result {
        let msg = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "panicked".into());
        eprintln!("{}: failed: {msg}", t.name());
        row.error = Some(msg);
    }
    row
}

fn measure_all(link: &mut dyn Link, p: &Params, row: &mut Row) {
    if let Transport::AsyncSocket(_) | Transport::Tarpc = row.transport {
        for (i, &size) in SIZES.iter().enumerate() {
            row.rt[i] = Cell::Value(roundtrips(link, size, p.rt_warmup[i], p.rt_samples[i], p.budget));
        }
        row.pipelined = Cell::Value(link.pipelined(&Bytes::from(vec![TAG_ECHO; SMALL]), p.pipelined_batches, p.budget));
        return;
    }
    let mut batch = 1u64;
    handshake(link, &mut batch);
    for (i, &size) in SIZES.iter().enumerate() {
        if size <= row.transport.max_payload() {
            row.rt[i] = Cell::Value(roundtrips(link, size, p.rt_warmup[i], p.rt_samples[i], p.budget));
        }
    }
    row.pipelined = match row.transport {
        // 64 B calls from 64 threads measure the hub, not the payload type: the `Bytes` row has it.
        Transport::Hub(VEC_KIND) => Cell::Na,
        _ => Cell::Value(link.pipelined(&Bytes::from(vec![TAG_ECHO; SMALL]), p.pipelined_batches, p.budget)),
    };
    for (i, &size) in SIZES.iter().enumerate() {
        if size <= row.transport.max_payload() {
            row.stream[i] = Cell::Value(stream(link, size, p.stream[i], p.budget, &mut batch));
        }
    }
    row.events = Cell::Value(events(link, p.event_batches, p.budget, &mut batch));
    if let Cell::Missing = row.server_stream {
        row.server_stream = Cell::Value(link.server_stream(p.stream_items));
    }
}

/// The bench process's end of one transport, with its peer process.
trait Link {
    /// One round trip; returns the length of the reply.
    fn echo(&mut self, payload: &Bytes) -> usize;
    /// Round trips of `payload`, as many as `samples` asks, timed into it. Default: one
    /// [`echo`](Self::echo) after another; an async client makes them in one task.
    fn round_trips(&mut self, payload: &Bytes, samples: &mut dyn Sampling) {
        echo_each(self, payload, samples);
    }
    /// Up to `batches` batches of [`IN_FLIGHT`] calls with all of a batch in flight at once,
    /// stopping early once over `budget`: (calls made, time taken).
    fn pipelined(&mut self, payload: &Bytes, batches: usize, budget: Duration) -> (u64, Duration);
    /// Sends one one-way message (publishes one event).
    fn send(&mut self, msg: &Bytes);
    /// Sends `msg` again and again while `go_on` says so (asked before each). Default: one
    /// [`send`](Self::send) after another; an async client publishes them from one task.
    fn send_while(&mut self, msg: &Bytes, go_on: &mut dyn FnMut() -> bool) {
        send_each(self, msg, go_on);
    }
    /// Reads a server stream of `items` 64 B items: (items read, from the call to the last).
    /// Only hubs have them.
    fn server_stream(&mut self, items: u64) -> (u64, Duration) {
        let _ = items;
        unreachable!("only hubs are asked for a server stream")
    }
    /// The process that receives, for its reports.
    fn peer(&mut self) -> &mut Proc;
}

fn roundtrips(link: &mut dyn Link, size: usize, warmup: usize, samples: usize, budget: Duration) -> Vec<Duration> {
    let payload = Bytes::from(vec![TAG_ECHO; size]);
    let mut s = Samples { size, warmup, want: samples, budget, end: None, out: Vec::with_capacity(samples) };
    link.round_trips(&payload, &mut s);
    s.out
}

/// Round trips as [`Link::echo`] makes them, one after another, as many as `samples` asks.
fn echo_each<L: Link + ?Sized>(link: &mut L, payload: &Bytes, samples: &mut dyn Sampling) {
    while samples.more() {
        let start = Instant::now();
        let n = link.echo(payload);
        samples.record(start, n);
    }
}

/// One-way messages as [`Link::send`] sends them, one after another while `go_on` says so.
fn send_each<L: Link + ?Sized>(link: &mut L, msg: &Bytes, go_on: &mut dyn FnMut() -> bool) {
    while go_on() {
        link.send(msg);
    }
}

/// The round trips of one size: `warmup` untimed, then up to `want` timed, stopping once over
/// `budget` (after [`MIN_SAMPLES`]).
struct Samples {
    size: usize,
    warmup: usize,
    want: usize,
    budget: Duration,
    /// When the timed round trips are to stop; set once the warm-up is over (or at the first
    /// timed one, without a warm-up).
    end: Option<Instant>,
    out: Vec<Duration>,
}

impl Sampling for Samples {
    fn more(&mut self) -> bool {
        let n = self.out.len();
        self.warmup > 0 || (n < self.want && (n < MIN_SAMPLES || self.end.is_none_or(|end| Instant::now() < end)))
    }

    fn record(&mut self, start: Instant, len: usize) {
        let elapsed = start.elapsed();
        assert_eq!(len, self.size, "echo of {} B returned a wrong payload", self.size);
        if self.warmup > 0 {
            self.warmup -= 1;
            if self.warmup == 0 {
                self.end = Some(Instant::now() + self.budget);
            }
        } else {
            self.end.get_or_insert_with(|| Instant::now() + self.budget);
            self.out.push(elapsed);
        }
    }
}

/// The pipelined metric of a raw transport: `one` sends [`IN_FLIGHT`] requests, then reads
/// their replies. Once untimed, then up to `batches` times, stopping early once over `budget`:
/// (calls made, time taken).
fn in_flight_batches<L>(link: &mut L, batches: usize, budget: Duration, one: impl Fn(&mut L)) -> (u64, Duration) {
    one(link);
    let start = Instant::now();
    let mut calls = 0;
    for _ in 0..batches {
        one(link);
        calls += IN_FLIGHT as u64;
        if start.elapsed() >= budget {
            break;
        }
    }
    (calls, start.elapsed())
}

/// A one-way payload of `size` bytes: tag, then (for markers) the batch.
fn tagged(tag: u8, batch: u64, size: usize) -> Bytes {
    let mut v = vec![0u8; size.max(9)];
    v[0] = tag;
    v[1..9].copy_from_slice(&batch.to_le_bytes());
    Bytes::from(v)
}

/// What the peer reported for a batch.
struct Report {
    count: u64,
    missed: u64,
    /// `mono_ns` of the last counted message's arrival (0 if none arrived).
    last_ns: u64,
}

/// Waits for the peer's report of `batch`, sending the marker again (as a flush) whenever the
/// peer has been silent for [`RESEND`]: a subscriber that drops events may drop the marker.
fn await_report(link: &mut dyn Link, batch: u64, deadline: Instant) -> Option<Report> {
    loop {
        let now = Instant::now();
        if now >= deadline {
            return None;
        }
        let step = (now + RESEND).min(deadline);
        while let Some(line) = link.peer().line_until(step) {
            let mut words = line.split_whitespace();
            if words.next() != Some("GOT") {
                continue;
            }
            let nums: Vec<u64> = words.filter_map(|w| w.parse().ok()).collect();
            if let [b, count, missed, last_ns] = nums[..] {
                if b == batch {
                    return Some(Report { count, missed, last_ns });
                }
            }
        }
        link.send(&tagged(TAG_FLUSH, batch, SMALL));
    }
}

/// Until the peer reports a one-message batch: an hsipc publisher learns of the subscriber from
/// its announce, so the first events may go nowhere.
fn handshake(link: &mut dyn Link, batch: &mut u64) {
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        let b = *batch;
        *batch += 1;
        link.send(&tagged(TAG_MARK, b, SMALL));
        if await_report(link, b, Instant::now() + Duration::from_millis(300)).is_some() {
            return;
        }
    }
    panic!("the peer never reported an event within {WAIT:?}");
}

/// Sends up to `max` messages of `size` bytes back to back (the last a marker), stopping early
/// once over `budget`.
fn stream(link: &mut dyn Link, size: usize, max: u64, budget: Duration, batch: &mut u64) -> Flow {
    let b = *batch;
    *batch += 1;
    let data = tagged(TAG_DATA, 0, size);
    let mark = tagged(TAG_MARK, b, size);
    let check_every = if size >= 64 << 10 { 1 } else { 64 };
    let start_ns = mono_ns();
    let end = Instant::now() + budget;
    let mut sent = 0u64;
    link.send_while(&data, &mut || {
        let over = sent > 0 && sent % check_every == 0 && Instant::now() >= end;
        let go_on = sent + 1 < max && !over;
        sent += u64::from(go_on);
        go_on
    });
    link.send(&mark);
    sent += 1;
    let r = await_report(link, b, Instant::now() + WAIT)
        .unwrap_or_else(|| panic!("one-way {size} B: batch {b} was never reported"));
    Flow {
        sent,
        delivered: r.count,
        missed: r.missed,
        elapsed: Duration::from_nanos(r.last_ns.saturating_sub(start_ns)),
        size,
    }
}

/// Batches of [`EVENT_BATCH`] 64 B events, each waiting for its report.
fn events(link: &mut dyn Link, batches: u64, budget: Duration, batch: &mut u64) -> Flow {
    let data = tagged(TAG_DATA, 0, SMALL);
    let mut flow = Flow { sent: 0, delivered: 0, missed: 0, elapsed: Duration::ZERO, size: SMALL };
    let end = Instant::now() + budget;
    for i in 0..batches {
        if i > 0 && Instant::now() >= end {
            break;
        }
        let b = *batch;
        *batch += 1;
        let start_ns = mono_ns();
        let mut left = EVENT_BATCH - 1;
        link.send_while(&data, &mut || {
            let go_on = left > 0;
            left = left.saturating_sub(1);
            go_on
        });
        link.send(&tagged(TAG_MARK, b, SMALL));
        let r = await_report(link, b, Instant::now() + WAIT)
            .unwrap_or_else(|| panic!("events: batch {b} was never reported"));
        flow.sent += EVENT_BATCH;
        flow.delivered += r.count;
        flow.missed += r.missed;
        flow.elapsed += Duration::from_nanos(r.last_ns.saturating_sub(start_ns));
    }
    flow
}

// ---------------------------------------------------------------------------------------------
// Raw socket

/// Writes one frame: a 4-byte little-endian length, then `data` (one `write` up to 64 KiB).
fn write_frame(w: &mut UnixStream, scratch: &mut Vec<u8>, data: &[u8]) -> std::io::Result<()> {
    let len = (data.len() as u32).to_le_bytes();
    if data.len() <= 64 << 10 {
        scratch.clear();
        scratch.extend_from_slice(&len);
        scratch.extend_from_slice(data);
        w.write_all(scratch)
    } else {
        w.write_all(&len)?;
        w.write_all(data)
    }
}

/// Reads one frame into `buf`.
fn read_frame(r: &mut BufReader<UnixStream>, buf: &mut Vec<u8>) -> std::io::Result<()> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len)?;
    buf.resize(u32::from_le_bytes(len) as usize, 0);
    r.read_exact(buf)
}

struct SocketLink {
    w: UnixStream,
    r: BufReader<UnixStream>,
    scratch: Vec<u8>,
    buf: Vec<u8>,
    peer: Proc,
}

impl SocketLink {
    fn start(cpu: usize) -> SocketLink {
        let (ours, theirs) = socket_pair();
        let peer = Proc::spawn("sock_peer", "", "", cpu, Some(&theirs));
        drop(theirs);
        let w = UnixStream::from(ours);
        w.set_read_timeout(Some(WAIT)).expect("socket read timeout");
        w.set_write_timeout(Some(WAIT)).expect("socket write timeout");
        let r = BufReader::with_capacity(64 << 10, w.try_clone().expect("socket clone"));
        SocketLink { w, r, scratch: Vec::new(), buf: Vec::new(), peer }
    }

    fn write(&mut self, data: &[u8]) {
        write_frame(&mut self.w, &mut self.scratch, data).expect("socket write");
    }

    fn read(&mut self) -> usize {
        read_frame(&mut self.r, &mut self.buf).expect("socket read");
        self.buf.len()
    }
}

impl Link for SocketLink {
    fn echo(&mut self, payload: &Bytes) -> usize {
        self.write(payload);
        self.read()
    }

    fn pipelined(&mut self, payload: &Bytes, batches: usize, budget: Duration) -> (u64, Duration) {
        in_flight_batches(self, batches, budget, |s| {
            for _ in 0..IN_FLIGHT {
                s.write(payload);
            }
            for _ in 0..IN_FLIGHT {
                assert_eq!(s.read(), payload.len(), "pipelined echo returned a wrong payload");
            }
        })
    }

    fn send(&mut self, msg: &Bytes) {
        self.write(msg);
    }

    fn peer(&mut self) -> &mut Proc {
        &mut self.peer
    }
}

/// A raw socket under an async runtime, both ends (round trips and pipelined calls only).
struct AsyncSocketLink {
    socket: AsyncSocket,
    peer: Proc,
}

impl AsyncSocketLink {
    fn start(kind: &str, cpu: usize) -> AsyncSocketLink {
        let (ours, theirs) = socket_pair();
        let peer = Proc::spawn("async_sock_peer", "", kind, cpu, Some(&theirs));
        drop(theirs);
        AsyncSocketLink { socket: AsyncSocket::new(kind, ours, WAIT), peer }
    }
}

impl Link for AsyncSocketLink {
    fn echo(&mut self, payload: &Bytes) -> usize {
        self.socket.exchange(payload, 1);
        payload.len()
    }

    fn round_trips(&mut self, payload: &Bytes, samples: &mut dyn Sampling) {
        self.socket.round_trips(payload, samples);
    }

    fn pipelined(&mut self, payload: &Bytes, batches: usize, budget: Duration) -> (u64, Duration) {
        in_flight_batches(self, batches, budget, |s| s.socket.exchange(payload, IN_FLIGHT))
    }

    fn send(&mut self, _: &Bytes) {
        unreachable!("measure_all sends no one-way messages on an async socket");
    }

    fn peer(&mut self) -> &mut Proc {
        &mut self.peer
    }
}

/// The two ends of a fresh stream socket pair.
fn socket_pair() -> (OwnedFd, OwnedFd) {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: socketpair fills two fds on success.
    let rc = unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0, fds.as_mut_ptr()) };
    assert_eq!(rc, 0, "socketpair: {}", std::io::Error::last_os_error());
    // SAFETY: fresh fds owned by nothing else.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

// ---------------------------------------------------------------------------------------------
// tarpc

/// A tarpc client, with its peer process serving the echo.
struct TarpcLink {
    client: tarpc_echo::TarpcClient,
    peer: Proc,
}

impl TarpcLink {
    fn start(cpu: usize) -> TarpcLink {
        let (ours, theirs) = socket_pair();
        let peer = Proc::spawn("tarpc_peer", "", "tarpc", cpu, Some(&theirs));
        drop(theirs);
        TarpcLink { client: tarpc_echo::TarpcClient::new(ours), peer }
    }
}

impl Link for TarpcLink {
    fn echo(&mut self, payload: &Bytes) -> usize {
        self.client.echo(payload)
    }

    fn round_trips(&mut self, payload: &Bytes, samples: &mut dyn Sampling) {
        self.client.round_trips(payload, samples);
    }

    fn pipelined(&mut self, payload: &Bytes, batches: usize, budget: Duration) -> (u64, Duration) {
        in_flight_batches(self, batches, budget, |s| s.client.in_flight(payload, IN_FLIGHT))
    }

    fn send(&mut self, _: &Bytes) {
        unreachable!("measure_all sends no one-way messages over tarpc");
    }

    fn peer(&mut self) -> &mut Proc {
        &mut self.peer
    }
}

// ---------------------------------------------------------------------------------------------
// Raw ipmb

/// Bystander (controller) + peer process, and this process joined as `"a"`. Fields drop in
/// order: our endpoint first, then the peer, then the bystander.
struct IpmbLink {
    tx: ipmb::EndpointSender<ipmb::BytesMessage>,
    rx: ipmb::EndpointReceiver<ipmb::BytesMessage>,
    carrier: OwnedFd,
    peer: Proc,
    _bystander: Proc,
}

impl IpmbLink {
    fn start(what: &str, cpu: usize) -> IpmbLink {
        let bus = unique_bus(what);
        // Children first: ipmb's fds are not close-on-exec.
        let bystander = Proc::spawn("ipmb_bystander", &bus, "", cpu, None);
        let peer = Proc::spawn("ipmb_peer", &bus, "", cpu, None);
        let (tx, rx) = raw_join(&bus, "a");
        IpmbLink { tx, rx, carrier: new_eventfd(), peer, _bystander: bystander }
    }

    fn recv(&mut self) -> usize {
        match self.rx.recv(Some(WAIT)) {
            Ok(msg) => msg.payload.data.len(),
            Err(e) => panic!("raw ipmb recv: {e}"),
        }
    }
}

impl Link for IpmbLink {
    fn echo(&mut self, payload: &Bytes) -> usize {
        raw_send(&self.tx, &self.carrier, "b", payload.to_vec());
        self.recv()
    }

    fn pipelined(&mut self, payload: &Bytes, batches: usize, budget: Duration) -> (u64, Duration) {
        in_flight_batches(self, batches, budget, |s| {
            for _ in 0..IN_FLIGHT {
                raw_send(&s.tx, &s.carrier, "b", payload.to_vec());
            }
            for _ in 0..IN_FLIGHT {
                assert_eq!(s.recv(), payload.len(), "pipelined echo returned a wrong payload");
            }
        })
    }

    fn send(&mut self, msg: &Bytes) {
        raw_send(&self.tx, &self.carrier, "b", msg.to_vec());
    }

    fn peer(&mut self) -> &mut Proc {
        &mut self.peer
    }
}

// ---------------------------------------------------------------------------------------------
// hsipc hubs

/// The hub kind without its `+inline` or `+vec` (the client's hub is the same either way).
fn base_kind(kind: &str) -> &str {
    kind.split('+').next().unwrap_or(kind)
}

/// Bystander hub (controller) + peer process with a hub of kind `kind`, and this process's hub
/// `"bench"` of the same kind. The hub drops first.
struct HubLink {
    hub: Client,
    /// Send `&[u8]` and take `Vec<u8>` back instead of `Bytes` ([`VEC_KIND`]).
    vec: bool,
    peer: Proc,
    _bystander: Proc,
}

impl HubLink {
    fn start(what: &str, kind: &str, cpu: usize) -> HubLink {
        let bus = unique_bus(what);
        let bystander = Proc::spawn("hub_bystander", &bus, "blocking", cpu, None);
        let peer = Proc::spawn("hub_peer", &bus, kind, cpu, None);
        mark_all_cloexec();
        let hub = Client::join(base_kind(kind), &bus, Some(WAIT));
        hub.wait_for_service("bench", WAIT).expect("the echo server is not seen on the bus");
        HubLink { hub, vec: kind == VEC_KIND, peer, _bystander: bystander }
    }
}

impl Link for HubLink {
    fn echo(&mut self, payload: &Bytes) -> usize {
        match &self.hub {
            Client::Blocking(h) if self.vec => {
                let back: Vec<u8> = h.call("bench.echo", &payload[..]).expect("bench.echo failed");
                back.len()
            }
            hub => hub.echo(payload).len(),
        }
    }

    fn round_trips(&mut self, payload: &Bytes, samples: &mut dyn Sampling) {
        /// One round trip after another in this task.
        async fn each<F: Future<Output = hsipc::Result<Bytes>>>(samples: &mut dyn Sampling, call: impl Fn() -> F) {
            while samples.more() {
                let start = Instant::now();
                let back = call().await.expect("bench.echo failed");
                samples.record(start, back.len());
            }
        }
        match &self.hub {
            Client::Tokio(rt, h) => rt.block_on(each(samples, || h.call("bench.echo", payload))),
            Client::Smol(h) => smol::block_on(each(samples, || h.call("bench.echo", payload))),
            Client::Blocking(_) => echo_each(self, payload, samples),
        }
    }

    fn pipelined(&mut self, payload: &Bytes, batches: usize, budget: Duration) -> (u64, Duration) {
        self.hub.pipelined(payload, 1, Duration::ZERO);
        self.hub.pipelined(payload, batches, budget)
    }

    fn send(&mut self, msg: &Bytes) {
        match &self.hub {
            Client::Blocking(h) if self.vec => h.publish("bench/t", &msg[..]).expect("publish"),
            hub => hub.publish(msg),
        }
    }

    fn send_while(&mut self, msg: &Bytes, go_on: &mut dyn FnMut() -> bool) {
        /// One publish after another in this task.
        async fn each<F: Future<Output = hsipc::Result<()>>>(go_on: &mut dyn FnMut() -> bool, publish: impl Fn() -> F) {
            while go_on() {
                publish().await.expect("publish");
            }
        }
        match &self.hub {
            Client::Tokio(rt, h) => rt.block_on(each(go_on, || h.publish("bench/t", msg))),
            Client::Smol(h) => smol::block_on(each(go_on, || h.publish("bench/t", msg))),
            Client::Blocking(_) => send_each(self, msg, go_on),
        }
    }

    fn server_stream(&mut self, items: u64) -> (u64, Duration) {
        self.hub.server_stream(1_000);
        self.hub.server_stream(items)
    }

    fn peer(&mut self) -> &mut Proc {
        &mut self.peer
    }
}

impl Client {
    /// Reads `items` items of `bench.items`, for [`HubLink`]: (items read, elapsed).
    fn server_stream(&self, items: u64) -> (u64, Duration) {
        let start = Instant::now();
        let read = match self {
            Client::Blocking(h) => {
                let stream = h.call_stream::<_, Bytes>("bench.items", items).expect("bench.items");
                stream.map(|item| assert_eq!(item.expect("a stream item").len(), SMALL)).count() as u64
            }
            Client::Tokio(rt, h) => rt.block_on(read_stream(h.call_stream::<_, Bytes>("bench.items", items))),
            Client::Smol(h) => smol::block_on(read_stream(h.call_stream::<_, Bytes>("bench.items", items))),
        };
        assert_eq!(read, items, "bench.items ended early");
        (read, start.elapsed())
    }

    /// Up to `batches` batches of [`IN_FLIGHT`] calls of `bench.echo`, for [`HubLink`].
    fn pipelined(&self, payload: &Bytes, batches: usize, budget: Duration) -> (u64, Duration) {
        match self {
            Client::Blocking(h) => pipelined_threads(h, payload, batches, budget),
            Client::Tokio(rt, h) => rt.block_on(pipelined_async(|| h.call("bench.echo", payload), batches, budget)),
            Client::Smol(h) => smol::block_on(pipelined_async(|| h.call("bench.echo", payload), batches, budget)),
        }
    }
}

/// Reads an async hub's response stream to its end: the items read.
async fn read_stream<S>(call: impl Future<Output = hsipc::Result<S>>) -> u64
where
    S: futures_lite::Stream<Item = hsipc::Result<Bytes>> + Unpin,
{
    let mut stream = call.await.expect("bench.items");
    let mut read = 0;
    while let Some(item) = stream.next().await {
        assert_eq!(item.expect("a stream item").len(), SMALL);
        read += 1;
    }
    read
}

/// Polls all of `futs` on the current task until every one is done.
async fn join_all<F: Future + Unpin>(futs: Vec<F>) -> Vec<F::Output> {
    let mut slots: Vec<Option<F>> = futs.into_iter().map(Some).collect();
    let mut out: Vec<Option<F::Output>> = slots.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (slot, o) in slots.iter_mut().zip(out.iter_mut()) {
            if let Some(f) = slot {
                match Pin::new(f).poll(cx) {
                    Poll::Ready(v) => {
                        *o = Some(v);
                        *slot = None;
                    }
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending { Poll::Pending } else { Poll::Ready(()) }
    })
    .await;
    out.into_iter().map(|o| o.expect("every future completed")).collect()
}

/// Batches of [`IN_FLIGHT`] concurrent call futures on this task.
async fn pipelined_async<F, Fut>(call: F, batches: usize, budget: Duration) -> (u64, Duration)
where
    F: Fn() -> Fut,
    Fut: Future<Output = hsipc::Result<Bytes>> + Unpin,
{
    let start = Instant::now();
    let mut calls = 0;
    for _ in 0..batches {
        for r in join_all((0..IN_FLIGHT).map(|_| call()).collect()).await {
            assert_eq!(r.expect("pipelined bench.echo").len(), SMALL, "pipelined echo returned a wrong payload");
        }
        calls += IN_FLIGHT as u64;
        if start.elapsed() >= budget {
            break;
        }
    }
    (calls, start.elapsed())
}

/// [`IN_FLIGHT`] threads calling at once, each up to `batches` calls.
fn pipelined_threads(h: &SyncProcessHub, payload: &Bytes, batches: usize, budget: Duration) -> (u64, Duration) {
    let barrier = Barrier::new(IN_FLIGHT + 1);
    let end = Instant::now() + budget;
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..IN_FLIGHT)
            .map(|_| {
                s.spawn(|| {
                    barrier.wait();
                    let mut calls = 0u64;
                    while calls < batches as u64 && (calls == 0 || Instant::now() < end) {
                        let r: Bytes = h.call("bench.echo", payload).expect("pipelined bench.echo");
                        assert_eq!(r.len(), payload.len(), "pipelined echo returned a wrong payload");
                        calls += 1;
                    }
                    calls
                })
            })
            .collect();
        barrier.wait();
        let start = Instant::now();
        let calls = workers.into_iter().map(|w| w.join().expect("a calling thread panicked")).sum();
        (calls, start.elapsed())
    })
}

// ---------------------------------------------------------------------------------------------
// Child processes, seen from the bench process

impl Proc {
    /// Spawns `role` pinned to `cpu` (on `bus`, hub kind `kind`, inheriting `pass` if given)
    /// and waits for its `READY` report.
    fn spawn(role: &str, bus: &str, kind: &str, cpu: usize, pass: Option<&OwnedFd>) -> Proc {
        // This very binary even if cargo rebuilds the file on disk during the run (the target
        // dir may be shared): a child must run the same code as its parent.
        let mut cmd = Command::new("/proc/self/exe");
        cmd.env(CPU_ENV, cpu.to_string());
        let mut p = Proc::start(cmd, role, bus, kind, pass, Some(&CHILDREN));
        p.wait_ready(WAIT);
        check_affinity(p.child.id(), cpu);
        p
    }
}

/// Checks that child `pid` pinned itself to `cpu` (it does so before reporting `READY`).
fn check_affinity(pid: u32, cpu: usize) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let allowed = status.lines().find_map(|l| l.strip_prefix("Cpus_allowed_list:")).map(str::trim);
    assert_eq!(allowed, Some(cpu.to_string().as_str()), "child {pid} is not pinned to CPU {cpu}");
}

// ---------------------------------------------------------------------------------------------
// Output

fn fmt_us(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    if us < 10.0 {
        format!("{us:.2} µs")
    } else if us < 100.0 {
        format!("{us:.1} µs")
    } else if us < 1000.0 {
        format!("{us:.0} µs")
    } else {
        format!("{:.2} ms", us / 1000.0)
    }
}

fn fmt_rate(per_sec: f64) -> String {
    if per_sec >= 1e6 {
        format!("{:.2} M", per_sec / 1e6)
    } else if per_sec >= 1e3 {
        format!("{:.0} k", per_sec / 1e3)
    } else {
        format!("{per_sec:.0}")
    }
}

/// Nearest-rank percentile of sorted samples.
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn sorted(v: &[Duration]) -> Vec<Duration> {
    let mut s = v.to_vec();
    s.sort_unstable();
    s
}

fn p50(cell: &Cell<Vec<Duration>>) -> Option<Duration> {
    match cell {
        Cell::Value(v) if !v.is_empty() => Some(percentile(&sorted(v), 0.50)),
        _ => None,
    }
}

fn missing(row: &Row) -> String {
    if row.error.is_some() { "failed".into() } else { "–".into() }
}

fn cell<T>(row: &Row, c: &Cell<T>, f: impl Fn(&T) -> String) -> String {
    match c {
        Cell::Missing => missing(row),
        Cell::Na => "n/a".into(),
        Cell::Value(v) => f(v),
    }
}

/// The flow's rate (by `rate`), with what was lost if anything was.
fn flow_cell(flow: &Flow, rate: impl Fn(&Flow) -> String) -> String {
    let mut s = rate(flow);
    if flow.lost() > 0 {
        let pct = 100.0 * flow.lost() as f64 / flow.sent.max(1) as f64;
        s += &if pct < 1.0 { format!(" ({pct:.1} % lost)") } else { format!(" ({pct:.0} % lost)") };
    }
    s
}

fn render(mode: &Mode, p: &Params, rows: &[Row]) -> String {
    let mut out = String::new();
    let place = match mode.cpus {
        1 => format!("both processes on CPU {}", mode.parent_cpu),
        _ => format!("bench process on CPU {}, peer (and bus controller) on CPU {}", mode.parent_cpu, mode.peer_cpu),
    };
    out += &format!("## {} CPU{} ({place})\n\n", mode.cpus, if mode.cpus == 1 { "" } else { "s" });
    out += "| transport | round trip 64 B p50 / p99 | 4 KiB p50 / p99 | 64 KiB p50 / p99 | 1 MiB p50 / p99 \
            | one-way 64 B (msg/s) | one-way 4 KiB (GiB/s) | one-way 64 KiB (GiB/s) | one-way 1 MiB (GiB/s) \
            | calls/s, 64 in flight | events/s delivered (64 B) | server stream items/s (64 B) |\n";
    out += "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n";
    for row in rows {
        let mut cols = vec![row.transport.name()];
        for rt in &row.rt {
            cols.push(cell(row, rt, |v| {
                let s = sorted(v);
                format!("{} / {}", fmt_us(percentile(&s, 0.50)), fmt_us(percentile(&s, 0.99)))
            }));
        }
        cols.push(cell(row, &row.stream[0], |f| flow_cell(f, |f| fmt_rate(f.per_sec()))));
        for flow in &row.stream[1..] {
            cols.push(cell(row, flow, |f| flow_cell(f, |f| format!("{:.2}", f.gib_per_sec()))));
        }
        cols.push(cell(row, &row.pipelined, |&(calls, d)| {
            let s = fmt_rate(calls as f64 / d.as_secs_f64().max(1e-9));
            if row.transport.key().starts_with("blocking") { format!("{s} (64 threads)") } else { s }
        }));
        cols.push(cell(row, &row.events, |f| flow_cell(f, |f| fmt_rate(f.per_sec()))));
        cols.push(cell(row, &row.server_stream, |&(items, d)| fmt_rate(items as f64 / d.as_secs_f64().max(1e-9))));
        out += &format!("| {} |\n", cols.join(" | "));
    }

    out += "\nRound trip p50 relative to the raw Unix socket in this run:\n\n";
    out += "| transport | 64 B | 4 KiB | 64 KiB | 1 MiB |\n|---|---:|---:|---:|---:|\n";
    let base = rows.iter().find(|r| r.transport == Transport::Socket);
    for row in rows {
        let mut cols = vec![row.transport.name()];
        for i in 0..SIZES.len() {
            let ratio = base.and_then(|b| p50(&b.rt[i])).zip(p50(&row.rt[i]));
            cols.push(match (ratio, &row.rt[i]) {
                (Some((b, x)), _) => format!("{:.2}×", x.as_secs_f64() / b.as_secs_f64().max(1e-12)),
                (None, Cell::Na) => "n/a".into(),
                (None, _) => "–".into(),
            });
        }
        out += &format!("| {} |\n", cols.join(" | "));
    }

    out += "\nSamples and deliveries:\n\n";
    for row in rows {
        let mut notes = Vec::new();
        let counts: Vec<String> = row
            .rt
            .iter()
            .map(|c| match c {
                Cell::Value(v) => v.len().to_string(),
                _ => "-".into(),
            })
            .collect();
        notes.push(format!("round trips timed {}", counts.join("/")));
        if let Cell::Value((calls, _)) = row.pipelined {
            notes.push(format!("{calls} pipelined calls"));
        }
        if let Cell::Value((items, _)) = row.server_stream {
            notes.push(format!("{items} server stream items"));
        }
        let one_way = ["one-way 64 B", "one-way 4 KiB", "one-way 64 KiB", "one-way 1 MiB"].into_iter().zip(&row.stream);
        for (what, c) in one_way.chain([("events", &row.events)]) {
            if let Cell::Value(f) = c {
                let mut s = format!("{what}: {} of {} delivered", f.delivered, f.sent);
                if f.missed > 0 {
                    s += &format!(", {} reported missed", f.missed);
                }
                notes.push(s);
            }
        }
        if let Some(e) = &row.error {
            notes.push(format!("FAILED: {e}"));
        }
        out += &format!("- {}: {}\n", row.transport.name(), notes.join("; "));
    }
    out += &format!(
        "\n({} mode: at most {:?} per metric; round trips at most {:?} per size after {:?} warm-up; \
         load average after this mode: {})\n",
        if p.quick { "quick" } else { "default" },
        p.budget,
        p.rt_samples,
        p.rt_warmup,
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    out
}

// ---------------------------------------------------------------------------------------------
// Children

mod child {
    use super::child_proc::{bus, kind, report};
    use super::*;

    /// Bounds every wait of this process: it exits when its parent dies or closes our stdin,
    /// or after [`CHILD_LIFETIME`].
    fn watch_parent() {
        let parent = child_proc::watch_parent();
        std::thread::spawn(move || {
            let born = Instant::now();
            loop {
                std::thread::sleep(Duration::from_millis(500));
                // SAFETY: getppid has no preconditions.
                if unsafe { libc::getppid() } != parent {
                    std::process::exit(3);
                }
                if born.elapsed() > CHILD_LIFETIME {
                    eprintln!("bench child: alive for {CHILD_LIFETIME:?}, exiting");
                    std::process::exit(4);
                }
            }
        });
    }

    pub(super) fn run(role: &str) {
        if let Some(cpu) = std::env::var(CPU_ENV).ok().and_then(|c| c.parse().ok()) {
            pin_to(cpu);
        }
        watch_parent();
        match role {
            "sock_peer" => sock_peer(),
            "async_sock_peer" => async_sock_peer(),
            "tarpc_peer" => tarpc_peer(),
            "ipmb_bystander" => ipmb_bystander(),
            "ipmb_peer" => ipmb_peer(),
            "hub_bystander" => hub_bystander(),
            "hub_peer" => hub_peer(),
            other => panic!("unknown bench role {other}"),
        }
    }

    /// Counts one-way messages and reports each batch at its marker.
    #[derive(Default)]
    struct Counter {
        count: u64,
        missed: u64,
        last_ns: u64,
    }

    impl Counter {
        fn take(&mut self, data: &[u8], missed: u64) {
            let tag = data.first().copied().unwrap_or(u8::MAX);
            self.missed += missed;
            if tag == TAG_DATA || tag == TAG_MARK {
                self.count += 1;
                self.last_ns = mono_ns();
            }
            if (tag == TAG_MARK || tag == TAG_FLUSH) && data.len() >= 9 {
                let batch = u64::from_le_bytes(data[1..9].try_into().unwrap_or_default());
                report(&format!("GOT {batch} {} {} {}", self.count, self.missed, self.last_ns));
                *self = Counter::default();
            }
        }
    }

    fn sock_peer() {
        let fd: RawFd = std::env::var(FD_ENV).ok().and_then(|f| f.parse().ok()).expect("child needs HSIPC_BENCH_FD");
        // SAFETY: the parent passed us this fd, open and ours alone in this process.
        let stream = unsafe { UnixStream::from_raw_fd(fd) };
        set_cloexec(fd, true);
        let mut w = stream.try_clone().expect("socket clone");
        let mut r = BufReader::with_capacity(64 << 10, stream);
        let (mut buf, mut scratch) = (Vec::new(), Vec::new());
        let mut counter = Counter::default();
        report("READY");
        // A read error or end of file means the parent is gone.
        while read_frame(&mut r, &mut buf).is_ok() {
            if buf.first() == Some(&TAG_ECHO) {
                if write_frame(&mut w, &mut scratch, &buf).is_err() {
                    break;
                }
            } else {
                counter.take(&buf, 0);
            }
        }
    }

    fn async_sock_peer() {
        let fd: RawFd = std::env::var(FD_ENV).ok().and_then(|f| f.parse().ok()).expect("child needs HSIPC_BENCH_FD");
        // SAFETY: the parent passed us this fd, open and ours alone in this process.
        let stream = unsafe { UnixStream::from_raw_fd(fd) };
        set_cloexec(fd, true);
        report("READY");
        // Returns at end of file or on an error: the parent is gone.
        async_socket::serve(&kind(), stream);
    }

    fn tarpc_peer() {
        let fd: RawFd = std::env::var(FD_ENV).ok().and_then(|f| f.parse().ok()).expect("child needs HSIPC_BENCH_FD");
        // SAFETY: the parent passed us this fd, open and ours alone in this process.
        let stream = unsafe { UnixStream::from_raw_fd(fd) };
        set_cloexec(fd, true);
        report("READY");
        // Returns once the parent's end closes.
        super::tarpc_echo::serve(stream);
    }

    fn ipmb_bystander() {
        let (_tx, mut rx) = raw_join(&bus(), "bystander");
        report("READY");
        loop {
            let _ = rx.recv(Some(Duration::from_secs(1)));
        }
    }

    fn ipmb_peer() {
        let (tx, mut rx) = raw_join(&bus(), "b");
        let carrier = new_eventfd();
        let mut counter = Counter::default();
        report("READY");
        loop {
            match rx.recv(Some(Duration::from_secs(1))) {
                Ok(msg) => {
                    let data = msg.payload.data;
                    if data.first() == Some(&TAG_ECHO) {
                        raw_send(&tx, &carrier, "a", data);
                    } else {
                        counter.take(&data, 0);
                    }
                }
                Err(ipmb::RecvError::Timeout) => {}
                Err(e) => eprintln!("ipmb_peer: recv: {e}"),
            }
        }
    }

    fn hub(name: &str) -> SyncProcessHub {
        SyncProcessHub::builder(name).bus(bus()).build().unwrap_or_else(|e| panic!("{name} hub joins: {e}"))
    }

    fn hub_bystander() {
        let _hub = hub("bystander");
        report("READY");
        loop {
            std::thread::park_timeout(Duration::from_secs(1));
        }
    }

    fn take_event(counter: &mut Counter, event: hsipc::Result<hsipc::Event<Bytes>>) {
        match event {
            Ok(e) => counter.take(&e.payload, e.missed),
            Err(e) => eprintln!("hub_peer: {e}"),
        }
    }

    /// Serves `bench.items`: `n` items of 64 B, each sent as soon as the stream's credit lets it.
    fn serve_items_blocking(hub: &SyncProcessHub) {
        hub.serve_stream("bench.items", |n: u64, sink: &hsipc::blocking::StreamSink<Bytes>| {
            let item = Bytes::from(vec![0u8; SMALL]);
            for _ in 0..n {
                sink.send(&item).map_err(|e| e.to_string())?;
            }
            Ok::<(), String>(())
        })
        .expect("serve bench.items");
    }

    /// [`serve_items_blocking`] for an async hub, whose `StreamSink` type is given.
    macro_rules! serve_items_async {
        ($hub:expr, $sink:ty) => {
            $hub.serve_stream("bench.items", |n: u64, sink: $sink| async move {
                let item = Bytes::from(vec![0u8; SMALL]);
                for _ in 0..n {
                    sink.send(&item).await.map_err(|e| e.to_string())?;
                }
                Ok::<(), String>(())
            })
            .await
            .expect("serve bench.items")
        };
    }

    /// Serves `bench.echo` and counts the events of `bench/#`, with a hub of this child's kind.
    /// The event loop waits without a timeout of its own (a timer per event would cost the
    /// async hubs a measurable share); `watch_parent` bounds it.
    fn hub_peer() {
        let mut counter = Counter::default();
        let kind = kind();
        let inline = kind.ends_with("+inline");
        match super::base_kind(&kind) {
            "blocking" if kind == super::VEC_KIND => {
                let hub = hub("server");
                hub.serve("bench.echo", |v: Vec<u8>| Ok::<Vec<u8>, String>(v)).expect("serve bench.echo");
                let events = hub.subscribe::<Vec<u8>>("bench/#").expect("subscribe");
                report("READY");
                for e in events {
                    match e {
                        Ok(e) => counter.take(&e.payload, e.missed),
                        Err(e) => eprintln!("hub_peer: {e}"),
                    }
                }
            }
            "blocking" => {
                let hub = hub("server");
                serve_items_blocking(&hub);
                let echo = |b: Bytes| Ok::<Bytes, String>(b);
                if inline {
                    hub.serve_inline("bench.echo", echo).expect("serve bench.echo");
                } else {
                    hub.serve("bench.echo", echo).expect("serve bench.echo");
                }
                let events = hub.subscribe::<Bytes>("bench/#").expect("subscribe");
                report("READY");
                for e in events {
                    take_event(&mut counter, e);
                }
            }
            "tokio" => tokio::runtime::Runtime::new().expect("tokio runtime").block_on(async {
                let hub = hsipc::tokio::ProcessHub::builder("server").bus(bus()).build().expect("server hub joins");
                serve_items_async!(hub, hsipc::tokio::StreamSink<Bytes>);
                if inline {
                    hub.serve_inline("bench.echo", |b: Bytes| Ok::<Bytes, String>(b)).await.expect("serve");
                } else {
                    hub.serve("bench.echo", |b: Bytes| async move { Ok::<Bytes, String>(b) }).await.expect("serve");
                }
                let mut events = hub.subscribe::<Bytes>("bench/#").await.expect("subscribe");
                report("READY");
                while let Some(e) = events.next().await {
                    take_event(&mut counter, e);
                }
            }),
            _ => smol::block_on(async {
                let hub = hsipc::smol::ProcessHub::builder("server").bus(bus()).build().expect("server hub joins");
                serve_items_async!(hub, hsipc::smol::StreamSink<Bytes>);
                if inline {
                    hub.serve_inline("bench.echo", |b: Bytes| Ok::<Bytes, String>(b)).await.expect("serve");
                } else {
                    hub.serve("bench.echo", |b: Bytes| async move { Ok::<Bytes, String>(b) }).await.expect("serve");
                }
                let mut events = hub.subscribe::<Bytes>("bench/#").await.expect("subscribe");
                report("READY");
                while let Some(e) = events.next().await {
                    take_event(&mut counter, e);
                }
            }),
        }
    }
}
