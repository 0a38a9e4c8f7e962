//! Chaos, bounded: steady client load on the `hello` example with 2 workers
//! while workers crash again and again through `/crash`, a rolling restart
//! runs, and the cluster shrinks and grows (through its control socket).
//!
//! Asserted: no connection is ever refused, and every request is answered
//! except those in flight on a worker at the moment it crashed (at most one
//! per client per crash). The counts are printed.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common;

const CLIENTS: u64 = 3;
const CRASHES: u64 = 8;
/// Most requests a client sends, whatever happens.
const MAX_REQUESTS: u64 = 100_000;

#[derive(Default)]
struct Counts {
    answered: AtomicU64,
    refused: AtomicU64,
    unanswered: AtomicU64,
}

/// One GET on a new connection; `Some(body)` if answered.
fn get(addr: SocketAddr, path: &str, counts: &Counts) -> Option<String> {
    let mut stream = match TcpStream::connect(addr) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("connect: {e}");
            counts.refused.fetch_add(1, Relaxed);
            return None;
        }
    };
    stream
        .set_read_timeout(Some(common::PATIENCE))
        .expect("timeout");
    let sent = write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    );
    let mut answer = String::new();
    let read = sent.and_then(|()| stream.read_to_string(&mut answer));
    match read {
        Ok(_) if answer.starts_with("HTTP/1.1 200") => {
            counts.answered.fetch_add(1, Relaxed);
            answer.split("\r\n\r\n").nth(1).map(str::to_owned)
        }
        other => {
            eprintln!("unanswered: {other:?} {answer:?}");
            counts.unanswered.fetch_add(1, Relaxed);
            None
        }
    }
}

/// A control-socket request; returns the JSON body.
fn control(socket: &Path, method: &str, path: &str, body: &str) -> serde_json::Value {
    let mut stream = UnixStream::connect(socket).expect("control socket");
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("send");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("answer");
    let body = answer.split("\r\n\r\n").nth(1).expect("a body");
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {answer}"))
}

fn wait_status(socket: &Path, what: &str, done: impl Fn(&serde_json::Value) -> bool) {
    // The socket appears just after the cluster starts.
    common::wait_until("the control socket", || socket.exists());
    common::wait_until(what, || done(&control(socket, "GET", "/status", "")));
}

fn more_answers(counts: &Counts, more: u64) {
    common::more_counted(&counts.answered, more, "answers");
}

fn all_ready(status: &serde_json::Value, size: u64) -> bool {
    status["size"] == size
        && status["rolling"] == false
        && status["workers"]
            .as_array()
            .is_some_and(|ws| ws.iter().all(|w| w["state"] == "ready"))
}

#[test]
fn crashes_a_roll_a_shrink_and_a_grow_under_load_refuse_nothing() {
    let started = Instant::now();
    let dir = common::runtime_dir();
    let socket = dir.join("forkless-hello.sock");
    let (mut hello, addr) = common::spawn_listening(
        Command::new(common::example_binary("hello"))
            .args(["--port", "0", "--workers", "2"])
            .env("XDG_RUNTIME_DIR", &dir)
            .env("RUST_LOG", "error")
            // Crashes back to back must not be throttled into a give-up.
            .env("FORKLESS_THROTTLE_DELAY", "0s")
            .stderr(Stdio::null()),
    );
    wait_status(&socket, "2 ready workers", |s| all_ready(s, 2));

    let stop = Arc::new(AtomicBool::new(false));
    let counts = Arc::new(Counts::default());
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (stop, counts) = (stop.clone(), counts.clone());
            std::thread::spawn(move || {
                for _ in 0..MAX_REQUESTS {
                    if stop.load(Relaxed) {
                        return;
                    }
                    get(addr, "/", &counts);
                }
            })
        })
        .collect();
    more_answers(&counts, 200);

    // Crashes, one after another, each on whichever worker the kernel picks.
    let crashes = Counts::default();
    for _ in 0..CRASHES {
        let answer = get(addr, "/crash", &crashes);
        assert!(answer.is_some_and(|a| a.contains("crashes now")));
        more_answers(&counts, 100);
    }
    wait_status(&socket, "both workers back", |s| all_ready(s, 2));

    control(&socket, "POST", "/restart", "");
    wait_status(&socket, "the roll", |s| all_ready(s, 2));
    more_answers(&counts, 200);

    let answer = control(&socket, "POST", "/resize", r#"{"workers": 1}"#);
    assert_eq!(answer["to"], 1, "{answer}");
    wait_status(&socket, "the shrink", |s| all_ready(s, 1));
    more_answers(&counts, 200);
    control(&socket, "POST", "/resize", r#"{"workers": "+1"}"#);
    wait_status(&socket, "the grow", |s| all_ready(s, 2));
    more_answers(&counts, 200);

    stop.store(true, Relaxed);
    for client in clients {
        client.join().expect("client");
    }
    let status = control(&socket, "GET", "/status", "");
    control(&socket, "POST", "/shutdown", "");
    assert!(hello.wait().expect("hello exits").success());

    let answered = counts.answered.load(Relaxed);
    let refused = counts.refused.load(Relaxed);
    let unanswered = counts.unanswered.load(Relaxed);
    let crashed = crashes.answered.load(Relaxed);
    println!(
        "chaos: {answered} answered, {refused} refused, {unanswered} cut by a crash, \
         {crashed} crashes, 1 roll, 1 shrink, 1 grow, in {:?}",
        started.elapsed()
    );
    println!("final status: {status}");
    assert_eq!(refused, 0, "no connection refused");
    assert!(
        unanswered <= crashed * CLIENTS,
        "only requests in flight on a crashing worker may fail: {unanswered} > {crashed} x {CLIENTS}"
    );
    let restarts: u64 = status["workers"]
        .as_array()
        .expect("workers")
        .iter()
        .map(|w| w["restarts"].as_u64().unwrap_or(0))
        .sum();
    assert!(restarts >= 1, "the crashes restarted workers: {status}");
    assert!(started.elapsed() < Duration::from_secs(60), "bounded");
}
