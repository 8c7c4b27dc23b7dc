//! The examples, run as their readers run them: each multi-process example with both of its
//! roles, and the one-process examples and the demo to completion, each asserting on exactly
//! what the example prints.
//!
//! The example binaries are the ones cargo builds beside this test: `cargo test` and
//! `cargo nextest run` build every example of the package (with the same features) into
//! `target/<profile>/examples/`, the directory above this test binary's `deps/`. Every test
//! runs on a bus of its own (`HSIPC_BUS`); every wait has a deadline; a child is killed and
//! reaped on every path. This process never joins a bus.

mod common;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use common::unique_bus;

/// The bound of every wait: far beyond what a run takes, even on a loaded machine.
const DEADLINE: Duration = Duration::from_secs(60);

/// The path of example `name`, as cargo built it beside this test.
fn example_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe.parent().and_then(|deps| deps.parent()).expect("target/<profile>/deps/<test>");
    let path = dir.join("examples").join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.exists(),
        "example binary {} not found: `cargo test` and `cargo nextest run` build the examples; \
         after building only this test, run `cargo build --examples` with the same features",
        path.display()
    );
    path
}

/// A running example process; killed and reaped when dropped.
struct Running {
    label: String,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: flume::Receiver<String>,
    /// Every line read so far.
    output: Vec<String>,
}

