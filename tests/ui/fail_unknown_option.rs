#[forkless::main(workers = 2, threads = 4)]
async fn main(_worker: forkless::Worker) {}
