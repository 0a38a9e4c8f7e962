// A body returning (), holding !Send state across an await.
use std::rc::Rc;

#[forkless::main(workers = 2)]
async fn main(worker: forkless::Worker) {
    let state = Rc::new(worker.slot());
    tokio::task::yield_now().await;
    if worker.slot() == 1 {
        assert_eq!(*state, 1);
        std::process::exit(0);
    }
    worker.shutdown_signal().await;
}
