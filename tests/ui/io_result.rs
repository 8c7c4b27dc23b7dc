// A `Result` alias whose error type is neither serde nor `hsipc::Error` (`std::io::Result`):
// reported at the result type.

#[hsipc::service]
pub trait Files {
    fn size(&self, path: String) -> std::io::Result<u64>;
}

fn main() {}
