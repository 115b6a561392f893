//! Placeholder: replaced by the migration checker benchmark.
fn main() {}
