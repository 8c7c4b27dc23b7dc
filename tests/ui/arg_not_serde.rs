// An argument type that is not serde: reported at the argument's type.

pub struct Point {
    pub x: i32,
    pub y: i32,
}

#[hsipc::service]
pub trait Geometry {
    async fn scale(&self, p: Point, by: f64) -> hsipc::Result<f64>;
}

fn main() {}
