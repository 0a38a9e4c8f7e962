#[forkless::main(workers)]
async fn main(_worker: forkless::Worker) {}
