//! `replay` (being written).

fn main() {}
