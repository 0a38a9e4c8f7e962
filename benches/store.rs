//! The shared store, side by side with its baselines, in one run:
//!
//! - `forkless`: `worker.store()`, the store under test;
//! - `mutex`: one `Arc<Mutex<HashMap>>` used directly by the same workers
//!   (the baseline the issue names; both workers contend on its one lock);
//! - `sharded`: 32 such maps, a key's hash picking one, used directly: the
//!   in-process ceiling for a store built like forkless's;
//! - `redis`: Redis on loopback through the `redis` crate (one multiplexed
//!   connection per worker), when `redis-server` is on the PATH (or
//!   `BENCH_REDIS` names a running one, as `redis://127.0.0.1:6379`);
//! - `forkless-redis`: `worker.store()` again, on the Redis backend
//!   (`Builder::store_backend`) and the same Redis: what a store shared by
//!   several hosts costs against the in-process one and raw Redis. Needs
//!   the `redis` feature: `cargo bench --bench store --features redis`.
//!
//! Two workloads, each on a 2-worker forkless cluster (the workers pinned to
//! cores as usual), all doing set+get pairs on 16-byte values:
//!
//! - (a) sequential: one operation in flight per worker; ops/s and the
//!   latency of each operation (p50/p99);
//! - (b) concurrent: 64 tasks per worker.
//!
//! Backends take turns, round after round; the figure is the median round.
//!
//! ```text
//! cargo bench --bench store
//! BENCH_SECS=3 BENCH_ROUNDS=3 cargo bench --bench store
//! BENCH_BACKENDS=redis,forkless-redis cargo bench --bench store --features redis
//! ```
#![allow(missing_docs)]

#[path = "env/mod.rs"]
pub(crate) mod env;
#[path = "../tests/common/redis_server.rs"]
mod redis_server;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use forkless::{Bytes, Cluster, Collection, Worker};
use redis::AsyncCommands;
use redis_server::RedisServer;

const WORKERS: usize = 2;
const TASKS: usize = 64;
const KEYS_PER_TASK: usize = 1024;

#[derive(Clone)]
enum Backend {
    Forkless,
    Mutex(Arc<Mutex<HashMap<String, Bytes>>>),
    Sharded(Arc<Sharded>),
    Redis(String),
    #[cfg(feature = "redis")]
    ForklessRedis(String),
}

/// Maps behind one mutex each, on cache lines of their own.
#[repr(align(128))]
struct Shard(Mutex<HashMap<String, Bytes>>);

struct Sharded {
    hasher: std::collections::hash_map::RandomState,
    shards: Vec<Shard>,
}

impl Sharded {
    fn new() -> Sharded {
        Sharded {
            hasher: Default::default(),
            shards: (0..32).map(|_| Shard(Mutex::new(HashMap::new()))).collect(),
        }
    }

    fn shard(&self, key: &str) -> std::sync::MutexGuard<'_, HashMap<String, Bytes>> {
        use std::hash::BuildHasher;
        let i = self.hasher.hash_one(key) as usize % self.shards.len();
        self.shards[i].0.lock().expect("lock")
    }
}

impl Backend {
    fn name(&self) -> &'static str {
        match self {
            Backend::Forkless => "forkless",
            Backend::Mutex(_) => "mutex",
            Backend::Sharded(_) => "sharded",
            Backend::Redis(_) => "redis",
            #[cfg(feature = "redis")]
            Backend::ForklessRedis(_) => "forkless-redis",
        }
    }
}

enum Client {
    Forkless(Collection),
    Mutex(Arc<Mutex<HashMap<String, Bytes>>>),
    Sharded(Arc<Sharded>),
    Redis(redis::aio::MultiplexedConnection),
}

impl Client {
    async fn new(backend: &Backend, worker: &Worker) -> Client {
        match backend {
            Backend::Forkless => Client::Forkless(worker.store().collection("bench")),
            #[cfg(feature = "redis")]
            Backend::ForklessRedis(_) => Client::Forkless(worker.store().collection("bench")),
            Backend::Mutex(map) => Client::Mutex(map.clone()),
            Backend::Sharded(map) => Client::Sharded(map.clone()),
            Backend::Redis(url) => {
                let client = redis::Client::open(url.as_str()).expect("redis url");
                let conn = client
                    .get_multiplexed_async_connection()
                    .await
                    .expect("connect to redis");
                Client::Redis(conn)
            }
        }
    }

    fn clone_for_task(&self) -> Client {
        match self {
            Client::Forkless(c) => Client::Forkless(c.clone()),
            Client::Mutex(m) => Client::Mutex(m.clone()),
            Client::Sharded(m) => Client::Sharded(m.clone()),
            Client::Redis(conn) => Client::Redis(conn.clone()),
        }
    }

