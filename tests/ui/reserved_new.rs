// A method named like a generated client method (`new`): reported at the name.

#[hsipc::service]
pub trait Accounts {
    async fn new(&self, owner: String) -> hsipc::Result<u64>;
}

fn main() {}
