#[forkless::main(workers = "4")]
async fn main(_worker: forkless::Worker) {}
