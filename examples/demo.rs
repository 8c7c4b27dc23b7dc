//! hsipc in one command: `cargo run --example demo`.
//!
//! Starts three processes on a private bus, all from this one binary:
//!
//! - **service**: serves `calc.add`, `calc.div` and the response stream `calc.fib`;
//! - **subscriber**: subscribes to `sensor/+/temperature` and `alerts/#` and prints what it
//!   receives;
//! - **client**: calls the service, reads the stream, and publishes sensor events and an alert.
//!
//! The parent process only starts them, shows their output side by side, and stops them.
//! Each role can also be run by hand in its own terminal:
//! `HSIPC_BUS=mybus cargo run --example demo -- service` (then `subscriber`, then `client`).

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hsipc::blocking::{ProcessHub, StreamSink};
use serde::{Deserialize, Serialize};

/// A sensor reading, as published on `sensor/<room>/<kind>`.
#[derive(Debug, Serialize, Deserialize)]
struct Reading {
    room: String,
    value: f64,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    match std::env::args().nth(1).as_deref() {
        Some("service") => service(),
        Some("subscriber") => subscriber(),
        Some("client") => client(),
        Some(other) => Err(format!("unknown role `{other}`: use service, subscriber or client").into()),
        None => orchestrate(),
    }
}

/// Prints one line for the parent to show.
fn say(line: impl AsRef<str>) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{}", line.as_ref());
    let _ = out.flush();
}

/// Blocks until the parent closes our stdin (or says `quit`).
fn until_quit() {
    let mut line = String::new();
    while std::io::stdin().read_line(&mut line).is_ok_and(|n| n > 0) {
        if line.trim() == "quit" {
            break;
        }
        line.clear();
    }
}

fn service() -> Result<(), Box<dyn std::error::Error>> {
    let hub = ProcessHub::new("calculator")?;
    hub.serve("calc.add", |(a, b): (i64, i64)| Ok::<_, String>(a + b))?;
    hub.serve(
        "calc.div",
        |(a, b): (i64, i64)| {
            if b == 0 { Err("cannot divide by zero".to_string()) } else { Ok(a / b) }
        },
    )?;
    hub.serve_stream("calc.fib", |n: u32, sink: &StreamSink<u64>| {
        let (mut a, mut b) = (0u64, 1u64);
        for _ in 0..n {
            sink.send(&a)?; // waits for the reader's credit: a slow reader slows us down
            (a, b) = (b, a + b);
        }
        Ok::<_, hsipc::Error>(())
    })?;
    say("serving calc.add, calc.div and the stream calc.fib");
    say("READY");
    until_quit();
    hub.close();
    say("closed: said goodbye to the bus");
    Ok(())
}

