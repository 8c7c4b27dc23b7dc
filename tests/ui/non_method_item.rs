// An item other than a method in a service trait.

#[hsipc::service]
pub trait Limits {
    const X: u32;

    fn max(&self) -> hsipc::Result<u32>;
}

fn main() {}
