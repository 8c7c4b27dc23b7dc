//! Large events from one publisher to three subscriber processes: what each event costs the
//! publisher, and how many reach every subscriber per second, beside raw Unix sockets (the
//! publisher writes each event into one stream socket per subscriber) in the same run.
//!
//! ```sh
//! cargo bench --bench fan_out --all-features            # 3 runs per row, medians
//! cargo bench --bench fan_out --all-features -- --quick  # 1 short run per row
//! ```
//!
//! hsipc copies a large event once, into the publishing hub's fan-out pool, whatever the number
//! of subscribers: each subscriber's lane carries only its place (`hsipc-transport`'s
//! `ipmb/fan_pool.rs`). A raw socket copies it into the kernel once per subscriber, and out
//! again in each subscriber. Rows: one CPU (every process on the first CPU this bench may use)
//! and two (the publisher on the first, the subscribers on the second). The publisher's CPU
//! time is its whole process's (`getrusage`, user and system) over the burst, divided by the
//! events; subscribers are reliable (hsipc's default: the publisher waits for credit, nothing
//! is lost) and take each event as `Bytes`, reading one byte of it.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::process::Command;
use std::time::{Duration, Instant};

#[allow(dead_code)]
#[path = "support/child_proc.rs"]
mod child_proc;
#[allow(dead_code)]
#[path = "support/cpus.rs"]
mod cpus;

use child_proc::{FD_ENV, Proc, ROLE_ENV};
use cpus::cpu_time;

const SUBSCRIBERS: usize = 3;
/// Which CPUs a child pins itself to (a comma-separated list).
const PIN_ENV: &str = "HSIPC_BENCH_PIN";
/// Events a child waits for, and their size.
const EVENTS_ENV: &str = "HSIPC_BENCH_EVENTS";
const SIZE_ENV: &str = "HSIPC_BENCH_SIZE";

fn env_num(key: &str) -> usize {
    std::env::var(key).ok().and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("child needs {key}"))
}

/// One measurement: events per second delivered to every subscriber, and the publisher's CPU
/// microseconds per event.
#[derive(Clone, Copy)]
struct Row {
    rate: f64,
    cpu_us: f64,
}

fn main() {
    if let Ok(role) = std::env::var(ROLE_ENV) {
        child(&role);
        return;
    }
    let quick = std::env::args().any(|a| a == "--quick");
    let cpus = cpus::allowed_cpus();
    let (Some(&first), second) = (cpus.first(), cpus.get(1).copied()) else {
        eprintln!("fan_out: sched_getaffinity gave no CPU");
        std::process::exit(2);
    };
    let runs = if quick { 1 } else { 3 };
    println!(
        "# large events to {SUBSCRIBERS} subscriber processes ({} mode)\n",
        if quick { "quick" } else { "default" }
    );
    println!("Medians of {runs} run(s). Rate: events per second that reached all {SUBSCRIBERS} subscribers.");
    println!("CPU: the publishing process's CPU time per event.\n");
    println!("| CPUs | size | raw Unix sockets (events/s, CPU µs/event) | hsipc (events/s, CPU µs/event) |");
    println!("|---|---:|---:|---:|");
    let mut layouts = vec![("1", vec![first], vec![first])];
    if let Some(second) = second {
        layouts.push(("2", vec![first], vec![second]));
    }
    for (name, publisher, subscribers) in &layouts {
        cpus::pin_to(publisher);
        for (size, events) in
            [(64usize << 10, if quick { 2_000 } else { 20_000 }), (1 << 20, if quick { 200 } else { 2_000 })]
        {
            let median = |f: &dyn Fn() -> Row| {
                let mut rows: Vec<Row> = (0..runs).map(|_| f()).collect();
                rows.sort_by(|a, b| a.rate.total_cmp(&b.rate));
                let rate = rows[rows.len() / 2].rate;
                rows.sort_by(|a, b| a.cpu_us.total_cmp(&b.cpu_us));
                Row { rate, cpu_us: rows[rows.len() / 2].cpu_us }
            };
            let raw = median(&|| raw_run(subscribers, size, events));
            let hub = median(&|| hub_run(subscribers, size, events));
            let size_name = if size >= 1 << 20 { format!("{} MiB", size >> 20) } else { format!("{} KiB", size >> 10) };
            println!(
                "| {name} | {size_name} | {:.1} k, {:.1} | {:.1} k, {:.1} |",
                raw.rate / 1e3,
                raw.cpu_us,
                hub.rate / 1e3,
                hub.cpu_us
            );
        }
    }
}

fn spawn(role: &str, bus: &str, cpus: &[usize], size: usize, events: usize, pass: Option<&OwnedFd>) -> Proc {
    let mut cmd = Command::new(std::env::current_exe().expect("this bench's path"));
    let pin: Vec<String> = cpus.iter().map(|c| c.to_string()).collect();
    cmd.env(PIN_ENV, pin.join(",")).env(EVENTS_ENV, events.to_string()).env(SIZE_ENV, size.to_string());
    let mut proc = Proc::start(cmd, role, bus, "blocking", pass, None);
    proc.wait_ready(Duration::from_secs(30));
    proc
}

