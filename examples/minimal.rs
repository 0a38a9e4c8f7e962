//! The README's ten lines: one worker per core, each answering with its slot.
//!
//! ```text
//! cargo run --example minimal
//! nc 127.0.0.1 8080    # worker 1 says hi
//! ```

use tokio::io::AsyncWriteExt;

#[forkless::main]
async fn main(worker: forkless::Worker) -> Result<(), forkless::Error> {
    let listener = worker.listen("127.0.0.1:8080").await?;
    while let Some(conn) = listener.accept().await {
        // None once asked to stop
        let (mut stream, _peer) = conn?;
        let reply = format!("worker {} says hi\n", worker.slot());
        tokio::task::spawn_local(async move { stream.write_all(reply.as_bytes()).await });
    }
    Ok(())
}
