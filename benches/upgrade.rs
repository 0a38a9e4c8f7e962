//! An upgrade beside a rolling restart, under the same clients, in one run:
//! how long each takes until the new code serves, and the longest request
//! a client saw while it happened.
//!
//! ```text
//! cargo bench --bench upgrade
//! ```
//!
//! The bench starts itself again as the server (`BENCH_UPGRADE_SERVE`): a
//! 2-worker cluster under `run`, answering `GET` with `ok` through
//! `forkless::http::serve`; the clients open a new connection per request.
//! An upgrade starts this same binary anew. Four
//! client threads send requests all along. `BENCH_ROUNDS` (default 5)
//! rounds, each: a rolling restart (`POST /restart`, done when every slot
//! serves a new, ready generation), then an upgrade (`POST /upgrade`, done
//! when it answers: the new process serves). Between events, a quiet
//! second gives the baseline. Prints the medians and the longest request
//! latency in each kind of window, and the failed requests (expected: 0).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use forkless::Cluster;
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::service::service_fn;
use hyper::Response;

const SERVE: &str = "BENCH_UPGRADE_SERVE";
const CLIENTS: usize = 4;

fn main() {
    if let Ok(port) = std::env::var(SERVE) {
        serve(port.parse().expect("a port"));
        return;
    }
    drive();
}

/// The server: answers every request with `ok`, through `forkless::http`
/// (which finishes the requests in flight when a worker stops).
fn serve(port: u16) {
    let report =
        Cluster::builder()
            .workers(2)
            .name("bench-upgrade")
            .run(move |worker| async move {
                let listener = worker.listen(("127.0.0.1", port)).await?;
                forkless::http::serve(
                    listener,
                    |_peer| {
                        service_fn(|_req| async {
                            Ok::<_, std::convert::Infallible>(Response::new(Full::new(
                                Bytes::from_static(b"ok"),
                            )))
                        })
                    },
                    forkless::http::Options::default(),
                )
                .await
            });
    if let Err(e) = report {
        eprintln!("server: {e}");
        std::process::exit(1);
    }
}

/// One request: its latency, or why it failed.
fn request(addr: SocketAddr) -> Result<Duration, String> {
    let start = Instant::now();
    let mut stream = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| e.to_string())?;
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .map_err(|e| format!("write: {e}"))?;
    let mut answer = Vec::new();
    stream
        .read_to_end(&mut answer)
        .map_err(|e| format!("read: {e}"))?;
    if answer.ends_with(b"ok") {
        Ok(start.elapsed())
    } else {
        Err(format!("answer {:?}", String::from_utf8_lossy(&answer)))
    }
}

/// `method path` on the control socket; the body of a 2xx answer.
fn control(socket: &Path, method: &str, path: &str) -> String {
    let mut stream = UnixStream::connect(socket).expect("control socket");
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    )
    .expect("write");
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    assert!(
        answer.starts_with("HTTP/1.1 2"),
        "{method} {path}: {answer}"
    );
    answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default()
}

fn status(socket: &Path) -> serde_json::Value {
    serde_json::from_str(&control(socket, "GET", "/status")).expect("status JSON")
}

/// Every slot's generation, once none is starting and no roll runs.
fn settled_generations(socket: &Path) -> Option<Vec<u64>> {
    let status = status(socket);
    if status["rolling"].as_bool() != Some(false) {
        return None;
    }
    let workers = status["workers"].as_array()?;
    workers
        .iter()
        .map(|w| {
            (w["state"] == "ready")
                .then(|| w["generation"].as_u64())
                .flatten()
        })
        .collect()
}

