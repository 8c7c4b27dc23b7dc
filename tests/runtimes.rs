//! The three hubs (tokio, smol, blocking) together: across processes over the real ipmb bus,
//! inside each other's runtimes, and in how they cancel handlers and end their threads.
//!
//! Each multi-process test runs on a bus of its own and starts its peers as child processes
//! (see `common`). Children report with `@@` lines; the parent drives them with commands on
//! their stdin. No test asserts a tight duration: what must happen first is proven by the order
//! of reports (a handler reports `STARTED` before the parent makes its caller go away; it then
//! reports how it ended, and only one of the possible endings is accepted), and the strongest
//! timing claim is "well before the deadline" ([`well_before`]): half of the call timeout,
//! handler wait or peer timeout that would have ended the wait had hsipc not acted sooner.

mod common;

use std::future::Future;
use std::time::{Duration, Instant};

use common::{Peer, command, env, kind, report, unique_bus};
use futures_lite::StreamExt;
use futures_lite::future;
use hsipc::blocking::ProcessHub as BlockingHub;
use hsipc::transport::MemBus;
use hsipc::transport::hub::{AsyncHub, HubBuilder, RuntimeKind};
use hsipc::{CallContext, Error};

/// The bound of waits that end only when something went wrong.
const LONG: Duration = Duration::from_secs(60);

/// The children's call timeout (also the deadline a served call has, unless the test sets a
/// shorter one).
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a blocking handler waits for its call to be cancelled before it gives up and
/// reports `NOT_CANCELLED`.
const HANDLER_WAIT: Duration = Duration::from_secs(30);

/// A heartbeat so slow that its peer timeout (six heartbeats: 30 s) is far beyond any bound a
/// test asserts: a peer that disappears well before it was noticed through its goodbye or its
/// process id, not by its silence.
const SLOW_HEARTBEAT: (&str, &str) = ("HSIPC_HEARTBEAT_MS", "5000");
const SLOW_PEER_TIMEOUT: Duration = Duration::from_secs(30);

/// Items an `endless` stream would send if nobody stopped it (far more than a credit window).
const ENDLESS: u64 = 1 << 40;

/// Items of the `count` streams of the mixed-runtimes test (several credit windows).
const COUNT: u64 = 1000;

/// What every client of the mixed-runtimes test must compute.
const MIXED_RESULT: &str = "add=5 sum=570 items=1000 ordered=true";

/// The bound for something that must not wait out `deadline`: well before it, with room for a
/// loaded machine.
fn well_before(deadline: Duration) -> Duration {
    deadline / 2
}

// ---------------------------------------------------------------------------------------------
// Child roles

/// Runs `$role` (an async fn generic over the hub's kind, taking `&AsyncHub<K>`) with a hub of
/// the runtime named by `$rt`: `tokio_mt` (multi-thread), `tokio_ct` (current-thread) or
/// `smol`. The hub is built inside the runtime.
macro_rules! on_runtime {
    ($rt:expr, $role:ident) => {{
        let rt: &str = $rt;
        match rt {
            "tokio_mt" | "tokio_ct" => tokio_runtime(rt == "tokio_mt").block_on(async {
                let hub = configure(hsipc::tokio::ProcessHub::builder(&env("HSIPC_NAME"))).build().unwrap();
                $role(&hub).await
            }),
            "smol" => smol::block_on(async {
                let hub = configure(hsipc::smol::ProcessHub::builder(&env("HSIPC_NAME"))).build().unwrap();
                $role(&hub).await
            }),
            other => panic!("unknown runtime {other}"),
        }
    }};
}

/// Entry point of child processes; does nothing in the parent.
#[test]
fn child_entry() {
    let Some(role) = common::role() else { return };
    common::watch_parent(Duration::from_secs(120));
    match role.as_str() {
        "bystander" => bystander(),
        "async_server" => on_runtime!(&env("HSIPC_RT"), async_server),
        "blocking_server" => blocking_server(),
        "async_client" => on_runtime!(&env("HSIPC_RT"), async_client),
        "blocking_client" => blocking_client(),
        "blocking_in_tokio" => blocking_in_tokio(),
        "drop_hub" => drop_hub(),
        "watcher" => watcher(),
        "threads" => threads(),
        other => panic!("unknown role {other}"),
    }
}

/// Sets what every child's hub shares: the call timeout, and the heartbeat if the test gives
/// one (`HSIPC_HEARTBEAT_MS`).
fn configure<K: RuntimeKind>(b: HubBuilder<K>) -> HubBuilder<K> {
    let b = b.default_timeout(CALL_TIMEOUT);
    match std::env::var("HSIPC_HEARTBEAT_MS") {
        Ok(ms) => {
            let ms: u64 = ms.parse().unwrap();
            b.heartbeat(Duration::from_millis(ms), Duration::from_millis(ms * 6))
        }
        Err(_) => b,
    }
}

fn blocking_hub() -> BlockingHub {
    configure(BlockingHub::builder(&env("HSIPC_NAME"))).build().unwrap()
}

fn tokio_runtime(multi_thread: bool) -> tokio::runtime::Runtime {
    let mut b = if multi_thread {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(2);
        b
    } else {
        tokio::runtime::Builder::new_current_thread()
    };
    b.enable_all().build().unwrap()
}

