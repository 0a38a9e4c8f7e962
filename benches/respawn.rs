//! Respawn latency: from a worker's panic to the next connection accepted on
//! its slot, median of 20.
//!
//! ```text
//! cargo bench --bench respawn
//! ```
//!
//! One worker, throttling off (`throttle_delay(0)`), so each panic is
//! respawned at once. Each round, a client sends `c` on one connection (the
//! worker records the time and panics), then opens a second connection that
//! waits in the slot's queue; the next generation records when it accepts it.
//! The panic hook is silenced for the measurement: the default hook's print
//! (and a backtrace, with `RUST_BACKTRACE` set) would be measured otherwise.
//!
//! When `node` is installed, the same run measures Node's cluster module
//! (`benches/node/respawn.js`): from a worker's crash to its replacement
//! listening again, a lower bound on its time to the next accepted
//! connection.

use std::io::Write;
use std::net::TcpStream;
use std::sync::{mpsc, Mutex};
use std::time::{Duration, Instant};

use forkless::Cluster;
use tokio::io::AsyncReadExt;

const ROUNDS: usize = 20;

static PANICKED_AT: Mutex<Option<Instant>> = Mutex::new(None);

fn main() {
    std::panic::set_hook(Box::new(|_| {}));
    let (addr_tx, addr_rx) = mpsc::channel();
    let (accepted_tx, accepted_rx) = mpsc::channel();
    let cluster = Cluster::builder()
        .workers(1)
        .throttle_delay(Duration::ZERO)
        .start(move |worker| {
            let addr_tx = addr_tx.clone();
            let accepted_tx = accepted_tx.clone();
            async move {
                let listener = worker.listen("127.0.0.1:0").await?;
                if worker.generation() == 0 {
                    addr_tx.send(listener.local_addr()?).expect("bench alive");
                }
                let mut first = true;
                while let Some(conn) = listener.accept().await {
                    let (mut stream, _) = conn?;
                    if first && worker.generation() > 0 {
                        accepted_tx.send(Instant::now()).expect("bench alive");
                    }
                    first = false;
                    let mut byte = [0u8; 1];
                    stream.read_exact(&mut byte).await?;
                    if byte[0] == b'c' {
                        *PANICKED_AT.lock().expect("lock") = Some(Instant::now());
                        panic!("crash for the respawn benchmark");
                    }
                }
                Ok::<(), forkless::Error>(())
            }
        })
        .expect("start");
    let addr = addr_rx.recv().expect("address");

    let mut samples = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        let mut crash = TcpStream::connect(addr).expect("connect");
        crash.write_all(b"c").expect("write");
        let mut probe = TcpStream::connect(addr).expect("queued connect");
        probe.write_all(b"p").expect("write");
        let accepted = accepted_rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the next generation accepts");
        let panicked = PANICKED_AT
            .lock()
            .expect("lock")
            .take()
            .expect("panic time");
        samples.push(accepted.duration_since(panicked));
    }
    cluster.shutdown();
    let report = cluster.join();
    assert_eq!(report.restarts(), ROUNDS);

    let us: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e6).collect();
    let forkless = summarize(
        "forkless: panic -> next connection accepted on the slot",
        us,
    );
    if let Some(node) = node_samples() {
        let node = summarize("node cluster: crash -> replacement listening", node);
        println!("node / forkless (medians): {:.0}x", node / forkless);
    }
}

/// Prints median, min, p90 and max; returns the median.
fn summarize(what: &str, mut us: Vec<f64>) -> f64 {
    us.sort_by(f64::total_cmp);
    let n = us.len();
    println!(
        "{what} ({n} rounds): median {:.0} us, min {:.0} us, p90 {:.0} us, max {:.0} us",
        us[n / 2],
        us[0],
        us[n * 9 / 10],
        us[n - 1],
    );
    us[n / 2]
}

/// Runs the Node measurement; `None` (with a note) when node is missing.
fn node_samples() -> Option<Vec<f64>> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/node/respawn.js");
    let output = match std::process::Command::new("node").arg(script).output() {
        Ok(output) if output.status.success() => output,
        Ok(output) => {
            println!(
                "node cluster: failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            return None;
        }
        Err(_) => {
            println!("node cluster: skipped, node is not installed");
            return None;
        }
    };
    // {"samples":[1,2,3]}
    let text = String::from_utf8_lossy(&output.stdout);
    let list = text.split_once('[')?.1.split_once(']')?.0;
    list.split(',').map(|n| n.trim().parse().ok()).collect()
}
