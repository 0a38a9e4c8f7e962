//! Under client load on loopback, a rolling restart and a shrink then grow
//! lose nothing: every connect succeeds and every request is answered.
//!
//! The server speaks a line protocol: each `ping` line gets `"{slot} {gen}"`,
//! and once its worker is asked to stop, the next request on a connection
//! gets `"{slot} {gen} bye"` and the connection closes, so that a keep-alive
//! client never sends on a connection the server is about to close (as an
//! HTTP server's `Connection: close` does).

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{mpsc, Arc};

use crate::common::{self, recv, PATIENCE};
use forkless::{Cluster, Event, Worker};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

/// Most requests a client sends, whatever happens.
const MAX_REQUESTS: u64 = 200_000;

pub(crate) async fn serve(worker: Worker) -> Result<(), forkless::Error> {
    let listener = worker.listen("127.0.0.1:0").await?;
    let mut connections = tokio::task::JoinSet::new();
    while let Some(conn) = listener.accept().await {
        let (stream, _) = conn?;
        let worker = worker.clone();
        connections.spawn_local(async move {
            let (read, mut write) = stream.into_split();
            let mut lines = tokio::io::BufReader::new(read).lines();
            while let Ok(Some(_request)) = lines.next_line().await {
                let bye = worker.is_shutting_down();
                let reply = format!(
                    "{} {}{}\n",
                    worker.slot(),
                    worker.generation(),
                    if bye { " bye" } else { "" }
                );
                if write.write_all(reply.as_bytes()).await.is_err() || bye {
                    break;
                }
            }
        });
    }
    // Asked to stop: finish the connections in hand.
    while connections.join_next().await.is_some() {}
    Ok(())
}

#[derive(Default)]
pub(crate) struct Counts {
    pub(crate) answered: AtomicU64,
    connect_failed: AtomicU64,
    send_failed: AtomicU64,
    unanswered: AtomicU64,
    pub(crate) reconnects: AtomicU64,
}

impl Counts {
    pub(crate) fn failures(&self) -> u64 {
        self.connect_failed.load(Relaxed)
            + self.send_failed.load(Relaxed)
            + self.unanswered.load(Relaxed)
    }
}

fn connect(addr: SocketAddr, counts: &Counts) -> Option<(TcpStream, BufReader<TcpStream>)> {
    match TcpStream::connect(addr) {
        Ok(stream) => {
            stream.set_read_timeout(Some(PATIENCE)).expect("timeout");
            let reader = BufReader::new(stream.try_clone().expect("clone"));
            Some((stream, reader))
        }
        Err(e) => {
            eprintln!("connect failed: {e}");
            counts.connect_failed.fetch_add(1, Relaxed);
            None
        }
    }
}

/// Sends one request; returns whether the server said bye, or `None` on a
/// failure (counted).
fn request(
    stream: &mut TcpStream,
    reader: &mut BufReader<TcpStream>,
    counts: &Counts,
) -> Option<bool> {
    if let Err(e) = stream.write_all(b"ping\n") {
        eprintln!("send failed: {e}");
        counts.send_failed.fetch_add(1, Relaxed);
        return None;
    }
    let mut line = String::new();
    match reader.read_line(&mut line) {
        Ok(n) if n > 0 && line.ends_with('\n') => {
            counts.answered.fetch_add(1, Relaxed);
            Some(line.trim_end().ends_with("bye"))
        }
        other => {
            eprintln!("no answer: {other:?} {line:?}");
            counts.unanswered.fetch_add(1, Relaxed);
            None
        }
    }
}

/// A new connection per request.
pub(crate) fn one_shot_client(addr: SocketAddr, stop: Arc<AtomicBool>, counts: Arc<Counts>) {
    for _ in 0..MAX_REQUESTS {
        if stop.load(Relaxed) {
            return;
        }
        if let Some((mut stream, mut reader)) = connect(addr, &counts) {
            request(&mut stream, &mut reader, &counts);
        }
    }
}

/// One connection for as long as the server keeps it.
pub(crate) fn keep_alive_client(addr: SocketAddr, stop: Arc<AtomicBool>, counts: Arc<Counts>) {
    let mut conn = None;
    for _ in 0..MAX_REQUESTS {
        if stop.load(Relaxed) {
            return;
        }
        if conn.is_none() {
            conn = connect(addr, &counts);
            counts.reconnects.fetch_add(1, Relaxed);
        }
        let Some((stream, reader)) = conn.as_mut() else {
            continue;
        };
        match request(stream, reader, &counts) {
            Some(false) => {}
            // The server closes after "bye"; a failure is counted.
            Some(true) | None => conn = None,
        }
    }
}

