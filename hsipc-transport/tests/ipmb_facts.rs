//! Reproduces, with raw `ipmb` 0.8.5 across real processes, the facts hsipc's transport is built
//! around (`/work/shared/ipmb-on-linux.md`). If an ipmb upgrade changes one of them, the matching
//! test fails and says which assumption no longer holds.
//!
//! Every test runs on its own bus identifier, so the tests can run in parallel. The test process
//! itself never joins a bus (ipmb's sockets are not `CLOEXEC`, so every child spawned after a join
//! would inherit them, section 1.6 and experiment 2.l); only children join. A child is this test
//! binary re-run as `child_entry --exact`, with its role in `HSIPC_FACT_ROLE`. Children print
//! `@fact …` lines on stdout and take commands on stdin; the parent reads with deadlines and a
//! guard kills and reaps every child on every path. Process `A` always joins first and so is the
//! bus controller; the others are clients.
//!
//! * [`client_to_client_without_fd_is_dropped`] — section 2.0 (results table, first row) and
//!   the summary at the top. Burst: B sends 50 fd-less `BytesMessage`s to client C; every
//!   `send` is `Ok`, C receives none; a marker B sends afterwards *with* an fd (and a ttl, since C
//!   is evicted on a failed forward and rejoins) does reach C, and since one controller thread
//!   forwards in order (1.4) the 50 were dropped, not late. In a burst only the first message
//!   meets C's live endpoint (the others find C mid-rejoin, no route, ttl 0), so a lockstep
//!   phase follows: 20 times, an fd-less message sent only once C has received the previous
//!   probe (so C is joined), then an fd-carrying probe: every probe arrives, no fd-less one.
//! * [`client_to_client_with_fd_is_delivered`] — section 2.0 (second row) and 1.6: the same
//!   topology, each message carrying one eventfd `Object`: all 50 arrive, in order, each with
//!   its fd; a message carrying a 1 MiB `MemoryRegion` arrives with its bytes intact.
//! * [`oversized_send_never_returns`] — sections 1.3 and 2.d: from a client, a 100 000-byte
//!   `BytesMessage` is delivered, a 200 000-byte one makes `send` loop (rejoin, retry) without
//!   returning for at least 3 s, and meanwhile the controller's fd table grows (the fd leak of
//!   2.d). The controller is killed at the end so the leaked fds go away.
//! * [`send_to_absent_label_is_ok`] — sections 2.b, 2.f and 4.1: unicasts to a label no endpoint
//!   has, with and without an fd, all return `Ok`, and nothing comes back to the sender.
//! * [`recv_timeout_is_not_a_deadline`] — section 1.7 and experiment 2.i: `recv(Some(1 s))`
//!   while messages of another type keep arriving every 300 ms restarts its timeout after each
//!   discarded message and returns `Timeout` only about 1 s after the last one (≈ 3.7 s here).

