// `#[hsipc(inline)]` on an async method: inline handlers are plain functions.

#[hsipc::service]
pub trait Calculator {
    #[hsipc(inline)]
    async fn add(&self, a: i64, b: i64) -> hsipc::Result<i64>;
}

fn main() {}
