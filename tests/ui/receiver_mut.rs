// `&mut self`: reported at the receiver.

#[hsipc::service]
pub trait Counter {
    async fn bump(&mut self) -> hsipc::Result<u64>;
}

fn main() {}
