// `#[service_impl]` on an impl whose self type is generic.

use hsipc::{service_impl, service_trait};

#[service_trait]
pub trait Echo {
    async fn echo(&self, text: String) -> hsipc::Result<String>;
}

pub struct Echoer<T>(T);

#[service_impl]
impl<T: Send + Sync + 'static> Echo for Echoer<T> {
    async fn echo(&self, text: String) -> hsipc::Result<String> {
        Ok(text)
    }
}

fn main() {}
