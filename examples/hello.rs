//! `Hello, World!` over HTTP/1.1 on every core: the main job of the README.
//!
//! ```text
//! cargo run --release --example hello -- --port 8080 --workers 4
//! curl http://127.0.0.1:8080/         # Hello, World!
//! curl http://127.0.0.1:8080/whoami   # slot 1 generation 0 core 1
//! curl http://127.0.0.1:8080/hits     # hits 3: a counter in the cluster's store, shared by all workers
//! curl http://127.0.0.1:8080/ask      # asks the next worker over the cluster's bus, shows its answer
//! curl http://127.0.0.1:8080/crash    # answers, then that worker panics and is respawned
//! ```
//!
//! SIGINT (Ctrl-C) or SIGTERM stops it gracefully: listeners stop accepting,
//! open connections finish their requests; a second signal terminates.
//! `RUST_LOG=debug` shows more of what the supervisor does.

#[path = "support/mod.rs"]
mod support;

use std::cell::Cell;
use std::convert::Infallible;
use std::net::IpAddr;
use std::rc::Rc;

use bytes::Bytes;
use clap::Parser;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{header, Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::sync::Notify;

/// A forkless cluster answering `Hello, World!` on every core.
#[derive(Parser, Debug, Clone)]
pub(crate) struct Args {
    /// TCP port to listen on (0 picks a free one).
    #[arg(long, default_value_t = 8080)]
    pub(crate) port: u16,
    /// Number of workers [default: the cores this process may run on].
    #[arg(long)]
    pub(crate) workers: Option<usize>,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub(crate) host: IpAddr,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let workers = args.workers;
    support::run("hello", workers, move |worker| serve(worker, args.clone()))
}

/// The worker body: one per core, and again after each crash.
pub(crate) async fn serve(worker: forkless::Worker, args: Args) -> Result<(), forkless::Error> {
    let listener = worker.listen((args.host, args.port)).await?;
    if worker.slot() == 0 && worker.generation() == 0 {
        println!("listening on http://{}", listener.local_addr()?);
    }
    // Logged inside the worker's span: `worker{slot=.. generation=.. core=..}`.
    tracing::info!(addr = %listener.local_addr()?, "serving");
    // Answer requests from the other workers (`GET /ask`) over the bus.
    let mut inbox = worker.inbox();
    let me = worker.slot();
    tokio::task::spawn_local(async move {
        while let Some(envelope) = inbox.recv().await {
            envelope.reply(format!("slot {me} says hi"));
        }
    });
    let crash = Rc::new(Notify::new());
    let open = Rc::new(Cell::new(0usize));
    let all_closed = Rc::new(Notify::new());
    let http = http1::Builder::new();
    loop {
        tokio::select! {
            // Crash first: a connection queued behind the /crash request stays
            // in the slot's socket for the next generation instead of being
            // accepted by this one and lost with it.
            biased;
            _ = crash.notified() => panic!("crash requested through GET /crash"),
            conn = listener.accept() => {
                // `None`: asked to stop.
                let Some(conn) = conn else { break };
                let (stream, _peer) = conn?;
                let crash_here = Rc::new(Cell::new(false));
                let first_request = Rc::new(Notify::new());
                let served = Rc::new(Cell::new(false));
                let service = {
                    // One `Worker` per connection, shared by its requests: a
                    // `Worker` clone per request costs atomics on shared
                    // counters, which showed in the p50 and p99 latency.
                    let worker = Rc::new(worker.clone());
                    let crash_here = crash_here.clone();
                    let (first_request, served) = (first_request.clone(), served.clone());
                    service_fn(move |req| {
                        if !served.replace(true) {
                            first_request.notify_one();
                        }
                        handle(req, worker.clone(), crash_here.clone())
                    })
                };
                let conn = http.serve_connection(TokioIo::new(stream), service);
                let (crash, stop) = (crash.clone(), worker.shutdown_signal());
                let (open, all_closed) = (open.clone(), all_closed.clone());
                open.set(open.get() + 1);
                tokio::task::spawn_local(async move {
                    tokio::pin!(conn);
                    let result = tokio::select! {
                        result = conn.as_mut() => result,
                        // Asked to stop: finish the request in flight, then
                        // close. A connection that has not sent its first
                        // request yet gets it answered first: its client
                        // has likely sent it already, and closing now would
                        // reset it.
                        () = async {
                            stop.await;
                            if !served.get() {
                                first_request.notified().await;
                            }
                        } => {
                            conn.as_mut().graceful_shutdown();
                            conn.await
                        }
                    };
                    if let Err(e) = result {
                        tracing::debug!(error = %e, "connection error");
                    }
                    open.set(open.get() - 1);
                    if open.get() == 0 {
                        all_closed.notify_one();
                    }
                    // The /crash answer is written and the connection closed:
                    // now the body panics.
                    if crash_here.get() {
                        crash.notify_one();
                    }
                });
            }
        }
    }
    // Let open connections finish their requests; the cluster terminates
    // whatever is left after its shutdown timeout.
    while open.get() > 0 {
        all_closed.notified().await;
    }
    Ok(())
}

async fn handle(
    req: Request<Incoming>,
    worker: Rc<forkless::Worker>,
    crash: Rc<Cell<bool>>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let response = match (req.method(), req.uri().path()) {
        (&Method::GET, "/") => Response::new(Full::new(Bytes::from_static(b"Hello, World!"))),
        (&Method::GET, "/whoami") => text(
            StatusCode::OK,
            format!(
                "slot {} generation {} core {}\n",
                worker.slot(),
                worker.generation(),
                worker
                    .core()
                    .map_or_else(|| "-".to_owned(), |c| c.to_string())
            ),
        ),
        // The routes that wait on the store or the bus are boxed, so that
        // this future (which hyper moves into place for every request) stays
        // small for `/`.
        (&Method::GET, "/hits") => Box::pin(hits(&worker)).await,
        (&Method::GET, "/ask") => Box::pin(ask(&worker)).await,
        (&Method::GET, "/crash") => {
            crash.set(true);
            let mut response = text(
                StatusCode::OK,
                format!("slot {} crashes now\n", worker.slot()),
            );
            response.headers_mut().insert(
                header::CONNECTION,
                header::HeaderValue::from_static("close"),
            );
            response
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n".to_owned()),
    };
    Ok(response)
}

/// `GET /hits`: a counter in the cluster's store.
async fn hits(worker: &forkless::Worker) -> Response<Full<Bytes>> {
    match worker.store().collection("hello").incr("hits", 1).await {
        Ok(n) => text(StatusCode::OK, format!("hits {n}\n")),
        Err(e) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")),
    }
}

/// `GET /ask`: asks the next worker over the bus.
async fn ask(worker: &forkless::Worker) -> Response<Full<Bytes>> {
    let bus = worker.bus();
    let next = (worker.slot() + 1) % bus.size();
    match bus.request(next, "hi").await {
        Ok(reply) => text(
            StatusCode::OK,
            format!(
                "slot {} asked slot {next}: {}\n",
                worker.slot(),
                String::from_utf8_lossy(&reply)
            ),
        ),
        Err(e) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")),
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
}
