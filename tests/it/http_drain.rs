//! Keep-alive HTTP clients lose nothing to a rolling restart, a shrink, a
//! grow or a recycle of a cluster that serves with `forkless::http::serve`,
//! nor to a rolling restart of one that serves an axum app with
//! `forkless::http::serve_axum`.
//!
//! Each client holds one HTTP/1.1 connection and sends requests on it back
//! to back, as wrk does. A connection that the server closes after a request
//! was sent and before its answer is a failure: that is the race a server
//! which closes idle keep-alive connections loses (the client's next request
//! is already on its way). An answer that carries `Connection: close` and
//! then the close is the drain working: the client opens a new connection.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use crate::common::{self, PATIENCE};
use forkless::http::{self, Options};
use forkless::{Cluster, Event, Exit, Worker};
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::service::service_fn;
use hyper::Response;

/// Most requests a client sends, whatever happens.
const MAX_REQUESTS: u64 = 500_000;

/// Answers every request with `"{slot} {generation}"`.
async fn serve(worker: Worker) -> Result<(), forkless::Error> {
    let listener = worker.listen("127.0.0.1:0").await?;
    // `Rc`: the service need not be `Send`.
    let me = Rc::new(Bytes::from(format!(
        "{} {}",
        worker.slot(),
        worker.generation()
    )));
    http::serve(
        listener,
        move |_peer| {
            let me = me.clone();
            service_fn(move |_req| {
                let body = Full::new(Bytes::clone(&me));
                async move { Ok::<_, std::convert::Infallible>(Response::new(body)) }
            })
        },
        Options::default(),
    )
    .await
}

#[derive(Default)]
pub(crate) struct Counts {
    pub(crate) answered: AtomicU64,
    /// Answers with `Connection: close`, each followed by a new connection.
    pub(crate) told_to_close: AtomicU64,
    connects: AtomicU64,
    connect_failed: AtomicU64,
    /// The request could not be written: the server had closed or reset.
    send_failed: AtomicU64,
    /// The connection ended (closed or reset) after the request was sent
    /// and before its whole answer came.
    unanswered: AtomicU64,
    /// An answer that is not `200 OK`.
    bad: AtomicU64,
}

impl Counts {
    pub(crate) fn failures(&self) -> u64 {
        self.connect_failed.load(Relaxed)
            + self.send_failed.load(Relaxed)
            + self.unanswered.load(Relaxed)
            + self.bad.load(Relaxed)
    }
}

struct Conn {
    stream: TcpStream,
    reader: BufReader<TcpStream>,
}

fn connect(addr: SocketAddr, counts: &Counts) -> Option<Conn> {
    counts.connects.fetch_add(1, Relaxed);
    match TcpStream::connect(addr) {
        Ok(stream) => {
            stream.set_read_timeout(Some(PATIENCE)).expect("timeout");
            stream.set_nodelay(true).expect("nodelay");
            let reader = BufReader::new(stream.try_clone().expect("clone"));
            Some(Conn { stream, reader })
        }
        Err(e) => {
            eprintln!("connect failed: {e}");
            counts.connect_failed.fetch_add(1, Relaxed);
            None
        }
    }
}

/// An answer's status line and whether it says `Connection: close`, or why
/// it did not come whole.
fn read_answer(reader: &mut BufReader<TcpStream>) -> Result<(String, bool), String> {
    let mut status = String::new();
    match reader.read_line(&mut status) {
        Ok(0) => return Err("closed before the answer".into()),
        Ok(_) => {}
        Err(e) => return Err(format!("no answer: {e}")),
    }
    let (mut length, mut close) = (None, false);
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) => return Err(format!("closed in the head after {status:?}")),
            Ok(_) => {}
            Err(e) => return Err(format!("head: {e}")),
        }
        let line = line.trim_end().to_ascii_lowercase();
        if line.is_empty() {
            break;
        }
        if let Some(n) = line.strip_prefix("content-length:") {
            length = n.trim().parse::<usize>().ok();
        } else if let Some(value) = line.strip_prefix("connection:") {
            close |= value.split(',').any(|v| v.trim() == "close");
        }
    }
    let length = length.ok_or_else(|| format!("no content-length after {status:?}"))?;
    let mut body = vec![0; length];
    reader
        .read_exact(&mut body)
        .map_err(|e| format!("body: {e}"))?;
    Ok((status.trim_end().to_owned(), close))
}

/// One connection at a time, for as long as the server keeps it, with
/// requests back to back.
pub(crate) fn keep_alive_client(addr: SocketAddr, stop: Arc<AtomicBool>, counts: Arc<Counts>) {
    let mut conn: Option<Conn> = None;
    for _ in 0..MAX_REQUESTS {
        if stop.load(Relaxed) {
            return;
        }
        if conn.is_none() {
            conn = connect(addr, &counts);
        }
        let Some(c) = conn.as_mut() else { continue };
        if let Err(e) = c
            .stream
            .write_all(b"GET / HTTP/1.1\r\nHost: forkless\r\n\r\n")
        {
            eprintln!("send failed: {e}");
            counts.send_failed.fetch_add(1, Relaxed);
            conn = None;
            continue;
        }
        match read_answer(&mut c.reader) {
            Ok((status, close)) => {
                counts.answered.fetch_add(1, Relaxed);
                if status != "HTTP/1.1 200 OK" {
                    eprintln!("bad answer: {status}");
                    counts.bad.fetch_add(1, Relaxed);
                }
                if close {
                    counts.told_to_close.fetch_add(1, Relaxed);
                    conn = None;
                }
            }
            Err(e) => {
                eprintln!("{e}");
                counts.unanswered.fetch_add(1, Relaxed);
                conn = None;
            }
        }
    }
}