use std::{
    io::{BufRead, BufReader, Write},
    process::{Child, ChildStdin, Command, Stdio},
    sync::mpsc::{self, RecvTimeoutError},
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use ipmb::{BytesMessage, EndpointReceiver, EndpointSender, Message, MessageBox, Selector};

const ROLE_ENV: &str = "HSIPC_FACT_ROLE";
const BUS_ENV: &str = "HSIPC_FACT_BUS";
const LABEL_ENV: &str = "HSIPC_FACT_LABEL";
const PARENT_ENV: &str = "HSIPC_FACT_PARENT";
/// Prefix of every line a child prints for the parent (libtest prints its own lines too).
const TAG: &str = "@fact ";
/// A child exits on its own after this long, whatever happens to the parent.
const CHILD_LIFETIME: Duration = Duration::from_secs(40);
const JOIN_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound for any single step a test waits for (a join, a batch of messages).
const STEP: Duration = Duration::from_secs(8);

/// `BytesMessage::format` values, so the receiver can say what it got.
const KIND_PLAIN: u16 = 1;
const KIND_MARKER: u16 = 2;
const KIND_FD: u16 = 3;
const KIND_REGION: u16 = 4;
const KIND_BIG: u16 = 5;

const REGION_SIZE: usize = 1 << 20;

// ---------------------------------------------------------------------------------------------
// Parent side
// ---------------------------------------------------------------------------------------------

/// A unique bus identifier for one test run (well under the 106-byte truncation limit, 1.1).
fn bus_name(fact: &str) -> String {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970").subsec_nanos();
    format!("hsipc-fact-{fact}-{}-{nanos}", std::process::id())
}

/// One child process; dropping it kills and reaps the child.
struct Proc {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Proc {
    fn spawn(name: &str, role: &str, bus: &str, label: &str) -> Proc {
        let exe = std::env::current_exe().expect("current_exe");
        let mut child = Command::new(exe)
            .args(["child_entry", "--exact", "--nocapture", "--test-threads=1"])
            .env(ROLE_ENV, role)
            .env(BUS_ENV, bus)
            .env(LABEL_ENV, label)
            .env(PARENT_ENV, std::process::id().to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn child {name}: {e}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let stdin = child.stdin.take();
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                // libtest prints `test child_entry ... ` without a newline before our first line.
                if let Some(at) = line.find(TAG) {
                    if tx.send(line[at + TAG.len()..].to_owned()).is_err() {
                        break;
                    }
                }
            }
        });
        Proc { name: name.to_owned(), child, stdin, lines, seen: Vec::new() }
    }

    /// Spawns a child and waits for the `READY` it prints once `ipmb::join` has returned.
    fn spawn_ready(name: &str, role: &str, bus: &str, label: &str) -> Proc {
        let mut p = Proc::spawn(name, role, bus, label);
        p.wait_for("READY", Instant::now() + STEP);
        p
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The next line, or `None` if none arrives before `deadline`. Panics if the child exited.
    fn next_line(&mut self, deadline: Instant) -> Option<String> {
        let left = deadline.saturating_duration_since(Instant::now());
        match self.lines.recv_timeout(left) {
            Ok(line) => {
                self.seen.push(line.clone());
                Some(line)
            }
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => panic!(
                "child {} closed stdout (exit status {:?}); its lines: {:?}",
                self.name,
                self.child.try_wait(),
                self.seen
            ),
        }
    }

    /// Skips lines until one starts with `prefix`; panics at `deadline`.
    fn wait_for(&mut self, prefix: &str, deadline: Instant) -> String {
        self.collect_until(prefix, deadline).pop().expect("collect_until returns the matching line last")
    }

    /// Every line up to and including the first one starting with `prefix`; panics at `deadline`.
    fn collect_until(&mut self, prefix: &str, deadline: Instant) -> Vec<String> {
        let mut out = Vec::new();
        loop {
            match self.next_line(deadline) {
                Some(line) => {
                    let done = line.starts_with(prefix);
                    out.push(line);
                    if done {
                        return out;
                    }
                }
                None => panic!(
                    "child {}: no line starting with {prefix:?} before the deadline; its lines: {:?}",
                    self.name, self.seen
                ),
            }
        }
    }

    fn cmd(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{line}")
            .and_then(|()| stdin.flush())
            .unwrap_or_else(|e| panic!("write {line:?} to child {}: {e}", self.name));
    }

    fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Value of `key=` in a `GOT …`/`SENT …` line.
fn field<'a>(line: &'a str, key: &str) -> &'a str {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
        .unwrap_or_else(|| panic!("no {key}= in {line:?}"))
}

fn num(line: &str, key: &str) -> u64 {
    field(line, key).parse().unwrap_or_else(|e| panic!("{key}= in {line:?}: {e}"))
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

/// FNV-1a, to compare payloads across processes by printing one number.
fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3))
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| ((i as u32).wrapping_mul(2_654_435_761) >> 24) as u8 ^ seed).collect()
}

