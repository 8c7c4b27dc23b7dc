//! Edge cases found in review: limits of timeouts, user code that panics where hsipc runs it,
//! misuse of a stream sink, and generated code that must not clash with user names.

use std::time::Duration;

use hsipc::transport::MemBus;
use hsipc::{Error, StreamSink};
use serde::{Deserialize, Deserializer, Serialize};

const WAIT: Duration = Duration::from_secs(10);

fn pair(bus: &MemBus) -> (hsipc::SyncProcessHub, hsipc::SyncProcessHub) {
    let server = hsipc::SyncProcessHub::builder("server").workers(1).transport(bus.connector()).build().unwrap();
    let client = hsipc::SyncProcessHub::builder("client").transport(bus.connector()).build().unwrap();
    (server, client)
}

#[test]
fn the_longest_timeouts_are_taken_as_very_long_not_as_a_crash() {
    let bus = MemBus::new();
    let (server, client) = pair(&bus);
    server.serve("calc.add", |(a, b): (i64, i64)| Ok::<_, String>(a + b)).unwrap();
    client.wait_for_service("calc", Duration::MAX).unwrap();
    let sum: i64 = client.call_timeout("calc.add", (1, 2), Duration::MAX).unwrap();
    assert_eq!(sum, 3);
    let items: Vec<u8> = client
        .call_stream_timeout::<_, u8>("calc.none", (), Duration::MAX)
        .map_or_else(|e| panic!("{e}"), |s| s.filter_map(|r| r.ok()).collect());
    assert!(items.is_empty());
    let sub = client.subscribe::<u8>("t/#").unwrap();
    client.publish("t/x", 7u8).unwrap();
    assert_eq!(sub.recv_timeout(Duration::MAX).unwrap().payload, 7);
}

/// A request type whose `Deserialize` panics on one value: user code that hsipc runs while
/// decoding a peer's bytes.
#[derive(Serialize)]
struct Touchy(u8);

impl<'de> Deserialize<'de> for Touchy {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = u8::deserialize(d)?;
        assert!(v != 13, "unlucky");
        Ok(Touchy(v))
    }
}

#[test]
fn a_panic_while_decoding_a_request_answers_the_caller_and_keeps_the_worker() {
    let bus = MemBus::new();
    let (server, client) = pair(&bus); // one worker: if it died, the next call would hang
    server.serve("t.touchy", |t: Touchy| Ok::<_, String>(t.0)).unwrap();
    client.wait_for_service("t", WAIT).unwrap();
    match client.call::<_, u8>("t.touchy", 13u8) {
        Err(Error::Remote(r)) => assert!(r.message.contains("panicked"), "{r:?}"),
        other => panic!("expected a remote error, got {other:?}"),
    }
    assert_eq!(client.call::<_, u8>("t.touchy", 12u8).unwrap(), 12);
}

#[test]
fn a_second_send_while_one_waits_for_credit_is_refused_not_lost() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let bus = MemBus::new();
        let server = hsipc::ProcessHub::builder("server").transport(bus.connector()).build().unwrap();
        let client = hsipc::ProcessHub::builder("client").stream_window(1).transport(bus.connector()).build().unwrap();
        let (tx, rx) = flume::bounded(1);
        server
            .serve_stream("t.two", move |(): (), sink: StreamSink<u32>| {
                let tx = tx.clone();
                async move {
                    sink.send(&0).await?; // the window of one is now used (the client reads nothing yet)
                    let mut first = Box::pin(sink.send(&1));
                    // Polled once: it finds no credit and waits for it.
                    assert!(futures_lite::future::poll_once(&mut first).await.is_none());
                    let second = sink.send(&2).await;
                    let _ = tx.send_async(second.map_err(|e| e.to_string())).await;
                    first.await?; // goes once the client reads
                    Ok::<_, Error>(())
                }
            })
            .await
            .unwrap();
        client.wait_for_service("t", WAIT).await.unwrap();
        let stream = client.call_stream::<_, u32>("t.two", ()).await.unwrap();
        // Nothing is read (so no credit is granted) until the second send has been answered.
        let refusal = rx.recv_async().await.unwrap().unwrap_err();
        assert!(refusal.contains("still waiting for credit"), "{refusal}");
        let items: Vec<u32> =
            futures_lite::StreamExt::collect::<Vec<_>>(futures_lite::StreamExt::map(stream, |r| r.unwrap())).await;
        assert_eq!(items, [0, 1], "the waiting item was not lost");
    });
}

