//! The control server's accept loops: one per listener (the Unix socket,
//! the TCP port), each serving at most [`MAX_CONNECTIONS`] connections at
//! once, refusing Unix peers of another user, pausing after a failed
//! `accept`, counting the panics of the connections it reaps, and draining
//! them when the cluster stops; and serving one connection with hyper.

use std::convert::Infallible;
use std::io;
use std::time::{Duration, Instant};

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::task::{JoinError, JoinSet};

use super::routes::handle;
use super::socket::peer_allowed;
use super::{FIRST_ACCEPT_PAUSE, MAX_ACCEPT_PAUSE, MAX_CONNECTIONS, READ_TIMEOUT, THREAD};
use crate::Cluster;

/// How long the accept loop pauses after `accept` failed with `kind`, the
/// previous pause (since the last accepted connection) being `last`.
/// `None`: accept again at once, the failure was one connection's (reset,
/// aborted or refused before it was accepted). Otherwise (out of file
/// descriptors, of memory, ...) accepting again at once would spin: pause,
/// [`FIRST_ACCEPT_PAUSE`] first, then twice the last pause, at most
/// [`MAX_ACCEPT_PAUSE`]. As axum's `handle_accept_error`.
fn accept_pause(kind: io::ErrorKind, last: Option<Duration>) -> Option<Duration> {
    match kind {
        io::ErrorKind::ConnectionRefused
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::ConnectionReset => None,
        _ => Some(last.map_or(FIRST_ACCEPT_PAUSE, |d| {
            d.saturating_mul(2)
                .clamp(FIRST_ACCEPT_PAUSE, MAX_ACCEPT_PAUSE)
        })),
    }
}

/// A log line at most once a second: how many were skipped in between.
#[derive(Default)]
struct Every {
    last: Option<Instant>,
    skipped: u64,
}

impl Every {
    /// `Some(skipped)` if a line is due at `now`; counts one skipped if not.
    fn due(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(last) if now.saturating_duration_since(last) < Duration::from_secs(1) => {
                self.skipped += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.skipped))
            }
        }
    }
}

/// The connections one listener of the control server serves.
struct Served {
    /// The bearer token its clients must send (TCP), or none (Unix).
    token: Option<String>,
    connections: JoinSet<()>,
    /// The pause after the last failed accept, since the last good one.
    pause: Option<Duration>,
    over_cap: Every,
    refused: Every,
    what: &'static str,
}

impl Served {
    fn new(token: Option<String>, what: &'static str) -> Served {
        Served {
            token,
            connections: JoinSet::new(),
            pause: None,
            over_cap: Every::default(),
            refused: Every::default(),
            what,
        }
    }

    /// Serves `io` on a connection of its own, unless the cap is reached
    /// (then `io` is dropped: closed).
    fn serve<I>(&mut self, io: I, cluster: &Cluster, stopping: &tokio::sync::watch::Receiver<bool>)
    where
        I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        self.pause = None;
        while let Some(done) = self.connections.try_join_next() {
            reaped(cluster, done);
        }
        if self.connections.len() >= MAX_CONNECTIONS {
            drop(io);
            if let Some(skipped) = self.over_cap.due(Instant::now()) {
                tracing::warn!(
                    listener = self.what,
                    skipped,
                    "the control server already serves {MAX_CONNECTIONS} connections: \
                     a new one was closed"
                );
            }
            return;
        }
        self.connections.spawn(connection(
            io,
            cluster.clone(),
            self.token.clone(),
            stopping.clone(),
        ));
    }

    /// The pause after a failed accept, if one is due.
    fn failed(&mut self, e: &io::Error) -> Option<Duration> {
        let pause = accept_pause(e.kind(), self.pause)?;
        self.pause = Some(pause);
        tracing::error!(
            listener = self.what,
            error = %e,
            "the control server cannot accept connections; it tries again in {pause:?}"
        );
        Some(pause)
    }
}

/// Counts a connection task that panicked.
fn reaped(cluster: &Cluster, done: Result<(), JoinError>) {
    if let Err(e) = done {
        if e.is_panic() {
            cluster
                .shared
                .faults
                .record(THREAD, "a control request", &*e.into_panic());
        }
    }
}