/// A then B and C, each joined before the next is spawned: A is the controller.
fn star(fact: &str) -> (Proc, Proc, Proc) {
    let bus = bus_name(fact);
    let a = Proc::spawn_ready("A", "controller", &bus, "a");
    let b = Proc::spawn_ready("B", "peer", &bus, "b");
    let c = Proc::spawn_ready("C", "receiver", &bus, "c");
    (a, b, c)
}

// ---------------------------------------------------------------------------------------------
// The facts
// ---------------------------------------------------------------------------------------------

/// Section 2.0: client → client without an fd is dropped, although `send` returns `Ok`.
#[test]
fn client_to_client_without_fd_is_dropped() {
    const BURST: u64 = 50;
    const PAIRS: u64 = 20;
    let start = Instant::now();
    let (_a, mut b, mut c) = star("nofd");
    let is_plain = |l: &&String| l.starts_with(&format!("GOT fmt={KIND_PLAIN} "));

    // Phase 1, a burst: 50 fd-less sends, all Ok, then a marker that carries an fd. Its ttl
    // covers the moments when C has just been evicted (a failed forward costs C its endpoint)
    // and is rejoining. One controller thread forwards B's messages in order (1.4), so once the
    // marker is in, the 50 were dropped, not late.
    b.cmd(&format!("PLAIN c {BURST}"));
    let sent = b.wait_for("SENT PLAIN", Instant::now() + STEP);
    assert_eq!(num(&sent, "ok"), BURST, "every fd-less send returns Ok: {sent}");
    assert_eq!(num(&sent, "err"), 0, "{sent}");
    b.cmd(&format!("PROBE c {}", u64::MAX));
    b.wait_for("SENT PROBE", Instant::now() + STEP);
    let got = c.collect_until(&format!("GOT fmt={KIND_MARKER} seq={} ", u64::MAX), Instant::now() + STEP);
    let plain: Vec<_> = got.iter().filter(is_plain).collect();
    assert!(
        plain.is_empty(),
        "fact changed: {} of {BURST} fd-less client→client messages arrived: {plain:?}",
        plain.len()
    );
    assert_eq!(num(got.last().expect("marker"), "objs"), 1, "{got:?}");

    // Phase 2, lockstep: in a burst, only the first message meets C's live endpoint (the rest
    // find C mid-rejoin and are dropped for want of a route). Here each fd-less message is sent
    // only after C has received the previous probe, so C is joined when it is routed, and it
    // is still dropped; the probe right behind it (with an fd) arrives.
    let deadline = Instant::now() + STEP;
    for seq in 0..PAIRS {
        b.cmd(&format!("PAIR c {seq}"));
        let got = c.collect_until(&format!("GOT fmt={KIND_MARKER} seq={seq} "), deadline);
        let plain: Vec<_> = got.iter().filter(is_plain).collect();
        assert!(plain.is_empty(), "fact changed: fd-less message {seq} reached a joined client: {plain:?}");
    }
    let sent = b.collect_until(&format!("SENT PAIR seq={} ", PAIRS - 1), deadline);
    assert!(
        sent.iter().filter(|l| l.starts_with("SENT PAIR")).all(|l| num(l, "plain_ok") == 1 && num(l, "probe_ok") == 1),
        "every send returns Ok: {sent:?}"
    );
    eprintln!(
        "client_to_client_without_fd_is_dropped: burst 0/{BURST}, lockstep 0/{PAIRS} delivered \
         (all sends Ok); every fd-carrying probe delivered; {:?}",
        start.elapsed()
    );
}

