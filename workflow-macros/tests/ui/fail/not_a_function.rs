use workflow::prelude::*;

#[workflow]
struct ProcessOrder;

fn main() {}
