//! Per-core HTTP throughput: the `hello` example on one worker, beside a
//! hand-written per-core hyper server and a `#[tokio::main]` hyper server,
//! each on core 0, with wrk on core 1, measured in one run.
//!
//! ```text
//! apt-get install -y wrk
//! cargo bench --bench http_per_core
//! ```
//!
//! `FORKLESS_BENCH_SECS` (default 10) sets each measurement's length,
//! `FORKLESS_BENCH_ROUNDS` (default 3) how many times each server is
//! measured, in turns (A B C A B C ...), so that drift in the machine hits
//! every server alike; the median round is reported. wrk keeps 64
//! connections open with one thread. Needs 2 cores or more.
//!
//! Every server answers `GET /` with `Hello, World!` through the same hyper
//! HTTP/1.1 code; they differ only in the runtime around it:
//!
//! - `forkless`: `examples/hello.rs` in a 1-worker cluster.
//! - `per-core`: written for this comparison: one pinned thread, a
//!   `current_thread` runtime with a `LocalSet`, an `SO_REUSEPORT` listener,
//!   `spawn_local` per connection. What forkless must cost nothing against.
//! - `tokio-mt`: a multi-thread runtime as `#[tokio::main]` builds it (one
//!   worker thread per allowed core: 1 under `taskset -c 0`), `tokio::spawn`
//!   per connection.

#[allow(dead_code)]
#[path = "../examples/hello.rs"]
mod hello;

use std::convert::Infallible;
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

const SERVERS: [&str; 3] = ["forkless", "per-core", "tokio-mt"];

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--serve") {
        let kind = args[i + 1].as_str();
        let port: u16 = args[i + 2].parse().expect("port");
        serve(kind, port);
        return;
    }
    if Command::new("wrk").arg("--version").output().is_err() {
        println!("http_per_core: skipped, wrk is not installed (apt-get install -y wrk)");
        return;
    }
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    if cores.len() < 2 {
        println!("http_per_core: skipped, needs 2 cores (one for the server, one for wrk)");
        return;
    }
    let (server_core, wrk_core) = (cores[0].id, cores[1].id);
    let secs: u64 = env_or("FORKLESS_BENCH_SECS", 10);
    let rounds: usize = env_or("FORKLESS_BENCH_ROUNDS", 3);

    println!(
        "http_per_core: server on core {server_core}, wrk -t1 -c64 on core {wrk_core}, \
         {secs}s x {rounds} rounds each"
    );
    let mut results: Vec<Vec<(f64, f64)>> = vec![Vec::new(); SERVERS.len()];
    for round in 0..rounds {
        for (i, kind) in SERVERS.iter().enumerate() {
            let port = 20000 + (round * SERVERS.len() + i) as u16;
            let mut server = start_server(kind, port, server_core);
            // Warm up: connections, caches, the CPU's clock.
            let _ = wrk(port, wrk_core, 2);
            let (rps, p99) = wrk(port, wrk_core, secs);
            stop(&mut server);
            println!("  round {round} {kind:>9}: {rps:>10.0} req/s  p99 {p99:>6.2} ms");
            results[i].push((rps, p99));
        }
    }

    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let summary: Vec<(f64, f64)> = results
        .iter()
        .map(|r| {
            let mut rps: Vec<f64> = r.iter().map(|x| x.0).collect();
            let mut p99: Vec<f64> = r.iter().map(|x| x.1).collect();
            (median(&mut rps), median(&mut p99))
        })
        .collect();
    let base = summary[1].0;
    println!("\n| server | req/s (median) | p99 ms (median) | vs per-core |");
    println!("|---|---:|---:|---:|");
    for (kind, (rps, p99)) in SERVERS.iter().zip(&summary) {
        println!("| {kind} | {rps:.0} | {p99:.2} | {:.3}x |", rps / base);
    }
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn start_server(kind: &str, port: u16, core: usize) -> Child {
    let exe = std::env::current_exe().expect("bench binary");
    let child = Command::new("taskset")
        .args(["-c", &core.to_string()])
        .arg(exe)
        .args(["--serve", kind, &port.to_string()])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("taskset");
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "{kind} did not start listening");
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

fn stop(server: &mut Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .status();
    let _ = server.wait();
}

/// Runs wrk; returns (requests/s, p99 latency in ms).
fn wrk(port: u16, core: usize, secs: u64) -> (f64, f64) {
    let output = Command::new("taskset")
        .args(["-c", &core.to_string()])
        .args(["wrk", "-t1", "-c64", "--latency"])
        .arg(format!("-d{secs}s"))
        .arg(format!("http://127.0.0.1:{port}/"))
        .output()
        .expect("wrk");
    let text = String::from_utf8_lossy(&output.stdout);
    let rps = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no Requests/sec in wrk's output:\n{text}"));
    let p99 = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("99%"))
        .map(|v| to_ms(v.trim()))
        .unwrap_or_else(|| panic!("no 99% line in wrk's output:\n{text}"));
    if text.contains("Non-2xx") || text.contains("Socket errors") {
        println!("  wrk reported errors:\n{text}");
    }
    (rps, p99)
}

fn to_ms(value: &str) -> f64 {
    let (number, unit) = value.split_at(
        value
            .find(|c: char| c.is_alphabetic())
            .unwrap_or(value.len()),
    );
    let number: f64 = number.parse().unwrap_or(f64::NAN);
    match unit {
        "us" => number / 1000.0,
        "ms" => number,
        "s" => number * 1000.0,
        _ => f64::NAN,
    }
}

fn serve(kind: &str, port: u16) {
    match kind {
        "forkless" => {
            let args = hello::Args {
                port,
                workers: None,
                host: [127, 0, 0, 1].into(),
            };
            forkless::Cluster::builder()
                .run(move |worker| hello::serve(worker, args.clone()))
                .expect("forkless");
        }
        "per-core" => per_core(port),
        "tokio-mt" => tokio_mt(port),
        other => panic!("unknown server {other}"),
    }
}

async fn hello_world(_req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(Response::new(Full::new(Bytes::from_static(
        b"Hello, World!",
    ))))
}

/// The hand-written per-core server: one pinned thread per allowed core.
fn per_core(port: u16) {
    let cores = core_affinity::get_core_ids().expect("affinity");
    let threads: Vec<_> = cores
        .into_iter()
        .map(|core| {
            std::thread::spawn(move || {
                core_affinity::set_for_current(core);
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                let local = tokio::task::LocalSet::new();
                local.block_on(&rt, async move {
                    let socket =
                        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
                            .expect("socket");
                    socket.set_reuse_port(true).expect("reuseport");
                    socket.set_reuse_address(true).expect("reuseaddr");
                    socket
                        .bind(&SocketAddr::from(([127, 0, 0, 1], port)).into())
                        .expect("bind");
                    socket.listen(1024).expect("listen");
                    socket.set_nonblocking(true).expect("nonblocking");
                    let listener =
                        tokio::net::TcpListener::from_std(socket.into()).expect("listener");
                    loop {
                        let Ok((stream, _)) = listener.accept().await else {
                            continue;
                        };
                        tokio::task::spawn_local(async move {
                            let _ = http1::Builder::new()
                                .serve_connection(TokioIo::new(stream), service_fn(hello_world))
                                .await;
                        });
                    }
                });
            })
        })
        .collect();
    for thread in threads {
        let _ = thread.join();
    }
}

/// What `#[tokio::main]` builds: a multi-thread runtime.
fn tokio_mt(port: u16) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("bind");
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service_fn(hello_world))
                    .await;
            });
        }
    });
}
