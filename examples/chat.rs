//! A chat room over bidirectional sessions (tokio hub).
//!
//! ```text
//! cargo run --example chat server                 # terminal 1: the room
//! cargo run --example chat client ann             # terminal 2: type lines, Ctrl-D to leave
//! cargo run --example chat client bob hi there    # terminal 3: says "hi" and "there", then leaves
//! ```
//!
//! Each client opens a session on `chat.join` with its name. The server's handler for that
//! session forwards what the client says to the room (a pub/sub topic, so every session sees
//! it) and what the room says to the client. Either side can close: a client that closes its
//! half still hears the room until the server ends the session.

use std::time::Duration;

use futures_lite::{FutureExt, StreamExt};
use hsipc::{ProcessHub, ServerSession};
use tokio::io::AsyncBufReadExt;

/// One line said in the room: who, and what.
type Said = (String, String);

#[tokio::main]
async fn main() -> hsipc::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("server") => server().await,
        Some("client") if args.len() >= 2 => client(&args[1], &args[2..]).await,
        _ => {
            eprintln!("usage: chat server | chat client NAME [LINE...]");
            std::process::exit(2);
        }
    }
}

async fn server() -> hsipc::Result<()> {
    let hub = ProcessHub::new("chat-server").await?;
    let room = hub.clone();
    hub.serve_session("chat.join", move |name: String, session: ServerSession<String, String>| {
        let room = room.clone();
        async move { member(room, name, session).await }
    })
    .await?;
    println!("server: the room is open; press Enter to close it");
    let mut line = String::new();
    let _ = tokio::io::BufReader::new(tokio::io::stdin()).read_line(&mut line).await;
    // The handlers hold a clone of the hub (to publish): close it explicitly.
    hub.close().await;
    println!("server: closed");
    Ok(())
}

/// What either side of one member's session did next.
enum Next {
    Said(Option<hsipc::Result<String>>),
    Heard(Option<hsipc::Result<hsipc::Event<Said>>>),
}

/// Serves one member: relays their lines to the room and the room's lines to them.
async fn member(room: ProcessHub, name: String, mut session: ServerSession<String, String>) -> hsipc::Result<()> {
    let mut heard = room.subscribe::<Said>("chat/room").await?;
    println!("server: {name} joined");
    room.publish("chat/room", (name.clone(), "(joined)".to_string())).await?;
    loop {
        let next = async { Next::Said(session.next().await) }.or(async { Next::Heard(heard.next().await) }).await;
        match next {
            Next::Said(Some(line)) => room.publish("chat/room", (name.clone(), line?)).await?,
            // The member closed its half, or left: tell the room, and end the session.
            Next::Said(None) => break,
            Next::Heard(Some(event)) => {
                let (who, what) = event?.payload;
                session.send(&format!("{who}: {what}")).await?;
            }
            Next::Heard(None) => break,
        }
    }
    println!("server: {name} left");
    room.publish("chat/room", (name, "(left)".to_string())).await?;
    Ok(())
}

/// What happened next on an interactive client: a typed line, or a line from the room.
enum Input {
    Typed(std::io::Result<Option<String>>),
    Heard(Option<hsipc::Result<String>>),
}

async fn client(name: &str, script: &[String]) -> hsipc::Result<()> {
    let hub = ProcessHub::new(&format!("chat-{name}")).await?;
    hub.wait_for_service("chat", Duration::from_secs(10)).await?;
    let mut session = hub.open_session::<_, String, String>("chat.join", name).await?;
    if script.is_empty() {
        // Interactive: stdin lines to the room, the room to stdout.
        let mut stdin = tokio::io::BufReader::new(tokio::io::stdin()).lines();
        loop {
            let next =
                async { Input::Typed(stdin.next_line().await) }.or(async { Input::Heard(session.next().await) }).await;
            match next {
                Input::Typed(Ok(Some(line))) => session.send(&line).await?,
                Input::Typed(_) => break, // end of input: leave
                Input::Heard(Some(line)) => println!("{}", line?),
                Input::Heard(None) => return Ok(()),
            }
        }
    } else {
        // Scripted: say each line once the room has confirmed the previous one.
        for line in script {
            session.send(line).await?;
            while let Some(heard) = session.next().await {
                let heard = heard?;
                println!("{name} heard {heard}");
                if heard == format!("{name}: {line}") {
                    break;
                }
            }
        }
    }
    // Leave: close our half; the server ends the session, which ends this stream.
    session.close_send();
    while let Some(heard) = session.next().await {
        println!("{name} heard {}", heard?);
    }
    println!("{name} left");
    Ok(())
}
