//! `contracts`: lint, check, register and apply Backbone's event contracts.

fn main() {}
