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
#[path = "servers/mod.rs"]
mod servers;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command};
use std::time::Duration;

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
        servers::stop(&mut server);
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
    let command = if kind == "node" {
        let mut c = Command::new("env");
        servers::node(&mut c, port, WORKERS);
        c
    } else {
        let mut c = Command::new(std::env::current_exe().expect("bench binary"));
        c.args(["--serve", kind, &port.to_string()]);
        c
    };
    servers::launch(command, kind, port)
}

fn serve(kind: &str, port: u16) {
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
        "per-core" => servers::per_core(port, Some(WORKERS)),
        "tokio-mt" => servers::tokio_mt(port, Some(WORKERS)),
        other => panic!("unknown server {other}"),
    }
}
