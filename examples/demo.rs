//! hsipc in one command: `cargo run --example demo`.
//!
//! Starts processes on a private bus, all from this one binary, each on a different hub:
//!
//! - **service** (tokio hub): serves the `Calculator` service trait: `add`, `div` (with a
//!   typed error) and the response stream `fib`;
//! - **subscriber** (blocking hub): subscribes to `sensor/+/temperature` and `alerts/#` and
//!   prints what it receives;
//! - **smol** (smol hub, with `--features smol`): calls the service through the async client;
//! - **client** (blocking hub): calls the service through the blocking client, reads the
//!   stream, and publishes sensor readings and an alert.
//!
//! The parent process only starts them, shows their output, and stops them. Each role can
//! also be run by hand in its own terminal: `HSIPC_BUS=mybus cargo run --example demo --
//! service` (then `subscriber`, then `client`).

use std::error::Error;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hsipc::{ClientError, StreamSink};
use serde::{Deserialize, Serialize};

/// The service: one trait gives the server side and the clients of every hub.
#[hsipc::service(name = "calc")]
trait Calculator {
    async fn add(&self, a: i64, b: i64) -> hsipc::Result<i64>;
    /// A plain method with the service's own error type.
    fn div(&self, a: i64, b: i64) -> Result<i64, DivError>;
    /// The first `n` Fibonacci numbers, as a stream.
    #[hsipc(stream)]
    async fn fib(&self, n: u32, sink: StreamSink<u64>) -> hsipc::Result<()>;
}

/// `div`'s error, which reaches the client typed.
#[derive(Debug, Serialize, Deserialize)]
enum DivError {
    DivisionByZero,
}

/// A sensor reading, as published on `sensor/<room>/<kind>`.
#[derive(Debug, Serialize, Deserialize)]
struct Reading {
    room: String,
    value: f64,
}

