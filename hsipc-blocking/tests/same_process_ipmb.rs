//! Two hubs in one process on a real ipmb bus (what a user's own tests often do).

use std::time::Duration;

use hsipc_blocking::{ProcessHub, StreamSink};

#[test]
fn two_hubs_in_one_process_talk_over_ipmb() {
    let bus = format!("same-process-{}", std::process::id());
    let server = ProcessHub::builder("server").bus(&bus).build().unwrap();
    let client = ProcessHub::builder("client").bus(&bus).build().unwrap();
    server.serve("calc.add", |(a, b): (i64, i64)| Ok::<_, String>(a + b)).unwrap();
    server
        .serve_stream("calc.count", |n: u32, sink: &StreamSink<u32>| {
            (0..n).try_for_each(|i| sink.send(&i))?;
            Ok::<_, hsipc_blocking::Error>(())
        })
        .unwrap();
    client.wait_for_service("calc", Duration::from_secs(5)).unwrap();
    for i in 0..100 {
        assert_eq!(client.call::<_, i64>("calc.add", &(i, i)).unwrap(), 2 * i);
    }
    let items: Vec<u32> = client.call_stream("calc.count", 500u32).unwrap().map(|r| r.unwrap()).collect();
    assert_eq!(items.len(), 500);
    let sub = server.subscribe::<String>("news/#").unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !client.peers().unwrap().iter().any(|p| p.patterns.iter().any(|p| p == "news/#")) {
        assert!(std::time::Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(1));
    }
    client.publish("news/today", "hello".to_string()).unwrap();
    assert_eq!(sub.recv_timeout(Duration::from_secs(5)).unwrap().payload, "hello");
    client.close();
    server.close();
}
