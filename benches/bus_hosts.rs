//! The bus across hosts on one Redis, beside raw Redis, in one run:
//!
//! - `forkless`: two clusters in this process, hosts `a` and `b` (one
//!   worker each, unpinned), whose buses share a Redis
//!   (`Builder::bus_backend(RedisConfig::new(url).host("a"))`); `a`'s worker
//!   sends to `b`'s slot 0, which counts messages and echoes requests;
//! - `raw`: the same exchange with the `redis` crate on two threads (each a
//!   `current_thread` tokio runtime): `RPUSH` onto the other side's list,
//!   `BLPOP` from one's own.
//!
//! Three workloads, each on a fresh pair:
//!
//! - `send`: 64 tasks send one-way messages (`send_to`; raw: 64 tasks
//!   `RPUSH` on one multiplexed connection); the figure is the messages
//!   per second the other side took (raw: one `BLPOP` loop);
//! - `request`: one request in flight (`request_to`; raw: a ping-pong,
//!   `RPUSH` then `BLPOP` of the answer on each side): round trips per
//!   second, and the latency of each (p50/p99);
//! - `request x64`: 64 requests in flight (forkless only: a raw `BLPOP`
//!   holds its connection, so the raw figure is the 1-in-flight ping-pong).
//!
//! Needs `redis-server` on the PATH (or `BENCH_REDIS` naming a running
//! one) and the `redis` feature:
//!
//! ```text
//! cargo bench --bench bus_hosts --features redis
//! BENCH_SECS=3 BENCH_ROUNDS=3 cargo bench --bench bus_hosts --features redis
//! ```
#![allow(missing_docs)]

#[path = "env/mod.rs"]
mod env;
#[path = "../tests/common/redis_server.rs"]
mod redis_server;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Barrier};
use std::time::{Duration, Instant};

use forkless::{Bytes, Cluster, RedisConfig, Worker};
use redis::AsyncCommands;
use redis_server::RedisServer;

const TASKS: usize = 64;

#[derive(Clone, Copy, PartialEq, Debug)]
enum Workload {
    Send,
    Request,
    RequestMany,
}

/// What one round measured: the rate, and round-trip latencies in ns.
struct Measured {
    rate: f64,
    latencies: Vec<u32>,
}

/// Counts what a round did, for the bench thread to read at the start and
/// at the end of the measured time.
#[derive(Default)]
struct Counters {
    stop: AtomicBool,
    done: AtomicU64,
}

/// Lets the sides get ready (connect, find the other host), then measures
/// `counters.done` over `secs` and stops them.
fn measure(counters: &Counters, ready: &Barrier, secs: f64) -> (f64, Instant) {
    ready.wait();
    let before = counters.done.load(Ordering::Relaxed);
    let started = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(secs));
    let after = counters.done.load(Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    counters.stop.store(true, Ordering::Relaxed);
    ((after - before) as f64 / elapsed, started)
}

fn unique(what: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "bench-{what}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn host(url: &str, prefix: &str, name: &str) -> forkless::Builder {
    Cluster::builder()
        .workers(1)
        .pin_cores(false)
        .request_timeout(Duration::from_secs(30))
        .bus_backend(RedisConfig::new(url).prefix(prefix).host(name))
}

