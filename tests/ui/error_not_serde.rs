// An error type `E` that is neither serde nor `hsipc::Error`: reported at `E`.

#[derive(Debug)]
pub struct DivError;

impl std::fmt::Display for DivError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("division by zero")
    }
}

impl std::error::Error for DivError {}

#[hsipc::service]
pub trait Divider {
    fn div(&self, a: i64, b: i64) -> Result<i64, DivError>;
}

fn main() {}