/// Waits until the clients have had `more` answers since now.
fn more_answers(counts: &Counts, more: u64) {
    common::more_counted(&counts.answered, more, "answers");
}

#[test]
fn keep_alive_clients_lose_no_request_in_a_roll_a_shrink_and_a_grow() {
    let (cluster, addr) =
        crate::lifecycle_load::start_on_a_port(Cluster::builder().workers(2), serve);
    let mut events = cluster.events();

    let (stop, counts, clients) = clients(addr, 6);
    more_answers(&counts, 500);

    cluster.restart().expect("roll");
    common::events_until(&mut events, "the roll", |e| {
        if let Event::RollFinished { completed, .. } = e {
            assert!(completed, "the roll completes");
            true
        } else {
            false
        }
    });
    more_answers(&counts, 500);

    cluster.resize(1).expect("shrink");
    common::events_until(&mut events, "slot 1 to end", |e| {
        matches!(e, Event::WorkerExited { slot: 1, .. })
    });
    more_answers(&counts, 500);

    cluster.resize(2).expect("grow");
    common::events_until(&mut events, "slot 1 back", |e| {
        matches!(e, Event::WorkerReady { slot: 1, .. })
    });
    more_answers(&counts, 500);

    finish(cluster, stop, clients, &counts);
}

/// Stops the clients and the cluster, and checks that no request was lost,
/// that draining workers told clients to reconnect, and that every
/// generation drained within the shutdown timeout (none was terminated).
fn finish(
    cluster: Cluster,
    stop: Arc<AtomicBool>,
    clients: Vec<std::thread::JoinHandle<()>>,
    counts: &Counts,
) {
    stop.store(true, Relaxed);
    for client in clients {
        client.join().expect("client");
    }
    cluster.shutdown();
    let report = cluster.join();
    println!(
        "answered {}, told to close {}, connections {}, connect failed {}, send failed {}, \
         unanswered {}, bad {}",
        counts.answered.load(Relaxed),
        counts.told_to_close.load(Relaxed),
        counts.connects.load(Relaxed),
        counts.connect_failed.load(Relaxed),
        counts.send_failed.load(Relaxed),
        counts.unanswered.load(Relaxed),
        counts.bad.load(Relaxed),
    );
    assert_eq!(counts.failures(), 0, "nothing lost\n{report}");
    // The draining workers told their clients to go, and they went.
    assert!(counts.told_to_close.load(Relaxed) > 0, "{report}");
    for slot in &report.slots {
        for generation in &slot.generations {
            assert!(
                matches!(generation.exit, Exit::Normal),
                "slot {} generation {}: {:?}\n{report}",
                slot.slot,
                generation.generation,
                generation.exit
            );
        }
    }
}

/// `n` keep-alive clients of `addr`.
fn clients(
    addr: SocketAddr,
    n: usize,
) -> (
    Arc<AtomicBool>,
    Arc<Counts>,
    Vec<std::thread::JoinHandle<()>>,
) {
    let stop = Arc::new(AtomicBool::new(false));
    let counts = Arc::new(Counts::default());
    let clients = (0..n)
        .map(|_| {
            let (stop, counts) = (stop.clone(), counts.clone());
            std::thread::spawn(move || keep_alive_client(addr, stop, counts))
        })
        .collect();
    (stop, counts, clients)
}

/// Each slot recycled in turn (`Cluster::recycle`: its next generation
/// starts beside it, and it drains once that one is ready), under
/// keep-alive load.
#[test]
fn keep_alive_clients_lose_no_request_when_each_slot_is_recycled() {
    let (cluster, addr) =
        crate::lifecycle_load::start_on_a_port(Cluster::builder().workers(2), serve);
    let mut events = cluster.events();
    let (stop, counts, clients) = clients(addr, 6);
    more_answers(&counts, 500);
    for slot in 0..2 {
        cluster.recycle(slot).expect("recycle");
        common::events_until(
            &mut events,
            "the recycle",
            |e| matches!(e, Event::Recycled { slot: s, .. } if *s == slot),
        );
        // The old generation drained under load, and is gone.
        common::events_until(
            &mut events,
            "the recycled generation's exit",
            |e| matches!(e, Event::WorkerExited { slot: s, generation: 0, .. } if *s == slot),
        );
        more_answers(&counts, 500);
    }
    finish(cluster, stop, clients, &counts);
}

/// An axum app served with `forkless::http::serve_axum`: answers every
/// request with `"{slot} {generation}"`.
async fn serve_axum_app(worker: Worker) -> Result<(), forkless::Error> {
    let listener = worker.listen("127.0.0.1:0").await?;
    let me = format!("{} {}", worker.slot(), worker.generation());
    let app = axum::Router::new().route(
        "/",
        axum::routing::get(move || {
            let me = me.clone();
            async move { me }
        }),
    );
    http::serve_axum(listener, app, Options::default()).await
}

/// A rolling restart of an axum app under keep-alive load: `serve_axum`
/// drains as `serve` does.
#[test]
fn keep_alive_clients_of_an_axum_app_lose_no_request_in_a_roll() {
    let (cluster, addr) =
        crate::lifecycle_load::start_on_a_port(Cluster::builder().workers(2), serve_axum_app);
    let mut events = cluster.events();
    let (stop, counts, clients) = clients(addr, 6);
    more_answers(&counts, 500);
    for round in 0..2 {
        cluster.restart().expect("roll");
        common::events_until(&mut events, "the roll", |e| {
            if let Event::RollFinished { completed, .. } = e {
                assert!(completed, "roll {round} completes");
                true
            } else {
                false
            }
        });
        more_answers(&counts, 500);
    }
    finish(cluster, stop, clients, &counts);
}
