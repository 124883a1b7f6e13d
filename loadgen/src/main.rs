//! Placeholder until the loadgen lands.
fn main() {}
