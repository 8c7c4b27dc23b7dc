// A method that does not return `Result`: reported at the return type.

#[hsipc::service]
pub trait Calculator {
    async fn add(&self, a: i64, b: i64) -> i64;
}

fn main() {}
