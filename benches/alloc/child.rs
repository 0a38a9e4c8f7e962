//! What both `alloc_cost` binaries run as the driver's children: one is
//! built with the system allocator, the other with
//! `forkless::alloc::Counting<System>`; the code they run is this same code.

use std::time::{Duration, Instant};

use forkless::{Cluster, Event, Worker};

/// Runs the child mode `args` name, if any; returns whether it did.
///
/// - `--serve-http PORT`: the `hello` example, one worker per allowed core
///   (the driver allows one), as `benches/http_per_core.rs` serves it;
/// - `--store sequential|concurrent SECS`: one round of `benches/store.rs`'s
///   forkless store workload; prints `ops/s N`;
/// - `--alloc-loop`: on a worker, allocates and frees 64 bytes 20 million
///   times; prints `ns/op` (one allocation and one free), the least of 5
///   runs;
/// - `--check`: prints `counted true` when a worker's memory is counted,
///   `counted false` when it is unknown.
pub(crate) fn run(args: &[String]) -> bool {
    let arg = |i: usize| args.get(i).map(String::as_str).unwrap_or_default();
    if let Some(i) = args.iter().position(|a| a == "--serve-http") {
        let port: u16 = arg(i + 1).parse().expect("--serve-http PORT");
        let args = crate::hello::Args {
            port,
            workers: None,
            host: [127, 0, 0, 1].into(),
        };
        Cluster::builder()
            .run(move |worker| crate::hello::serve(worker, args.clone()))
            .expect("forkless");
        return true;
    }
    if let Some(i) = args.iter().position(|a| a == "--store") {
        let concurrent = match arg(i + 1) {
            "concurrent" => true,
            "sequential" => false,
            other => panic!("--store sequential|concurrent, not {other:?}"),
        };
        let secs: f64 = arg(i + 2).parse().expect("--store WORKLOAD SECS");
        println!("ops/s {}", crate::store::forkless_round(concurrent, secs));
        return true;
    }
    if args.iter().any(|a| a == "--alloc-loop") {
        println!("ns/op {}", alloc_loop());
        return true;
    }
    if args.iter().any(|a| a == "--check") {
        println!("counted {}", counted());
        return true;
    }
    false
}

/// Whether a worker's memory is counted in this process.
fn counted() -> bool {
    let cluster = Cluster::builder()
        .workers(1)
        .start(|worker: Worker| async move {
            worker.ready();
            worker.shutdown_signal().await;
        })
        .expect("start");
    let mut events = cluster.events();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match events.recv_timeout(left) {
            Ok(Event::WorkerReady { .. }) => break,
            Ok(_) => {}
            Err(e) => panic!("waiting for the worker: {e:?}"),
        }
    }
    let counted = cluster.status().workers[0].memory.is_some();
    cluster.shutdown();
    cluster.join();
    counted
}

/// Nanoseconds per allocation and free of 64 bytes, on a worker's thread
/// (the counted one, under `Counting`).
fn alloc_loop() -> f64 {
    const N: u32 = 20_000_000;
    let (tx, rx) = std::sync::mpsc::channel::<f64>();
    let cluster = Cluster::builder()
        .workers(1)
        .start(move |worker: Worker| {
            let tx = tx.clone();
            async move {
                let best = (0..5)
                    .map(|_| {
                        let start = Instant::now();
                        for i in 0..N {
                            let b = std::hint::black_box(Box::new([i as u8; 64]));
                            drop(b);
                        }
                        start.elapsed().as_nanos() as f64 / f64::from(N)
                    })
                    .fold(f64::INFINITY, f64::min);
                let _ = tx.send(best);
                worker.shutdown_signal().await;
            }
        })
        .expect("start");
    let ns = rx
        .recv_timeout(Duration::from_secs(300))
        .expect("the worker's figure");
    cluster.shutdown();
    cluster.join();
    ns
}
