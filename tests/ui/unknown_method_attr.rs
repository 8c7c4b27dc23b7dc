// An unknown argument of a method's `#[hsipc(...)]`.

#[hsipc::service]
pub trait Calculator {
    #[hsipc(bogus)]
    async fn add(&self, a: i64, b: i64) -> hsipc::Result<i64>;
}

fn main() {}
