// A method without a return type: reported at its argument list.

#[hsipc::service]
pub trait Logger {
    fn log(&self, line: String);
}

fn main() {}