/// Waits for every subscriber's `DONE`.
fn wait_done(subs: &mut [Proc]) {
    let deadline = Instant::now() + Duration::from_secs(300);
    for sub in subs {
        loop {
            match sub.line_until(deadline) {
                Some(l) if l.starts_with("DONE") => break,
                Some(_) => {}
                None => panic!("a subscriber did not finish"),
            }
        }
    }
}

fn raw_run(cpus: &[usize], size: usize, events: usize) -> Row {
    let mut writers = Vec::new();
    let mut subs = Vec::new();
    for _ in 0..SUBSCRIBERS {
        let (mine, theirs) = UnixStream::pair().expect("socketpair");
        let theirs = OwnedFd::from(theirs);
        subs.push(spawn("raw_sub", "none", cpus, size, events, Some(&theirs)));
        writers.push(mine);
    }
    let event = vec![7u8; size];
    let (t0, c0) = (Instant::now(), cpu_time());
    for _ in 0..events {
        for w in &mut writers {
            w.write_all(&event).expect("write an event");
        }
    }
    let cpu = cpu_time() - c0;
    wait_done(&mut subs);
    Row { rate: events as f64 / t0.elapsed().as_secs_f64(), cpu_us: cpu.as_secs_f64() * 1e6 / events as f64 }
}

fn hub_run(cpus: &[usize], size: usize, events: usize) -> Row {
    let bus = format!("fan-bench-{}-{size}-{}", std::process::id(), Instant::now().elapsed().as_nanos() % 1_000_000);
    let mut subs: Vec<Proc> = (0..SUBSCRIBERS).map(|_| spawn("sub", &bus, cpus, size, events, None)).collect();
    let hub = hsipc::blocking::ProcessHub::builder("publisher").bus(&bus).build().expect("publisher hub");
    // Small events until each subscriber has heard one: all of them are known, their lanes up.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut heard = vec![false; SUBSCRIBERS];
    while !heard.iter().all(|h| *h) {
        assert!(Instant::now() < deadline, "the subscribers did not hear the publisher");
        hub.publish("fan/hello", bytes::Bytes::from_static(b"hi")).expect("publish");
        for (sub, heard) in subs.iter_mut().zip(&mut heard) {
            *heard |= sub.line_until(Instant::now() + Duration::from_millis(10)).is_some_and(|l| l == "HEARD");
        }
    }
    let event = bytes::Bytes::from(vec![7u8; size]);
    let (t0, c0) = (Instant::now(), cpu_time());
    for _ in 0..events {
        hub.publish("fan/big", event.clone()).expect("publish");
    }
    let cpu = cpu_time() - c0;
    wait_done(&mut subs);
    let elapsed = t0.elapsed();
    hub.close();
    Row { rate: events as f64 / elapsed.as_secs_f64(), cpu_us: cpu.as_secs_f64() * 1e6 / events as f64 }
}

fn child(role: &str) {
    child_proc::watch_parent();
    let pin: Vec<usize> =
        std::env::var(PIN_ENV).unwrap_or_default().split(',').filter_map(|c| c.parse().ok()).collect();
    if !pin.is_empty() {
        cpus::pin_to(&pin);
    }
    let (events, size) = (env_num(EVENTS_ENV), env_num(SIZE_ENV));
    match role {
        "raw_sub" => {
            // SAFETY: the parent passed this fd for us to own.
            let fd = unsafe { OwnedFd::from_raw_fd(env_num(FD_ENV) as i32) };
            child_proc::set_cloexec(fd.as_raw_fd(), true);
            let mut socket = UnixStream::from(fd);
            let mut buf = vec![0u8; size];
            child_proc::report("READY");
            for _ in 0..events {
                socket.read_exact(&mut buf).expect("read an event");
                std::hint::black_box(buf[size / 2]);
            }
            child_proc::report("DONE");
        }
        "sub" => {
            let name = format!("sub-{}", std::process::id());
            let hub = hsipc::blocking::ProcessHub::builder(&name).bus(child_proc::bus()).build().expect("hub");
            let subscription = hub.subscribe::<bytes::Bytes>("fan/#").expect("subscribe");
            child_proc::report("READY");
            let (mut got, mut heard) = (0, false);
            for event in subscription {
                let event = event.expect("an event");
                if event.topic == "fan/hello" {
                    if !heard {
                        child_proc::report("HEARD");
                        heard = true;
                    }
                    continue;
                }
                assert_eq!(event.missed, 0, "a reliable subscriber missed events");
                std::hint::black_box(event.payload[event.payload.len() / 2]);
                got += 1;
                if got == events {
                    break;
                }
            }
            child_proc::report("DONE");
            hub.close();
        }
        other => panic!("unknown role {other}"),
    }
    // Until the parent closes our stdin (see `watch_parent`).
    loop {
        std::thread::park();
    }
}