/// The parent's commands as a channel, so async code can await them without blocking its
/// executor. Ends at the end of input.
fn commands() -> flume::Receiver<String> {
    let (tx, rx) = flume::unbounded();
    std::thread::spawn(move || {
        while let Some(cmd) = command() {
            if tx.send(cmd).is_err() {
                break;
            }
        }
    });
    rx
}

/// Takes commands until `quit` (or the end of input), then closes the hub.
async fn async_wait_quit<K>(hub: &AsyncHub<K>, cmds: &flume::Receiver<String>) {
    while let Ok(cmd) = cmds.recv_async().await {
        if cmd == "quit" {
            break;
        }
    }
    hub.close().await;
    report("BYE");
}

fn blocking_wait_quit(hub: &BlockingHub) {
    while let Some(cmd) = command() {
        if cmd == "quit" {
            break;
        }
    }
    hub.close();
    report("BYE");
}

/// Reports its line when dropped, unless disarmed first: how a test sees an async handler's
/// future being dropped.
struct OnDrop(Option<String>);

impl OnDrop {
    fn new(line: String) -> Self {
        OnDrop(Some(line))
    }

    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for OnDrop {
    fn drop(&mut self) {
        if let Some(line) = self.0.take() {
            report(line);
        }
    }
}

/// Joins and idles until told to quit (joining first, it is the bus controller, so no other
/// child is).
fn bystander() {
    let hub = blocking_hub();
    report("READY");
    blocking_wait_quit(&hub);
}

/// Serves `$HSIPC_SVC` (`add`, `count`, `forever`, `endless`) on a tokio or smol hub:
///
/// - `forever` reports `STARTED <tag>` and never ends; its future reports `DROPPED <tag>`
///   when dropped.
/// - `endless` streams numbers until a send fails (reports `SEND_FAILED <tag> <error>
///   after=<items sent>`), or reports `DROPPED <tag>` if its future is dropped instead.
async fn async_server<K: hsipc::transport::hub::RuntimeKind>(hub: &AsyncHub<K>) {
    let cmds = commands();
    let svc = env("HSIPC_SVC");
    hub.serve(&format!("{svc}.add"), |(a, b): (i64, i64)| async move { Ok::<_, String>(a + b) }).await.unwrap();
    hub.serve_stream(&format!("{svc}.count"), |n: u64, sink: hsipc::StreamSink<u64>| async move {
        for i in 0..n {
            sink.send(&i).await?;
        }
        Ok::<_, Error>(())
    })
    .await
    .unwrap();
    hub.serve(&format!("{svc}.forever"), |tag: String| async move {
        let _dropped = OnDrop::new(format!("DROPPED {tag}"));
        report(format!("STARTED {tag}"));
        std::future::pending::<()>().await;
        Ok::<(), String>(())
    })
    .await
    .unwrap();
    hub.serve_stream(&format!("{svc}.endless"), |tag: String, sink: hsipc::StreamSink<u64>| async move {
        let dropped = OnDrop::new(format!("DROPPED {tag}"));
        for i in 0..ENDLESS {
            if let Err(e) = sink.send(&i).await {
                dropped.disarm();
                report(format!("SEND_FAILED {tag} {} after={i}", kind(&e)));
                return Err(e);
            }
        }
        dropped.disarm();
        report(format!("STREAM_DONE {tag}"));
        Ok(())
    })
    .await
    .unwrap();
    report("READY");
    async_wait_quit(hub, &cmds).await;
}

/// Serves `$HSIPC_SVC` (`add`, `count`, `wait_cancel`, `endless`) on a blocking hub:
///
/// - `wait_cancel` reports `STARTED <tag>`, then waits (at most [`HANDLER_WAIT`]) for its call
///   to be cancelled and reports `CANCELLED <tag>` or `NOT_CANCELLED <tag>`.
/// - `endless` streams numbers until a send fails (reports `SEND_FAILED <tag> <error>
///   after=<items sent>`).
fn blocking_server() {
    let hub = blocking_hub();
    let svc = env("HSIPC_SVC");
    hub.serve(&format!("{svc}.add"), |(a, b): (i64, i64)| Ok::<_, String>(a + b)).unwrap();
    hub.serve_stream(&format!("{svc}.count"), |n: u64, sink: &hsipc::blocking::StreamSink<u64>| {
        (0..n).try_for_each(|i| sink.send(&i))
    })
    .unwrap();
    hub.serve_with_context(&format!("{svc}.wait_cancel"), |tag: String, ctx: &CallContext| {
        report(format!("STARTED {tag}"));
        let cancelled = ctx.wait_cancelled(HANDLER_WAIT);
        report(format!("{} {tag}", if cancelled { "CANCELLED" } else { "NOT_CANCELLED" }));
        Err::<(), _>(if cancelled { "cancelled" } else { "never cancelled" })
    })
    .unwrap();
    hub.serve_stream(&format!("{svc}.endless"), |tag: String, sink: &hsipc::blocking::StreamSink<u64>| {
        for i in 0..ENDLESS {
            if let Err(e) = sink.send(&i) {
                report(format!("SEND_FAILED {tag} {} after={i}", kind(&e)));
                return Err(e);
            }
        }
        report(format!("STREAM_DONE {tag}"));
        Ok(())
    })
    .unwrap();
    report("READY");
    blocking_wait_quit(&hub);
}

/// A tokio or smol client running `$HSIPC_SCRIPT`; reports `RESULT <...>`.
async fn async_client<K>(hub: &AsyncHub<K>) {
    let cmds = commands();
    report("READY");
    let result = match env("HSIPC_SCRIPT").as_str() {
        "mixed" => async_mixed(hub).await,
        "drop_call" => async_drop_call(hub, &cmds).await,
        "drop_stream" => async_drop_stream(hub).await,
        "deadline" => async_deadline(hub).await,
        other => panic!("unknown script {other}"),
    };
    report(format!("RESULT {result}"));
    async_wait_quit(hub, &cmds).await;
}

/// Unary calls (one, then 20 in flight at once) and a stream of [`COUNT`] items from
/// `$HSIPC_SVC`.
async fn async_mixed<K>(hub: &AsyncHub<K>) -> String {
    let svc = env("HSIPC_SVC");
    hub.wait_for_service(&svc, LONG).await.unwrap();
    let add = format!("{svc}.add");
    let five: i64 = hub.call(&add, (2, 3)).await.unwrap();
    // A call starts when its future is made: all 20 are in flight before the first is awaited.
    let calls: Vec<_> = (0..20i64).map(|i| hub.call::<_, i64>(&add, (i, 2 * i))).collect();
    let mut sum = 0;
    for call in calls {
        sum += call.await.unwrap();
    }
    let mut stream = hub.call_stream::<_, u64>(&format!("{svc}.count"), COUNT).await.unwrap();
    let mut items = Vec::new();
    while let Some(item) = stream.next().await {
        items.push(item.unwrap());
    }
    let ordered = items.iter().copied().eq(0..COUNT);
    format!("add={five} sum={sum} items={} ordered={ordered}", items.len())
}

/// Calls `calc.forever` (tag `a1`, on the tokio server) and then `bcalc.wait_cancel` (tag
/// `a2`, on the blocking server), each until the parent says `drop`; then drops the call's
/// future (reporting `DROPPED_CALL <tag>`).
async fn async_drop_call<K>(hub: &AsyncHub<K>, cmds: &flume::Receiver<String>) -> String {
    let mut out = Vec::new();
    for (svc, method, tag) in [("calc", "calc.forever", "a1"), ("bcalc", "bcalc.wait_cancel", "a2")] {
        hub.wait_for_service(svc, LONG).await.unwrap();
        let call = hub.call::<_, ()>(method, tag);
        let answered = future::or(async { Some(call.await) }, async {
            assert_eq!(cmds.recv_async().await.unwrap(), "drop");
            None
        })
        .await;
        // The call future is gone now (it was owned by the `or` above).
        report(format!("DROPPED_CALL {tag}"));
        out.push(format!("{tag}={}", answered.map_or("dropped".to_string(), |r| format!("{r:?}"))));
    }
    out.join(" ")
}

/// Reads 3 items of `$HSIPC_SVC.endless` (tag `$HSIPC_TAG`) and drops the stream.
async fn async_drop_stream<K>(hub: &AsyncHub<K>) -> String {
    let svc = env("HSIPC_SVC");
    hub.wait_for_service(&svc, LONG).await.unwrap();
    let mut stream = hub.call_stream::<_, u64>(&format!("{svc}.endless"), env("HSIPC_TAG")).await.unwrap();
    let mut read = Vec::new();
    for _ in 0..3 {
        read.push(stream.next().await.unwrap().unwrap());
    }
    drop(stream);
    report("DROPPED_STREAM");
    format!("read={read:?}")
}

/// The time budget of the calls that must time out.
const SHORT_CALL: Duration = Duration::from_millis(200);

/// Calls `calc.forever` (tag `d1`) and `bcalc.wait_cancel` (tag `d2`) with a [`SHORT_CALL`]
/// budget, both at once; their handlers never answer.
async fn async_deadline<K>(hub: &AsyncHub<K>) -> String {
    hub.wait_for_service("calc", LONG).await.unwrap();
    hub.wait_for_service("bcalc", LONG).await.unwrap();
    let d1 = hub.call_timeout::<_, ()>("calc.forever", "d1", SHORT_CALL);
    let d2 = hub.call_timeout::<_, ()>("bcalc.wait_cancel", "d2", SHORT_CALL);
    let (d1, d2) = future::zip(d1, d2).await;
    let name = |r: hsipc::Result<()>| r.map_or_else(|e| kind(&e).to_string(), |()| "answered".to_string());
    format!("d1={} d2={}", name(d1), name(d2))
}

/// A blocking client running `$HSIPC_SCRIPT`; reports `RESULT <...>`.
fn blocking_client() {
    let hub = blocking_hub();
    report("READY");
    let result = match env("HSIPC_SCRIPT").as_str() {
        "mixed" => blocking_mixed(&hub),
        "hang" => blocking_hang(&hub),
        other => panic!("unknown script {other}"),
    };
    report(format!("RESULT {result}"));
    blocking_wait_quit(&hub);
}

/// [`async_mixed`], from blocking code (20 calls from 20 threads at once).
fn blocking_mixed(hub: &BlockingHub) -> String {
    let svc = env("HSIPC_SVC");
    hub.wait_for_service(&svc, LONG).unwrap();
    let add = &format!("{svc}.add");
    let five: i64 = hub.call(add, (2, 3)).unwrap();
    let sum: i64 = std::thread::scope(|s| {
        let calls: Vec<_> = (0..20i64).map(|i| s.spawn(move || hub.call::<_, i64>(add, (i, 2 * i)).unwrap())).collect();
        calls.into_iter().map(|c| c.join().unwrap()).sum()
    });
    let items: Vec<u64> =
        hub.call_stream(&format!("{svc}.count"), COUNT).unwrap().collect::<hsipc::Result<_>>().unwrap();
    let ordered = items.iter().copied().eq(0..COUNT);
    format!("add={five} sum={sum} items={} ordered={ordered}", items.len())
}

/// Calls `calc.forever` (tag `k1`) and `bcalc.wait_cancel` (tag `k2`), neither of which ever
/// answers, and waits to be killed.
fn blocking_hang(hub: &BlockingHub) -> String {
    hub.wait_for_service("calc", LONG).unwrap();
    hub.wait_for_service("bcalc", LONG).unwrap();
    for (method, tag) in [("calc.forever", "k1"), ("bcalc.wait_cancel", "k2")] {
        let hub = hub.clone();
        std::thread::spawn(move || {
            let r = hub.call::<_, ()>(method, tag);
            report(format!("ANSWERED {tag} {r:?}")); // only if the parent did not kill us
        });
    }
    "calling".into()
}

/// A blocking hub's calls made from inside a tokio current-thread runtime: from a task, from
/// `spawn_blocking`, and from the future `block_on` drives, to `calc` in another process.
fn blocking_in_tokio() {
    let rt = tokio_runtime(false);
    let cmds = commands();
    let result = rt.block_on(async {
        // Built inside the runtime too: the blocking hub needs nothing from it.
        let hub = blocking_hub();
        report("READY");
        hub.wait_for_service("calc", LONG).unwrap();
        let h = hub.clone();
        let in_task = tokio::spawn(async move {
            let sum: i64 = h.call("calc.add", (20, 22)).unwrap();
            let items: Vec<u64> = h.call_stream("calc.count", 5u64).unwrap().collect::<hsipc::Result<_>>().unwrap();
            (sum, items)
        })
        .await
        .unwrap();
        let h = hub.clone();
        let in_spawn_blocking =
            tokio::task::spawn_blocking(move || h.call::<_, i64>("calc.add", (1, 2)).unwrap()).await.unwrap();
        let in_block_on: i64 = hub.call("calc.add", (100, 1)).unwrap();
        let result = format!(
            "task={} task_stream={:?} spawn_blocking={in_spawn_blocking} block_on={in_block_on}",
            in_task.0, in_task.1
        );
        (hub, result)
    });
    let (hub, result) = result;
    report(format!("RESULT {result}"));
    while let Ok(cmd) = cmds.recv() {
        if cmd == "quit" {
            break;
        }
    }
    hub.close();
    report("BYE");
}

/// How long the runtime of `drop_hub` is given to answer the ping after the hub is dropped.
const PING_DEADLINE: Duration = Duration::from_secs(10);

/// A tokio hub on a current-thread runtime that serves `dropme` and holds a subscription read
/// by a task; on `drop`, the last handle of the hub is dropped inside the runtime and a ping
/// goes through another task at once. Reports `PING ms=<until the pong>` and `SUB_ENDED`.
fn drop_hub() {
    let cmds = commands();
    tokio_runtime(false).block_on(async {
        let hub = configure(hsipc::tokio::ProcessHub::builder(&env("HSIPC_NAME"))).build().unwrap();
        hub.serve("dropme.x", |()| async { Ok::<_, String>(()) }).await.unwrap();
        let mut sub = hub.subscribe::<String>("dropme/#").await.unwrap();
        let reader = tokio::spawn(async move {
            while let Some(ev) = sub.next().await {
                report(format!("EVENT {:?}", ev.map(|e| e.payload)));
            }
        });
        let (ping_tx, ping_rx) = flume::bounded::<()>(1);
        let (pong_tx, pong_rx) = flume::bounded::<()>(1);
        let ponger = tokio::spawn(async move {
            if ping_rx.recv_async().await.is_ok() {
                let _ = pong_tx.send_async(()).await;
            }
        });
        report("READY");
        assert_eq!(cmds.recv_async().await.unwrap(), "drop");
        let t = Instant::now();
        drop(hub);
        ping_tx.send(()).unwrap();
        let pong = tokio::time::timeout(PING_DEADLINE, pong_rx.recv_async()).await;
        report(format!("PING ok={} ms={}", matches!(pong, Ok(Ok(()))), t.elapsed().as_millis()));
        ponger.await.unwrap();
        if let Ok(joined) = tokio::time::timeout(LONG, reader).await {
            joined.unwrap();
            report("SUB_ENDED");
        }
        while let Ok(cmd) = cmds.recv_async().await {
            if cmd == "quit" {
                break;
            }
        }
        report("BYE");
    });
}

/// Reports `SEEN` once `dropme` is served on the bus, then `GONE ms=<after SEEN>` once it is
/// not.
fn watcher() {
    let hub = blocking_hub();
    report("READY");
    let serves = |hub: &BlockingHub| hub.peers().unwrap().iter().any(|p| p.services.iter().any(|s| s == "dropme"));
    hub.wait_for_service("dropme", LONG).unwrap();
    report("SEEN");
    let t = Instant::now();
    while serves(&hub) {
        assert!(t.elapsed() < LONG, "the dropped hub's service never disappeared");
        std::thread::sleep(Duration::from_millis(5));
    }
    report(format!("GONE ms={}", t.elapsed().as_millis()));
    blocking_wait_quit(&hub);
}

// ---------------------------------------------------------------------------------------------
// The thread census

/// The names of this process's threads.
fn thread_names() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|n| n.trim().to_string())
        .collect();
    names.sort();
    names
}