impl Running {
    /// Starts example `name` with `args` on `bus`.
    fn start(name: &str, args: &[&str], bus: &str) -> Running {
        let mut child = Command::new(example_binary(name))
            .args(args)
            .env("HSIPC_BUS", bus)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("start example {name}: {e}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = flume::unbounded();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let stdin = child.stdin.take();
        Running { label: format!("{name} {}", args.join(" ")), child, stdin, lines, output: Vec::new() }
    }

    /// Reads lines until one satisfies `pred` (at most [`DEADLINE`]); returns it.
    fn wait_for(&mut self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + DEADLINE;
        loop {
            match self.lines.recv_deadline(deadline) {
                Ok(line) => {
                    self.output.push(line.clone());
                    if pred(&line) {
                        return line;
                    }
                }
                Err(_) => {
                    panic!("{}: no line {what} within {DEADLINE:?}; output so far: {:#?}", self.label, self.output)
                }
            }
        }
    }

    /// Closes its input (a server's cue to stop), waits for it to exit (at most [`DEADLINE`]),
    /// checks that it succeeded, and returns everything it printed.
    fn finish(mut self) -> Vec<String> {
        drop(self.stdin.take());
        let deadline = Instant::now() + DEADLINE;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                break status;
            }
            assert!(Instant::now() < deadline, "{}: still running after {DEADLINE:?}: {:#?}", self.label, self.output);
            std::thread::sleep(Duration::from_millis(10));
        };
        // The process has exited: its output ends once the reader has read it all.
        while let Ok(line) = self.lines.recv_deadline(deadline) {
            self.output.push(line);
        }
        assert!(status.success(), "{} exited with {status}; output: {:#?}", self.label, self.output);
        std::mem::take(&mut self.output)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a one-process example to completion; returns its output.
fn run(name: &str, args: &[&str]) -> Vec<String> {
    Running::start(name, args, &unique_bus(name)).finish()
}

fn lines(expected: &[&str]) -> Vec<String> {
    expected.iter().map(|l| l.to_string()).collect()
}

#[test]
fn request_response_server_and_client() {
    let bus = unique_bus("request_response");
    let mut server = Running::start("request_response", &["server"], &bus);
    server.wait_for("saying it serves", |l| l.starts_with("server: serving"));
    let client = Running::start("request_response", &["client"], &bus);
    assert_eq!(
        client.finish(),
        lines(&["client: add(2, 3) = 5", "client: div(7, 2) = 3", "client: div(1, 0) failed: DivisionByZero"])
    );
    assert_eq!(
        server.finish(),
        lines(&[
            "server: serving calc.add and calc.div; press Enter to stop",
            "server: add(2, 3)",
            "server: div(7, 2)",
            "server: div(1, 0)",
            "server: stopped",
        ])
    );
}

#[test]
fn pubsub_events_publisher_waits_for_the_subscriber() {
    let bus = unique_bus("pubsub_events");
    // The publisher first: it waits until the subscriber's patterns are on the bus.
    let publisher = Running::start("pubsub_events", &["publisher"], &bus);
    let subscriber = Running::start("pubsub_events", &["subscriber"], &bus);
    assert_eq!(
        publisher.finish(),
        lines(&[
            "publisher: sensor/temperature <- room_001 = 25.5",
            "publisher: sensor/thermostat <- hallway = 19.5",
            "publisher: sensor/room1/temperature <- room_1 = 21.0",
            "publisher: done",
        ])
    );
    let mut output = subscriber.finish();
    assert_eq!(
        output.first().map(String::as_str),
        Some("subscriber: listening on sensor/temperature, sensor/+ and sensor/#")
    );
    assert_eq!(
        output.last().map(String::as_str),
        Some("subscriber: done: 3 readings published, 6 received (one per matching pattern)")
    );
    // Each pattern prints its events in order; the three subscriptions interleave freely.
    let mut events = output.drain(1..output.len() - 1).collect::<Vec<_>>();
    events.sort();
    let mut expected = lines(&[
        "subscriber: [sensor/temperature] sensor/temperature from room_001 = 25.5",
        "subscriber: [sensor/+] sensor/temperature from room_001 = 25.5",
        "subscriber: [sensor/+] sensor/thermostat from hallway = 19.5",
        "subscriber: [sensor/#] sensor/temperature from room_001 = 25.5",
        "subscriber: [sensor/#] sensor/thermostat from hallway = 19.5",
        "subscriber: [sensor/#] sensor/room1/temperature from room_1 = 21.0",
    ]);
    expected.sort();
    assert_eq!(events, expected);
}

#[test]
fn streaming_backpressure_and_cancellation() {
    let bus = unique_bus("streaming");
    let mut server = Running::start("streaming", &["server"], &bus);
    server.wait_for("saying it serves", |l| l.starts_with("server: serving"));
    let client = Running::start("streaming", &["client"], &bus);
    let mut expected: Vec<String> = (0..12).map(|i| format!("client: got {i}")).collect();
    expected.push("client: read 12 items: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]".into());
    expected.extend((0..3).map(|i| format!("client: got {i} of a million")));
    expected.push("client: dropped the stream of a million".into());
    assert_eq!(client.finish(), expected);

    // The server sees the cancellation as a failed send.
    let stopped = server.wait_for("about the cancelled stream", |l| l.starts_with("server: count(1000000) stopped"));
    let sent: usize = stopped
        .strip_prefix("server: count(1000000) stopped after ")
        .and_then(|rest| rest.strip_suffix(" items: the send failed with Cancelled"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("unexpected line `{stopped}`"));
    // The client took 3 items; the server holds at most a window (4) of credit beyond what the
    // client took.
    assert!((3..=3 + 4).contains(&sent), "{stopped}");

    let output = server.finish();
    let mut expected = vec!["server: serving numbers.count; press Enter to stop".to_string()];
    expected.extend((0..12).map(|i| format!("server: sent {i}")));
    let done = output.get(expected.len()).cloned().unwrap_or_default();
    expected.push(done.clone());
    expected.extend((0..sent).map(|i| format!("server: sent {i}")));
    expected.push(stopped);
    expected.push("server: stopped".into());
    assert_eq!(output, expected);

    // Backpressure: the last of the 12 items could only be sent once the client had taken 8
    // (12 minus the window of 4), and it takes one every 50 ms: 7 pauses, 350 ms at least.
    let ms: u64 = done
        .strip_prefix("server: count(12) done in ")
        .and_then(|rest| rest.strip_suffix(" ms"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("unexpected line `{done}`"));
    assert!(ms >= 350, "the server finished in {ms} ms: it did not wait for the slow reader");
}

#[test]
fn trait_based_service_serves_two_implementations() {
    assert_eq!(
        run("trait_based_service", &[]),
        lines(&["Calculator: 10 + 20 = 30, 4 * 5 = 20", "clock: 10 + 20 = 6, 4 * 5 = 8"])
    );
}

#[test]
fn sync_api_runs() {
    assert_eq!(
        run("sync_api", &[]),
        lines(&[
            "calc.add(5, 3) = 8",
            "calc.countdown(3) = [3, 2, 1]",
            "sensor/+ got sensor/temperature: room_001 = 22.0",
            "Greeter.greet(\"Ada\") = \"Hello, Ada!\"",
            "Greeter.spell(\"hsipc\") = ['h', 's', 'i', 'p', 'c']",
        ])
    );
}

#[cfg(feature = "smol")]
#[test]
fn smol_service_runs() {
    assert_eq!(
        run("smol_service", &[]),
        lines(&[
            "set runtime = tokio (previous: None)",
            "set runtime = smol (previous: Some(\"tokio\"))",
            "get runtime = smol",
            "get colour: not found",
            "len = 2",
        ])
    );
}

#[test]
fn demo_runs_every_role_and_exits_cleanly() {
    let output = run("demo", &[]);
    let has = |expected: &str| {
        assert!(output.iter().any(|l| l == expected), "no line `{expected}` in {output:#?}");
    };
    let has_prefix = |prefix: &str| {
        assert!(output.iter().any(|l| l.starts_with(prefix)), "no line starting `{prefix}` in {output:#?}");
    };
    has("  service     serving calc.add, calc.div and the stream calc.fib");
    has("  subscriber  subscribed to sensor/+/temperature and alerts/#");
    has_prefix("  client      add(2, 3) = 5   [");
    has_prefix("  client      add(40, 2) = 42   [");
    has("  client      div(1, 0) failed with the service's own error: DivisionByZero");
    has("  client      fib(12) = [0, 1, 1, 2, 3, 5, 8, 13, 21, 34, 55, 89]");
    has("  subscriber  [sensor/+/temperature] sensor/kitchen/temperature: kitchen = 21.5");
    has("  subscriber  [sensor/+/temperature] sensor/garage/temperature: garage = 9.0");
    has("  subscriber  [alerts/#] alerts/garage/door: garage = 1.0");
    has("  client      the subscriber saw 3 of the 4 events (the humidity reading matches no pattern)");
    has("  subscriber  closed");
    has("  service     closed: said goodbye to the bus");
    has("done: every process said goodbye and exited.");
    if cfg!(feature = "smol") {
        has("  smol        add(20, 22) = 42, from a smol task");
        has("  smol        fib(8) = [0, 1, 1, 2, 3, 5, 8, 13]");
    } else {
        has("add a process on the smol hub: cargo run --example demo --features smol");
    }
}

#[test]
fn chat_server_and_a_scripted_client() {
    let bus = unique_bus("chat");
    let mut server = Running::start("chat", &["server"], &bus);
    server.wait_for("saying the room is open", |l| l.starts_with("server: the room is open"));
    let ann = Running::start("chat", &["client", "ann", "hello", "anyone?"], &bus);
    assert_eq!(
        ann.finish(),
        lines(&["ann heard ann: (joined)", "ann heard ann: hello", "ann heard ann: anyone?", "ann left",])
    );
    let out = server.finish();
    assert_eq!(
        out,
        lines(&[
            "server: the room is open; press Enter to close it",
            "server: ann joined",
            "server: ann left",
            "server: closed"
        ])
    );
}
