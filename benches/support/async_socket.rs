//! A raw Unix socket ping-pong under an async runtime, both ends: the floor an async hub stands
//! on. It shows what tokio's or smol's own reactor and task wake-ups cost against the blocking
//! socket of the same run, with the echo answered where it was read or by a spawned task (as an
//! hsipc async handler is).
//!
//! Kinds: `socket+tokio`, `socket+tokio+task`, `socket+smol`, `socket+smol+task`. The bench
//! process awaits each round trip as hsipc's async clients do (a current-thread tokio runtime,
//! `smol::block_on`); the peer runs the runtime an hsipc peer of that kind runs (tokio's
//! multi-thread runtime, `smol::block_on` with smol's global executor for tasks). Frames are a
//! 4-byte little-endian length, then the payload.

use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::time::Duration;

/// The kinds, as `--only` names them.
pub(crate) const KINDS: [&str; 4] = ["socket+tokio", "socket+tokio+task", "socket+smol", "socket+smol+task"];

/// The bench process's end: a socket registered with the kind's runtime.
pub(crate) enum AsyncSocket {
    Tokio(tokio::runtime::Runtime, tokio::net::UnixStream),
    Smol(smol::Async<UnixStream>),
}

impl AsyncSocket {
    /// Our end of a socket pair whose other end went to a peer of `kind`.
    pub(crate) fn new(kind: &str, ours: OwnedFd) -> AsyncSocket {
        let std = UnixStream::from(ours);
        std.set_nonblocking(true).expect("non-blocking socket");
        if kind.starts_with("socket+tokio") {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
            let s = rt.block_on(async { tokio::net::UnixStream::from_std(std) }).expect("tokio takes the socket");
            AsyncSocket::Tokio(rt, s)
        } else {
            AsyncSocket::Smol(smol::Async::new(std).expect("async-io takes the socket"))
        }
    }

    /// Sends `count` frames of `payload`, then reads `count` replies, within `wait`; returns the
    /// length of the last reply.
    pub(crate) fn exchange(&mut self, payload: &[u8], count: usize, wait: Duration, buf: &mut Vec<u8>) -> usize {
        let n = match self {
            AsyncSocket::Tokio(rt, s) => rt
                .block_on(async { tokio::time::timeout(wait, exchange_tokio(s, payload, count, buf)).await })
                .ok()
                .and_then(Result::ok),
            AsyncSocket::Smol(s) => smol::block_on(async {
                let timeout = async {
                    smol::Timer::after(wait).await;
                    Err(std::io::ErrorKind::TimedOut.into())
                };
                smol::future::or(exchange_smol(s, payload, count, buf), timeout).await
            })
            .ok(),
        };
        n.expect("async socket exchange failed or timed out")
    }
}

async fn exchange_tokio(
    s: &mut tokio::net::UnixStream,
    payload: &[u8],
    count: usize,
    buf: &mut Vec<u8>,
) -> std::io::Result<usize> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let frame = framed(payload);
    for _ in 0..count {
        s.write_all(&frame).await?;
    }
    for _ in 0..count {
        let mut len = [0u8; 4];
        s.read_exact(&mut len).await?;
        buf.resize(u32::from_le_bytes(len) as usize, 0);
        s.read_exact(buf).await?;
    }
    Ok(buf.len())
}

async fn exchange_smol(
    s: &mut smol::Async<UnixStream>,
    payload: &[u8],
    count: usize,
    buf: &mut Vec<u8>,
) -> std::io::Result<usize> {
    use smol::io::{AsyncReadExt, AsyncWriteExt};
    let frame = framed(payload);
    for _ in 0..count {
        s.write_all(&frame).await?;
    }
    for _ in 0..count {
        let mut len = [0u8; 4];
        s.read_exact(&mut len).await?;
        buf.resize(u32::from_le_bytes(len) as usize, 0);
        s.read_exact(buf).await?;
    }
    Ok(buf.len())
}

/// `payload` behind its length, in one buffer (one `write` for a small frame).
fn framed(payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(4 + payload.len());
    frame.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// The peer: echoes every frame on `stream` until end of file, under `kind`'s runtime, from
/// the task that read it or (`+task`) from a task spawned for it.
pub(crate) fn serve(kind: &str, stream: UnixStream) {
    stream.set_nonblocking(true).expect("non-blocking socket");
    let task = kind.ends_with("+task");
    if kind.starts_with("socket+tokio") {
        let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
        rt.block_on(async {
            let s = tokio::net::UnixStream::from_std(stream).expect("tokio takes the socket");
            let _ = serve_tokio(s, task).await;
        });
    } else {
        smol::block_on(async {
            let s = smol::Async::new(stream).expect("async-io takes the socket");
            let _ = serve_smol(s, task).await;
        });
    }
}

async fn serve_tokio(mut s: tokio::net::UnixStream, task: bool) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    loop {
        let mut len = [0u8; 4];
        s.read_exact(&mut len).await?;
        let mut frame = vec![0u8; 4 + u32::from_le_bytes(len) as usize];
        frame[..4].copy_from_slice(&len);
        s.read_exact(&mut frame[4..]).await?;
        if task {
            frame = tokio::spawn(async move { frame }).await.map_err(std::io::Error::other)?;
        }
        s.write_all(&frame).await?;
    }
}

async fn serve_smol(mut s: smol::Async<UnixStream>, task: bool) -> std::io::Result<()> {
    use smol::io::{AsyncReadExt, AsyncWriteExt};
    loop {
        let mut len = [0u8; 4];
        s.read_exact(&mut len).await?;
        let mut frame = vec![0u8; 4 + u32::from_le_bytes(len) as usize];
        frame[..4].copy_from_slice(&len);
        s.read_exact(&mut frame[4..]).await?;
        if task {
            frame = smol::spawn(async move { frame }).await;
        }
        s.write_all(&frame).await?;
    }
}
