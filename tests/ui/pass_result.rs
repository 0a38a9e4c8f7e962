// A body returning Result, with every option set. It checks its context and
// ends the process, since a cluster otherwise runs until a signal.
#[forkless::main(
    workers = 1,
    shutdown_timeout = "1s",
    terminate_timeout = "500ms",
    throttle_delay = "2s",
    crate = "forkless"
)]
async fn main(worker: forkless::Worker) -> Result<(), forkless::Error> {
    assert_eq!(worker.slot(), 0);
    assert_eq!(worker.generation(), 0);
    assert_eq!(
        std::thread::current().name(),
        Some("forkless-w0"),
        "the body runs on the worker thread"
    );
    let listener = worker.listen("127.0.0.1:0").await?;
    assert_ne!(listener.local_addr()?.port(), 0);
    std::process::exit(0);
}
