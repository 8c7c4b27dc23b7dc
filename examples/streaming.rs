//! A streaming method between two processes: backpressure and cancellation.
//!
//! ```text
//! terminal 1:  cargo run --example streaming server
//! terminal 2:  cargo run --example streaming client
//! ```
//!
//! The client reads one stream slowly: the server can only run a few items ahead of it (the
//! credit window), so the reader sets the pace and nothing piles up in memory. Then it drops a
//! stream of a million items after three: the server's next send fails with `Cancelled` and
//! its method returns. The server serves until you press Enter (or its input ends). Both
//! join the bus named by `HSIPC_BUS` (default `hsipc`).

use std::time::{Duration, Instant};

use futures_lite::StreamExt;
use hsipc::{ProcessHub, StreamSink};

#[hsipc::service(name = "numbers")]
trait Numbers {
    /// Sends `0, 1, .., n - 1`, each as soon as the reader has room for it.
    #[hsipc(stream)]
    async fn count(&self, n: u64, sink: StreamSink<u64>) -> hsipc::Result<()>;
}

struct Server;

impl Numbers for Server {
    async fn count(&self, n: u64, sink: StreamSink<u64>) -> hsipc::Result<()> {
        let start = Instant::now();
        for i in 0..n {
            // Waits while the reader has granted no credit; fails once the reader is gone.
            if let Err(e) = sink.send(&i).await {
                println!("server: count({n}) stopped after {i} items: the send failed with {e:?}");
                return Ok(());
            }
            println!("server: sent {i}");
        }
        println!("server: count({n}) done in {} ms", start.elapsed().as_millis());
        Ok(())
    }
}

/// Stream items in flight per stream the client reads (the default is 64).
const WINDOW: u32 = 4;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    match std::env::args().nth(1).as_deref() {
        Some("server") => server().await,
        Some("client") => client().await,
        _ => Err("usage: cargo run --example streaming -- server|client".into()),
    }
}

async fn server() -> Result<(), Box<dyn std::error::Error>> {
    let hub = ProcessHub::new("numbers-server").await?;
    hub.register_service(NumbersService::new(Server)).await?;
    println!("server: serving numbers.count; press Enter to stop");
    tokio::task::spawn_blocking(|| std::io::stdin().read_line(&mut String::new())).await??;
    hub.close().await;
    println!("server: stopped");
    Ok(())
}

async fn client() -> Result<(), Box<dyn std::error::Error>> {
    // The reader's hub decides how far a server may run ahead of it.
    let hub = ProcessHub::builder("numbers-client").stream_window(WINDOW).build()?;
    let numbers = NumbersClient::new(hub.clone());
    hub.wait_for_service(numbers.service_name(), Duration::from_secs(10)).await?;

    // 1. Backpressure: read 12 items, slowly. The server sends at most WINDOW items ahead,
    //    then each of its sends waits until we have taken one.
    let mut stream = numbers.count(12)?;
    let mut got = Vec::new();
    while let Some(item) = stream.next().await {
        let item = item?;
        println!("client: got {item}");
        got.push(item);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("client: read {} items: {got:?}", got.len());

    // 2. Cancellation: ask for a million items, take three, drop the stream. The server's
    //    next send fails with `Cancelled`.
    let mut million = numbers.count(1_000_000)?;
    for _ in 0..3 {
        if let Some(item) = million.next().await {
            println!("client: got {} of a million", item?);
        }
    }
    drop(million);
    println!("client: dropped the stream of a million");

    hub.close().await;
    Ok(())
}
