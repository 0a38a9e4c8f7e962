//! `Hello, World!` over HTTP/1.1 on every core: the main job of the README.
//!
//! ```text
//! cargo run --release --example hello -- --port 8080 --workers 4
//! curl http://127.0.0.1:8080/         # Hello, World!
//! curl http://127.0.0.1:8080/whoami   # slot 1 generation 0 core 1 pid 4242
//! curl http://127.0.0.1:8080/hits     # hits 3: a counter in the cluster's store, shared by all workers
//! curl http://127.0.0.1:8080/ask      # asks the next worker over the cluster's bus, shows its answer
//! curl http://127.0.0.1:8080/crash    # answers, then that worker panics and is respawned
//! ```
//!
//! SIGINT (Ctrl-C) or SIGTERM stops it gracefully: listeners stop accepting,
//! open connections are drained by `forkless::http::serve` (answers carry
//! `Connection: close`, idle keep-alive connections close after a linger),
//! so no client loses a request; a second signal terminates. SIGHUP rolls,
//! SIGTTIN/SIGTTOU add or retire a worker, with the same drain.
//!
//! SIGUSR2, or `forkless-ctl --name hello upgrade` (which waits and says
//! whether it worked), deploys a new build: build it over the same file,
//! and the running process starts it, hands it its listening sockets and
//! its store (the `/hits` counter goes on), and exits once the new process
//! serves; `/whoami` then shows the new pid (README, "Deploying a new
//! build").
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
use hyper::service::service_fn;
use hyper::{header, Method, Request, Response, StatusCode};
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
    // Each connection's service is dropped once its connection is closed:
    // the /crash answer is then written, and the worker panics.
    let crash = Rc::new(Notify::new());
    let make_service = {
        let crash = crash.clone();
        move |_peer| {
            // One `Worker` per connection, shared by its requests: a
            // `Worker` clone per request costs atomics on shared counters,
            // which showed in the p50 and p99 latency.
            let worker = Rc::new(worker.clone());
            let crash = Rc::new(CrashOnClose {
                requested: Cell::new(false),
                crash: crash.clone(),
            });
            service_fn(move |req| handle(req, worker.clone(), crash.clone()))
        }
    };
    // Serves until the worker is asked to stop, then drains: answers carry
    // `Connection: close`, idle keep-alive connections are closed after a
    // linger, and it returns once every connection is closed (the cluster
    // terminates whatever is left after its shutdown timeout).
    let served = forkless::http::serve(listener, make_service, forkless::http::Options::default());
    tokio::select! {
        // Crash first: a connection queued behind the /crash request stays
        // in the slot's socket for the next generation instead of being
        // accepted by this one and lost with it.
        biased;
        _ = crash.notified() => panic!("crash requested through GET /crash"),
        served = served => served,
    }
}

/// A connection's part in `GET /crash`: dropped with the connection's
/// service, once the connection is closed, it crashes the worker if the
/// connection asked for it.
struct CrashOnClose {
    requested: Cell<bool>,
    crash: Rc<Notify>,
}

impl Drop for CrashOnClose {
    fn drop(&mut self) {
        if self.requested.get() {
            self.crash.notify_one();
        }
    }
}

async fn handle(
    req: Request<Incoming>,
    worker: Rc<forkless::Worker>,
    crash: Rc<CrashOnClose>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let response = match (req.method(), req.uri().path()) {
        (&Method::GET, "/") => Response::new(Full::new(Bytes::from_static(b"Hello, World!"))),
        (&Method::GET, "/whoami") => text(
            StatusCode::OK,
            format!(
                "slot {} generation {} core {} pid {}\n",
                worker.slot(),
                worker.generation(),
                worker
                    .core()
                    .map_or_else(|| "-".to_owned(), |c| c.to_string()),
                std::process::id()
            ),
        ),
        // The routes that wait on the store or the bus are boxed, so that
        // this future (which hyper moves into place for every request) stays
        // small for `/`.
        (&Method::GET, "/hits") => Box::pin(hits(&worker)).await,
        (&Method::GET, "/ask") => Box::pin(ask(&worker)).await,
        (&Method::GET, "/crash") => {
            crash.requested.set(true);
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