fn subscriber() -> Result<(), Box<dyn std::error::Error>> {
    let hub = ProcessHub::new("display")?;
    let seen = Arc::new(AtomicU64::new(0));
    for pattern in ["sensor/+/temperature", "alerts/#"] {
        let sub = hub.subscribe::<Reading>(pattern)?;
        let seen = seen.clone();
        std::thread::spawn(move || {
            for event in sub {
                match event {
                    Ok(ev) => {
                        say(format!("[{pattern}] {} -> {} = {}", ev.topic, ev.payload.room, ev.payload.value));
                        seen.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(e) => say(format!("bad event: {e}")),
                }
            }
        });
    }
    // Lets the client check that its events arrived: waits (at most 2 s) until `n` were seen.
    let counter = seen.clone();
    hub.serve("display.seen", move |n: u64| {
        let deadline = Instant::now() + Duration::from_secs(2);
        while counter.load(Ordering::SeqCst) < n && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok::<_, String>(counter.load(Ordering::SeqCst))
    })?;
    say("subscribed to sensor/+/temperature and alerts/#");
    say("READY");
    until_quit();
    hub.close();
    say("closed");
    Ok(())
}

fn client() -> Result<(), Box<dyn std::error::Error>> {
    let hub = ProcessHub::new("client")?;
    hub.wait_for_service("calc", Duration::from_secs(10))?;
    hub.wait_for_service("display", Duration::from_secs(10))?;
    let peers = hub.peers()?;
    let names: Vec<String> = peers.iter().map(|p| format!("{} (pid {})", p.name, p.pid)).collect();
    say(format!("on the bus: {}", names.join(", ")));

    let t = Instant::now();
    let sum: i64 = hub.call("calc.add", (2, 3))?;
    say(format!("calc.add(2, 3) = {sum}   [{} µs round trip, first call]", t.elapsed().as_micros()));
    let t = Instant::now();
    let sum: i64 = hub.call("calc.add", (40, 2))?;
    say(format!("calc.add(40, 2) = {sum}   [{} µs]", t.elapsed().as_micros()));
    match hub.call::<_, i64>("calc.div", &(1, 0)) {
        Err(e) => say(format!("calc.div(1, 0) failed as it should: {e}")),
        Ok(v) => say(format!("calc.div(1, 0) = {v}?!")),
    }
    match hub.call::<_, i64>("calc.sqrt", &4) {
        Err(e) => say(format!("calc.sqrt: {e}")),
        Ok(v) => say(format!("calc.sqrt = {v}?!")),
    }
    match hub.call::<_, i64>("weather.today", &()) {
        Err(e) => say(format!("weather.today: {e}")),
        Ok(v) => say(format!("weather.today = {v}?!")),
    }

    let fib: Vec<u64> = hub.call_stream::<_, u64>("calc.fib", &12u32)?.collect::<Result<_, _>>()?;
    say(format!("calc.fib(12) streamed {} items: {fib:?}", fib.len()));

    let events = [
        ("sensor/kitchen/temperature", "kitchen", 21.5),
        ("sensor/garage/temperature", "garage", 9.0),
        ("sensor/kitchen/humidity", "kitchen", 40.0), // matches neither pattern
        ("alerts/garage/door", "garage", 1.0),
    ];
    for (topic, room, value) in events {
        hub.publish(topic, &Reading { room: room.into(), value })?;
        say(format!("published {topic}"));
    }
    let seen: u64 = hub.call("display.seen", 3u64)?;
    say(format!("the subscriber saw {seen} of the 4 events (the humidity reading matches no pattern)"));
    hub.close();
    Ok(())
}

/// A child process whose output is shown with a prefix.
struct Role {
    name: &'static str,
    child: Child,
    ready: flume::Receiver<()>,
    done: std::thread::JoinHandle<()>,
}

impl Role {
    fn start(name: &'static str, bus: &str) -> Result<Role, Box<dyn std::error::Error>> {
        let mut child = Command::new(std::env::current_exe()?)
            .arg(name)
            .env("HSIPC_BUS", bus)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let pid = child.id();
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let (tx, ready) = flume::bounded(1);
        let done = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line == "READY" {
                    let _ = tx.send(());
                } else {
                    println!("  {name:<10} (pid {pid:>6})  {line}");
                }
            }
        });
        Ok(Role { name, child, ready, done })
    }

    fn wait_ready(&self) -> Result<(), Box<dyn std::error::Error>> {
        self.ready.recv_timeout(Duration::from_secs(20)).map_err(|_| format!("{} did not start", self.name).into())
    }

    fn stop(mut self) -> Result<(), Box<dyn std::error::Error>> {
        if let Some(mut stdin) = self.child.stdin.take() {
            let _ = writeln!(stdin, "quit");
        }
        let status = self.child.wait()?;
        let _ = self.done.join();
        if !status.success() {
            return Err(format!("{} exited with {status}", self.name).into());
        }
        Ok(())
    }
}

fn orchestrate() -> Result<(), Box<dyn std::error::Error>> {
    let bus = format!("demo-{}", std::process::id());
    println!("hsipc demo: three processes on the private bus `{bus}`\n");
    // Start every child before anything joins the bus from here (nothing does: the parent only
    // watches).
    let service = Role::start("service", &bus)?;
    service.wait_ready()?;
    let subscriber = Role::start("subscriber", &bus)?;
    subscriber.wait_ready()?;
    let client = Role::start("client", &bus)?;
    let client_ok = client.stop();
    subscriber.stop()?;
    service.stop()?;
    client_ok?;
    println!("\ndone: every process said goodbye and exited.");
    println!("next: the tests (`cargo nextest run --workspace`) and README.md.");
    Ok(())
}
