// A correct service compiles: `#[hsipc::service]` with every kind of method, and the earlier
// names `#[service_trait]` / `#[service_impl]`.

use hsipc::{StreamSink, service_impl, service_trait};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
pub enum CalcError {
    DivisionByZero,
}

#[hsipc::service(name = "calc")]
pub trait Calculator {
    async fn add(&self, a: i64, b: i64) -> hsipc::Result<i64>;
    fn div(&self, a: i64, b: i64) -> Result<i64, CalcError>;
    async fn nothing(&self) -> hsipc::Result<()>;
    #[hsipc(name = "new")]
    async fn create(&self, owner: String) -> hsipc::Result<u64>;
    #[hsipc(stream)]
    async fn count(&self, n: u32, sink: StreamSink<u32>) -> Result<(), CalcError>;
    #[hsipc(stream)]
    fn count_plain(&self, n: u32, sink: StreamSink<u32>) -> hsipc::Result<()>;
}

pub struct Basic;

impl Calculator for Basic {
    async fn add(&self, a: i64, b: i64) -> hsipc::Result<i64> {
        Ok(a + b)
    }

    fn div(&self, a: i64, b: i64) -> Result<i64, CalcError> {
        if b == 0 { Err(CalcError::DivisionByZero) } else { Ok(a / b) }
    }

    async fn nothing(&self) -> hsipc::Result<()> {
        Ok(())
    }

    async fn create(&self, _owner: String) -> hsipc::Result<u64> {
        Ok(1)
    }

    async fn count(&self, n: u32, sink: StreamSink<u32>) -> Result<(), CalcError> {
        for i in 0..n {
            if sink.send(&i).await.is_err() {
                break;
            }
        }
        Ok(())
    }

    fn count_plain(&self, n: u32, sink: StreamSink<u32>) -> hsipc::Result<()> {
        for i in 0..n {
            sink.send_blocking(&i)?;
        }
        Ok(())
    }
}

#[service_trait]
trait Greeter {
    async fn greet(&self, name: String) -> hsipc::Result<String>;
}

struct English;

#[service_impl]
impl Greeter for English {
    async fn greet(&self, name: String) -> hsipc::Result<String> {
        Ok(format!("hello, {name}"))
    }
}

#[allow(dead_code)]
async fn use_clients(hub: hsipc::ProcessHub, blocking: hsipc::SyncProcessHub) -> hsipc::Result<()> {
    hub.register_service(CalculatorService::new(Basic)).await?;
    hub.register_service(EnglishService::new(English)).await?;
    let calc = CalculatorClient::new(hub.clone());
    let _sum: i64 = calc.add(2, 3).await?;
    let _q: Result<i64, hsipc::ClientError<CalcError>> = calc.div(6, 3).await;
    let _id: u64 = calc.timeout(std::time::Duration::from_secs(1)).create("me".into()).await?;
    let _items = calc.count(3);
    let greeter = GreeterBlockingClient::new(blocking);
    let _hello: String = greeter.greet("you".into())?;
    Ok(())
}

fn main() {
    assert_eq!(CalculatorService::<Basic>::DEFAULT_NAME, "calc");
}
