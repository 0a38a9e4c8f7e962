//! The bus against a raw tokio channel between two threads, side by side:
//!
//! - `send`: worker 0 sends to worker 1's inbox, with 1 and with 64
//!   messages in flight (the inbox capacity); the raw baseline is a
//!   `tokio::sync::mpsc::channel(1 or 64)` between two threads that run
//!   `current_thread` runtimes, pinned to the same cores as the workers.
//! - `broadcast`: worker 0 broadcasts to both slots (itself included); the
//!   raw baseline sends each message into two channels, one read on each
//!   thread.
//! - `request`: worker 0 requests, worker 1 replies; the raw baseline is two
//!   hops, an mpsc send carrying a oneshot sender and the oneshot reply.
//!
//! Criterion measures each (`iter_custom`: the bench thread asks the sender
//! to do `iters` operations and waits for the receiver's "done"); then one
//! run of 100,000 round trips per side prints the request latency p50/p99.
//!
//! ```text
//! cargo bench --bench bus
//! ```
#![allow(missing_docs)]

use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use forkless::{Bytes, Cluster, Worker};
use tokio::sync::{mpsc, oneshot};

const END: &[u8] = b"end";
const LATENCY_SAMPLES: u64 = 100_000;

#[derive(Clone, Copy, Debug)]
enum Job {
    Send(u64),
    Broadcast(u64),
    Request(u64),
    /// Round trips, each timed: the answer is the latencies.
    Latencies(u64),
}

/// What the measured side reports when a job is done.
type Done = std_mpsc::Sender<Vec<u32>>;

/// Two sides, forkless or raw, driven by the bench thread.
struct Pair {
    jobs: mpsc::UnboundedSender<Job>,
    done: std_mpsc::Receiver<Vec<u32>>,
    stop: Box<dyn FnOnce()>,
}

impl Pair {
    /// Runs `job`, waiting for every reader's "done" (a broadcast has two).
    fn run(&self, job: Job) -> (Duration, Vec<u32>) {
        let readers = if matches!(job, Job::Broadcast(_)) {
            2
        } else {
            1
        };
        let start = Instant::now();
        self.jobs.send(job).expect("sender alive");
        let mut latencies = Vec::new();
        for _ in 0..readers {
            latencies.extend(self.done.recv().expect("done"));
        }
        (start.elapsed(), latencies)
    }
}

fn message(i: u64, n: u64) -> Bytes {
    if i + 1 == n {
        Bytes::from_static(END)
    } else {
        Bytes::from_static(b"m")
    }
}

/// forkless: a 2-worker cluster; worker 0 takes jobs, worker 1 reads.
fn forkless_pair(capacity: usize) -> Pair {
    let (jobs_tx, jobs_rx) = mpsc::unbounded_channel::<Job>();
    let jobs_rx = std::sync::Mutex::new(Some(jobs_rx));
    let (done_tx, done_rx) = std_mpsc::channel::<Vec<u32>>();
    let cluster = Cluster::builder()
        .workers(2)
        .inbox_capacity(capacity)
        .start(move |worker: Worker| {
            let jobs = if worker.slot() == 0 && worker.generation() == 0 {
                jobs_rx.lock().expect("lock").take()
            } else {
                None
            };
            let done = done_tx.clone();
            async move {
                match jobs {
                    Some(jobs) => sender(worker, jobs, done).await,
                    None => reader(worker, done).await,
                }
            }
        })
        .expect("start");
    Pair {
        jobs: jobs_tx,
        done: done_rx,
        stop: Box::new(move || {
            cluster.shutdown();
            cluster.join();
        }),
    }
}

/// Reads the slot's inbox: answers requests, reports "done" at each END.
async fn reader(worker: Worker, done: Done) {
    let mut inbox = worker.inbox();
    while let Some(envelope) = inbox.recv().await {
        if envelope.is_request() {
            envelope.reply(Bytes::from_static(b"r"));
        } else if envelope.message() == END {
            done.send(Vec::new()).expect("bench alive");
        }
    }
}

async fn sender(worker: Worker, mut jobs: mpsc::UnboundedReceiver<Job>, done: Done) {
    // Worker 0 reads its own inbox too (a broadcast reaches it).
    let own = tokio::task::spawn_local(reader(worker.clone(), done.clone()));
    let bus = worker.bus();
    while let Some(job) = jobs.recv().await {
        match job {
            Job::Send(n) => {
                for i in 0..n {
                    bus.send(1, message(i, n)).await.expect("send");
                }
            }
            Job::Broadcast(n) => {
                for i in 0..n {
                    bus.broadcast(message(i, n)).await.expect("broadcast");
                }
            }
            Job::Request(n) => {
                for _ in 0..n {
                    bus.request(1, Bytes::from_static(b"q"))
                        .await
                        .expect("request");
                }
                done.send(Vec::new()).expect("bench alive");
            }
            Job::Latencies(n) => {
                let mut latencies = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    let t = Instant::now();
                    bus.request(1, Bytes::from_static(b"q"))
                        .await
                        .expect("request");
                    latencies.push(t.elapsed().as_nanos() as u32);
                }
                done.send(latencies).expect("bench alive");
            }
        }
    }
    own.abort();
}

