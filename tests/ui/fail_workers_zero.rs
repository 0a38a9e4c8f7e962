#[forkless::main(workers = 0)]
async fn main(_worker: forkless::Worker) {}
