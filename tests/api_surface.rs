//! Compile-time promises of the public surface: the hubs are cheap `Clone + Send + Sync`
//! handles, every future an async hub returns is `Send` (so it can be spawned on a
//! multi-thread runtime) and a call future is `Sync`, and requests and events go by value or by reference alike.

use std::time::Duration;

use hsipc::{Event, PeerSummary, Qos, Result, Stats, Topic, TopicFilter};

fn handle<T: Clone + Send + Sync + 'static>() {}
fn send<T: Send>(_: &T) {}
fn sync<T: Sync>(_: &T) {}

#[test]
fn hubs_are_clone_send_sync_handles() {
    handle::<hsipc::ProcessHub>();
    handle::<hsipc::smol::ProcessHub>();
    handle::<hsipc::SyncProcessHub>();
}

/// Never run: it only has to compile.
#[allow(dead_code)]
async fn async_futures_are_send(hub: hsipc::ProcessHub, smol_hub: hsipc::smol::ProcessHub) -> Result<()> {
    let req = (1i64, 2i64);
    let by_value = hub.call::<_, i64>("calc.add", req);
    let by_ref = hub.call::<_, i64>("calc.add", &req);
    send(&by_value);
    send(&by_ref);
    // A call future can be shared by reference across threads too.
    sync(&by_value);
    // A request that is not `Send` (here, one holding a borrowed non-Sync cell) does not make
    // the call future non-`Send`: it is encoded when the call starts.
    let cell = std::cell::Cell::new(3i64);
    send(&hub.call::<_, i64>("calc.id", cell.get()));
    send(&hub.publish("sensor/t", 21.5));
    send(&hub.publish("sensor/t", &21.5));
    send(&hub.call_stream::<_, u32>("calc.count", 10u32));
    send(&hub.subscribe::<f64>("sensor/+"));
    send(&hub.wait_for_service("calc", Duration::from_secs(1)));
    send(&hub.serve("calc.add", |(a, b): (i64, i64)| async move { Ok::<_, String>(a + b) }));
    send(&hub.serve_stream("calc.count", |n: u32, sink: hsipc::StreamSink<u32>| async move {
        for i in 0..n {
            let sent = sink.send(&i);
            send(&sent);
            sent.await?;
        }
        Ok::<_, hsipc::Error>(())
    }));
    send(&hub.close());
    send(&hsipc::ProcessHub::new("another"));
    send(&hsipc::smol::ProcessHub::new("another"));
    send(&smol_hub.call::<_, i64>("calc.add", req));
    let stream = hub.call_stream::<_, u32>("calc.count", 10u32).await?;
    let events: hsipc::Subscription<f64> = hub.subscribe("sensor/+").await?;
    send(&stream);
    send(&events);
    Ok(())
}

#[test]
fn blocking_calls_take_values_and_references() {
    // Compiles: the earlier hsipc's `SyncProcessHub` snippet passed requests by value.
    #[allow(dead_code, clippy::needless_borrows_for_generic_args)] // references on purpose
    fn both(hub: &hsipc::SyncProcessHub) -> Result<()> {
        let _: i64 = hub.call("calc.add", (1i64, 2i64))?;
        let _: i64 = hub.call("calc.add", &(1i64, 2i64))?;
        hub.publish("sensor/t", 21.5)?;
        hub.publish("sensor/t", &21.5)?;
        Ok(())
    }
}

#[test]
fn what_users_name_is_reachable_from_the_facade() {
    // Each of these is named through `hsipc::` alone.
    let _: Option<Event<u8>> = None;
    let _: Option<PeerSummary> = None;
    let _: Option<Stats> = None;
    let _ = Qos::KeepLast(1);
    assert!(Topic::new("a/b").is_ok());
    assert!(TopicFilter::new("a/+").is_ok());
}
