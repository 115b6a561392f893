//! Placeholder: replaced by the Docker rollback benchmark.
fn main() {}
