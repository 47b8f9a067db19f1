//! Placeholder: the doctor is being written.
fn main() {}