/// Waits until the clients have had `more` answers since now.
pub(crate) fn more_answers(counts: &Counts, more: u64) {
    common::more_counted(&counts.answered, more, "answers");
}

/// Starts `builder`'s cluster, each worker running `body` on port 0's
/// group of `127.0.0.1`, and returns it with the port every slot shares.
pub(crate) fn start_on_a_port<F, Fut>(builder: forkless::Builder, body: F) -> (Cluster, SocketAddr)
where
    F: Fn(Worker) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<(), forkless::Error>> + 'static,
{
    let (tx, rx) = mpsc::channel();
    let cluster = builder
        .start(move |worker: Worker| {
            let (tx, body) = (tx.clone(), body.clone());
            async move {
                if worker.slot() == 0 && worker.generation() == 0 {
                    // The port, found by listening once more on port 0's
                    // group: every slot shares it.
                    let listener = worker.listen("127.0.0.1:0").await?;
                    let _ = tx.send(listener.local_addr()?);
                }
                body(worker).await
            }
        })
        .expect("start");
    let addr: SocketAddr = recv(&rx, "the port");
    (cluster, addr)
}

/// Starts `builder`'s cluster of the line server ([`serve`]), and returns
/// it with its port.
pub(crate) fn start_line_server(builder: forkless::Builder) -> (Cluster, SocketAddr) {
    start_on_a_port(builder, serve)
}

#[test]
fn a_rolling_restart_and_a_shrink_then_grow_lose_no_connection_and_no_request() {
    let (cluster, addr) = start_line_server(Cluster::builder().workers(2));
    let mut events = cluster.events();

    let stop = Arc::new(AtomicBool::new(false));
    let one_shot = Arc::new(Counts::default());
    let keep_alive = Arc::new(Counts::default());
    let mut clients = Vec::new();
    for i in 0..4 {
        let (stop, counts) = (
            stop.clone(),
            if i % 2 == 0 {
                one_shot.clone()
            } else {
                keep_alive.clone()
            },
        );
        clients.push(std::thread::spawn(move || {
            if i % 2 == 0 {
                one_shot_client(addr, stop, counts)
            } else {
                keep_alive_client(addr, stop, counts)
            }
        }));
    }
    more_answers(&one_shot, 200);
    more_answers(&keep_alive, 200);

    cluster.restart().expect("roll");
    common::events_until(&mut events, "the roll", |e| {
        if let Event::RollFinished { completed, .. } = e {
            assert!(completed, "the roll completes");
            true
        } else {
            false
        }
    });
    more_answers(&one_shot, 200);
    more_answers(&keep_alive, 200);

    cluster.resize(1).expect("shrink");
    common::events_until(&mut events, "slot 1 to end", |e| {
        matches!(e, Event::WorkerExited { slot: 1, .. })
    });
    more_answers(&one_shot, 200);
    more_answers(&keep_alive, 200);

    cluster.resize(2).expect("grow");
    common::events_until(&mut events, "slot 1 back", |e| {
        matches!(e, Event::WorkerReady { slot: 1, .. })
    });
    more_answers(&one_shot, 200);
    more_answers(&keep_alive, 200);

    stop.store(true, Relaxed);
    for client in clients {
        client.join().expect("client");
    }
    cluster.shutdown();
    let report = cluster.join();
    for (name, counts) in [
        ("new connection per request", &one_shot),
        ("keep-alive", &keep_alive),
    ] {
        println!(
            "{name}: answered {}, connect failed {}, send failed {}, unanswered {}, connections {}",
            counts.answered.load(Relaxed),
            counts.connect_failed.load(Relaxed),
            counts.send_failed.load(Relaxed),
            counts.unanswered.load(Relaxed),
            counts.reconnects.load(Relaxed),
        );
        assert_eq!(counts.failures(), 0, "{name}: nothing lost\n{report}");
    }
    // The keep-alive clients were moved off retiring workers, not cut off.
    assert!(keep_alive.reconnects.load(Relaxed) > 2);
}
