// A borrowed argument cannot travel: reported at `&str`.

#[hsipc::service]
pub trait Greeter {
    async fn greet(&self, name: &str) -> hsipc::Result<String>;
}

fn main() {}
