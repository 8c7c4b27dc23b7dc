// A method named like a generated client method (`timeout`): reported at the name.

#[hsipc::service]
pub trait Session {
    fn timeout(&self) -> hsipc::Result<u64>;
}

fn main() {}
