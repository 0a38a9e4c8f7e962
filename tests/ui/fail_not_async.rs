#[forkless::main]
fn main(_worker: forkless::Worker) {}