/// Section 2.0: client → client with one fd (or a memory region) attached is delivered.
#[test]
fn client_to_client_with_fd_is_delivered() {
    const N: u64 = 50;
    let start = Instant::now();
    let (_a, mut b, mut c) = star("fd");

    b.cmd(&format!("FD c {N}"));
    let sent = b.wait_for("SENT FD", Instant::now() + STEP);
    assert_eq!(num(&sent, "ok"), N, "{sent}");
    let deadline = Instant::now() + STEP;
    for seq in 0..N {
        let line = c.wait_for("GOT ", deadline);
        assert_eq!(num(&line, "fmt"), u64::from(KIND_FD), "{line}");
        assert_eq!(num(&line, "seq"), seq, "in order, none missing: {line}");
        assert_eq!(num(&line, "objs"), 1, "the fd arrives with it: {line}");
    }

    b.cmd("REGION c");
    let sent = b.wait_for("SENT REGION", Instant::now() + STEP);
    let line = c.wait_for("GOT ", Instant::now() + STEP);
    assert_eq!(num(&line, "fmt"), u64::from(KIND_REGION), "{line}");
    assert_eq!(num(&line, "regions"), 1, "{line}");
    assert_eq!(num(&line, "rlen"), REGION_SIZE as u64, "{line}");
    assert_eq!(field(&line, "rsum"), field(&sent, "rsum"), "region bytes intact");
    assert_eq!(num(&line, "rsum"), fnv(&pattern(REGION_SIZE, 0x5a)), "region bytes are the sender's pattern");
    eprintln!("client_to_client_with_fd_is_delivered: {N}/{N} in order + 1 MiB region, {:?}", start.elapsed());
}

/// Sections 1.3 and 2.d: 100 000 bytes is delivered; 200 000 bytes makes a client's `send` loop.
#[test]
fn oversized_send_never_returns() {
    const SMALL: usize = 100_000;
    const BIG: usize = 200_000;
    const HANG_BOUND: Duration = Duration::from_secs(3);
    let start = Instant::now();
    let (a, mut b, mut c) = star("big");

    b.cmd(&format!("BIG c {SMALL}"));
    b.wait_for(&format!("SENT BIG len={SMALL}"), Instant::now() + STEP);
    let line = c.wait_for("GOT ", Instant::now() + STEP);
    assert_eq!(num(&line, "fmt"), u64::from(KIND_BIG), "{line}");
    assert_eq!(num(&line, "len"), SMALL as u64, "{line}");
    assert_eq!(num(&line, "dsum"), fnv(&pattern(SMALL, 0x33)), "{line}");

    let fds_before = open_fds(a.pid());
    b.cmd(&format!("BIG c {BIG}"));
    b.wait_for(&format!("SENDING BIG len={BIG}"), Instant::now() + STEP);
    let sending_at = Instant::now();
    let deadline = sending_at + HANG_BOUND;
    while let Some(line) = b.next_line(deadline) {
        assert!(
            !line.starts_with("SENT BIG"),
            "fact changed: a {BIG}-byte send returned after {:?}: {line}",
            sending_at.elapsed()
        );
    }
    assert!(b.is_running(), "the sender is still inside send(), not dead");
    let fds_after = open_fds(a.pid());
    assert!(
        fds_after > fds_before + 100,
        "the controller leaks an endpoint per retry (2.d): fds {fds_before} → {fds_after}"
    );
    // Nothing of the oversized message reached C.
    assert!(c.next_line(Instant::now()).is_none(), "{:?}", c.seen);
    eprintln!(
        "oversized_send_never_returns: {SMALL} B delivered; {BIG} B send still running after \
         {HANG_BOUND:?}; controller fds {fds_before} → {fds_after}; total {:?}",
        start.elapsed()
    );
    drop(b);
    drop(a);
}

/// Sections 2.b, 2.f, 4.1: a unicast to a label nobody has reports `Ok`, and nothing comes back.
#[test]
fn send_to_absent_label_is_ok() {
    const N: u64 = 10;
    let start = Instant::now();
    let bus = bus_name("absent");
    let _a = Proc::spawn_ready("A", "controller", &bus, "a");
    let mut b = Proc::spawn_ready("B", "peer", &bus, "b");

    b.cmd(&format!("PLAIN nobody {N}"));
    let sent = b.wait_for("SENT PLAIN", Instant::now() + STEP);
    assert_eq!(num(&sent, "ok"), N, "{sent}");
    b.cmd(&format!("FD nobody {N}"));
    let sent = b.wait_for("SENT FD", Instant::now() + STEP);
    assert_eq!(num(&sent, "ok"), N, "{sent}");
    b.cmd("RECV 500");
    let line = b.wait_for("RECV ", Instant::now() + STEP);
    assert!(line.starts_with("RECV timeout"), "no bounce or error reaches the sender: {line}");
    eprintln!("send_to_absent_label_is_ok: {}/{} Ok, no report, {:?}", 2 * N, 2 * N, start.elapsed());
}