/// Whether process `pid` still runs (a zombie has ended).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
    })
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn drive() {
    let rounds: usize = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let dir: PathBuf =
        std::env::temp_dir().join(format!("forkless-bench-upgrade-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("runtime dir");
    let socket = dir.join("forkless-bench-upgrade.sock");
    let exe = std::env::current_exe().expect("this binary");
    // Waited for once the first upgrade replaces it (0 rounds: killed below
    // by pid, and reaped with this process).
    #[allow(clippy::zombie_processes)]
    let mut server = std::process::Command::new(exe)
        .env(SERVE, port.to_string())
        .env("XDG_RUNTIME_DIR", &dir)
        .env("RUST_LOG", "error")
        .env_remove("RUST_BACKTRACE")
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("start the server");
    let deadline = Instant::now() + Duration::from_secs(30);
    while request(addr).is_err() || !socket.exists() {
        assert!(Instant::now() < deadline, "the server did not start");
        std::thread::sleep(Duration::from_millis(20));
    }

    let stop = Arc::new(AtomicBool::new(false));
    let samples = Arc::new(Mutex::new(Vec::<(Instant, Duration)>::new()));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (stop, samples, failures) = (stop.clone(), samples.clone(), failures.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let sent = Instant::now();
                    match request(addr) {
                        Ok(latency) => samples.lock().expect("lock").push((sent, latency)),
                        Err(why) => failures.lock().expect("lock").push(why),
                    }
                }
            })
        })
        .collect();

    let quiet = Duration::from_secs(1);
    let mut windows: Vec<(&str, Instant, Instant)> = Vec::new();
    let (mut restarts, mut upgrades) = (Vec::new(), Vec::new());
    let mut pid = server.id();
    for _ in 0..rounds {
        let start = Instant::now();
        std::thread::sleep(quiet);
        windows.push(("quiet", start, Instant::now()));

        let before = loop {
            if let Some(g) = settled_generations(&socket) {
                break g;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let start = Instant::now();
        control(&socket, "POST", "/restart");
        loop {
            if settled_generations(&socket).is_some_and(|g| {
                g.len() == before.len() && g.iter().zip(&before).all(|(a, b)| a > b)
            }) {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let took = start.elapsed();
        restarts.push(took);
        windows.push(("restart", start, Instant::now()));

        let start = Instant::now();
        std::thread::sleep(quiet);
        windows.push(("quiet", start, Instant::now()));

        let old = pid;
        let start = Instant::now();
        let answer: serde_json::Value =
            serde_json::from_str(&control(&socket, "POST", "/upgrade")).expect("upgrade JSON");
        upgrades.push(start.elapsed());
        pid = answer["pid"].as_u64().expect("the new pid") as u32;
        // The old process drains meanwhile: the window lasts until it is
        // gone.
        if old == server.id() {
            let _ = server.wait();
        } else {
            let deadline = Instant::now() + Duration::from_secs(60);
            while alive(old) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        windows.push(("upgrade", start, Instant::now()));
    }
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        let _ = client.join();
    }
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();

    let samples = samples.lock().expect("lock");
    let longest = |kind: &str| {
        samples
            .iter()
            .filter(|(sent, _)| {
                windows
                    .iter()
                    .any(|(k, a, b)| *k == kind && sent >= a && sent <= b)
            })
            .map(|(_, l)| *l)
            .max()
            .unwrap_or_default()
    };
    let failures = failures.lock().expect("lock");
    println!(
        "upgrade vs rolling restart: 2 workers, {CLIENTS} clients (a new connection per request), {rounds} rounds, {} cores",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!(
        "{:<16} {:>14} {:>22}",
        "event", "median time", "longest request seen"
    );
    println!(
        "{:<16} {:>14} {:>19.2} ms",
        "none (quiet 1 s)",
        "-",
        longest("quiet").as_secs_f64() * 1e3
    );
    println!(
        "{:<16} {:>11.1} ms {:>19.2} ms",
        "rolling restart",
        median(&mut restarts).as_secs_f64() * 1e3,
        longest("restart").as_secs_f64() * 1e3
    );
    println!(
        "{:<16} {:>11.1} ms {:>19.2} ms",
        "upgrade",
        median(&mut upgrades).as_secs_f64() * 1e3,
        longest("upgrade").as_secs_f64() * 1e3
    );
    println!(
        "requests: {} answered, {} failed{}",
        samples.len(),
        failures.len(),
        failures
            .first()
            .map_or(String::new(), |f| format!(" (first: {f})"))
    );
    let _ = std::fs::remove_dir_all(dir);
}