/// Arguments named like the generated code's own variables.
#[hsipc::service]
pub trait Clashing {
    /// Adds four numbers.
    async fn add(&self, imp: i64, items: i64, hub: i64, name: i64) -> hsipc::Result<i64>;
    /// Streams its argument back.
    #[hsipc(stream)]
    fn echo(&self, result: u32, sink: StreamSink<u32>) -> hsipc::Result<()>;
}

struct Impl;

impl Clashing for Impl {
    async fn add(&self, imp: i64, items: i64, hub: i64, name: i64) -> hsipc::Result<i64> {
        Ok(imp + items + hub + name)
    }

    fn echo(&self, result: u32, sink: StreamSink<u32>) -> hsipc::Result<()> {
        sink.send_blocking(&result)
    }
}

#[test]
fn argument_names_do_not_clash_with_generated_code() {
    let bus = MemBus::new();
    let (server, client) = pair(&bus);
    server.register_service(ClashingService::new(Impl)).unwrap();
    client.wait_for_service("Clashing", WAIT).unwrap();
    let c = ClashingBlockingClient::new(client);
    assert_eq!(c.add(1, 2, 3, 4).unwrap(), 10);
    let echoed: Vec<u32> = c.echo(9).unwrap().map(|r| r.unwrap()).collect();
    assert_eq!(echoed, [9]);
}

/// Methods that take the call's context: who called, and whether the call is still wanted.
#[hsipc::service]
pub trait Aware {
    /// The caller's hub name and whether its process is this one.
    fn who(&self, ctx: &hsipc::CallContext) -> hsipc::Result<(String, bool)>;
    /// Waits until the call is given up (by the caller's deadline); counts how it ended.
    async fn wait_out(&self, label: String, ctx: &hsipc::CallContext) -> hsipc::Result<String>;
}

struct AwareImpl(std::sync::Arc<std::sync::atomic::AtomicU32>);

impl Aware for AwareImpl {
    fn who(&self, ctx: &hsipc::CallContext) -> hsipc::Result<(String, bool)> {
        Ok((ctx.caller_name().to_string(), ctx.caller_pid() == std::process::id()))
    }

