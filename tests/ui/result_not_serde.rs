// A result type `T` that is not serde: reported at `T` in `Result<T, E>`.

pub struct Report {
    pub lines: Vec<String>,
}

#[hsipc::service]
pub trait Reporter {
    fn report(&self) -> Result<Report, hsipc::Error>;
}

fn main() {}
