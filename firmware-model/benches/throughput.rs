//! Model throughput benchmark (written below).
fn main() {}