/// Polls until `done(names)` holds, at most `limit`; the names and the time it took, or the
/// last names seen.
fn poll_threads(limit: Duration, done: impl Fn(&[String]) -> bool) -> Result<(Vec<String>, Duration), Vec<String>> {
    let start = Instant::now();
    loop {
        let names = thread_names();
        if done(&names) {
            return Ok((names, start.elapsed()));
        }
        if start.elapsed() > limit {
            return Err(names);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The names in `names` beyond those in `baseline` (counting repeats).
fn extra(names: &[String], baseline: &[String]) -> Vec<String> {
    let mut left = baseline.to_vec();
    let mut extra = Vec::new();
    for n in names {
        match left.iter().position(|b| b == n) {
            Some(i) => drop(left.swap_remove(i)),
            None => extra.push(n.clone()),
        }
    }
    extra
}

/// Limit of waiting for threads to end (generous: nothing is asserted about how fast).
const THREADS_END: Duration = Duration::from_secs(20);

/// Builds hubs of every kind on an in-memory bus and on `$HSIPC_BUS`, uses them, drops them,
/// and checks that the process's thread count comes back to what it was. A first round warms
/// up what lives as long as the process (smol's executor, async-io's reactor, ipmb's bus
/// controller thread in the first process on a bus); the tokio runtime is kept alive
/// throughout. Reports `BASELINE`, then `BACK` or `LEAKED`.
fn threads() {
    let rt = tokio_runtime(true);
    smol::block_on(smol::spawn(async {})); // smol's global executor
    let bus = env("HSIPC_BUS");
    report("READY");
    hub_round(&rt, &bus, 0);
    let settled = poll_threads(THREADS_END, |names| !names.iter().any(|n| n.starts_with("hsipc")));
    let (baseline, _) = settled.unwrap_or_else(|names| {
        report(format!("LEAKED after the warm-up round: {names:?}"));
        std::process::exit(0);
    });
    report(format!("BASELINE {} {baseline:?}", baseline.len()));
    for round in 1..=2 {
        hub_round(&rt, &bus, round);
    }
    match poll_threads(THREADS_END, |names| extra(names, &baseline).is_empty()) {
        Ok((names, took)) => report(format!("BACK {} after {} ms {names:?}", names.len(), took.as_millis())),
        Err(names) => report(format!("LEAKED {:?} of {names:?}", extra(&names, &baseline))),
    }
    drop(rt);
    report("BYE");
}

/// Limit of each wait inside a round.
const ROUND_WAIT: Duration = Duration::from_secs(20);

/// One round of the thread census: on each bus, a blocking, a tokio and a smol hub each serve
/// a service, call the next one's (and the blocking hub reads a stream from the tokio one),
/// and each subscribes to a topic another publishes to; then everything is dropped.
fn hub_round(rt: &tokio::runtime::Runtime, bus: &str, round: u32) {
    let mem = MemBus::new();
    for on_ipmb in [false, true] {
        let tag = format!("{}{round}", if on_ipmb { "i" } else { "m" });
        let transport = || if on_ipmb { None } else { Some(mem.connector()) };
        let b = {
            let builder = BlockingHub::builder(&format!("b{tag}"));
            match transport() {
                Some(c) => builder.transport(c),
                None => builder.bus(bus),
            }
            .build()
            .unwrap()
        };
        let t = {
            let _in_rt = rt.enter();
            let builder = hsipc::tokio::ProcessHub::builder(&format!("t{tag}"));
            match transport() {
                Some(c) => builder.transport(c),
                None => builder.bus(bus),
            }
            .build()
            .unwrap()
        };
        let s = {
            let builder = hsipc::smol::ProcessHub::builder(&format!("s{tag}"));
            match transport() {
                Some(c) => builder.transport(c),
                None => builder.bus(bus),
            }
            .build()
            .unwrap()
        };
        let (bsvc, tsvc, ssvc) = (format!("tb{tag}"), format!("tt{tag}"), format!("ts{tag}"));
        b.serve(&format!("{bsvc}.add"), |(x, y): (i64, i64)| Ok::<_, String>(x + y)).unwrap();
        rt.block_on(async {
            t.serve(&format!("{tsvc}.add"), |(x, y): (i64, i64)| async move { Ok::<_, String>(x + y) }).await.unwrap();
            t.serve_stream(&format!("{tsvc}.count"), |n: u64, sink: hsipc::StreamSink<u64>| async move {
                for i in 0..n {
                    sink.send(&i).await?;
                }
                Ok::<_, Error>(())
            })
            .await
            .unwrap();
        });
        smol::block_on(s.serve(&format!("{ssvc}.add"), |(x, y): (i64, i64)| async move { Ok::<_, String>(x + y) }))
            .unwrap();
        let topic = |k: &str| format!("census/{tag}/{k}");
        let b_sub = b.subscribe::<String>(&topic("b")).unwrap();
        let mut t_sub = rt.block_on(t.subscribe::<String>(&topic("t"))).unwrap();
        let mut s_sub = smol::block_on(s.subscribe::<String>(&topic("s"))).unwrap();

        // Calls around the ring: blocking → tokio → smol → blocking.
        b.wait_for_service(&tsvc, ROUND_WAIT).unwrap();
        assert_eq!(b.call::<_, i64>(&format!("{tsvc}.add"), (1, 2)).unwrap(), 3);
        let items: Vec<u64> =
            b.call_stream(&format!("{tsvc}.count"), 100u64).unwrap().collect::<hsipc::Result<_>>().unwrap();
        assert!(items.iter().copied().eq(0..100));
        rt.block_on(async {
            t.wait_for_service(&ssvc, ROUND_WAIT).await.unwrap();
            assert_eq!(t.call::<_, i64>(&format!("{ssvc}.add"), (3, 4)).await.unwrap(), 7);
        });
        smol::block_on(async {
            s.wait_for_service(&bsvc, ROUND_WAIT).await.unwrap();
            assert_eq!(s.call::<_, i64>(&format!("{bsvc}.add"), (5, 6)).await.unwrap(), 11);
        });

        // Events: the smol hub publishes to all three once it knows all three patterns.
        let start = Instant::now();
        while s.peers().unwrap().iter().filter(|p| !p.patterns.is_empty()).count() < 3 {
            assert!(start.elapsed() < ROUND_WAIT, "the subscriptions never reached the publisher");
            std::thread::sleep(Duration::from_millis(2));
        }
        smol::block_on(async {
            for k in ["b", "t", "s"] {
                s.publish(&topic(k), k).await.unwrap();
            }
        });
        assert_eq!(b_sub.recv_timeout(ROUND_WAIT).unwrap().payload, "b");
        let ev = rt.block_on(async { tokio::time::timeout(ROUND_WAIT, t_sub.next()).await }).unwrap().unwrap().unwrap();
        assert_eq!(ev.payload, "t");
        let ev = smol::block_on(within(ROUND_WAIT, s_sub.next())).unwrap().unwrap();
        assert_eq!(ev.payload, "s");
        drop((b_sub, t_sub, s_sub));
        drop((b, t, s));
    }
}

/// `fut`'s output, or `None` after `limit` (any executor).
async fn within<T>(limit: Duration, fut: impl Future<Output = Option<T>>) -> Option<T> {
    future::or(fut, async {
        smol::Timer::after(limit).await;
        None
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// Tests

fn field<'a>(result: &'a str, key: &str) -> &'a str {
    result
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
        .unwrap_or_else(|| panic!("no `{key}` in `{result}`"))
}

/// Tells every peer to quit and requires each to exit cleanly.
fn quit_all(peers: &mut [&mut Peer]) {
    for p in peers.iter_mut() {
        p.send("quit");
    }
    for p in peers.iter_mut() {
        assert!(p.wait_exit(Duration::from_secs(20)).is_some(), "{} did not exit", p.name);
    }
}

/// The next report of `peer` must be `want` (no other report before it), within `limit`.
fn next_is(peer: &mut Peer, want: &str, limit: Duration) {
    let t = Instant::now();
    let line = peer.line(limit);
    eprintln!("{}: `{line}` after {} ms", peer.name, t.elapsed().as_millis());
    assert_eq!(line, want, "{}: unexpected report", peer.name);
}

fn start_async_server(bus: &str, name: &str, rt: &str, svc: &str, extra: &[(&str, &str)]) -> Peer {
    let mut env = vec![("HSIPC_RT", rt), ("HSIPC_SVC", svc)];
    env.extend_from_slice(extra);
    Peer::ready("async_server", bus, name, &env)
}

fn start_blocking_server(bus: &str, svc: &str, extra: &[(&str, &str)]) -> Peer {
    let mut env = vec![("HSIPC_SVC", svc)];
    env.extend_from_slice(extra);
    Peer::ready("blocking_server", bus, "blocking-server", &env)
}

#[test]
fn tokio_smol_and_blocking_hubs_call_each_other_across_processes() {
    let bus = unique_bus("mixed");
    let mut tokio_server = start_async_server(&bus, "tokio-server", "tokio_mt", "calc", &[]);
    let mut smol_server = start_async_server(&bus, "smol-server", "smol", "scalc", &[]);
    let client = |rt: &str, name: &str, svc: &str| {
        let env = [("HSIPC_RT", rt), ("HSIPC_SCRIPT", "mixed"), ("HSIPC_SVC", svc)];
        Peer::spawn("async_client", &bus, name, &env)
    };
    let mut smol_client = client("smol", "smol-client", "calc");
    let mut tokio_client = client("tokio_ct", "tokio-client", "scalc");
    let mut blocking_client =
        Peer::spawn("blocking_client", &bus, "blocking-client", &[("HSIPC_SCRIPT", "mixed"), ("HSIPC_SVC", "calc")]);
    // smol → tokio (multi-thread), blocking → tokio, tokio (current-thread) → smol.
    assert_eq!(smol_client.expect("RESULT", LONG), MIXED_RESULT);
    assert_eq!(blocking_client.expect("RESULT", LONG), MIXED_RESULT);
    assert_eq!(tokio_client.expect("RESULT", LONG), MIXED_RESULT);
    quit_all(&mut [&mut smol_client, &mut blocking_client, &mut tokio_client, &mut tokio_server, &mut smol_server]);
}

#[test]
fn dropping_a_call_future_cancels_the_handler_in_the_server_process() {
    let bus = unique_bus("dropcall");
    let mut tokio_server = start_async_server(&bus, "tokio-server", "tokio_mt", "calc", &[]);
    let mut blocking_server = start_blocking_server(&bus, "bcalc", &[]);
    let mut client =
        Peer::ready("async_client", &bus, "tokio-client", &[("HSIPC_RT", "tokio_mt"), ("HSIPC_SCRIPT", "drop_call")]);
    // The handler is running (it said so) when the parent makes the client drop its call; the
    // call's own deadline (CALL_TIMEOUT) is far away, and the handlers never end by themselves.
    tokio_server.expect("STARTED a1", LONG);
    client.send("drop");
    client.expect("DROPPED_CALL a1", LONG);
    next_is(&mut tokio_server, "DROPPED a1", well_before(CALL_TIMEOUT));
    blocking_server.expect("STARTED a2", LONG);
    client.send("drop");
    client.expect("DROPPED_CALL a2", LONG);
    next_is(&mut blocking_server, "CANCELLED a2", well_before(CALL_TIMEOUT.min(HANDLER_WAIT)));
    assert_eq!(client.expect("RESULT", LONG), "a1=dropped a2=dropped");
    quit_all(&mut [&mut client, &mut tokio_server, &mut blocking_server]);
}

#[test]
fn dropping_a_response_stream_fails_the_servers_next_send() {
    let bus = unique_bus("dropstream");
    let mut tokio_server = start_async_server(&bus, "tokio-server", "tokio_mt", "calc", &[]);
    let mut blocking_server = start_blocking_server(&bus, "bcalc", &[]);
    let client = |name: &str, rt: &str, svc: &str, tag: &str| {
        let env = [("HSIPC_RT", rt), ("HSIPC_SCRIPT", "drop_stream"), ("HSIPC_SVC", svc), ("HSIPC_TAG", tag)];
        Peer::spawn("async_client", &bus, name, &env)
    };
    // smol reader of the tokio server's stream, tokio (current-thread) reader of the blocking
    // server's. Each server is held back by the reader's credit (the stream never ends by
    // itself) until the reader drops it; the stall timeout (60 s) would fail the send with
    // `timeout`, not `cancelled`.
    let mut smol_client = client("smol-client", "smol", "calc", "s1");
    let mut tokio_client = client("tokio-client", "tokio_ct", "bcalc", "s2");
    for c in [&mut smol_client, &mut tokio_client] {
        c.expect("DROPPED_STREAM", LONG);
        assert_eq!(c.expect("RESULT", LONG), "read=[0, 1, 2]");
    }
    for (server, tag) in [(&mut tokio_server, "s1"), (&mut blocking_server, "s2")] {
        let line = server.line(LONG);
        let rest = line.strip_prefix(&format!("SEND_FAILED {tag} ")).unwrap_or_else(|| panic!("{tag}: `{line}`"));
        assert_eq!(rest.split_whitespace().next(), Some("cancelled"), "{tag}: `{line}`");
    }
    quit_all(&mut [&mut smol_client, &mut tokio_client, &mut tokio_server, &mut blocking_server]);
}

#[test]
fn a_killed_caller_cancels_its_calls_in_async_and_blocking_handlers() {
    let bus = unique_bus("killcaller");
    // The bystander is the bus controller, so killing the client does not move it.
    let mut bystander = Peer::ready("bystander", &bus, "bystander", &[]);
    let mut tokio_server = start_async_server(&bus, "tokio-server", "tokio_mt", "calc", &[SLOW_HEARTBEAT]);
    let mut blocking_server = start_blocking_server(&bus, "bcalc", &[SLOW_HEARTBEAT]);
    let mut client = Peer::ready("blocking_client", &bus, "client", &[("HSIPC_SCRIPT", "hang")]);
    tokio_server.expect("STARTED k1", LONG);
    blocking_server.expect("STARTED k2", LONG);
    client.kill();
    // Neither the calls' deadline (CALL_TIMEOUT) nor the servers' peer timeout ended them.
    let bound = well_before(CALL_TIMEOUT.min(SLOW_PEER_TIMEOUT).min(HANDLER_WAIT));
    next_is(&mut tokio_server, "DROPPED k1", bound);
    next_is(&mut blocking_server, "CANCELLED k2", bound);
    quit_all(&mut [&mut tokio_server, &mut blocking_server, &mut bystander]);
}

#[test]
fn a_passed_deadline_cancels_the_handler_and_times_out_the_caller() {
    let bus = unique_bus("deadline");
    let mut tokio_server = start_async_server(&bus, "tokio-server", "tokio_mt", "calc", &[]);
    let mut blocking_server = start_blocking_server(&bus, "bcalc", &[]);
    let mut client =
        Peer::ready("async_client", &bus, "client", &[("HSIPC_RT", "tokio_ct"), ("HSIPC_SCRIPT", "deadline")]);
    assert_eq!(client.expect("RESULT", LONG), "d1=timeout d2=timeout");
    // The client stays connected: only the deadline can have ended the handlers, and well
    // before the blocking handler's own wait (HANDLER_WAIT) ran out.
    next_is(&mut tokio_server, "STARTED d1", LONG);
    next_is(&mut tokio_server, "DROPPED d1", well_before(HANDLER_WAIT));
    next_is(&mut blocking_server, "STARTED d2", LONG);
    next_is(&mut blocking_server, "CANCELLED d2", well_before(HANDLER_WAIT));
    quit_all(&mut [&mut client, &mut tokio_server, &mut blocking_server]);
}

#[test]
fn no_thread_outlives_the_hubs_of_any_kind() {
    let bus = unique_bus("threads");
    let mut census = Peer::ready("threads", &bus, "census", &[]);
    let baseline = census.expect("BASELINE", LONG);
    eprintln!("baseline: {baseline}");
    let r = census.line(THREADS_END + LONG);
    assert!(r.starts_with("BACK"), "{r}");
    eprintln!("{r}");
    census.expect("BYE", LONG);
    assert!(census.wait_exit(Duration::from_secs(20)).is_some(), "the census process did not exit");
}

#[test]
fn a_blocking_hub_works_inside_a_tokio_current_thread_runtime() {
    let bus = unique_bus("blockintokio");
    let mut server = start_async_server(&bus, "tokio-server", "tokio_mt", "calc", &[]);
    let mut client = Peer::ready("blocking_in_tokio", &bus, "client", &[]);
    assert_eq!(client.expect("RESULT", LONG), "task=42 task_stream=[0, 1, 2, 3, 4] spawn_blocking=3 block_on=101");
    quit_all(&mut [&mut client, &mut server]);
}

/// The timeout of the calls in the nested-calls test: a deadlocked handler would fail its
/// caller at this point.
const NESTED_TIMEOUT: Duration = Duration::from_secs(10);

#[test]
fn a_tokio_handler_calling_its_own_hub_on_a_current_thread_runtime_does_not_deadlock() {
    let (tx, rx) = flume::bounded(1);
    // The runtime runs on a thread of its own, so even a wedged executor cannot hang the test.
    std::thread::spawn(move || {
        let outcome = tokio_runtime(false).block_on(async {
            let mem = MemBus::new();
            let build = |name: &str| {
                hsipc::tokio::ProcessHub::builder(name)
                    .transport(mem.connector())
                    .default_timeout(NESTED_TIMEOUT)
                    .build()
                    .unwrap()
            };
            let (a, b) = (build("a"), build("b"));
            a.serve("inner.double", |x: i64| async move { Ok::<_, String>(2 * x) }).await.unwrap();
            b.serve("other.triple", |x: i64| async move { Ok::<_, String>(3 * x) }).await.unwrap();
            let me = a.clone();
            a.serve("outer.combine", move |x: i64| {
                let me = me.clone();
                async move {
                    // One call to this very hub, one to another hub on the same runtime, both
                    // awaited by this handler's task.
                    let own = me.call::<_, i64>("inner.double", x);
                    let other = me.call::<_, i64>("other.triple", x);
                    match future::zip(own, other).await {
                        (Ok(d), Ok(t)) => Ok(d + t),
                        (d, t) => Err(format!("inner calls failed: {d:?} {t:?}")),
                    }
                }
            })
            .await
            .unwrap();
            a.wait_for_service("other", NESTED_TIMEOUT).await.unwrap();
            b.wait_for_service("outer", NESTED_TIMEOUT).await.unwrap();
            let t = Instant::now();
            let from_self = a.call::<_, i64>("outer.combine", 7).await.map_err(|e| e.to_string());
            let from_other = b.call::<_, i64>("outer.combine", 5).await.map_err(|e| e.to_string());
            let took = t.elapsed();
            a.close().await;
            b.close().await;
            (from_self, from_other, took)
        });
        let _ = tx.send(outcome);
    });
    let (from_self, from_other, took) = rx.recv_timeout(LONG).expect("the runtime thread died or is wedged");
    assert_eq!(from_self, Ok(7 * 2 + 7 * 3));
    assert_eq!(from_other, Ok(5 * 2 + 5 * 3));
    eprintln!("nested calls took {took:?}");
    assert!(took < well_before(NESTED_TIMEOUT), "nested calls took {took:?}");
}

#[test]
fn dropping_the_last_tokio_hub_inside_a_runtime_does_not_block_it() {
    let bus = unique_bus("drophub");
    let mut watcher = Peer::ready("watcher", &bus, "watcher", &[SLOW_HEARTBEAT]);
    let mut dropper = Peer::ready("drop_hub", &bus, "dropper", &[]);
    watcher.expect("SEEN", LONG);
    dropper.send("drop");
    let ping = dropper.expect("PING", LONG);
    eprintln!("ping after the drop: {ping}");
    assert_eq!(field(&ping, "ok"), "true");
    let ms: u128 = field(&ping, "ms").parse().unwrap();
    assert!(ms < well_before(PING_DEADLINE).as_millis(), "the runtime was blocked for {ms} ms");
    next_is(&mut dropper, "SUB_ENDED", LONG);
    // The goodbye, not the silence (peer timeout 30 s), took the service off the bus; the
    // dropper process is still alive, so its process id did not tell either.
    let gone = watcher.expect("GONE", well_before(SLOW_PEER_TIMEOUT));
    eprintln!("service gone after SEEN: {gone}");
    quit_all(&mut [&mut dropper, &mut watcher]);
}
