//! A raw Unix socket ping-pong under an async runtime, both ends: the floor an async hub stands
//! on. It shows what tokio's or smol's own reactor and task wake-ups cost against the blocking
//! socket of the same run, with the echo answered where it was read or by a spawned task (as an
//! hsipc async handler is).
//!
//! Kinds: `socket+tokio`, `socket+tokio+task`, `socket+smol`, `socket+smol+task`. The bench
//! process awaits each round trip as hsipc's async clients do (a current-thread tokio runtime,
//! `smol::block_on`); the peer runs the runtime an hsipc peer of that kind runs: tokio's
//! multi-thread runtime, the reading loop a task on its workers (where hsipc's tokio hub reads a
//! lane), or `smol::block_on` with smol's global executor for the tasks. A `+task` echo is a
//! detached task that writes its own answer, as an hsipc handler task does.
//!
//! As in the blocking socket row: frames are a 4-byte little-endian length, then the payload;
//! one `write` for a frame up to 64 KiB (two above: length, then payload); reads go through a
//! 64 KiB buffer (one `read` for a small frame); buffers are reused. A round trip's deadline is
//! a guard thread's, not a runtime timer per call (which would cost smol a system call or
//! three per call that the hubs do not pay): past the deadline it shuts the socket down, and
//! the waiting read fails.

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// The kinds, as `--only` names them.
pub(crate) const KINDS: [&str; 4] = ["socket+tokio", "socket+tokio+task", "socket+smol", "socket+smol+task"];

/// Frames up to this size are written in one `write` (length and payload copied together).
const ONE_WRITE: usize = 64 << 10;
/// The read buffer's size.
const READ_BUF: usize = 64 << 10;

/// The bench process's end: a socket registered with the kind's runtime, read through a
/// buffer.
pub(crate) struct AsyncSocket {
    io: Io,
    scratch: Vec<u8>,
    buf: Vec<u8>,
    guard: Guard,
}

/// The socket, as the kind's runtime holds it.
enum Io {
    Tokio {
        r: tokio::io::BufReader<tokio::net::unix::OwnedReadHalf>,
        w: tokio::net::unix::OwnedWriteHalf,
        /// Dropped after the socket's halves (declared after them).
        rt: tokio::runtime::Runtime,
    },
    Smol {
        r: futures_lite::io::BufReader<SmolHalf>,
        w: SmolHalf,
    },
}

/// One half of a smol socket: reads or writes through the shared registration (async-io
/// implements them for `&Async<T>`, not for an `Arc`).
#[derive(Clone)]
struct SmolHalf(Arc<smol::Async<UnixStream>>);

impl futures_lite::AsyncRead for SmolHalf {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut &*self.0).poll_read(cx, buf)
    }
}

impl futures_lite::AsyncWrite for SmolHalf {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut &*self.0).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut &*self.0).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut &*self.0).poll_close(cx)
    }
}

/// One exchange, for either runtime (their I/O traits differ; the code does not): `count`
/// frames out, then `count` replies in, each checked.
macro_rules! exchange_body {
    ($r:expr, $w:expr, $scratch:expr, $buf:expr, $payload:expr, $count:expr) => {{
        for _ in 0..$count {
            if $payload.len() <= ONE_WRITE {
                $w.write_all(framed($scratch, $payload)).await?;
            } else {
                $w.write_all(&len_of($payload)).await?;
                $w.write_all($payload).await?;
            }
        }
        for _ in 0..$count {
            let mut len = [0u8; 4];
            $r.read_exact(&mut len).await?;
            $buf.resize(u32::from_le_bytes(len) as usize, 0);
            $r.read_exact($buf).await?;
            check($buf.len(), $payload.len())?;
        }
        Ok::<_, std::io::Error>(())
    }};
}

