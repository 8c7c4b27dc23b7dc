//! Bidirectional sessions on every hub: ordered, flow-controlled both ways, closable per half,
//! and ended with `None` (not an error) when the other end closes; across real processes, a long
//! session keeps memory bounded and a dead peer fails the other end.

mod common;

use std::time::Duration;

use common::{Peer, command, env, kind, report, unique_bus};
use futures_lite::StreamExt;
use hsipc::transport::MemBus;
use hsipc::{Error, ServerSession};

const WAIT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------------
// In one process, each hub

/// The server upper-cases each message, then says `bye` once the client has closed its half.
#[test]
fn blocking_sessions_echo_in_order_and_end_with_none() {
    let bus = MemBus::new();
    let server = hsipc::SyncProcessHub::builder("server").transport(bus.connector()).build().unwrap();
    let client = hsipc::SyncProcessHub::builder("client").transport(bus.connector()).build().unwrap();
    server
        .serve_session("chat.shout", |greeting: String, s: &mut hsipc::blocking::ServerSession<String, String>| {
            s.send(&greeting.to_uppercase())?;
            while let Some(msg) = s.recv() {
                s.send(&msg?.to_uppercase())?;
            }
            s.send(&"bye".to_string())
        })
        .unwrap();
    client.wait_for_service("chat", WAIT).unwrap();
    let mut session = client.open_session::<_, String, String>("chat.shout", "hi").unwrap();
    for m in ["a", "b", "c"] {
        session.send(&m.to_string()).unwrap();
    }
    session.close_send();
    let got: Vec<String> = session.map(|m| m.unwrap()).collect();
    assert_eq!(got, ["HI", "A", "B", "C", "bye"]);
}

async fn async_session_round(hub: &hsipc::transport::hub::AsyncHub<impl Send + Sync + 'static>) {
    let mut session = hub.open_session::<_, u32, u32>("sum.running", 100u32).await.unwrap();
    for i in 1..=5u32 {
        session.send(&i).await.unwrap();
        assert_eq!(session.next().await.unwrap().unwrap(), 100 + (1..=i).sum::<u32>());
    }
    session.close_send();
    assert_eq!(session.next().await.unwrap().unwrap(), u32::MAX, "the server's last word");
    assert!(session.next().await.is_none(), "the end is None");
}

async fn serve_running_sum(hub: &hsipc::transport::hub::AsyncHub<impl hsipc::transport::hub::RuntimeKind>) {
    hub.serve_session("sum.running", |start: u32, mut s: ServerSession<u32, u32>| async move {
        let mut sum = start;
        while let Some(n) = s.next().await {
            sum += n?;
            s.send(&sum).await?;
        }
        s.send(&u32::MAX).await?;
        Ok::<_, Error>(())
    })
    .await
    .unwrap();
}

#[test]
fn tokio_sessions_run_both_ways() {
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let bus = MemBus::new();
        let server = hsipc::ProcessHub::builder("server").transport(bus.connector()).build().unwrap();
        let client = hsipc::ProcessHub::builder("client").transport(bus.connector()).build().unwrap();
        serve_running_sum(&server).await;
        client.wait_for_service("sum", WAIT).await.unwrap();
        async_session_round(&client).await;
    });
}

#[test]
fn smol_sessions_run_both_ways() {
    smol::block_on(async {
        let bus = MemBus::new();
        let server = hsipc::smol::ProcessHub::builder("server").transport(bus.connector()).build().unwrap();
        let client = hsipc::smol::ProcessHub::builder("client").transport(bus.connector()).build().unwrap();
        serve_running_sum(&server).await;
        client.wait_for_service("sum", WAIT).await.unwrap();
        async_session_round(&client).await;
    });
}