    async fn wait_out(&self, label: String, ctx: &hsipc::CallContext) -> hsipc::Result<String> {
        // The hub drops an async handler whose call is given up; it can also watch for that
        // itself. Either way it ends: the guard counts it.
        struct Ended(std::sync::Arc<std::sync::atomic::AtomicU32>);
        impl Drop for Ended {
            fn drop(&mut self) {
                self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        }
        let _ended = Ended(self.0.clone());
        ctx.cancelled().await;
        Ok(label)
    }
}

#[test]
fn service_methods_can_take_their_calls_context() {
    let bus = MemBus::new();
    let (server, client) = pair(&bus);
    let ended = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    server.register_service(AwareService::new(AwareImpl(ended.clone()))).unwrap();
    client.wait_for_service("Aware", WAIT).unwrap();
    let aware = AwareBlockingClient::new(client);
    assert_eq!(aware.who().unwrap(), ("client".to_string(), true));
    assert!(matches!(aware.timeout(Duration::from_millis(50)).wait_out("x".into()), Err(Error::Timeout)));
    // The handler ended with its call, well before its own (30 s) timeout would have.
    let deadline = std::time::Instant::now() + WAIT;
    while ended.load(std::sync::atomic::Ordering::SeqCst) == 0 {
        assert!(std::time::Instant::now() < deadline, "the handler outlived its call");
        std::thread::yield_now();
    }
}

#[test]
fn a_publisher_can_wait_for_its_first_subscriber() {
    let bus = MemBus::new();
    let (publisher, subscriber) = pair(&bus);
    assert!(matches!(publisher.wait_for_subscriber("news/today", Duration::from_millis(50)), Err(Error::Timeout)));
    let waiting = std::thread::spawn(move || {
        publisher.wait_for_subscriber("news/today", WAIT).unwrap();
        publisher.publish("news/today", "extra!".to_string()).unwrap();
        publisher
    });
    let news = subscriber.subscribe::<String>("news/#").unwrap();
    // Published only once the subscription was known: nothing is lost to its journey.
    assert_eq!(news.recv_timeout(WAIT).unwrap().payload, "extra!");
    let publisher = waiting.join().unwrap();
    // A local subscription counts too.
    let _mine = publisher.subscribe::<u8>("local/+").unwrap();
    publisher.wait_for_subscriber("local/x", Duration::from_millis(50)).unwrap();
}

#[test]
fn every_event_a_queue_drops_is_counted_in_stats() {
    let bus = MemBus::new();
    let publisher = hsipc::SyncProcessHub::builder("pub").transport(bus.connector()).build().unwrap();
    let subscriber = hsipc::SyncProcessHub::builder("sub")
        .subscription_qos(hsipc::Qos::DropNewest(4))
        .transport(bus.connector())
        .build()
        .unwrap();
    let events = subscriber.subscribe::<u32>("n/#").unwrap();
    publisher.wait_for_subscriber("n/x", WAIT).unwrap();
    for i in 0..10u32 {
        publisher.publish("n/x", i).unwrap();
    }
    // The queue holds the first four and drops six, counted as they happen: wait for that
    // count before reading (reading earlier would make room).
    let deadline = std::time::Instant::now() + WAIT;
    while subscriber.stats().dropped_events < 6 {
        assert!(std::time::Instant::now() < deadline, "drops not counted: {:?}", subscriber.stats());
        std::thread::yield_now();
    }
    // A marker published once there is room arrives with the count of what was lost before it.
    let first: Vec<u32> = (0..4).map(|_| events.recv_timeout(WAIT).unwrap().payload).collect();
    assert_eq!(first, [0, 1, 2, 3]);
    publisher.publish("n/x", 99u32).unwrap();
    let marker = events.recv_timeout(WAIT).unwrap();
    assert_eq!((marker.payload, marker.missed), (99, 6));
    assert_eq!(subscriber.stats().dropped_events, 6);
}

#[test]
fn each_subscription_chooses_what_a_full_queue_drops() {
    let bus = MemBus::new();
    let publisher = hsipc::SyncProcessHub::builder("pub").transport(bus.connector()).build().unwrap();
    let subscriber = hsipc::SyncProcessHub::builder("sub").transport(bus.connector()).build().unwrap();
    let latest = subscriber.subscribe_with::<u32>("s/#", hsipc::Qos::KeepLast(3)).unwrap();
    let earliest = subscriber.subscribe_with::<u32>("s/#", hsipc::Qos::DropNewest(3)).unwrap();
    publisher.wait_for_subscriber("s/x", WAIT).unwrap();
    for i in 0..10u32 {
        publisher.publish("s/x", i).unwrap();
    }
    // Both queues are full and have dropped seven each once the counter says fourteen.
    let deadline = std::time::Instant::now() + WAIT;
    while subscriber.stats().dropped_events < 14 {
        assert!(std::time::Instant::now() < deadline, "{:?}", subscriber.stats());
        std::thread::yield_now();
    }
    let take = |s: &hsipc::blocking::Subscription<u32>| -> Vec<(u32, u64)> {
        (0..3).map(|_| s.recv_timeout(WAIT).unwrap()).map(|e| (e.payload, e.missed)).collect()
    };
    assert_eq!(take(&latest), [(7, 7), (8, 0), (9, 0)], "keep last 3: the loss is reported on the new head");
    assert_eq!(take(&earliest), [(0, 0), (1, 0), (2, 0)], "keep first 3");
}

/// The tokio hub reads its direct lanes on the runtime's reactor; a runtime built without an
/// I/O driver has none, and the hub reads them on threads instead (calls work all the same).
#[test]
fn a_tokio_runtime_without_io_still_reads_lanes() {
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    rt.block_on(async {
        let bus = format!("t-no-io-{}", std::process::id());
        let server = hsipc::ProcessHub::builder("server").bus(&bus).build().unwrap();
        let client = hsipc::ProcessHub::builder("client").bus(&bus).build().unwrap();
        server.serve("calc.add", |(a, b): (i64, i64)| async move { Ok::<_, String>(a + b) }).await.unwrap();
        client.wait_for_service("calc", WAIT).await.unwrap();
        for i in 0..50i64 {
            assert_eq!(client.call::<_, i64>("calc.add", (i, 1)).await.unwrap(), i + 1);
        }
        client.close().await;
        server.close().await;
    });
}

/// A transport over a [`MemBus`] that keeps every frame it is handed while `hold` is set (as
/// a lane that is full keeps them), and writes them once it is cleared; `kept` counts the
/// large ones.
#[derive(Debug)]
struct Holding {
    bus: MemBus,
    hold: std::sync::Arc<std::sync::atomic::AtomicBool>,
    kept: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    tap: Option<Tap>,
}

/// Hands a clone of each large frame to a reader on another thread, and waits until that
/// reader holds its pieces (as a transport's own thread would); the frame is then written later,
/// by the engine's writer (writing it at once would wait for the reader to let go here).
#[derive(Debug)]
struct Tap {
    to_reader: std::sync::mpsc::Sender<hsipc::proto::frame::WireFrame>,
    held: std::sync::mpsc::Receiver<()>,
}

impl HoldingTransport {
    /// Whether `frame` went to the tap's reader (and is kept to be written later).
    fn tapped(&mut self, to: hsipc::PeerId, frame: &hsipc::proto::frame::WireFrame) -> bool {
        let Some(tap) = self.tap.as_ref().filter(|_| frame.len() >= 16 * 1024) else { return false };
        tap.to_reader.send(frame.clone()).unwrap();
        tap.held.recv().unwrap();
        self.queue.push((to, frame.clone()));
        true
    }
}

#[derive(Debug)]
struct HoldingTransport {
    inner: Box<dyn hsipc::transport::Transport>,
    hold: std::sync::Arc<std::sync::atomic::AtomicBool>,
    kept: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    queue: Vec<(hsipc::PeerId, hsipc::proto::frame::WireFrame)>,
    tap: Option<Tap>,
}

impl hsipc::transport::Connect for Holding {
    fn connect(
        self: Box<Self>,
        local: hsipc::PeerId,
        name: &str,
        ingress: hsipc::transport::Ingress,
    ) -> Result<Box<dyn hsipc::transport::Transport>, hsipc::transport::TransportError> {
        let inner = self.bus.connector().connect(local, name, ingress)?;
        Ok(Box::new(HoldingTransport { inner, hold: self.hold, kept: self.kept, queue: Vec::new(), tap: self.tap }))
    }
}

impl hsipc::transport::Transport for HoldingTransport {
    fn send(
        &mut self,
        to: hsipc::PeerId,
        frame: &hsipc::proto::frame::WireFrame,
    ) -> Result<(), hsipc::transport::TransportError> {
        use std::sync::atomic::Ordering;
        if self.tapped(to, frame) {
            return Ok(());
        }
        if self.hold.load(Ordering::SeqCst) || !self.queue.is_empty() {
            if frame.len() >= 16 * 1024 {
                self.kept.fetch_add(1, Ordering::SeqCst);
            }
            self.queue.push((to, frame.clone()));
            return Ok(());
        }
        self.inner.send(to, frame)
    }