impl AsyncSocket {
    /// Our end of a socket pair whose other end went to a peer of `kind`; a round trip that
    /// takes longer than `wait` fails.
    pub(crate) fn new(kind: &str, ours: OwnedFd, wait: Duration) -> AsyncSocket {
        let std = UnixStream::from(ours);
        std.set_nonblocking(true).expect("non-blocking socket");
        let guard = Guard::start(&std, wait);
        let io = if kind.starts_with("socket+tokio") {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
            let s = rt.block_on(async { tokio::net::UnixStream::from_std(std) }).expect("tokio takes the socket");
            let (r, w) = s.into_split();
            Io::Tokio { r: tokio::io::BufReader::with_capacity(READ_BUF, r), w, rt }
        } else {
            let s = SmolHalf(Arc::new(smol::Async::new(std).expect("async-io takes the socket")));
            Io::Smol { r: futures_lite::io::BufReader::with_capacity(READ_BUF, s.clone()), w: s }
        };
        AsyncSocket { io, scratch: Vec::new(), buf: Vec::new(), guard }
    }

    /// Sends `count` frames of `payload`, then reads `count` replies, checking each one's
    /// length.
    pub(crate) fn exchange(&mut self, payload: &[u8], count: usize) {
        let AsyncSocket { io, scratch, buf, guard } = self;
        guard.started();
        let r = match io {
            Io::Tokio { r, w, rt } => rt.block_on(async {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                exchange_body!(r, w, scratch, buf, payload, count)
            }),
            Io::Smol { r, w } => smol::block_on(async {
                use smol::io::{AsyncReadExt, AsyncWriteExt};
                exchange_body!(r, w, scratch, buf, payload, count)
            }),
        };
        guard.done();
        if let Err(e) = r {
            panic!("async socket exchange: {e} (a shut-down socket means the round trip took over the deadline)");
        }
    }
}

/// Round trips of one frame each, one after another, as many as `$samples` asks (either
/// runtime, as [`exchange_body`]).
macro_rules! each_round_trip {
    ($samples:expr, $guard:expr, $r:expr, $w:expr, $scratch:expr, $buf:expr, $payload:expr) => {{
        while $samples.more() {
            let start = Instant::now();
            $guard.started();
            exchange_body!($r, $w, $scratch, $buf, $payload, 1)?;
            $guard.done();
            $samples.record(start, $payload.len());
        }
        Ok::<_, std::io::Error>(())
    }};
}

/// What decides how many round trips to make, and keeps their times.
pub(crate) trait Sampling {
    /// Whether to make another round trip.
    fn more(&mut self) -> bool;
    /// A round trip that started at `start` brought back `len` bytes.
    fn record(&mut self, start: Instant, len: usize);
}

impl AsyncSocket {
    /// Round trips of `payload` one after another in one task, as many as `samples` asks.
    pub(crate) fn round_trips(&mut self, payload: &[u8], samples: &mut dyn Sampling) {
        let AsyncSocket { io, scratch, buf, guard } = self;
        let r = match io {
            Io::Tokio { r, w, rt } => rt.block_on(async {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                each_round_trip!(samples, guard, r, w, scratch, buf, payload)
            }),
            Io::Smol { r, w } => smol::block_on(async {
                use smol::io::{AsyncReadExt, AsyncWriteExt};
                each_round_trip!(samples, guard, r, w, scratch, buf, payload)
            }),
        };
        if let Err(e) = r {
            panic!("async socket round trip: {e} (a shut-down socket means the round trip took over the deadline)");
        }
    }
}

/// The reply's length must be the request's.
fn check(got: usize, sent: usize) -> std::io::Result<()> {
    if got == sent { Ok(()) } else { Err(std::io::Error::other(format!("echo of {sent} B returned {got} B"))) }
}

/// A frame's length prefix.
fn len_of(payload: &[u8]) -> [u8; 4] {
    (payload.len() as u32).to_le_bytes()
}

/// `payload` behind its length, in `scratch` (one `write` for a small frame).
fn framed<'a>(scratch: &'a mut Vec<u8>, payload: &[u8]) -> &'a [u8] {
    scratch.clear();
    scratch.extend_from_slice(&len_of(payload));
    scratch.extend_from_slice(payload);
    scratch
}

