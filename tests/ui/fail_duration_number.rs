#[forkless::main(throttle_delay = 2)]
async fn main(_worker: forkless::Worker) {}
