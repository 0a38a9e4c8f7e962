//! The axum examples as processes: a plain app on every worker, and a
//! session counter that stays right whichever worker serves each request.

use std::collections::HashSet;
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};

use crate::common;

fn start(example: &str) -> (Child, SocketAddr) {
    common::spawn_listening(
        Command::new(common::example_binary(example))
            .args(["--port", "0", "--workers", "2"])
            .env("XDG_RUNTIME_DIR", common::runtime_dir())
            .env("RUST_LOG", "warn")
            .stderr(Stdio::piped()),
    )
}

/// A GET over a new connection; returns the whole response.
fn get(addr: SocketAddr, cookie: Option<&str>) -> String {
    let mut stream = TcpStream::connect(addr).expect("connect");
    let cookie = cookie.map_or(String::new(), |c| format!("Cookie: {c}\r\n"));
    write!(
        stream,
        "GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{cookie}\r\n"
    )
    .expect("write");
    common::read_answer(&mut stream)
}

#[test]
fn the_axum_example_serves_on_every_worker_and_stops_gracefully() {
    let (child, addr) = start("axum");
    let mut slots = HashSet::new();
    common::wait_until("both workers to answer", || {
        let answer = get(addr, None);
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        let body = answer.split("\r\n\r\n").nth(1).expect("a body");
        slots.insert(body.trim().to_owned());
        slots.len() >= 2
    });
    assert_eq!(
        slots,
        HashSet::from([
            "Hello from slot 0".to_owned(),
            "Hello from slot 1".to_owned()
        ])
    );
    common::stop_example(child);
}

#[test]
fn a_session_counter_stays_right_across_workers() {
    let (child, addr) = start("axum_sessions");
    let first = get(addr, None);
    assert!(first.contains("counter 1 slot"), "{first}");
    let cookie = first
        .lines()
        .find_map(|l| {
            l.strip_prefix("set-cookie: ")
                .or_else(|| l.strip_prefix("Set-Cookie: "))
        })
        .and_then(|c| c.split(';').next())
        .expect("a session cookie")
        .to_owned();
    let mut slots = HashSet::new();
    let mut last = String::new();
    for n in 2..=200 {
        let answer = get(addr, Some(&cookie));
        let body = answer
            .split("\r\n\r\n")
            .nth(1)
            .expect("a body")
            .trim()
            .to_owned();
        let (count, slot) = body
            .strip_prefix("counter ")
            .and_then(|r| r.split_once(" slot "))
            .unwrap_or_else(|| panic!("{answer}"));
        assert_eq!(count, n.to_string(), "request {n}: {answer}");
        slots.insert(slot.to_owned());
        last = body;
    }
    assert!(last.starts_with("counter 200 "), "{last}");
    assert_eq!(slots.len(), 2, "the requests landed on both workers");
    common::stop_example(child);
}