pub(super) async fn serve(
    cluster: Cluster,
    unix: std::os::unix::net::UnixListener,
    tcp: Option<(std::net::TcpListener, String)>,
    uid: u32,
) {
    let Ok(unix) = tokio::net::UnixListener::from_std(unix) else {
        return;
    };
    let mut unix_served = Served::new(None, "unix");
    let (tcp, mut tcp_served) = match tcp.and_then(|(l, token)| {
        tokio::net::TcpListener::from_std(l)
            .ok()
            .map(|l| (l, token))
    }) {
        Some((l, token)) => (Some(l), Some(Served::new(Some(token), "tcp"))),
        None => (None, None),
    };
    let stopped = cluster.stopped();
    tokio::pin!(stopped);
    let (stop, stopping) = tokio::sync::watch::channel(false);
    loop {
        let pause = tokio::select! {
            _ = &mut stopped => break,
            // Reap finished connections as they end.
            Some(done) = unix_served.connections.join_next(), if !unix_served.connections.is_empty() => {
                reaped(&cluster, done);
                None
            }
            Some(done) = async {
                match &mut tcp_served {
                    Some(tcp) if !tcp.connections.is_empty() => tcp.connections.join_next().await,
                    _ => std::future::pending().await,
                }
            } => {
                reaped(&cluster, done);
                None
            }
            conn = unix.accept() => match conn {
                Ok((stream, _)) => {
                    match stream.peer_cred() {
                        Ok(peer) if peer_allowed(peer.uid(), uid) => {
                            unix_served.serve(TokioIo::new(stream), &cluster, &stopping);
                        }
                        peer => {
                            drop(stream);
                            if let Some(skipped) = unix_served.refused.due(Instant::now()) {
                                match peer {
                                    Ok(peer) => tracing::warn!(
                                        uid = peer.uid(),
                                        pid = peer.pid(),
                                        skipped,
                                        "a control connection from another user was closed \
                                         (only uid {uid} and root are served)"
                                    ),
                                    Err(e) => tracing::warn!(
                                        error = %e,
                                        skipped,
                                        "a control connection whose peer is unknown was closed"
                                    ),
                                }
                            }
                        }
                    }
                    None
                }
                Err(e) => unix_served.failed(&e),
            },
            conn = async {
                match &tcp {
                    Some(tcp) => tcp.accept().await,
                    None => std::future::pending().await,
                }
            } => match (conn, &mut tcp_served) {
                (Ok((stream, _)), Some(tcp)) => {
                    tcp.serve(TokioIo::new(stream), &cluster, &stopping);
                    None
                }
                (Err(e), Some(tcp)) => tcp.failed(&e),
                (_, None) => None,
            },
        };
        if let Some(pause) = pause {
            tokio::select! {
                _ = &mut stopped => break,
                () = tokio::time::sleep(pause) => {}
            }
        }
    }
    // The cluster stopped: idle connections close, and the answers in
    // flight (an event stream's last lines, say) go out, for a moment.
    let _ = stop.send(true);
    let drain = async {
        while let Some(done) = unix_served.connections.join_next().await {
            reaped(&cluster, done);
        }
        if let Some(tcp) = &mut tcp_served {
            while let Some(done) = tcp.connections.join_next().await {
                reaped(&cluster, done);
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), drain).await;
}

async fn connection<I>(
    io: I,
    cluster: Cluster,
    token: Option<String>,
    mut stopping: tokio::sync::watch::Receiver<bool>,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let service = service_fn(move |req| {
        let (cluster, token) = (cluster.clone(), token.clone());
        async move { Ok::<_, Infallible>(handle(req, &cluster, token.as_deref()).await) }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(READ_TIMEOUT)
        .serve_connection(io, service);
    tokio::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        () = async { drop(stopping.wait_for(|s| *s).await) } => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "control connection ended");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::tests::scratch;
    use std::io::{Read, Write};

    #[test]
    fn accept_failures_pause_growing_to_a_second_unless_one_connection_failed() {
        use io::ErrorKind::*;
        for kind in [ConnectionReset, ConnectionAborted, ConnectionRefused] {
            assert_eq!(accept_pause(kind, None), None, "{kind:?}");
            assert_eq!(accept_pause(kind, Some(MAX_ACCEPT_PAUSE)), None, "{kind:?}");
        }
        // EMFILE and ENFILE have no kind of their own in std.
        let emfile = io::Error::from_raw_os_error(24).kind();
        for kind in [emfile, OutOfMemory, Other, PermissionDenied] {
            let mut last = None;
            let mut pauses = Vec::new();
            for _ in 0..12 {
                last = accept_pause(kind, last);
                pauses.push(last.expect("a pause").as_millis());
            }
            assert_eq!(
                pauses,
                [5, 10, 20, 40, 80, 160, 320, 640, 1000, 1000, 1000, 1000],
                "{kind:?}"
            );
        }
    }

    #[test]
    fn over_the_cap_logs_at_most_once_a_second() {
        let start = Instant::now();
        let mut every = Every::default();
        assert_eq!(every.due(start), Some(0));
        assert_eq!(every.due(start + Duration::from_millis(10)), None);
        assert_eq!(every.due(start + Duration::from_millis(999)), None);
        assert_eq!(every.due(start + Duration::from_secs(1)), Some(2));
        assert_eq!(every.due(start + Duration::from_millis(1500)), None);
        assert_eq!(every.due(start + Duration::from_secs(3)), Some(1));
    }

    /// A request that panics ends its connection, without an answer; the
    /// panic is counted, and the server answers the next request.
    #[test]
    fn a_panicking_request_is_counted_and_the_server_goes_on() {
        let dir = scratch("panic");
        let path = dir.join("control.sock");
        let cluster = crate::Cluster::builder()
            .name("control-panic")
            .workers(1)
            .control_socket(&path)
            .start(|worker: forkless_worker::Worker| async move {
                worker.ready();
                worker.shutdown_signal().await;
            })
            .expect("start");
        let ask = |path: &str| {
            let mut stream =
                std::os::unix::net::UnixStream::connect(dir.join("control.sock")).expect("connect");
            stream
                .set_read_timeout(Some(Duration::from_secs(30)))
                .expect("timeout");
            write!(
                stream,
                "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            )
            .expect("send");
            let mut answer = String::new();
            stream.read_to_string(&mut answer).expect("EOF");
            answer
        };
        for _ in 0..3 {
            assert_eq!(ask("/test-panic"), "");
        }
        assert!(ask("/status").starts_with("HTTP/1.1 200"));
        // Counted when reaped: by now, or at the next accept.
        let deadline = crate::time::deadline::from_now(Duration::from_secs(30));
        while cluster.shared.faults.counts() != vec![(THREAD, 3)] {
            assert!(
                Instant::now() < deadline,
                "{:?}",
                cluster.shared.faults.counts()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        let answer = ask("/metrics");
        assert!(
            answer.contains(r#"forkless_runtime_panics_total{thread="forkless-control"} 3"#),
            "{answer}"
        );
        cluster.shutdown();
        cluster.join();
        std::fs::remove_dir_all(&dir).expect("clean up");
    }
}
