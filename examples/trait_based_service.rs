//! A trait-based service, as in the earlier hsipc's README, and two implementations of it
//! served side by side: `cargo run --example trait_based_service`.
//!
//! One process serves and calls; a client in another process would be written the same way
//! (see the `request_response` example).

use hsipc::{ProcessHub, Result, service_impl, service_trait};

/// The interface. `#[service_trait]` (the same as `#[hsipc::service]`) generates
/// `CalculatorService` (serves an implementation) and `CalculatorClient` (calls one).
#[service_trait]
trait Calculator {
    async fn add(&self, params: (i32, i32)) -> Result<i32>;
    async fn multiply(&self, params: (i32, i32)) -> Result<i32>;
}

/// Ordinary arithmetic.
struct BasicCalculator;

// `#[service_impl]` adds the alias `BasicCalculatorService` (= `CalculatorService<BasicCalculator>`).
#[service_impl]
impl Calculator for BasicCalculator {
    async fn add(&self, params: (i32, i32)) -> Result<i32> {
        Ok(params.0 + params.1)
    }

    async fn multiply(&self, params: (i32, i32)) -> Result<i32> {
        Ok(params.0 * params.1)
    }
}

/// Clock arithmetic: the same interface, another behaviour.
struct ClockCalculator {
    hours: i32,
}

#[service_impl]
impl Calculator for ClockCalculator {
    async fn add(&self, params: (i32, i32)) -> Result<i32> {
        Ok((params.0 + params.1).rem_euclid(self.hours))
    }

    async fn multiply(&self, params: (i32, i32)) -> Result<i32> {
        Ok((params.0 * params.1).rem_euclid(self.hours))
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let hub = ProcessHub::new("calculator").await?;

    // Serve both implementations: the first under the trait's name (`Calculator`), the second
    // beside it under a name of its own.
    hub.register_service(BasicCalculatorService::new(BasicCalculator)).await?;
    hub.register_service(ClockCalculatorService::with_name(ClockCalculator { hours: 12 }, "clock")).await?;

    // One client type for both: the service name picks the implementation.
    let basic = CalculatorClient::new(hub.clone());
    let clock = CalculatorClient::with_name(hub.clone(), "clock");
    for calc in [basic, clock] {
        let sum = calc.add((10, 20)).await?;
        let product = calc.multiply((4, 5)).await?;
        println!("{}: 10 + 20 = {sum}, 4 * 5 = {product}", calc.service_name());
    }

    hub.close().await;
    Ok(())
}