    async fn set(&mut self, key: &str, value: &Bytes) {
        // The in-process baselines take part in tokio's cooperative budget
        // as forkless's store (and every tokio channel) does, so that their
        // 64 tasks take turns as forkless's do instead of one task running
        // alone until the end.
        if matches!(self, Client::Mutex(_) | Client::Sharded(_)) {
            tokio::task::consume_budget().await;
        }
        match self {
            Client::Forkless(c) => c.set(key, value.clone()).await.expect("set"),
            Client::Mutex(m) => {
                m.lock()
                    .expect("lock")
                    .insert(key.to_owned(), value.clone());
            }
            Client::Sharded(m) => {
                m.shard(key).insert(key.to_owned(), value.clone());
            }
            Client::Redis(conn) => conn
                .set::<_, _, ()>(key, value.as_ref())
                .await
                .expect("redis set"),
        }
    }

    async fn get(&mut self, key: &str) -> Option<Bytes> {
        if matches!(self, Client::Mutex(_) | Client::Sharded(_)) {
            tokio::task::consume_budget().await;
        }
        match self {
            Client::Forkless(c) => c.get(key).await.expect("get"),
            Client::Mutex(m) => m.lock().expect("lock").get(key).cloned(),
            Client::Sharded(m) => m.shard(key).get(key).cloned(),
            Client::Redis(conn) => conn
                .get::<_, Option<Vec<u8>>>(key)
                .await
                .expect("redis get")
                .map(Bytes::from),
        }
    }
}

/// What one worker measured.
struct Measured {
    ops: u64,
    /// Per-operation latency in nanoseconds (sequential workload only).
    latencies: Vec<u32>,
}

#[derive(Clone, Copy, PartialEq)]
enum Workload {
    Sequential,
    Concurrent,
}

fn keys(slot: usize, task: usize) -> Vec<String> {
    (0..KEYS_PER_TASK)
        .map(|i| format!("w{slot}t{task}k{i}"))
        .collect()
}

async fn sequential(mut client: Client, slot: usize, stop: &AtomicBool) -> Measured {
    let keys = keys(slot, 0);
    let value = Bytes::from_static(b"0123456789abcdef");
    let mut latencies = Vec::with_capacity(1 << 20);
    let mut ops = 0;
    let mut i = 0;
    while !stop.load(Ordering::Relaxed) {
        let key = &keys[i % KEYS_PER_TASK];
        let t0 = Instant::now();
        client.set(key, &value).await;
        let t1 = Instant::now();
        let got = client.get(key).await;
        let t2 = Instant::now();
        assert!(got.is_some());
        latencies.push((t1 - t0).as_nanos() as u32);
        latencies.push((t2 - t1).as_nanos() as u32);
        ops += 2;
        i += 1;
    }
    Measured { ops, latencies }
}

async fn concurrent(client: Client, slot: usize, stop: Arc<AtomicBool>) -> Measured {
    let tasks: Vec<_> = (0..TASKS)
        .map(|task| {
            let mut client = client.clone_for_task();
            let stop = stop.clone();
            tokio::task::spawn_local(async move {
                let keys = keys(slot, task);
                let value = Bytes::from_static(b"0123456789abcdef");
                let mut ops = 0u64;
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    let key = &keys[i % KEYS_PER_TASK];
                    client.set(key, &value).await;
                    let got = client.get(key).await;
                    assert!(got.is_some());
                    ops += 2;
                    i += 1;
                }
                ops
            })
        })
        .collect();
    let mut ops = 0;
    for task in tasks {
        ops += task.await.expect("task");
    }
    Measured {
        ops,
        latencies: Vec::new(),
    }
}

/// One round: a 2-worker cluster runs `workload` on `backend` for `secs`.
fn round(backend: &Backend, workload: Workload, secs: f64) -> (f64, Vec<u32>) {
    let stop = Arc::new(AtomicBool::new(false));
    let (ready_tx, ready_rx) = mpsc::channel::<()>();
    let (done_tx, done_rx) = mpsc::channel::<Measured>();
    let go = Arc::new(std::sync::Barrier::new(WORKERS + 1));
    let cluster = {
        let backend = backend.clone();
        let stop = stop.clone();
        let go = go.clone();
        #[allow(unused_mut)]
        let mut builder = Cluster::builder().workers(WORKERS);
        #[cfg(feature = "redis")]
        if let Backend::ForklessRedis(url) = &backend {
            builder =
                builder.store_backend(forkless::RedisConfig::new(url).prefix("forkless-bench"));
        }
        builder
            .start(move |worker: Worker| {
                let backend = backend.clone();
                let stop = stop.clone();
                let go = go.clone();
                let ready_tx = ready_tx.clone();
                let done_tx = done_tx.clone();
                async move {
                    if worker.generation() > 0 {
                        return;
                    }
                    let client = Client::new(&backend, &worker).await;
                    ready_tx.send(()).expect("bench alive");
                    go.wait();
                    let measured = match workload {
                        Workload::Sequential => sequential(client, worker.slot(), &stop).await,
                        Workload::Concurrent => concurrent(client, worker.slot(), stop).await,
                    };
                    done_tx.send(measured).expect("bench alive");
                    worker.shutdown_signal().await;
                }
            })
            .expect("start the cluster")
    };
    for _ in 0..WORKERS {
        ready_rx.recv().expect("worker ready");
    }
    go.wait();
    let started = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(secs));
    stop.store(true, Ordering::Relaxed);
    let mut ops = 0;
    let mut latencies = Vec::new();
    for _ in 0..WORKERS {
        let m = done_rx.recv().expect("worker result");
        ops += m.ops;
        latencies.extend(m.latencies);
    }
    let elapsed = started.elapsed().as_secs_f64();
    cluster.shutdown();
    cluster.join();
    (ops as f64 / elapsed, latencies)
}

