#[forkless::main(shutdown_timeout = "5 parsecs")]
async fn main(_worker: forkless::Worker) {}
