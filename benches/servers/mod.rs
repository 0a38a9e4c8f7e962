//! What the HTTP benchmarks share: the peer servers they measure forkless
//! against, and starting and stopping a server process.

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

/// Every Rust peer's answer. With `BENCH_WORK_US=n` in the environment,
/// it first spins for `n` microseconds: a server whose own work per request
/// limits it, for comparing load generators against the same ceiling.
pub(crate) async fn hello_world(
    _req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    static WORK: std::sync::OnceLock<Duration> = std::sync::OnceLock::new();
    let work = *WORK.get_or_init(|| {
        Duration::from_micros(
            std::env::var("BENCH_WORK_US")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
        )
    });
    if !work.is_zero() {
        let start = Instant::now();
        while start.elapsed() < work {
            std::hint::spin_loop();
        }
    }
    Ok(Response::new(Full::new(Bytes::from_static(
        b"Hello, World!",
    ))))
}

/// A listening `SO_REUSEPORT` socket on 127.0.0.1:`port`.
fn reuseport(port: u16) -> std::net::TcpListener {
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    socket.set_reuse_port(true).expect("reuseport");
    socket.set_reuse_address(true).expect("reuseaddr");
    socket
        .bind(&SocketAddr::from(([127, 0, 0, 1], port)).into())
        .expect("bind");
    socket.listen(1024).expect("listen");
    socket.set_nonblocking(true).expect("nonblocking");
    socket.into()
}

/// The hand-written per-core server: a thread per allowed core, pinned to
/// it (or `threads` unpinned threads), each a `current_thread` runtime with
/// a `LocalSet`, its own `SO_REUSEPORT` listener, `spawn_local` per
/// connection.
pub(crate) fn per_core(port: u16, threads: Option<usize>) {
    let cores: Vec<Option<core_affinity::CoreId>> = match threads {
        Some(n) => vec![None; n],
        None => core_affinity::get_core_ids()
            .expect("affinity")
            .into_iter()
            .map(Some)
            .collect(),
    };
    let threads: Vec<_> = cores
        .into_iter()
        .map(|core| {
            std::thread::spawn(move || {
                if let Some(core) = core {
                    core_affinity::set_for_current(core);
                }
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                let local = tokio::task::LocalSet::new();
                local.block_on(&rt, async move {
                    let listener =
                        tokio::net::TcpListener::from_std(reuseport(port)).expect("listener");
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

/// What `#[tokio::main]` builds: a multi-thread runtime (one worker thread
/// per allowed core, or `threads`), `tokio::spawn` per connection.
pub(crate) fn tokio_mt(port: u16, threads: Option<usize>) {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = threads {
        builder.worker_threads(threads);
    }
    let rt = builder.enable_all().build().expect("runtime");
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

/// Node's cluster module with `workers` workers (`benches/node/hello.js`).
pub(crate) fn node(command: &mut Command, port: u16, workers: usize) {
    command
        .arg("node")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/benches/node/hello.js"
        ))
        .env("PORT", port.to_string())
        .env("WORKERS", workers.to_string());
}

/// Starts `command` (quiet, with a control-socket directory of its own)
/// and waits until something listens on `port`.
pub(crate) fn launch(mut command: Command, what: &str, port: u16) -> Child {
    let dir = std::env::temp_dir().join(format!("forkless-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let child = command
        .env("RUST_LOG", "warn")
        .env("XDG_RUNTIME_DIR", dir)
        .stdout(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("start {what}: {e}"));
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "{what} did not start listening");
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

/// SIGTERM, then waits.
pub(crate) fn stop(server: &mut Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .status();
    let _ = server.wait();
}
