// A generic trait: reported at the trait's generics.

#[hsipc::service]
pub trait Store<T> {
    async fn get(&self, key: String) -> hsipc::Result<u32>;
}

fn main() {}
