//! Soak: 10,000 worker panics under light load. Reports the process's
//! resident memory, open file descriptors and threads at 0, 100, 1,000 and
//! 10,000 panics. Target: memory within 1.5x of the start, fds and threads
//! flat.
//!
//! ```text
//! cargo bench --bench soak            # 10,000 panics
//! BENCH_PANICS=2000 cargo bench --bench soak
//! ```
//!
//! Two workers, `throttle_delay` 1 ms (and no giving up). Each round a
//! client sends `p` on a new connection (the worker that accepts it panics)
//! and waits until the slot's next generation listens; meanwhile a second client thread
//! sends `h` requests (answered `ok`) on new connections, one every
//! millisecond, and counts the answers. The panic hook is silenced: printing
//! 10,000 panics would be most of what is measured.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use forkless::{Cluster, Event};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn main() {
    let panics: usize = std::env::var("BENCH_PANICS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let print = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let worker = std::thread::current()
            .name()
            .is_some_and(|n| n.starts_with("forkless-w"));
        if !worker {
            print(info);
        }
    }));
    let (addr_tx, addr_rx) = mpsc::channel::<SocketAddr>();
    let cluster = Cluster::builder()
        .workers(2)
        .throttle_delay(Duration::from_millis(1))
        // A generation that panics within 1 ms of its start is a quick
        // failure: keep respawning (backing off at most 10 ms), never give up.
        .max_restarts(u32::MAX)
        .max_backoff(Duration::from_millis(10))
        .start(move |worker| {
            let addr_tx = addr_tx.clone();
            async move {
                let listener = worker.listen("127.0.0.1:0").await?;
                let _ = addr_tx.send(listener.local_addr()?);
                while let Some(conn) = listener.accept().await {
                    let (mut stream, _) = conn?;
                    let mut byte = [0u8; 1];
                    if stream.read_exact(&mut byte).await.is_err() {
                        continue;
                    }
                    if byte[0] == b'p' {
                        panic!("a panic for the soak benchmark");
                    }
                    let _ = stream.write_all(b"ok").await;
                }
                Ok::<(), forkless::Error>(())
            }
        })
        .expect("start");
    let addr = addr_rx.recv().expect("address");
    let mut events = cluster.events();
    // Wait for both slots to listen.
    let mut ready = 0;
    while ready < 2 {
        match events.blocking_recv() {
            Some(Event::WorkerReady { .. }) => ready += 1,
            Some(_) => {}
            None => panic!("the cluster stopped"),
        }
    }

    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let load = {
        let (stop, answered, failed) = (stop.clone(), answered.clone(), failed.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match hello(addr) {
                    true => answered.fetch_add(1, Ordering::Relaxed),
                    false => failed.fetch_add(1, Ordering::Relaxed),
                };
                std::thread::sleep(Duration::from_millis(1));
            }
        })
    };

    let checkpoints = [0, 100, 1_000, 10_000];
    let started = Instant::now();
    let first = sample();
    println!("{:>7} panics: {}", 0, first);
    let mut done = 0;
    for &at in checkpoints.iter().skip(1).filter(|&&at| at <= panics) {
        while done < at {
            let mut conn = TcpStream::connect(addr).expect("connect");
            conn.write_all(b"p").expect("write");
            // The next generation of the slot that panicked listens.
            loop {
                match events.blocking_recv() {
                    Some(Event::WorkerReady { generation, .. }) if generation > 0 => break,
                    Some(Event::GaveUp { slot, .. }) => panic!("slot {slot} gave up"),
                    Some(_) => {}
                    None => panic!("the cluster stopped"),
                }
            }
            done += 1;
        }
        let now = sample();
        println!(
            "{:>7} panics: {}   ({:.1} s, RSS {:.2}x start)",
            at,
            now,
            started.elapsed().as_secs_f64(),
            now.rss as f64 / first.rss as f64
        );
    }
    stop.store(true, Ordering::Relaxed);
    load.join().expect("load thread");
    println!(
        "light load during the run: {} answered, {} failed (connections the \
         panicking worker had accepted, or refused while none listened)",
        answered.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed)
    );
    cluster.shutdown();
    let report = cluster.join();
    println!("respawns: {}", report.restarts());
}

/// One request on a new connection: true if answered `ok`.
fn hello(addr: SocketAddr) -> bool {
    let Ok(mut conn) = TcpStream::connect_timeout(&addr, Duration::from_secs(5)) else {
        return false;
    };
    let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
    let mut answer = [0u8; 2];
    conn.write_all(b"h").is_ok() && conn.read_exact(&mut answer).is_ok() && &answer == b"ok"
}

struct Sample {
    rss: u64,
    fds: usize,
    threads: u64,
}

impl std::fmt::Display for Sample {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "RSS {:>6.1} MB, fds {:>3}, threads {:>3}",
            self.rss as f64 / 1e6,
            self.fds,
            self.threads
        )
    }
}

fn sample() -> Sample {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .expect("a /proc field")
    };
    Sample {
        rss: field("VmRSS:") * 1024,
        fds: std::fs::read_dir("/proc/self/fd").expect("fds").count(),
        threads: field("Threads:"),
    }
}