/// Section 1.7, experiment 2.i: `recv(Some(t))` restarts `t` after each discarded message.
#[test]
fn recv_timeout_is_not_a_deadline() {
    const SPAM: u64 = 10;
    const INTERVAL_MS: u64 = 300;
    let start = Instant::now();
    let bus = bus_name("recvto");
    // The controller sends the other-typed messages: controller → client needs no fd (2.0).
    let mut a = Proc::spawn_ready("A", "spammer", &bus, "a");
    let mut c = Proc::spawn_ready("C", "peer", &bus, "c");

    c.cmd("RECV 1000");
    a.cmd(&format!("SPAM c {SPAM} {INTERVAL_MS}"));
    let line = c.wait_for("RECV ", Instant::now() + Duration::from_secs(12));
    a.wait_for("SPAMMED", Instant::now() + STEP);
    assert!(line.starts_with("RECV timeout"), "only other-typed messages were sent: {line}");
    let elapsed_ms = num(&line, "ms");
    // The spam lasts (SPAM - 1) * INTERVAL_MS = 2.7 s, so a real 1 s deadline would end long
    // before; ipmb returns about 1 s after the last discarded message.
    assert!(elapsed_ms >= 2_500, "fact changed: recv(Some(1 s)) honoured its timeout as a deadline: {line}");
    eprintln!(
        "recv_timeout_is_not_a_deadline: recv(Some(1 s)) returned Timeout after {elapsed_ms} ms, \
         test {:?}",
        start.elapsed()
    );
}

// ---------------------------------------------------------------------------------------------
// Child side
// ---------------------------------------------------------------------------------------------

/// Not a test: the entry point of the child processes. Returns at once unless `HSIPC_FACT_ROLE`
/// is set.
#[test]
fn child_entry() {
    let Ok(role) = std::env::var(ROLE_ENV) else {
        return;
    };
    bound_child_lifetime();
    let bus = std::env::var(BUS_ENV).expect("bus identifier");
    let label = std::env::var(LABEL_ENV).expect("label");
    match role.as_str() {
        "controller" => role_controller(&bus, &label),
        "receiver" => role_receiver(&bus, &label),
        "peer" => role_peer(&bus, &label),
        "spammer" => role_spammer(&bus, &label),
        other => panic!("unknown role {other}"),
    }
    std::process::exit(0);
}

/// A child never outlives its parent's test: killed with the spawning thread, and exits by
/// itself after `CHILD_LIFETIME` regardless.
fn bound_child_lifetime() {
    // SAFETY: plain syscalls without pointers.
    unsafe {
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        );
    }
    let parent = std::env::var(PARENT_ENV).unwrap_or_default();
    // SAFETY: getppid cannot fail.
    if unsafe { libc::getppid() }.to_string() != parent {
        std::process::exit(2);
    }
    thread::spawn(|| {
        thread::sleep(CHILD_LIFETIME);
        std::process::exit(3);
    });
}

fn say(line: &str) {
    println!("{TAG}{line}");
}

fn join<S: MessageBox, R: MessageBox>(bus: &str, label: &str) -> (EndpointSender<S>, EndpointReceiver<R>) {
    let options = ipmb::Options::new(bus, ipmb::label!(label), "");
    ipmb::join::<S, R>(options, Some(JOIN_TIMEOUT)).unwrap_or_else(|e| panic!("join {bus} as {label}: {e}"))
}