#[test]
fn dropping_the_client_end_is_the_end_for_the_server() {
    let bus = MemBus::new();
    let server = hsipc::SyncProcessHub::builder("server").transport(bus.connector()).build().unwrap();
    let client = hsipc::SyncProcessHub::builder("client").transport(bus.connector()).build().unwrap();
    let (tx, rx) = flume::bounded(1);
    server
        .serve_session("t.listen", move |(): (), s: &mut hsipc::blocking::ServerSession<u8, u8>| {
            s.send(&0)?; // "listening": a session dropped before its handler starts is skipped
            let mut seen = Vec::new();
            let end = loop {
                match s.recv() {
                    Some(Ok(m)) => seen.push(m),
                    Some(Err(e)) => break Err(kind(&e)),
                    None => break Ok(()),
                }
            };
            let _ = tx.send((seen, end));
            Ok::<_, Error>(())
        })
        .unwrap();
    client.wait_for_service("t", WAIT).unwrap();
    let mut session = client.open_session::<_, u8, u8>("t.listen", ()).unwrap();
    assert_eq!(session.recv().unwrap().unwrap(), 0);
    session.send(&1).unwrap();
    session.send(&2).unwrap();
    drop(session);
    let (seen, end) = rx.recv_timeout(WAIT).unwrap();
    assert_eq!(seen, [1, 2]);
    assert_eq!(end, Ok(()), "a dropped client end reads as the end, not an error");
}

// ---------------------------------------------------------------------------------------------
// Across processes

#[test]
fn child_entry() {
    let Some(role) = common::role() else { return };
    common::watch_parent(Duration::from_secs(120));
    let hub = hsipc::SyncProcessHub::builder(&env("HSIPC_NAME")).build().unwrap();
    match role.as_str() {
        "bystander" => {
            report("READY");
            while command().is_some() {}
        }
        "echo_server" => {
            hub.serve_session("echo.session", |(): (), s: &mut hsipc::blocking::ServerSession<u64, u64>| {
                report("SESSION");
                while let Some(m) = s.recv() {
                    s.send(&m?)?;
                }
                Ok::<_, Error>(())
            })
            .unwrap();
            report("READY");
            while command().is_some() {}
        }
        "long_client" => {
            report("READY");
            hub.wait_for_service("echo", WAIT).unwrap();
            let mut s = hub.open_session::<_, u64, u64>("echo.session", ()).unwrap();
            // 100 000 each way, interleaved in batches of 32 (half the credit window).
            let (mut next, mut expect) = (0u64, 0u64);
            while expect < 100_000 {
                while next < 100_000 && next < expect + 32 {
                    s.send(&next).unwrap();
                    next += 1;
                }
                let m = s.recv().unwrap().unwrap();
                assert_eq!(m, expect, "out of order");
                expect += 1;
            }
            report(format!("DONE {expect}"));
            while command().is_some() {}
        }
        "waiting_client" => {
            report("READY");
            hub.wait_for_service("echo", WAIT).unwrap();
            let mut s = hub.open_session::<_, u64, u64>("echo.session", ()).unwrap();
            s.send(&7).unwrap();
            assert_eq!(s.recv().unwrap().unwrap(), 7);
            report("TALKING");
            // The server dies now: the next read fails, as a call would.
            let end = match s.recv() {
                Some(Err(e)) => kind(&e).to_string(),
                Some(Ok(m)) => format!("message {m}"),
                None => "none".into(),
            };
            report(format!("END {end}"));
            while command().is_some() {}
        }
        other => panic!("unknown role {other}"),
    }
}

#[test]
fn a_long_session_across_processes_stays_ordered_and_bounded() {
    let bus = unique_bus("session-long");
    let mut server = Peer::ready("echo_server", &bus, "server", &[]);
    let mut client = Peer::ready("long_client", &bus, "client", &[]);
    server.expect("SESSION", WAIT);
    let base = (server.rss_kib(), client.rss_kib());
    assert_eq!(client.expect("DONE", Duration::from_secs(120)), "100000");
    let after = (server.rss_kib(), client.rss_kib());
    let growth = (after.0.saturating_sub(base.0), after.1.saturating_sub(base.1));
    eprintln!("rss growth over 100 000 messages each way (KiB): server {}, client {}", growth.0, growth.1);
    assert!(growth.0 < 32 * 1024 && growth.1 < 32 * 1024, "memory grew by {growth:?} KiB");
}