/// A raw message: a payload and, for a request, where to reply.
type RawMessage = (Bytes, Option<oneshot::Sender<Bytes>>);

/// raw: two pinned threads with `current_thread` runtimes and tokio
/// channels between them.
fn raw_pair(capacity: usize) -> Pair {
    let (jobs_tx, mut jobs_rx) = mpsc::unbounded_channel::<Job>();
    let (done_tx, done_rx) = std_mpsc::channel::<Vec<u32>>();
    let (to_b, b_rx) = mpsc::channel::<RawMessage>(capacity);
    let (to_a, a_rx) = mpsc::channel::<RawMessage>(capacity);
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    let pin = move |i: usize| {
        if let Some(core) = cores.get(i % cores.len().max(1)) {
            core_affinity::set_for_current(*core);
        }
    };
    let runtime = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    };
    let pin_b = pin.clone();
    let done_b = done_tx.clone();
    let b = std::thread::spawn(move || {
        pin_b(1);
        runtime().block_on(raw_reader(b_rx, done_b));
    });
    let a = std::thread::spawn(move || {
        pin(0);
        let local = tokio::task::LocalSet::new();
        runtime().block_on(local.run_until(async move {
            let own = tokio::task::spawn_local(raw_reader(a_rx, done_tx.clone()));
            while let Some(job) = jobs_rx.recv().await {
                match job {
                    Job::Send(n) => {
                        for i in 0..n {
                            to_b.send((message(i, n), None)).await.expect("send");
                        }
                    }
                    Job::Broadcast(n) => {
                        for i in 0..n {
                            let m = message(i, n);
                            to_a.send((m.clone(), None)).await.expect("send");
                            to_b.send((m, None)).await.expect("send");
                        }
                    }
                    Job::Request(n) => {
                        for _ in 0..n {
                            raw_request(&to_b).await;
                        }
                        done_tx.send(Vec::new()).expect("bench alive");
                    }
                    Job::Latencies(n) => {
                        let mut latencies = Vec::with_capacity(n as usize);
                        for _ in 0..n {
                            let t = Instant::now();
                            raw_request(&to_b).await;
                            latencies.push(t.elapsed().as_nanos() as u32);
                        }
                        done_tx.send(latencies).expect("bench alive");
                    }
                }
            }
            own.abort();
        }));
    });
    Pair {
        jobs: jobs_tx,
        done: done_rx,
        stop: Box::new(move || {
            // The jobs sender is dropped with the pair: thread a ends, its
            // channels close, thread b ends.
            drop((a, b));
        }),
    }
}

async fn raw_request(to: &mpsc::Sender<RawMessage>) {
    let (tx, rx) = oneshot::channel();
    to.send((Bytes::from_static(b"q"), Some(tx)))
        .await
        .expect("send");
    rx.await.expect("reply");
}

async fn raw_reader(mut rx: mpsc::Receiver<RawMessage>, done: Done) {
    while let Some((message, reply)) = rx.recv().await {
        if let Some(reply) = reply {
            let _ = reply.send(Bytes::from_static(b"r"));
        } else if message == END {
            done.send(Vec::new()).expect("bench alive");
        }
    }
}

fn measure(c: &mut Criterion, pairs: &[(&str, &Pair)], group: &str, job: fn(u64) -> Job) {
    let mut g = c.benchmark_group(group);
    g.throughput(Throughput::Elements(1));
    g.measurement_time(Duration::from_secs(3));
    g.warm_up_time(Duration::from_secs(1));
    for (name, pair) in pairs {
        g.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter_custom(|iters| pair.run(job(iters.max(1))).0)
        });
    }
    g.finish();
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    for capacity in [1usize, 64] {
        let forkless = forkless_pair(capacity);
        let raw = raw_pair(capacity);
        let pairs = [("forkless", &forkless), ("raw", &raw)];
        measure(
            &mut c,
            &pairs,
            &format!("send, {capacity} in flight"),
            Job::Send,
        );
        if capacity == 64 {
            measure(
                &mut c,
                &pairs,
                "broadcast to 2 slots, 64 in flight",
                Job::Broadcast,
            );
            measure(&mut c, &pairs, "request round trip", Job::Request);
            println!("\nrequest round trip latency, {LATENCY_SAMPLES} sequential requests:");
            println!(
                "{:<10} {:>10} {:>10} {:>10}",
                "side", "p50 us", "p99 us", "mean us"
            );
            for (name, pair) in &pairs {
                let (_, mut latencies) = pair.run(Job::Latencies(LATENCY_SAMPLES));
                latencies.sort_unstable();
                let mean = latencies.iter().map(|&l| l as f64).sum::<f64>()
                    / latencies.len() as f64
                    / 1000.0;
                println!(
                    "{:<10} {:>10.2} {:>10.2} {:>10.2}",
                    name,
                    percentile(&latencies, 0.5),
                    percentile(&latencies, 0.99),
                    mean
                );
            }
        }
        (forkless.stop)();
        (raw.stop)();
    }
    c.final_summary();
}