    fn try_send(
        &mut self,
        to: hsipc::PeerId,
        frame: &hsipc::proto::frame::WireFrame,
    ) -> Result<hsipc::transport::Sent, hsipc::transport::TransportError> {
        self.send(to, frame).map(|()| hsipc::transport::Sent::Now)
    }

    fn flush(&mut self) {
        if self.hold.load(std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        for (to, frame) in std::mem::take(&mut self.queue) {
            let _ = self.inner.send(to, &frame);
        }
    }

    fn waiting(&self) -> Option<hsipc::transport::Waiting> {
        let until = std::time::Instant::now() + Duration::from_millis(1);
        (!self.queue.is_empty()).then(|| hsipc::transport::Waiting::new(Vec::new(), Vec::new(), until))
    }

    fn broadcast(&mut self, frame: &hsipc::proto::frame::WireFrame) -> Result<(), hsipc::transport::TransportError> {
        self.inner.broadcast(frame)
    }

    fn max_frame_len(&self) -> usize {
        self.inner.max_frame_len()
    }

    fn close(&mut self) {
        self.inner.close()
    }
}

/// A borrowed byte slice is lent to its frame, not copied (see `codec::with_body`); a frame
/// still kept by the transport when the publish or call returns takes a copy then, so what
/// arrives is what was sent, though the sender overwrote its buffer at once.
#[test]
fn a_lent_payload_kept_past_its_call_arrives_as_it_was_sent() {
    use std::sync::atomic::Ordering;
    let bus = MemBus::new();
    let (hold, kept) = (std::sync::Arc::default(), std::sync::Arc::default());
    let holding =
        Holding { bus: bus.clone(), hold: std::sync::Arc::clone(&hold), kept: std::sync::Arc::clone(&kept), tap: None };
    let server = hsipc::SyncProcessHub::builder("server").transport(bus.connector()).build().unwrap();
    let client = hsipc::SyncProcessHub::builder("client").transport(Box::new(holding)).build().unwrap();
    server.serve("bytes.echo", |v: Vec<u8>| Ok::<_, String>(v)).unwrap();
    let events = server.subscribe::<Vec<u8>>("bytes/#").unwrap();
    client.wait_for_service("bytes", WAIT).unwrap();
    client.wait_for_subscriber("bytes/x", WAIT).unwrap();

    let mut data = vec![1u8; 1 << 20];
    hold.store(true, Ordering::SeqCst);
    client.publish("bytes/x", &data[..]).unwrap();
    data.fill(0xff);
    // Kept by the transport (or, had another thread been sending, queued for it meanwhile).
    until(|| kept.load(Ordering::SeqCst) == 1);
    hold.store(false, Ordering::SeqCst);
    let ev = events.recv_timeout(WAIT).unwrap();
    assert!(ev.payload.len() == 1 << 20 && ev.payload.iter().all(|b| *b == 1), "the event as it was published");

    // A call started and left to run (a tokio hub's call is on its way once `call` returns):
    // its request is kept, and the buffer overwritten.
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let holding =
        Holding { bus: bus.clone(), hold: std::sync::Arc::clone(&hold), kept: std::sync::Arc::clone(&kept), tap: None };
    let caller =
        rt.block_on(async { hsipc::tokio::ProcessHub::builder("caller").transport(Box::new(holding)).build() });
    let caller = caller.unwrap();
    rt.block_on(caller.wait_for_service("bytes", WAIT)).unwrap();
    let mut data = vec![2u8; 100_000];
    hold.store(true, Ordering::SeqCst);
    let call = caller.call::<_, Vec<u8>>("bytes.echo", &data[..]);
    data.fill(0xff);
    until(|| kept.load(Ordering::SeqCst) == 2);
    hold.store(false, Ordering::SeqCst);
    assert_eq!(rt.block_on(call).unwrap(), vec![2u8; 100_000], "the request as it was sent");
}

/// A lent payload read by another thread (a transport's own, say): the publish does not
/// return while that thread holds the bytes still lent, and once it has returned (and the
/// buffer is overwritten and freed) the frame reads a copy of what was sent, never freed memory.
#[test]
fn a_lent_payload_read_on_another_thread_holds_its_publish_until_let_go() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::mpsc::channel;
    let bus = MemBus::new();
    let (to_reader, frames) = channel::<hsipc::proto::frame::WireFrame>();
    let (held_tx, held) = channel();
    let (gone_tx, gone) = channel();
    let (read_tx, read) = channel();
    let returned = Arc::new(AtomicBool::new(false));
    // Where the buffer of the publish under way starts: a body read from there is still lent.
    let lent_at = Arc::new(AtomicUsize::new(0));
    let reader = {
        let (returned, lent_at) = (Arc::clone(&returned), Arc::clone(&lent_at));
        std::thread::spawn(move || {
            for frame in frames {
                let (still_lent, while_held) = {
                    let pieces = frame.pieces();
                    held_tx.send(()).unwrap();
                    let body = pieces.get()[1];
                    let still_lent = body.as_ptr() as usize == lent_at.load(Ordering::SeqCst);
                    if still_lent {
                        // However long it holds them (a while, to give a wrong loan time to
                        // end), the publish stays in its loan.
                        std::thread::sleep(Duration::from_millis(50));
                        assert!(!returned.load(Ordering::SeqCst), "the publish returned while its bytes were held");
                    }
                    (still_lent, body.to_vec())
                };
                gone.recv().unwrap();
                read_tx.send((still_lent, while_held, frame.pieces().get()[1].to_vec())).unwrap();
            }
        })
    };
    let tap = Tap { to_reader, held };
    let holding = Holding { bus: bus.clone(), hold: Arc::default(), kept: Arc::default(), tap: Some(tap) };
    let server = hsipc::SyncProcessHub::builder("server").transport(bus.connector()).build().unwrap();
    let client = hsipc::SyncProcessHub::builder("client").transport(Box::new(holding)).build().unwrap();
    let events = server.subscribe::<Vec<u8>>("bytes/#").unwrap();
    client.wait_for_subscriber("bytes/x", WAIT).unwrap();
    // Until the reader held a frame while it was still lent (had the writer thread sent the
    // frame after the publish returned, it already read a copy): a few tries at most.
    let mut published = 0;
    loop {
        assert!(published < 100, "the reader never held a frame still lent");
        let mut data = vec![5u8; 1 << 20];
        lent_at.store(data.as_ptr() as usize, Ordering::SeqCst);
        returned.store(false, Ordering::SeqCst);
        client.publish("bytes/x", &data[..]).unwrap();
        returned.store(true, Ordering::SeqCst);
        data.fill(0xff);
        drop(data);
        gone_tx.send(()).unwrap();
        published += 1;
        let (still_lent, while_held, after) = read.recv_timeout(WAIT).unwrap();
        assert!(while_held.len() == 1 << 20 && while_held.iter().all(|b| *b == 5), "read while held");
        assert_eq!(after, while_held, "read after the buffer was freed: the copy");
        if still_lent {
            break;
        }
    }
    for _ in 0..published {
        let ev = events.recv_timeout(WAIT).unwrap();
        assert!(ev.payload.len() == 1 << 20 && ev.payload.iter().all(|b| *b == 5));
    }
    // The reader's failures reach this thread through `read`; it ends with the client's
    // transport.
    drop(reader);
}

/// Waits until `cond` holds, for at most [`WAIT`].
fn until(cond: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + WAIT;
    while !cond() {
        assert!(std::time::Instant::now() < deadline, "not within {WAIT:?}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Hands the hub's ingress out, as a transport's reader holds it.
#[derive(Debug)]
struct Stash {
    bus: MemBus,
    ingress: std::sync::Arc<std::sync::Mutex<Option<hsipc::transport::Ingress>>>,
}

impl hsipc::transport::Connect for Stash {
    fn connect(
        self: Box<Self>,
        local: hsipc::PeerId,
        name: &str,
        ingress: hsipc::transport::Ingress,
    ) -> Result<Box<dyn hsipc::transport::Transport>, hsipc::transport::TransportError> {
        *self.ingress.lock().unwrap() = Some(ingress.clone());
        self.bus.connector().connect(local, name, ingress)
    }
}

/// A transport whose reader fails for good closes its hub: what waits fails with `Closed` at
/// once (not at its deadline), and so does what comes next, instead of a hub that hears
/// nothing.
#[test]
fn a_transport_that_can_no_longer_receive_closes_its_hub() {
    let bus = MemBus::new();
    let ingress = std::sync::Arc::default();
    let stash = Stash { bus: bus.clone(), ingress: std::sync::Arc::clone(&ingress) };
    let hub = hsipc::SyncProcessHub::builder("deaf").transport(Box::new(stash)).build().unwrap();
    let events = hub.subscribe::<u32>("never/#").unwrap();
    let long = Duration::from_secs(60);
    let waiting = std::thread::spawn(move || {
        let started = std::time::Instant::now();
        (events.recv_timeout(long).map(|e| e.payload), started.elapsed())
    });
    let ingress = ingress.lock().unwrap().clone().expect("connected");
    ingress.failed("the test's reader gave up");
    let (got, waited) = waiting.join().unwrap();
    assert!(matches!(got, Err(Error::Closed)), "{got:?}");
    assert!(waited < long / 2, "ended well before its deadline: {waited:?}");
    until(|| matches!(hub.publish("never/x", 1u32), Err(Error::Closed)));
}

/// A hub reuses the context of an answered call for a later one only when nothing holds it:
/// a context a handler keeps goes on describing its own call (method, caller, deadline, not
/// cancelled) however many calls come after it.
#[test]
fn a_context_a_handler_keeps_goes_on_describing_its_own_call() {
    let bus = MemBus::new();
    let (server, client) = pair(&bus);
    let other = hsipc::SyncProcessHub::builder("other").transport(bus.connector()).build().unwrap();
    let kept = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let k = kept.clone();
    server
        .serve_with_context("ctx.keep", move |n: u32, ctx: &hsipc::CallContext| {
            if n % 10 == 0 {
                k.lock().unwrap().push((n, ctx.clone()));
            }
            Ok::<_, String>(n)
        })
        .unwrap();
    server
        .serve_with_context("ctx.other", |n: u32, ctx: &hsipc::CallContext| Ok::<_, String>(n + ctx.caller_pid()))
        .unwrap();
    client.wait_for_service("ctx", WAIT).unwrap();
    other.wait_for_service("ctx", WAIT).unwrap();
    for n in 0..100u32 {
        assert_eq!(client.call::<_, u32>("ctx.keep", n).unwrap(), n);
        let _: u32 = other.call("ctx.other", n).unwrap();
    }
    let kept = kept.lock().unwrap();
    assert_eq!(kept.len(), 10);
    for (n, ctx) in kept.iter() {
        assert_eq!((ctx.method(), ctx.caller_name()), ("ctx.keep", "client"), "call {n}");
        assert_eq!(ctx.caller(), client.id(), "call {n}");
        assert!(!ctx.is_cancelled(), "call {n}");
    }
    let deadlines: std::collections::HashSet<_> = kept.iter().map(|(_, ctx)| ctx.deadline()).collect();
    assert_eq!(deadlines.len(), 10, "each kept context has its own call's deadline");
}
