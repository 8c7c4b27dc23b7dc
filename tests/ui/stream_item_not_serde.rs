// A streaming method whose item type is not serde: reported at the item type.

pub struct Tick {
    pub at_ms: u64,
}

#[hsipc::service]
pub trait Ticker {
    #[hsipc(stream)]
    fn ticks(&self, every_ms: u64, sink: hsipc::StreamSink<Tick>) -> hsipc::Result<()>;
}

fn main() {}
