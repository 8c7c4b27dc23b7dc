// A method with a default body.

#[hsipc::service]
pub trait Calculator {
    async fn add(&self, a: i64, b: i64) -> hsipc::Result<i64> {
        Ok(a + b)
    }
}

fn main() {}
