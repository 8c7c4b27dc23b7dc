//! Publish/subscribe between two processes, with the tokio hub and MQTT-style wildcards.
//!
//! ```text
//! terminal 1:  cargo run --example pubsub_events subscriber
//! terminal 2:  cargo run --example pubsub_events publisher
//! ```
//!
//! The subscriber listens on three patterns; the publisher waits until it is on the bus,
//! publishes three readings and a last "done" event; the subscriber prints what each pattern
//! received and exits after "done". Both join the bus named by `HSIPC_BUS` (default `hsipc`).
//!
//! Topic patterns: `sensor/temperature` matches exactly that topic; `+` matches one level
//! (`sensor/+` matches `sensor/thermostat`, not `sensor/room1/temperature`); `#` matches
//! the rest (`sensor/#` matches every topic under `sensor/`).

use std::time::{Duration, Instant};

use futures_lite::StreamExt;
use hsipc::{ProcessHub, Topic, TopicFilter};
use serde::{Deserialize, Serialize};

/// The earlier hsipc's README event.
#[derive(Debug, Serialize, Deserialize)]
struct TemperatureEvent {
    sensor_id: String,
    value: f64,
}

/// What the publisher sends: topic, sensor, value.
const READINGS: [(&str, &str, f64); 3] = [
    ("sensor/temperature", "room_001", 25.5),     // matches all three patterns
    ("sensor/thermostat", "hallway", 19.5),       // matches sensor/+ and sensor/#
    ("sensor/room1/temperature", "room_1", 21.0), // matches sensor/# only
];

/// The last event: its payload is the number of readings published.
const DONE: &str = "control/done";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    match std::env::args().nth(1).as_deref() {
        Some("subscriber") => subscriber().await,
        Some("publisher") => publisher().await,
        _ => Err("usage: cargo run --example pubsub_events -- subscriber|publisher".into()),
    }
}

async fn subscriber() -> Result<(), Box<dyn std::error::Error>> {
    let hub = ProcessHub::new("subscriber").await?;
    // Each subscription is a `Stream` of events; tag each event with the pattern that caught
    // it, and merge the three into one stream.
    let exact = hub.subscribe::<TemperatureEvent>("sensor/temperature").await?.map(|e| ("sensor/temperature", e));
    let one_level = hub.subscribe::<TemperatureEvent>("sensor/+").await?.map(|e| ("sensor/+", e));
    let all_levels = hub.subscribe::<TemperatureEvent>("sensor/#").await?.map(|e| ("sensor/#", e));
    let mut events = exact.or(one_level).or(all_levels);
    let mut done = hub.subscribe::<u32>(DONE).await?;
    println!("subscriber: listening on sensor/temperature, sensor/+ and sensor/#");

    let mut received = 0;
    loop {
        tokio::select! {
            // Readings first: each was published before "done", so none is left unread
            // when "done" is handled.
            biased;
            Some((pattern, event)) = events.next() => {
                let event = event?;
                let TemperatureEvent { sensor_id, value } = event.payload;
                println!("subscriber: [{pattern}] {} from {sensor_id} = {value:.1}", event.topic);
                received += 1;
            }
            Some(event) = done.next() => {
                let published = event?.payload;
                println!(
                    "subscriber: done: {published} readings published, {received} received \
                     (one per matching pattern)"
                );
                break;
            }
            else => return Err("the hub closed before the publisher was done".into()),
        }
    }
    hub.close().await;
    Ok(())
}

async fn publisher() -> Result<(), Box<dyn std::error::Error>> {
    let hub = ProcessHub::new("publisher").await?;
    // An event goes only to the subscribers this hub knows of when it is published: wait until
    // a subscriber for every topic is on the bus.
    let mut topics: Vec<&str> = READINGS.iter().map(|(topic, _, _)| *topic).collect();
    topics.push(DONE);
    wait_for_subscribers(&hub, &topics, Duration::from_secs(10)).await?;

    for (topic, sensor_id, value) in READINGS {
        hub.publish(topic, TemperatureEvent { sensor_id: sensor_id.to_string(), value }).await?;
        println!("publisher: {topic} <- {sensor_id} = {value:.1}");
    }
    hub.publish(DONE, READINGS.len() as u32).await?;
    println!("publisher: done");
    hub.close().await; // what was published goes out before the goodbye
    Ok(())
}

/// Waits until some other peer subscribes to a pattern matching each of `topics`.
async fn wait_for_subscribers(
    hub: &ProcessHub,
    topics: &[&str],
    timeout: Duration,
) -> Result<(), Box<dyn std::error::Error>> {
    let topics = topics.iter().map(|t| Topic::new(*t)).collect::<Result<Vec<_>, _>>()?;
    let deadline = Instant::now() + timeout;
    loop {
        let mut filters = Vec::new();
        for peer in hub.peers()?.into_iter().filter(|p| !p.is_local) {
            for pattern in peer.patterns {
                filters.push(TopicFilter::new(pattern)?);
            }
        }
        if topics.iter().all(|topic| filters.iter().any(|filter| filter.matches(topic))) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("no subscriber within {timeout:?}: start `pubsub_events subscriber`").into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
