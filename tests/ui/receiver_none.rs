// No receiver (an associated function): reported at the method's name.

#[hsipc::service]
pub trait Clock {
    fn now() -> hsipc::Result<u64>;
}

fn main() {}
