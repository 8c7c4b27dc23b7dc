//! Request/response between two processes, with the tokio hub and a `#[hsipc::service]` trait.
//!
//! ```text
//! terminal 1:  cargo run --example request_response server
//! terminal 2:  cargo run --example request_response client
//! ```
//!
//! The server serves until you press Enter in its terminal (or its input ends); the client
//! calls it and exits. Both join the bus named by `HSIPC_BUS` (default `hsipc`): give them the
//! same one.

use std::time::Duration;

use hsipc::{ClientError, ProcessHub};
use serde::{Deserialize, Serialize};

/// The service's own error: the client gets this very value back, typed.
#[derive(Debug, Serialize, Deserialize)]
enum MathError {
    DivisionByZero,
}

/// What the server offers. `#[hsipc::service]` generates `CalculatorService` (to serve an
/// implementation) and `CalculatorClient` (to call it); methods are served as `calc.add` and
/// `calc.div`.
#[hsipc::service(name = "calc")]
trait Calculator {
    /// Adds two numbers: an async method, with hsipc's own error type.
    async fn add(&self, a: i64, b: i64) -> hsipc::Result<i64>;
    /// Divides `a` by `b`: a plain method (it runs on the blocking pool), with a typed error.
    fn div(&self, a: i64, b: i64) -> Result<i64, MathError>;
}

/// The server's implementation.
struct Server;

impl Calculator for Server {
    async fn add(&self, a: i64, b: i64) -> hsipc::Result<i64> {
        println!("server: add({a}, {b})");
        Ok(a + b)
    }

    fn div(&self, a: i64, b: i64) -> Result<i64, MathError> {
        println!("server: div({a}, {b})");
        if b == 0 { Err(MathError::DivisionByZero) } else { Ok(a / b) }
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    match std::env::args().nth(1).as_deref() {
        Some("server") => server().await,
        Some("client") => client().await,
        _ => Err("usage: cargo run --example request_response -- server|client".into()),
    }
}

async fn server() -> Result<(), Box<dyn std::error::Error>> {
    let hub = ProcessHub::new("calc-server").await?;
    hub.register_service(CalculatorService::new(Server)).await?;
    println!("server: serving calc.add and calc.div; press Enter to stop");

    // Handlers run as tasks; this one only waits for Enter (or the end of input).
    tokio::task::spawn_blocking(|| std::io::stdin().read_line(&mut String::new())).await??;

    hub.close().await; // says goodbye, so clients learn at once that the service is gone
    println!("server: stopped");
    Ok(())
}

async fn client() -> Result<(), Box<dyn std::error::Error>> {
    let hub = ProcessHub::new("calc-client").await?;
    let calc = CalculatorClient::new(hub.clone());
    // The server may not be up yet: wait for it (at most 10 s) instead of failing.
    hub.wait_for_service(calc.service_name(), Duration::from_secs(10)).await?;

    let sum = calc.add(2, 3).await?;
    println!("client: add(2, 3) = {sum}");
    let quotient = calc.div(7, 2).await?;
    println!("client: div(7, 2) = {quotient}");

    // A typed error: the service's own `MathError`, apart from hsipc's failures (timeout,
    // server gone, ...), which come as `ClientError::Hsipc`.
    match calc.div(1, 0).await {
        Ok(q) => println!("client: div(1, 0) = {q}?!"),
        Err(ClientError::Service(MathError::DivisionByZero)) => println!("client: div(1, 0) failed: DivisionByZero"),
        Err(e) => return Err(e.into()),
    }

    hub.close().await;
    Ok(())
}
