// A generic method: reported at its generics.

#[hsipc::service]
pub trait Store {
    async fn put<T: serde::Serialize>(&self, value: T) -> hsipc::Result<()>;
}

fn main() {}