/// Commands from the parent, one per line; ends when the parent closes stdin.
fn commands() -> impl Iterator<Item = Vec<String>> {
    std::io::stdin().lines().map_while(Result::ok).map(|l| l.split_whitespace().map(str::to_owned).collect())
}

/// A fresh eventfd as an `ipmb::Object`.
fn eventfd_object() -> ipmb::Object {
    // SAFETY: plain syscall.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    assert!(fd >= 0, "eventfd: {}", std::io::Error::last_os_error());
    // SAFETY: `fd` is a freshly created descriptor that nothing else owns.
    unsafe { ipmb::Object::from_raw(fd) }
}

fn bytes_message(target: &str, kind: u16, data: Vec<u8>) -> Message<BytesMessage> {
    Message::new(Selector::unicast(target), BytesMessage { format: kind, data })
}

/// A message that can cross client → client (one fd) and waits up to 5 s for a receiver that is
/// rejoining (ttl, section 1.5).
fn probe(target: &str, seq: u64) -> Message<BytesMessage> {
    let mut selector = Selector::unicast(target);
    selector.ttl = Duration::from_secs(5);
    let payload = BytesMessage { format: KIND_MARKER, data: seq.to_le_bytes().to_vec() };
    let mut msg = Message::new(selector, payload);
    msg.objects.push(eventfd_object());
    msg
}

/// First joiner: becomes the controller, then idles until killed.
fn role_controller(bus: &str, label: &str) {
    let (_tx, _rx) = join::<BytesMessage, BytesMessage>(bus, label);
    say("READY");
    for _ in commands() {}
    // Stdin closed: the parent is gone or done.
}

/// A client that prints every message it receives, until killed.
fn role_receiver(bus: &str, label: &str) {
    let (_tx, mut rx) = join::<BytesMessage, BytesMessage>(bus, label);
    say("READY");
    loop {
        match rx.recv(Some(Duration::from_millis(300))) {
            Ok(mut msg) => {
                let data = &msg.payload.data;
                let seq = data.get(..8).map_or(u64::MAX, |b| u64::from_le_bytes(b.try_into().expect("8")));
                let mut region_bytes = Vec::new();
                for region in &mut msg.memory_regions {
                    let mapped = region.map(..).expect("map received region");
                    region_bytes.extend_from_slice(mapped);
                }
                say(&format!(
                    "GOT fmt={} seq={seq} len={} dsum={} objs={} regions={} rlen={} rsum={}",
                    msg.payload.format,
                    data.len(),
                    fnv(data),
                    msg.objects.len(),
                    msg.memory_regions.len(),
                    region_bytes.len(),
                    fnv(&region_bytes),
                ));
            }
            Err(ipmb::RecvError::Timeout) => {}
            // Eviction and rejoin happen inside recv; a failed rejoin shows up here.
            Err(e) => say(&format!("ERR {e}")),
        }
    }
}

