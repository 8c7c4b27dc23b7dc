//! The blocking hub, for code without async: `cargo run --example sync_api`.
//!
//! Serves, calls, streams, publishes and subscribes, all in this one process (a second
//! process would call and subscribe just the same, on the bus named by `HSIPC_BUS`). Calls
//! block with a deadline; streams and subscriptions are iterators; handlers run on the hub's
//! worker threads.

use std::time::Duration;

use hsipc::SyncProcessHub;
use hsipc::blocking::StreamSink;
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
struct TemperatureEvent {
    sensor_id: String,
    value: f64,
}

/// A `#[hsipc::service]` trait works on the blocking hub too; plain `fn` methods suit it.
#[hsipc::service]
trait Greeter {
    fn greet(&self, name: String) -> hsipc::Result<String>;
    /// Streams the letters of `word`.
    #[hsipc(stream)]
    fn spell(&self, word: String, sink: hsipc::StreamSink<char>) -> hsipc::Result<()>;
}

struct Polite;

impl Greeter for Polite {
    fn greet(&self, name: String) -> hsipc::Result<String> {
        Ok(format!("Hello, {name}!"))
    }

    fn spell(&self, word: String, sink: hsipc::StreamSink<char>) -> hsipc::Result<()> {
        for letter in word.chars() {
            sink.send_blocking(&letter)?;
        }
        Ok(())
    }
}

fn main() -> hsipc::Result<()> {
    let hub = SyncProcessHub::new("sync-demo")?;

    // Serve methods with closures: `service.method`, a request type, a result.
    hub.serve("calc.add", |(a, b): (i32, i32)| Ok::<_, String>(a + b))?;
    hub.serve_stream("calc.countdown", |from: u32, sink: &StreamSink<u32>| {
        for n in (1..=from).rev() {
            sink.send(&n)?; // blocks while the reader has no room for more
        }
        Ok::<_, hsipc::Error>(())
    })?;

    // Call them: the types say what travels.
    let sum: i32 = hub.call("calc.add", (5, 3))?;
    println!("calc.add(5, 3) = {sum}");
    let countdown = hub.call_stream::<_, u32>("calc.countdown", 3)?.collect::<hsipc::Result<Vec<_>>>()?;
    println!("calc.countdown(3) = {countdown:?}");

    // Publish/subscribe: a subscription is an iterator of events (here one, with a deadline).
    let temperatures = hub.subscribe::<TemperatureEvent>("sensor/+")?;
    hub.publish("sensor/temperature", TemperatureEvent { sensor_id: "room_001".to_string(), value: 22.0 })?;
    let event = temperatures.recv_timeout(Duration::from_secs(5))?;
    println!("sensor/+ got {}: {} = {:.1}", event.topic, event.payload.sensor_id, event.payload.value);

    // A service trait, through its generated blocking client.
    hub.register_service(GreeterService::new(Polite))?;
    let greeter = GreeterBlockingClient::new(hub.clone());
    println!("Greeter.greet(\"Ada\") = {:?}", greeter.greet("Ada".to_string())?);
    let letters = greeter.spell("hsipc".to_string())?.collect::<hsipc::Result<Vec<char>>>()?;
    println!("Greeter.spell(\"hsipc\") = {letters:?}");

    hub.close();
    Ok(())
}
