// A streaming method whose last argument is not `StreamSink<Item>`.

#[hsipc::service]
pub trait Ticker {
    #[hsipc(stream)]
    async fn ticks(&self, sink: hsipc::StreamSink<u64>, every_ms: u64) -> hsipc::Result<()>;
}

fn main() {}