#[test]
fn a_dead_server_fails_the_clients_session() {
    let bus = unique_bus("session-death");
    let _bystander = Peer::ready("bystander", &bus, "bystander", &[]); // owns the bus
    let mut server = Peer::ready("echo_server", &bus, "server", &[]);
    let mut client = Peer::ready("waiting_client", &bus, "client", &[]);
    client.expect("TALKING", WAIT);
    server.kill();
    assert_eq!(client.expect("END", WAIT), "peer_lost");
}

// ---------------------------------------------------------------------------------------------
// In a #[service] trait

/// A session declared in a service trait.
#[hsipc::service]
pub trait Room {
    /// Joins the room as `name`: each line sent comes back signed, until the client closes.
    #[hsipc(session)]
    async fn join(&self, name: String, session: ServerSession<String, String>) -> hsipc::Result<()>;
}

struct Echoing;

impl Room for Echoing {
    async fn join(&self, name: String, mut session: ServerSession<String, String>) -> hsipc::Result<()> {
        while let Some(line) = session.next().await {
            session.send(&format!("{name}: {}", line?)).await?;
        }
        session.send(&format!("{name} left")).await
    }
}

#[test]
fn service_traits_declare_sessions_for_async_and_blocking_clients() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let bus = MemBus::new();
        let server = hsipc::ProcessHub::builder("server").transport(bus.connector()).build().unwrap();
        let client = hsipc::ProcessHub::builder("client").transport(bus.connector()).build().unwrap();
        server.register_service(RoomService::new(Echoing)).await.unwrap();
        client.wait_for_service("Room", WAIT).await.unwrap();
        let room = RoomClient::new(client.clone());
        let mut ann = room.join("ann".into()).await.unwrap();
        ann.send(&"hi".to_string()).await.unwrap();
        assert_eq!(ann.next().await.unwrap().unwrap(), "ann: hi");
        ann.close_send();
        assert_eq!(ann.next().await.unwrap().unwrap(), "ann left");
        assert!(ann.next().await.is_none());
        // The blocking client, from a thread.
        let blocking_hub = client.clone();
        tokio::task::spawn_blocking(move || {
            let room = RoomBlockingClient::new(blocking_hub);
            let mut bob = room.join("bob".into()).unwrap();
            bob.send_blocking(&"yo".to_string()).unwrap();
            assert_eq!(bob.recv_blocking().unwrap().unwrap(), "bob: yo");
        })
        .await
        .unwrap();
    });
}

#[test]
fn a_quiet_session_outlives_the_call_timeout_and_a_wrong_kind_of_method_fails_fast() {
    let bus = MemBus::new();
    let server = hsipc::SyncProcessHub::builder("server").transport(bus.connector()).build().unwrap();
    let client = hsipc::SyncProcessHub::builder("client")
        .default_timeout(Duration::from_millis(200))
        .transport(bus.connector())
        .build()
        .unwrap();
    let (go, wait) = flume::bounded::<()>(1);
    server
        .serve_session("t.quiet", move |(): (), s: &mut hsipc::blocking::ServerSession<u8, u8>| {
            // Quiet for longer than the client's call timeout, then talks.
            wait.recv_timeout(WAIT).ok();
            s.send(&42)
        })
        .unwrap();
    server.serve("t.unary", |(): ()| Ok::<_, String>(1u8)).unwrap();
    client.wait_for_service("t", WAIT).unwrap();
    let mut quiet = client.open_session::<_, u8, u8>("t.quiet", ()).unwrap();
    // A read may time out (recv_timeout), but the session itself has no idle timer once the
    // server has taken it: three call timeouts later, it still delivers.
    assert!(matches!(quiet.recv_timeout(Duration::from_millis(600)), Err(Error::Timeout)));
    go.send(()).unwrap();
    assert_eq!(quiet.recv_timeout(WAIT).unwrap(), Some(42));
    // A session opened on a unary method is refused at once, with a reason.
    let mut wrong = client.open_session::<_, u8, u8>("t.unary", ()).unwrap();
    match wrong.recv_timeout(WAIT) {
        Err(Error::Remote(r)) => assert!(r.message.contains("unary"), "{r:?}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
}
