//! `benches/alloc_cost.rs`'s other half: the same children, built with
//! `forkless::alloc::Counting<System>` as the global allocator. The driver
//! in `alloc_cost` runs this binary; run alone, it says so and ends.
#![allow(missing_docs)]

#[global_allocator]
static ALLOC: forkless::alloc::Counting<std::alloc::System> =
    forkless::alloc::Counting::new(std::alloc::System);

#[path = "alloc/child.rs"]
mod child;
#[allow(dead_code)]
#[path = "../examples/hello.rs"]
mod hello;
#[allow(dead_code)]
#[path = "store.rs"]
mod store;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if !child::run(&args) {
        println!(
            "alloc_cost_counting: measured by `cargo bench --bench alloc_cost`, which runs it \
             as a child"
        );
    }
}