/// Ends a round trip that overruns its deadline by shutting the socket down (the read then
/// fails): one thread per link, no timer per call.
struct Guard {
    /// When the running exchange started, in ns since `epoch` + 1; 0 when none runs.
    since: Arc<AtomicU64>,
    epoch: Instant,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Guard {
    fn start(socket: &UnixStream, wait: Duration) -> Guard {
        let (since, stop, epoch) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicBool::new(false)), Instant::now());
        let fd = socket.try_clone().expect("socket clone for its guard");
        let thread = {
            let (since, stop) = (since.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::park_timeout(Duration::from_millis(100));
                    let started = since.load(Ordering::Relaxed);
                    let overdue =
                        started != 0 && epoch.elapsed().as_nanos() as u64 > started - 1 + wait.as_nanos() as u64;
                    if overdue {
                        // SAFETY: `fd` is an open socket this thread owns.
                        unsafe { libc::shutdown(fd.as_raw_fd(), libc::SHUT_RDWR) };
                        return;
                    }
                }
            })
        };
        Guard { since, epoch, stop, thread: Some(thread) }
    }

    fn started(&self) {
        self.since.store(self.epoch.elapsed().as_nanos() as u64 + 1, Ordering::Relaxed);
    }

    fn done(&self) {
        self.since.store(0, Ordering::Relaxed);
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

/// Buffers a peer reuses: a `+task` echo takes one and gives it back once it has answered.
type Pool = Arc<Mutex<Vec<Vec<u8>>>>;

fn take_buf(pool: &Pool) -> Vec<u8> {
    pool.lock().unwrap_or_else(|e| e.into_inner()).pop().unwrap_or_default()
}

fn give_buf(pool: &Pool, buf: Vec<u8>) {
    pool.lock().unwrap_or_else(|e| e.into_inner()).push(buf);
}

/// The peer: echoes every frame on `stream` until end of file, under `kind`'s runtime, from
/// the task that read it or (`+task`) from a task spawned for it.
pub(crate) fn serve(kind: &str, stream: UnixStream) {
    stream.set_nonblocking(true).expect("non-blocking socket");
    let task = kind.ends_with("+task");
    let r = if kind.starts_with("socket+tokio") {
        let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
        rt.block_on(async {
            let s = tokio::net::UnixStream::from_std(stream)?;
            tokio::spawn(serve_tokio(s, task)).await.map_err(std::io::Error::other)?
        })
    } else {
        smol::block_on(serve_smol(smol::Async::new(stream).expect("async-io takes the socket"), task))
    };
    if let Err(e) = r {
        if e.kind() != std::io::ErrorKind::UnexpectedEof {
            eprintln!("async_sock_peer: {e}");
        }
    }
}

/// The peer's loop, for either runtime (their I/O traits differ; the code does not): reads a
/// frame into a pooled buffer, answers it here or from a task spawned with `$spawn`.
macro_rules! echo_loop {
    ($r:expr, $w:expr, $task:expr, $spawn:expr) => {{
        let (mut r, w, pool) = ($r, $w, Pool::default());
        loop {
            let mut len = [0u8; 4];
            r.read_exact(&mut len).await?;
            let mut frame = take_buf(&pool);
            frame.resize(4 + u32::from_le_bytes(len) as usize, 0);
            frame[..4].copy_from_slice(&len);
            r.read_exact(&mut frame[4..]).await?;
            let (w, pool) = (w.clone(), pool.clone());
            let answer = async move {
                let mut w = w.lock().await;
                let sent = if frame.len() <= 4 + ONE_WRITE {
                    w.write_all(&frame).await
                } else {
                    match w.write_all(&frame[..4]).await {
                        Ok(()) => w.write_all(&frame[4..]).await,
                        e => e,
                    }
                };
                give_buf(&pool, frame);
                sent
            };
            if $task {
                $spawn(answer);
            } else {
                answer.await?;
            }
        }
    }};
}

/// Reads requests on a tokio worker; answers each there or from a task of its own.
async fn serve_tokio(s: tokio::net::UnixStream, task: bool) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (r, w) = s.into_split();
    let r = tokio::io::BufReader::with_capacity(READ_BUF, r);
    echo_loop!(r, Arc::new(tokio::sync::Mutex::new(w)), task, |answer| {
        tokio::spawn(answer);
    })
}

/// Reads requests in `block_on`; answers each there or from a task on smol's executor.
async fn serve_smol(s: smol::Async<UnixStream>, task: bool) -> std::io::Result<()> {
    use smol::io::{AsyncReadExt, AsyncWriteExt};
    let s = SmolHalf(Arc::new(s));
    let r = futures_lite::io::BufReader::with_capacity(READ_BUF, s.clone());
    echo_loop!(r, Arc::new(smol::lock::Mutex::new(s)), task, |answer| smol::spawn(answer).detach())
}
