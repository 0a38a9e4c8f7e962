//! Memory: the resident set (RSS) of a 16-worker forkless `hello` cluster,
//! idle and after load (with the shared store and the bus in use), beside a
//! hand-written per-core server and a `#[tokio::main]` server with 16
//! threads, and Node's cluster module with 16 workers (when `node` is on the
//! PATH; all of its processes summed), measured in one run.
//!
//! ```text
//! apt-get install -y wrk
//! cargo bench --bench memory
//! ```
//!
//! Load: `wrk -t1 -c64 -d3s` on `GET /`, then, for forkless, 200 `GET
//! /hits` (a store `incr`) and 200 `GET /ask` (a bus request to the next
//! worker).

#[allow(dead_code)]
#[path = "../examples/hello.rs"]
mod hello;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const WORKERS: usize = 16;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--serve") {
        serve(&args[i + 1], args[i + 2].parse().expect("port"));
        return;
    }
    let benching = args.iter().any(|a| a == "--bench");
    if !benching {
        // `cargo test --benches`: nothing to smoke-test without wrk.
        return;
    }
    if Command::new("wrk").arg("--version").output().is_err() {
        println!("memory: skipped, wrk is not installed (apt-get install -y wrk)");
        return;
    }
    let node = Command::new("node").arg("--version").output().is_ok();
    println!("memory: RSS with {WORKERS} workers, idle and after load");
    println!("\n| server | idle | after load |");
    println!("|---|---:|---:|");
    let mut servers = vec!["forkless", "per-core", "tokio-mt"];
    if node {
        servers.push("node");
    } else {
        println!("(node is not on the PATH: its row is skipped)");
    }
    for (i, kind) in servers.iter().enumerate() {
        let port = 21000 + i as u16;
        let mut server = start(kind, port);
        std::thread::sleep(Duration::from_millis(500));
        let idle = rss_tree(server.id());
        let _ = Command::new("wrk")
            .args(["-t1", "-c64", "-d3s"])
            .arg(format!("http://127.0.0.1:{port}/"))
            .output();
        if *kind == "forkless" {
            for path in ["/hits", "/ask"] {
                for _ in 0..200 {
                    let answer = get(port, path);
                    assert!(answer.starts_with("HTTP/1.1 200"), "{path}: {answer}");
                }
            }
        }
        let loaded = rss_tree(server.id());
        println!("| {kind} | {} | {} |", mb(idle), mb(loaded));
        let _ = Command::new("kill")
            .args(["-TERM", &server.id().to_string()])
            .status();
        let _ = server.wait();
    }
}

fn mb(kib: u64) -> String {
    format!("{:.1} MB", kib as f64 / 1024.0)
}

fn get(port: u16, path: &str) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("read");
    answer
}

/// VmRSS of `pid` and all its descendants, in KiB.
fn rss_tree(pid: u32) -> u64 {
    let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0);
    let children: Vec<u32> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("children")).ok())
        .flat_map(|c| {
            c.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect();
    rss + children.into_iter().map(rss_tree).sum::<u64>()
}

fn start(kind: &str, port: u16) -> Child {
    let mut command = if kind == "node" {
        let mut c = Command::new("node");
        c.arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/benches/node/hello.js"
        ))
        .env("PORT", port.to_string())
        .env("WORKERS", WORKERS.to_string());
        c
    } else {
        let mut c = Command::new(std::env::current_exe().expect("bench binary"));
        c.args(["--serve", kind, &port.to_string()]);
        c
    };
    let dir = std::env::temp_dir().join(format!("forkless-memory-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let child = command
        .env("RUST_LOG", "warn")
        .env("XDG_RUNTIME_DIR", dir)
        .stdout(Stdio::null())
        .spawn()
        .expect("start the server");
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "{kind} did not start listening");
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

fn serve(kind: &str, port: u16) {
    let rt = |threads: usize| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
            .expect("runtime")
    };
    match kind {
        "forkless" => {
            let args = hello::Args {
                port,
                workers: Some(WORKERS),
                host: [127, 0, 0, 1].into(),
            };
            forkless::Cluster::builder()
                .workers(WORKERS)
                .run(move |worker| hello::serve(worker, args.clone()))
                .expect("forkless");
        }
        "per-core" => {
            // WORKERS threads, each a current_thread runtime with its own
            // SO_REUSEPORT listener: the hand-written per-core server.
            let threads: Vec<_> = (0..WORKERS)
                .map(|_| {
                    std::thread::spawn(move || {
                        let rt = tokio::runtime::Builder::new_current_thread()
                            .enable_all()
                            .build()
                            .expect("runtime");
                        rt.block_on(async move { accept_loop(reuseport(port)).await });
                    })
                })
                .collect();
            for t in threads {
                let _ = t.join();
            }
        }
        "tokio-mt" => rt(WORKERS).block_on(async move {
            let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
                .await
                .expect("bind");
            accept_loop(listener).await;
        }),
        other => panic!("unknown server {other}"),
    }
}

fn reuseport(port: u16) -> tokio::net::TcpListener {
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    socket.set_reuse_port(true).expect("reuseport");
    socket.set_reuse_address(true).expect("reuseaddr");
    socket
        .bind(&SocketAddr::from(([127, 0, 0, 1], port)).into())
        .expect("bind");
    socket.listen(1024).expect("listen");
    socket.set_nonblocking(true).expect("nonblocking");
    tokio::net::TcpListener::from_std(socket.into()).expect("listener")
}

async fn accept_loop(listener: tokio::net::TcpListener) {
    use hyper::server::conn::http1;
    use hyper::service::service_fn;
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let service = service_fn(|_req| async {
                Ok::<_, std::convert::Infallible>(hyper::Response::new(http_body_util::Full::new(
                    bytes::Bytes::from_static(b"Hello, World!"),
                )))
            });
            let _ = http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
    }
}