/// One round of the forkless store (`worker.store()`) alone, in ops/s: for
/// `benches/alloc_cost.rs`, which runs it under two global allocators.
#[allow(dead_code)]
pub(crate) fn forkless_round(concurrent: bool, secs: f64) -> f64 {
    let workload = if concurrent {
        Workload::Concurrent
    } else {
        Workload::Sequential
    };
    round(&Backend::Forkless, workload, secs).0
}

/// The `p` quantile of sorted nanoseconds, in microseconds; "-" if none.
fn percentile(sorted: &[u32], p: f64) -> String {
    if sorted.is_empty() {
        return "-".to_owned();
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    format!("{:.2}", sorted[i] as f64 / 1000.0)
}

/// A Redis to measure: `BENCH_REDIS`, or a `redis-server` started
/// on a free loopback port for this run.
fn redis() -> Option<(String, Option<RedisServer>)> {
    if let Ok(url) = std::env::var("BENCH_REDIS") {
        return Some((url, None));
    }
    if !redis_server::installed() {
        return None;
    }
    let server = RedisServer::start();
    Some((server.url(), Some(server)))
}

fn main() {
    let (secs, rounds) = env::plan();

    let mut backends = vec![
        Backend::Forkless,
        Backend::Mutex(Arc::new(Mutex::new(HashMap::new()))),
        Backend::Sharded(Arc::new(Sharded::new())),
    ];
    let redis = redis();
    match &redis {
        Some((url, _)) => {
            backends.push(Backend::Redis(url.clone()));
            #[cfg(feature = "redis")]
            backends.push(Backend::ForklessRedis(url.clone()));
            #[cfg(not(feature = "redis"))]
            println!("forkless-redis: skipped (build with `--features redis` to measure it)");
        }
        None => println!("redis: skipped (no redis-server on the PATH, no BENCH_REDIS)"),
    }
    // `BENCH_BACKENDS=redis,forkless-redis` measures only those.
    if let Ok(only) = std::env::var("BENCH_BACKENDS") {
        let only: Vec<&str> = only.split(',').map(str::trim).collect();
        backends.retain(|b| only.contains(&b.name()));
    }
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "store benchmark: {WORKERS} workers, {secs} s x {rounds} rounds per figure, {cores} cores"
    );

    for (workload, title) in [
        (
            Workload::Sequential,
            "(a) sequential: 1 op in flight per worker",
        ),
        (Workload::Concurrent, "(b) concurrent: 64 tasks per worker"),
    ] {
        let mut results: Vec<(Vec<f64>, Vec<u32>)> = vec![(Vec::new(), Vec::new()); backends.len()];
        for _ in 0..rounds {
            for (b, backend) in backends.iter().enumerate() {
                match backend {
                    Backend::Mutex(map) => map.lock().expect("lock").clear(),
                    Backend::Sharded(map) => {
                        for shard in &map.shards {
                            shard.0.lock().expect("lock").clear();
                        }
                    }
                    _ => {}
                }
                let (rate, latencies) = round(backend, workload, secs);
                results[b].0.push(rate);
                results[b].1.extend(latencies);
            }
        }
        println!("\n{title}");
        println!(
            "{:<15} {:>14} {:>11} {:>11} {:>11} {:>10} {:>10}",
            "backend", "ops/s", "vs mutex", "vs sharded", "vs redis", "p50 us", "p99 us"
        );
        let medians: Vec<f64> = results
            .iter_mut()
            .map(|(rates, _)| {
                rates.sort_by(f64::total_cmp);
                rates[rates.len() / 2]
            })
            .collect();
        let rate_of = |name: &str| {
            backends
                .iter()
                .position(|b| b.name() == name)
                .map(|i| medians[i])
        };
        let ratio = |rate: f64, base: Option<f64>, digits: usize| {
            base.map_or("-".to_owned(), |r| format!("{:.digits$}x", rate / r))
        };
        let (mutex_rate, sharded_rate) = (rate_of("mutex"), rate_of("sharded"));
        let redis_rate = rate_of("redis");
        for (b, backend) in backends.iter().enumerate() {
            let lat = &mut results[b].1;
            lat.sort_unstable();
            println!(
                "{:<15} {:>14.0} {:>11} {:>11} {:>11} {:>10} {:>10}",
                backend.name(),
                medians[b],
                ratio(medians[b], mutex_rate, 3),
                ratio(medians[b], sharded_rate, 3),
                ratio(medians[b], redis_rate, 2),
                percentile(lat, 0.50),
                percentile(lat, 0.99),
            );
        }
    }
    drop(redis);
}
