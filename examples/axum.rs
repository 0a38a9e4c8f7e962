//! An axum app on every worker, drained gracefully with the worker: a
//! rolling restart (SIGHUP), a shrink (SIGTTOU) or a stop loses no request,
//! keep-alive clients' included.
//!
//! ```text
//! cargo run --example axum -- --port 3000
//! curl http://127.0.0.1:3000/          # Hello from slot 1
//! ```

#[path = "support/mod.rs"]
mod support;

use axum::routing::get;
use axum::Router;
use clap::Parser;

/// An axum app on every core.
#[derive(Parser, Debug, Clone)]
struct Args {
    #[command(flatten)]
    listen: support::Listen,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let workers = args.listen.workers;
    support::run("axum", workers, move |worker| serve(worker, args.clone()))
}

async fn serve(worker: forkless::Worker, args: Args) -> Result<(), forkless::Error> {
    let slot = worker.slot();
    let app = Router::new().route(
        "/",
        get(move || async move { format!("Hello from slot {slot}\n") }),
    );
    let listener = worker.listen((args.listen.host, args.listen.port)).await?;
    if slot == 0 && worker.generation() == 0 {
        println!("listening on http://{}", listener.local_addr()?);
    }
    // Serves until the worker is asked to stop, then drains without
    // dropping a keep-alive client's request: answers carry `Connection:
    // close`, idle connections are closed after a linger (the `axum`
    // feature). `axum::serve(listener, app).with_graceful_shutdown(..)`
    // works too, but closes idle keep-alive connections at once.
    forkless::http::serve_axum(listener, app, forkless::http::Options::default()).await
}
