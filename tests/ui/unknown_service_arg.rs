// An unknown argument of `#[hsipc::service]`.

#[hsipc::service(foo = "x")]
pub trait Calculator {
    async fn add(&self, a: i64, b: i64) -> hsipc::Result<i64>;
}

fn main() {}
