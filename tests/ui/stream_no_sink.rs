// A streaming method without a sink argument.

#[hsipc::service]
pub trait Ticker {
    #[hsipc(stream)]
    async fn ticks(&self) -> hsipc::Result<()>;
}

fn main() {}