fn main() -> Result<(), Box<dyn Error>> {
    match std::env::args().nth(1).as_deref() {
        Some("service") => service(),
        Some("subscriber") => subscriber(),
        #[cfg(feature = "smol")]
        Some("smol") => smol_client(),
        #[cfg(not(feature = "smol"))]
        Some("smol") => Err("the smol role needs the smol feature: add `--features smol`".into()),
        Some("client") => client(),
        Some(other) => Err(format!("unknown role `{other}`: use service, subscriber, smol or client").into()),
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

// ---------------------------------------------------------------------------------------------
// service: the tokio hub

struct Calc;

impl Calculator for Calc {
    async fn add(&self, a: i64, b: i64) -> hsipc::Result<i64> {
        say(format!("add({a}, {b}) = {}", a + b));
        Ok(a + b)
    }

    fn div(&self, a: i64, b: i64) -> Result<i64, DivError> {
        if b == 0 {
            say(format!("div({a}, {b}) refused: division by zero"));
            return Err(DivError::DivisionByZero);
        }
        Ok(a / b)
    }

    async fn fib(&self, n: u32, sink: StreamSink<u64>) -> hsipc::Result<()> {
        let (mut a, mut b) = (0u64, 1u64);
        for _ in 0..n {
            sink.send(&a).await?; // waits for the reader's credit: a slow reader slows us down
            (a, b) = (b, a + b);
        }
        say(format!("fib({n}): streamed {n} numbers"));
        Ok(())
    }
}

fn service() -> Result<(), Box<dyn Error>> {
    tokio::runtime::Runtime::new()?.block_on(async {
        let hub = hsipc::ProcessHub::new("calculator").await?;
        hub.register_service(CalculatorService::new(Calc)).await?;
        say("serving calc.add, calc.div and the stream calc.fib");
        say("READY");
        tokio::task::spawn_blocking(until_quit).await?;
        hub.close().await;
        say("closed: said goodbye to the bus");
        Ok(())
    })
}

// ---------------------------------------------------------------------------------------------
// subscriber: the blocking hub

fn subscriber() -> Result<(), Box<dyn Error>> {
    let hub = hsipc::SyncProcessHub::new("display")?;
    let seen = Arc::new(AtomicU64::new(0));
    for pattern in ["sensor/+/temperature", "alerts/#"] {
        let events = hub.subscribe::<Reading>(pattern)?;
        let seen = seen.clone();
        // A subscription is an iterator: read it on a thread of its own.
        std::thread::spawn(move || {
            for event in events {
                match event {
                    Ok(ev) => {
                        say(format!("[{pattern}] {}: {} = {:.1}", ev.topic, ev.payload.room, ev.payload.value));
                        seen.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(e) => say(format!("bad event: {e}")),
                }
            }
        });
    }
    // Lets a publisher check that its events arrived: waits (at most 2 s) until `n` were seen.
    hub.serve("display.seen", move |n: u64| {
        let deadline = Instant::now() + Duration::from_secs(2);
        while seen.load(Ordering::SeqCst) < n && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok::<_, String>(seen.load(Ordering::SeqCst))
    })?;
    say("subscribed to sensor/+/temperature and alerts/#");
    say("READY");
    until_quit();
    hub.close();
    say("closed");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// smol: the smol hub, through the async client

#[cfg(feature = "smol")]
fn smol_client() -> Result<(), Box<dyn Error>> {
    use futures_lite::StreamExt;

    smol::block_on(async {
        let hub = hsipc::smol::ProcessHub::new("smol-client").await?;
        let calc = CalculatorClient::new(hub.clone());
        hub.wait_for_service(calc.service_name(), Duration::from_secs(10)).await?;
        let sum = calc.add(20, 22).await?;
        say(format!("add(20, 22) = {sum}, from a smol task"));
        let fib: Vec<u64> = calc.fib(8)?.try_collect().await?;
        say(format!("fib(8) = {fib:?}"));
        hub.close().await;
        Ok(())
    })
}

// ---------------------------------------------------------------------------------------------
// client: the blocking hub, through the blocking client

fn client() -> Result<(), Box<dyn Error>> {
    let hub = hsipc::SyncProcessHub::new("client")?;
    let calc = CalculatorBlockingClient::new(hub.clone());
    hub.wait_for_service(calc.service_name(), Duration::from_secs(10))?;
    hub.wait_for_service("display", Duration::from_secs(10))?;
    let names: Vec<String> = hub.peers()?.iter().map(|p| format!("{} (pid {})", p.name, p.pid)).collect();
    say(format!("on the bus: {}", names.join(", ")));

    let t = Instant::now();
    let sum = calc.add(2, 3)?;
    say(format!("add(2, 3) = {sum}   [{} µs round trip, first call]", t.elapsed().as_micros()));
    let t = Instant::now();
    let sum = calc.add(40, 2)?;
    say(format!("add(40, 2) = {sum}   [{} µs]", t.elapsed().as_micros()));
    match calc.div(1, 0) {
        Err(ClientError::Service(e)) => say(format!("div(1, 0) failed with the service's own error: {e:?}")),
        other => say(format!("div(1, 0): {other:?}?!")),
    }
    // hsipc's own errors say what is wrong: a method nobody serves, a service nobody runs.
    if let Err(e) = hub.call::<_, i64>("calc.sqrt", 4) {
        say(format!("calc.sqrt: {e}"));
    }
    if let Err(e) = CalculatorBlockingClient::with_name(hub.clone(), "weather").add(1, 1) {
        say(format!("weather.add: {e}"));
    }

    let fib = calc.fib(12)?.collect::<hsipc::Result<Vec<u64>>>()?;
    say(format!("fib(12) = {fib:?}"));

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

// ---------------------------------------------------------------------------------------------
// The parent: starts the roles, shows their output, stops them.

/// A child process whose output is shown with a prefix.
struct Role {
    name: &'static str,
    child: Child,
    ready: flume::Receiver<()>,
    output: Option<std::thread::JoinHandle<()>>,
}

impl Role {
    fn start(name: &'static str, bus: &str) -> Result<Role, Box<dyn Error>> {
        let mut child = Command::new(std::env::current_exe()?)
            .arg(name)
            .env("HSIPC_BUS", bus)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let (tx, ready) = flume::bounded(1);
        let output = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line == "READY" {
                    let _ = tx.send(());
                } else {
                    println!("  {name:<10}  {line}");
                }
            }
        });
        Ok(Role { name, child, ready, output: Some(output) })
    }

    fn wait_ready(&self) -> Result<(), Box<dyn Error>> {
        self.ready.recv_timeout(Duration::from_secs(20)).map_err(|_| format!("{} did not start", self.name).into())
    }

    /// Asks the role to finish (a client finishes by itself), and waits until it has.
    fn stop(mut self) -> Result<(), Box<dyn Error>> {
        if let Some(mut stdin) = self.child.stdin.take() {
            let _ = writeln!(stdin, "quit");
        }
        let status = self.child.wait()?;
        if let Some(output) = self.output.take() {
            let _ = output.join();
        }
        if !status.success() {
            return Err(format!("{} exited with {status}", self.name).into());
        }
        Ok(())
    }
}

impl Drop for Role {
    /// On an error path: no child is left behind.
    fn drop(&mut self) {
        if self.output.is_some() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn orchestrate() -> Result<(), Box<dyn Error>> {
    let bus = format!("demo-{}", std::process::id());
    println!("hsipc demo: processes on the private bus `{bus}`, each on a different hub:");
    println!("  service     tokio hub: serves the Calculator trait (add, div, fib stream)");
    println!("  subscriber  blocking hub: prints sensor readings and alerts");
    if cfg!(feature = "smol") {
        println!("  smol        smol hub: calls the service through the async client");
    }
    println!("  client      blocking hub: calls the service, reads a stream, publishes events");
    println!();

    // The parent never joins the bus: it only starts the roles and watches.
    let service = Role::start("service", &bus)?;
    service.wait_ready()?;
    let subscriber = Role::start("subscriber", &bus)?;
    subscriber.wait_ready()?;
    #[cfg(feature = "smol")]
    Role::start("smol", &bus)?.stop()?;
    Role::start("client", &bus)?.stop()?;
    subscriber.stop()?;
    service.stop()?;

    println!("\ndone: every process said goodbye and exited.");
    if !cfg!(feature = "smol") {
        println!("add a process on the smol hub: cargo run --example demo --features smol");
    }
    println!("next: the other examples (examples/), the tests (`cargo nextest run --workspace`) and README.md.");
    Ok(())
}