fn forkless_round(url: &str, workload: Workload, secs: f64) -> Measured {
    let prefix = unique("bus");
    let counters = Arc::new(Counters::default());
    let ready = Arc::new(Barrier::new(2));
    let (lat_tx, lat_rx) = mpsc::channel::<Vec<u32>>();

    // Host b: counts messages (the `send` figure), echoes requests.
    let count = counters.clone();
    let b = host(url, &prefix, "b")
        .start(move |worker: Worker| {
            let count = count.clone();
            async move {
                let mut inbox = worker.inbox();
                while let Some(envelope) = inbox.recv().await {
                    if envelope.is_request() {
                        let message = envelope.message().clone();
                        envelope.reply(message);
                    } else if envelope.message().as_ref() != b"hello" {
                        count.done.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        })
        .expect("start host b");

    // Host a: the sender.
    let (count, go) = (counters.clone(), ready.clone());
    let a = host(url, &prefix, "a")
        .start(move |worker: Worker| {
            let (count, go, lat_tx) = (count.clone(), go.clone(), lat_tx.clone());
            async move {
                if worker.generation() > 0 {
                    return;
                }
                let bus = worker.bus();
                // Host b announces itself just after it starts.
                loop {
                    match bus.send_to("b", 0, "hello").await {
                        Ok(()) => break,
                        Err(e) if e.is_no_such_slot() => {
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                        Err(e) => panic!("send to b: {e}"),
                    }
                }
                go.wait();
                let message = Bytes::from_static(b"0123456789abcdef");
                let mut latencies = Vec::new();
                match workload {
                    Workload::Request => {
                        while !count.stop.load(Ordering::Relaxed) {
                            let t0 = Instant::now();
                            bus.request_to("b", 0, message.clone())
                                .await
                                .expect("request");
                            latencies.push(t0.elapsed().as_nanos() as u32);
                            count.done.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Workload::Send | Workload::RequestMany => {
                        let tasks: Vec<_> = (0..TASKS)
                            .map(|_| {
                                let (bus, count) = (bus.clone(), count.clone());
                                let message = message.clone();
                                tokio::task::spawn_local(async move {
                                    while !count.stop.load(Ordering::Relaxed) {
                                        if workload == Workload::Send {
                                            bus.send_to("b", 0, message.clone())
                                                .await
                                                .expect("send");
                                        } else {
                                            bus.request_to("b", 0, message.clone())
                                                .await
                                                .expect("request");
                                            count.done.fetch_add(1, Ordering::Relaxed);
                                        }
                                    }
                                })
                            })
                            .collect();
                        for task in tasks {
                            task.await.expect("task");
                        }
                    }
                }
                lat_tx.send(latencies).expect("bench alive");
                worker.shutdown_signal().await;
            }
        })
        .expect("start host a");
    let (rate, _) = measure(&counters, &ready, secs);
    let latencies = lat_rx.recv().expect("host a's result");
    for cluster in [a, b] {
        cluster.shutdown();
        cluster.join();
    }
    Measured { rate, latencies }
}

/// Runs `side` on a thread of its own with a `current_thread` runtime.
fn side<F, Fut>(side: F) -> std::thread::JoinHandle<()>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()>,
{
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(side());
    })
}

async fn connect(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .expect("redis url")
        .get_multiplexed_async_connection()
        .await
        .expect("connect to redis")
}

/// `BLPOP key` with a short timeout, so that the loops see `stop`.
async fn blpop(conn: &mut redis::aio::MultiplexedConnection, key: &str) -> Option<Vec<u8>> {
    let got: Option<(String, Vec<u8>)> = conn.blpop(key, 0.1).await.expect("blpop");
    got.map(|(_, v)| v)
}

fn raw_round(url: &str, workload: Workload, secs: f64) -> Measured {
    let (to_b, to_a) = (unique("raw-b"), unique("raw-a"));
    let counters = Arc::new(Counters::default());
    let ready = Arc::new(Barrier::new(3));
    let (lat_tx, lat_rx) = mpsc::channel::<Vec<u32>>();

    let (url_b, count, go) = (url.to_owned(), counters.clone(), ready.clone());
    let (key_b, key_a) = (to_b.clone(), to_a.clone());
    let b = side(move || async move {
        let mut conn = connect(&url_b).await;
        go.wait();
        while !count.stop.load(Ordering::Relaxed) {
            let Some(message) = blpop(&mut conn, &key_b).await else {
                continue;
            };
            if workload == Workload::Send {
                count.done.fetch_add(1, Ordering::Relaxed);
            } else {
                let () = conn.rpush(&key_a, message).await.expect("rpush");
            }
        }
    });
    let (url_a, count, go) = (url.to_owned(), counters.clone(), ready.clone());
    let a = side(move || async move {
        let mut conn = connect(&url_a).await;
        go.wait();
        let message = b"0123456789abcdef".to_vec();
        let mut latencies = Vec::new();
        if workload == Workload::Send {
            let tasks: Vec<_> = (0..TASKS)
                .map(|_| {
                    let (mut conn, count) = (conn.clone(), count.clone());
                    let (key, message) = (to_b.clone(), message.clone());
                    tokio::spawn(async move {
                        while !count.stop.load(Ordering::Relaxed) {
                            let _: usize = conn.rpush(&key, &message).await.expect("rpush");
                        }
                    })
                })
                .collect();
            for task in tasks {
                task.await.expect("task");
            }
        } else {
            'run: while !count.stop.load(Ordering::Relaxed) {
                let t0 = Instant::now();
                let _: usize = conn.rpush(&to_b, &message).await.expect("rpush");
                while blpop(&mut conn, &to_a).await.is_none() {
                    if count.stop.load(Ordering::Relaxed) {
                        break 'run;
                    }
                }
                latencies.push(t0.elapsed().as_nanos() as u32);
                count.done.fetch_add(1, Ordering::Relaxed);
            }
        }
        lat_tx.send(latencies).expect("bench alive");
    });
    let (rate, _) = measure(&counters, &ready, secs);
    let latencies = lat_rx.recv().expect("side a's result");
    a.join().expect("side a");
    b.join().expect("side b");
    Measured { rate, latencies }
}

/// The `p` quantile of sorted nanoseconds, in microseconds; "-" if none.
fn percentile(sorted: &[u32], p: f64) -> String {
    if sorted.is_empty() {
        return "-".to_owned();
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    format!("{:.1}", sorted[i] as f64 / 1000.0)
}

fn main() {
    let (secs, rounds) = env::plan();
    let mut server = None;
    let url = match std::env::var("BENCH_REDIS") {
        Ok(url) => url,
        Err(_) if redis_server::installed() => {
            let started = RedisServer::start();
            let url = started.url();
            server = Some(started);
            url
        }
        Err(_) => {
            println!("bus_hosts: skipped (no redis-server on the PATH, no BENCH_REDIS)");
            return;
        }
    };
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!("bus across hosts on one Redis: {secs} s x {rounds} rounds per figure, {cores} cores");
    println!(
        "{:<14} {:>14} {:>14} {:>8} {:>9} {:>9} {:>9} {:>9}",
        "workload", "forkless /s", "raw /s", "ratio", "p50 us", "p99 us", "raw p50", "raw p99"
    );
    for (workload, name) in [
        (Workload::Send, "send"),
        (Workload::Request, "request"),
        (Workload::RequestMany, "request x64"),
    ] {
        let (mut ours, mut raws) = (Vec::new(), Vec::new());
        let (mut lat, mut raw_lat) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            let m = forkless_round(&url, workload, secs);
            ours.push(m.rate);
            lat.extend(m.latencies);
            // 64 requests in flight have no raw twin: the 1-in-flight
            // ping-pong stands beside them.
            let raw_workload = if workload == Workload::RequestMany {
                Workload::Request
            } else {
                workload
            };
            let m = raw_round(&url, raw_workload, secs);
            raws.push(m.rate);
            raw_lat.extend(m.latencies);
        }
        for v in [&mut ours, &mut raws] {
            v.sort_by(f64::total_cmp);
        }
        let (ours, raw) = (ours[ours.len() / 2], raws[raws.len() / 2]);
        lat.sort_unstable();
        raw_lat.sort_unstable();
        println!(
            "{:<14} {:>14.0} {:>14.0} {:>7.2}x {:>9} {:>9} {:>9} {:>9}",
            name,
            ours,
            raw,
            ours / raw,
            percentile(&lat, 0.50),
            percentile(&lat, 0.99),
            percentile(&raw_lat, 0.50),
            percentile(&raw_lat, 0.99),
        );
    }
    drop(server);
}
