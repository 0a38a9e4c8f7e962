//! Two clusters that share a store and a bus through Redis, as two hosts of
//! one service would. Run it twice, with two names:
//!
//! ```text
//! redis-server --port 6379 --save '' &
//! cargo run --release --example two_hosts -- --host a --port 8081 &
//! cargo run --release --example two_hosts -- --host b --port 8082 &
//! curl http://127.0.0.1:8081/hits        # hits 1 (host a, slot 0)
//! curl http://127.0.0.1:8082/hits        # hits 2 (host b, slot 1): one counter for both
//! curl http://127.0.0.1:8081/say/hello   # published "hello" to 2 hosts
//! curl http://127.0.0.1:8082/heard       # what host b heard on the topic: a: hello
//! curl http://127.0.0.1:8081/ask/b       # a asks b's slot 0 over the bus: b/0 says hi to a
//! ```
//!
//! `--redis` points at another Redis, `--prefix` keeps two demos apart.

#[path = "support/mod.rs"]
mod support;

use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use clap::Parser;
use forkless::{RedisConfig, Worker};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

/// One host of a service whose hosts share a store and a bus through Redis.
#[derive(Parser, Debug, Clone)]
struct Args {
    /// This host's name on the bus (unique among the hosts).
    #[arg(long)]
    host: String,
    /// TCP port to listen on (0 picks a free one).
    #[arg(long, default_value_t = 8081)]
    port: u16,
    /// Number of workers [default: the cores this process may run on].
    #[arg(long)]
    workers: Option<usize>,
    /// The Redis the hosts share.
    #[arg(long, default_value = "redis://127.0.0.1:6379/")]
    redis: String,
    /// What this demo's Redis keys start with.
    #[arg(long, default_value = "two_hosts")]
    prefix: String,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    listen: IpAddr,
}

/// What this host heard on the `chat` topic, newest last.
type Heard = Arc<Mutex<Vec<String>>>;

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let redis = RedisConfig::new(&args.redis)
        .prefix(&args.prefix)
        .host(&args.host);
    let heard = Heard::default();
    let (workers, configure) = (args.workers, move |builder: forkless::Builder| {
        builder.store_backend(redis.clone()).bus_backend(redis)
    });
    support::run_with("two_hosts", workers, configure, move |worker| {
        serve(worker, args.clone(), heard.clone())
    })
}

async fn serve(worker: Worker, args: Args, heard: Heard) -> Result<(), forkless::Error> {
    // Slot 0 follows the topic for the whole host, and answers requests
    // from other hosts.
    if worker.slot() == 0 {
        let mut chat = worker.bus().subscribe("chat")?;
        chat.confirmed().await?;
        let heard = heard.clone();
        tokio::task::spawn_local(async move {
            while let Some(envelope) = chat.recv().await {
                let from = envelope.host().unwrap_or("me").to_owned();
                let text = String::from_utf8_lossy(envelope.message()).into_owned();
                let mut heard = heard.lock().unwrap_or_else(|e| e.into_inner());
                heard.push(format!("{from}: {text}"));
                let excess = heard.len().saturating_sub(100);
                heard.drain(..excess);
            }
        });
        let mut inbox = worker.inbox();
        let me = args.host.clone();
        tokio::task::spawn_local(async move {
            while let Some(envelope) = inbox.recv().await {
                let to = envelope.host().unwrap_or("me").to_owned();
                envelope.reply(format!("{me}/0 says hi to {to}"));
            }
        });
    }
    let listener = worker.listen((args.listen, args.port)).await?;
    if worker.slot() == 0 && worker.generation() == 0 {
        println!("listening on http://{}", listener.local_addr()?);
    }
    let http = http1::Builder::new();
    while let Some(conn) = listener.accept().await {
        let (stream, _) = conn?;
        let (worker, args, heard) = (worker.clone(), args.clone(), heard.clone());
        let service =
            service_fn(move |req| handle(req, worker.clone(), args.clone(), heard.clone()));
        let conn = http.serve_connection(TokioIo::new(stream), service);
        tokio::task::spawn_local(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection error");
            }
        });
    }
    Ok(())
}

async fn handle(
    req: Request<Incoming>,
    worker: Worker,
    args: Args,
    heard: Heard,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_owned();
    let (status, body) = match path.split('/').collect::<Vec<_>>()[1..] {
        ["hits"] => match worker.store().collection("demo").incr("hits", 1).await {
            Ok(n) => (
                StatusCode::OK,
                format!("hits {n} (host {}, slot {})", args.host, worker.slot()),
            ),
            Err(e) => (StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        },
        ["say", text] => match worker.bus().publish("chat", text.to_owned()).await {
            Ok(hosts) => (
                StatusCode::OK,
                format!("published {text:?} to {hosts} hosts"),
            ),
            Err(e) => (StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        },
        ["heard"] => {
            let heard = heard.lock().unwrap_or_else(|e| e.into_inner());
            (StatusCode::OK, heard.join("\n"))
        }
        ["ask", host] => match worker.bus().request_to(host, 0, "hi").await {
            Ok(reply) => (StatusCode::OK, String::from_utf8_lossy(&reply).into_owned()),
            Err(e) if e.is_no_such_slot() => (StatusCode::NOT_FOUND, e.to_string()),
            Err(e) => (StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        },
        _ => (StatusCode::NOT_FOUND, "not found".to_owned()),
    };
    let mut response = Response::new(Full::new(Bytes::from(body + "\n")));
    *response.status_mut() = status;
    Ok(response)
}