/// A client driven by commands: sends, or receives once.
fn role_peer(bus: &str, label: &str) {
    let (tx, mut rx) = join::<BytesMessage, BytesMessage>(bus, label);
    say("READY");
    for cmd in commands() {
        let args: Vec<&str> = cmd.iter().map(String::as_str).collect();
        match args.as_slice() {
            ["PLAIN", target, n] => {
                let n: u64 = n.parse().expect("count");
                let (mut ok, mut err) = (0, 0);
                for seq in 0..n {
                    let msg = bytes_message(target, KIND_PLAIN, seq.to_le_bytes().to_vec());
                    match tx.send(msg) {
                        Ok(()) => ok += 1,
                        Err(_) => err += 1,
                    }
                }
                say(&format!("SENT PLAIN ok={ok} err={err}"));
            }
            ["FD", target, n] => {
                let n: u64 = n.parse().expect("count");
                let (mut ok, mut err) = (0, 0);
                for seq in 0..n {
                    let mut msg = bytes_message(target, KIND_FD, seq.to_le_bytes().to_vec());
                    msg.objects.push(eventfd_object());
                    match tx.send(msg) {
                        Ok(()) => ok += 1,
                        Err(_) => err += 1,
                    }
                }
                say(&format!("SENT FD ok={ok} err={err}"));
            }
            ["PROBE", target, seq] => {
                let seq: u64 = seq.parse().expect("seq");
                let ok = tx.send(probe(target, seq)).is_ok();
                say(&format!("SENT PROBE seq={seq} ok={}", u8::from(ok)));
            }
            ["PAIR", target, seq] => {
                let seq: u64 = seq.parse().expect("seq");
                let plain = bytes_message(target, KIND_PLAIN, seq.to_le_bytes().to_vec());
                let plain_ok = tx.send(plain).is_ok();
                let probe_ok = tx.send(probe(target, seq)).is_ok();
                say(&format!("SENT PAIR seq={seq} plain_ok={} probe_ok={}", u8::from(plain_ok), u8::from(probe_ok)));
            }
            ["REGION", target] => {
                let mut region = ipmb::MemoryRegion::new(REGION_SIZE).expect("memory region");
                let bytes = pattern(REGION_SIZE, 0x5a);
                region.map(..).expect("map region").copy_from_slice(&bytes);
                let mut msg = bytes_message(target, KIND_REGION, Vec::new());
                msg.memory_regions.push(region);
                let res = tx.send(msg);
                say(&format!("SENT REGION ok={} rsum={}", u8::from(res.is_ok()), fnv(&bytes)));
            }
            ["BIG", target, len] => {
                let len: usize = len.parse().expect("length");
                let mut msg = bytes_message(target, KIND_BIG, pattern(len, 0x33));
                msg.objects.push(eventfd_object());
                say(&format!("SENDING BIG len={len}"));
                let res = tx.send(msg);
                say(&format!("SENT BIG len={len} ok={}", u8::from(res.is_ok())));
            }
            ["RECV", ms] => {
                let timeout = Duration::from_millis(ms.parse().expect("ms"));
                let t0 = Instant::now();
                let res = rx.recv(Some(timeout));
                let ms = t0.elapsed().as_millis();
                match res {
                    Ok(msg) => say(&format!("RECV got fmt={} ms={ms}", msg.payload.format)),
                    Err(ipmb::RecvError::Timeout) => say(&format!("RECV timeout ms={ms}")),
                    Err(e) => say(&format!("RECV err={e} ms={ms}")),
                }
            }
            other => panic!("unknown command {other:?}"),
        }
    }
}

/// A message type the peers do not receive (`BytesMessage` receivers discard it).
struct OtherMessage;

impl OtherMessage {
    const UUID: [u8; 16] = *b"hsipc-fact-other";
}

impl MessageBox for OtherMessage {
    fn decode(uuid: [u8; 16], _data: &[u8]) -> Result<Self, ipmb::Error> {
        if uuid == Self::UUID { Ok(OtherMessage) } else { Err(ipmb::Error::TypeUuidNotFound) }
    }

    fn encode(&self) -> Result<Vec<u8>, ipmb::Error> {
        Ok(vec![0; 4])
    }

    fn uuid(&self) -> [u8; 16] {
        Self::UUID
    }
}

/// First joiner (controller) that sends `OtherMessage`s on command.
fn role_spammer(bus: &str, label: &str) {
    let (tx, _rx) = join::<OtherMessage, BytesMessage>(bus, label);
    say("READY");
    for cmd in commands() {
        let args: Vec<&str> = cmd.iter().map(String::as_str).collect();
        match args.as_slice() {
            ["SPAM", target, n, interval_ms] => {
                let n: u64 = n.parse().expect("count");
                let interval = Duration::from_millis(interval_ms.parse().expect("ms"));
                for i in 0..n {
                    if i > 0 {
                        thread::sleep(interval);
                    }
                    tx.send(Message::new(Selector::unicast(*target), OtherMessage)).expect("controller send");
                }
                say("SPAMMED");
            }
            other => panic!("unknown command {other:?}"),
        }
    }
}
