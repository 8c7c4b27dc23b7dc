// `self` by value: reported at the receiver.

#[hsipc::service]
pub trait Worker {
    async fn finish(self) -> hsipc::Result<()>;
}

fn main() {}
