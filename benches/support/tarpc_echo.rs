//! tarpc, bincode over a Unix socket: the RPC framework the issue measures hsipc against, in the
//! same run. The service echoes a `Bytes` (serialized as one byte string, as a user after speed
//! would send it). The bench process calls it from a current-thread tokio runtime in its own
//! thread (as the tokio hub's calls are made); the peer serves it on tokio's multi-thread
//! runtime, each request in a task of its own (tarpc's way), as the tokio hub's `serve` does.
//! Round trips and pipelined calls only: tarpc has no one-way messages or events.

use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_lite::StreamExt;
use tarpc::server::{BaseChannel, Channel};
use tarpc::tokio_serde::formats::Bincode;
use tarpc::tokio_util::codec::LengthDelimitedCodec;
use tarpc::{client, context};

use crate::async_socket::Sampling;

/// The largest frame either side takes: a 1 MiB payload and its envelope.
const MAX_FRAME: usize = 2 << 20;

/// The echo service.
#[tarpc::service]
pub(crate) trait Echo {
    /// The payload, back.
    async fn echo(payload: Bytes) -> Bytes;
}

#[derive(Clone)]
struct Echoer;

impl Echo for Echoer {
    async fn echo(self, _: context::Context, payload: Bytes) -> Bytes {
        payload
    }
}

/// `stream` as a tarpc transport of `In` received and `Out` sent, on the current runtime.
fn transport<In, Out>(
    stream: UnixStream,
) -> tarpc::serde_transport::Transport<tokio::net::UnixStream, In, Out, Bincode<In, Out>>
where
    In: for<'de> serde::Deserialize<'de>,
    Out: serde::Serialize,
{
    stream.set_nonblocking(true).expect("non-blocking socket");
    let stream = tokio::net::UnixStream::from_std(stream).expect("tokio takes the socket");
    let framed = LengthDelimitedCodec::builder().max_frame_length(MAX_FRAME).new_framed(stream);
    tarpc::serde_transport::new(framed, Bincode::default())
}

/// The bench process's end.
pub(crate) struct TarpcClient {
    client: EchoClient,
    /// Dropped after the client (declared after it).
    rt: tokio::runtime::Runtime,
}

impl TarpcClient {
    /// A client over `fd`, one end of a socket pair whose other end the peer serves.
    pub(crate) fn new(fd: OwnedFd) -> TarpcClient {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
        let client =
            rt.block_on(async { EchoClient::new(client::Config::default(), transport(UnixStream::from(fd))).spawn() });
        TarpcClient { client, rt }
    }

    /// A call's context: tarpc's default deadline (10 s), within the bench's waits.
    fn ctx() -> context::Context {
        context::current()
    }

    /// One call; the reply's length.
    pub(crate) fn echo(&self, payload: &Bytes) -> usize {
        let client = &self.client;
        self.rt.block_on(async { client.echo(Self::ctx(), payload.clone()).await.expect("tarpc echo").len() })
    }

    /// Round trips one after another in one task, as many as `samples` asks.
    pub(crate) fn round_trips(&self, payload: &Bytes, samples: &mut dyn Sampling) {
        let client = &self.client;
        self.rt.block_on(async {
            while samples.more() {
                let start = Instant::now();
                let n = client.echo(Self::ctx(), payload.clone()).await.expect("tarpc echo").len();
                samples.record(start, n);
            }
        });
    }

    /// `n` calls in flight at once from one task, until all are answered.
    pub(crate) fn in_flight(&self, payload: &Bytes, n: usize) {
        let client = &self.client;
        self.rt.block_on(async {
            let calls: Vec<_> = (0..n).map(|_| Box::pin(client.echo(Self::ctx(), payload.clone()))).collect();
            for reply in crate::join_all(calls).await {
                reply.expect("tarpc echo");
            }
        });
    }
}

/// The peer: serves the echo on `stream` until the bench process goes away.
pub(crate) fn serve(stream: UnixStream) {
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    // The channel runs as a task on the runtime's workers (as tarpc's examples and the tokio
    // socket peer have it), not in `block_on`'s thread: every request would cross threads.
    let served = rt.block_on(async {
        let channel = BaseChannel::with_defaults(transport(stream));
        tokio::spawn(channel.execute(Echoer.serve()).for_each(|answer| {
            tokio::spawn(answer);
        }))
        .await
    });
    if let Err(e) = served {
        eprintln!("tarpc_peer: the channel's task failed: {e}");
    }
    // The stream ended: the bench process closed its end. Give tasks still answering a moment.
    rt.shutdown_timeout(Duration::from_millis(100));
}
