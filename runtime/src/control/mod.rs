//! The control server: HTTP/1.1 + JSON on a Unix socket (mode 0600), and
//! optionally on a loopback TCP port behind a bearer token, so that
//! `curl --unix-socket` and `forkless-ctl` can watch and steer a running
//! cluster.
//!
//! | request | answer |
//! |---|---|
//! | `GET /status` | the cluster's status as JSON |
//! | `GET /events` | its events as newline-delimited JSON, streamed until it stops |
//! | `POST /resize` | `{"workers": 4}`, or a change: `{"workers": "+1"}` / `"-2"` |
//! | `POST /restart` | a rolling restart |
//! | `POST /shutdown` | a graceful stop |
//! | `GET /metrics` | Prometheus metrics, in the text format |
//!
//! Errors are 4xx with `{"error": "..."}`: an unknown path is 404, a known
//! path asked with another method 405 with `Allow` (one `match (method,
//! path)` in `route` decides). The JSON documents are the types of
//! [`forkless_control`], which `forkless-ctl` reads with.
//!
//! # Who can reach the control plane
//!
//! Anyone who reaches it can stop or resize the cluster, so:
//!
//! - **The Unix socket** is `$XDG_RUNTIME_DIR/forkless-{name}.sock` by
//!   default, or, without `XDG_RUNTIME_DIR`, `forkless-{name}.sock` in the
//!   private directory `{temp dir}/forkless-{uid}/`. That directory is
//!   created with mode 0700 and, before each use, checked with `lstat`: a
//!   real directory (not a symbolic link), owned by this process's
//!   (effective) uid, with no group or other permission bits. A directory
//!   that fails the check is used for nothing: the cluster runs without a
//!   control server and logs why (owner, mode).
//! - The socket file has mode 0600 from the moment it exists: the mode is
//!   set on the socket before `bind` (Linux takes the file's mode from it),
//!   so no umask and no race opens it wider.
//! - A file already at the socket's path is removed only if `lstat` says it
//!   is a socket owned by this uid and no cluster answers on it (what a
//!   crashed cluster leaves). Anything else there (a regular file, a
//!   symbolic link, another user's socket) is left intact: an explicit
//!   [`control_socket`](crate::Builder::control_socket) path is then a
//!   start-up error that says what is there; the default path means no
//!   control server, and an error log.
//! - Every connection accepted on the Unix socket has its peer's
//!   credentials checked (`SO_PEERCRED`): only this uid and root are
//!   served; anyone else (who got in through a mode loosened by hand) is
//!   disconnected at once, with a warning in the log. `forkless-ctl` checks
//!   the server the same way, and refuses to talk to one that runs as
//!   another user.
//! - **The TCP listener** ([`control_tcp`](crate::Builder::control_tcp))
//!   serves only requests with `Authorization: Bearer <token>` (16 bytes at
//!   least, compared in constant time); any other request gets 401 and the
//!   connection is closed.
//! - Each listener serves at most [`MAX_CONNECTIONS`] connections at once;
//!   one over that is closed as soon as it is accepted, so clients of the
//!   TCP port cannot crowd the owner out of the Unix socket. A client must
//!   send its headers within 5 s. A failing `accept` (out of file
//!   descriptors) pauses the loop, from 5 ms up to 1 s, instead of spinning.
//! - A panic while serving a request ends that connection only; it is
//!   counted in `forkless_runtime_panics_total{thread="forkless-control"}`.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use forkless_control as wire;
use futures_core::Stream;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Body, Frame, Incoming};
use hyper::header::{
    HeaderValue, ALLOW, AUTHORIZATION, CONNECTION, CONTENT_TYPE, WWW_AUTHENTICATE,
};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::task::{JoinError, JoinSet};

use crate::config::ControlConfig;
use crate::observe::events::{Event, Events, Status, WorkerState};
use crate::Cluster;
use forkless_worker::Error;

/// The most a request body may hold.
const MAX_BODY: usize = 4096;

/// How long a client has to send its headers, then its body.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// The most connections the control server serves at once, on each of its
/// listeners (the Unix socket, the TCP port). A connection over the cap is
/// closed as soon as it is accepted. Event streams (`GET /events`) count
/// while they last.
pub(crate) const MAX_CONNECTIONS: usize = 64;

/// The first pause after a failed `accept`; each further failure doubles it,
/// up to [`MAX_ACCEPT_PAUSE`].
const FIRST_ACCEPT_PAUSE: Duration = Duration::from_millis(5);

/// The longest pause after a failed `accept`.
const MAX_ACCEPT_PAUSE: Duration = Duration::from_secs(1);

/// The name the control thread's caught panics are counted under.
const THREAD: &str = "forkless-control";

/// The uid this process acts as (its effective uid): the owner of the files
/// it creates, and the uid its peers see.
pub(crate) fn our_uid() -> u32 {
    forkless_control::effective_uid()
}

/// The default socket path for a cluster named `name`:
/// `$XDG_RUNTIME_DIR/forkless-{name}.sock`, or, without it,
/// `{temp dir}/forkless-{uid}/forkless-{name}.sock`, `{uid}` being this
/// process's effective uid. Characters of `name` other than ASCII letters,
/// digits, `-` and `_` become `_`. The same as
/// [`forkless_control::default_socket`], which `forkless-ctl` uses.
///
/// The control server creates `{temp dir}/forkless-{uid}/` with mode 0700
/// and uses it only while it is a real directory (not a symbolic link),
/// owned by that uid, with no group or other permission bits; otherwise the
/// cluster runs without a control server and logs why. The socket itself
/// has mode 0600, and the server (like `forkless-ctl` on its side) talks
/// only to peers that run as the same uid or as root. See the
/// [`Builder::control`](crate::Builder::control) docs.
///
/// This function only computes the path: it creates and checks nothing.
///
/// ```
/// let path = forkless_runtime::default_control_socket("api");
/// assert!(path.ends_with("forkless-api.sock"));
/// ```
pub fn default_control_socket(name: &str) -> PathBuf {
    forkless_control::default_socket(name)
}

/// The default socket path of the cluster `name`, and the private
/// directory it is in when that is ours to create and check (not under
/// `XDG_RUNTIME_DIR`).
fn default_place(name: &str, uid: u32) -> (PathBuf, Option<PathBuf>) {
    let place = forkless_control::default_socket_place(name, uid);
    (place.path, place.private_dir)
}

/// What `lstat` says about a path, as far as the control socket cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Facts {
    kind: Kind,
    /// The owner.
    uid: u32,
    /// The permission bits.
    mode: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Directory,
    Socket,
    Symlink,
    File,
    Other,
}

impl Facts {
    fn of(meta: &std::fs::Metadata) -> Facts {
        let t = meta.file_type();
        let kind = if t.is_symlink() {
            Kind::Symlink
        } else if t.is_dir() {
            Kind::Directory
        } else if t.is_socket() {
            Kind::Socket
        } else if t.is_file() {
            Kind::File
        } else {
            Kind::Other
        };
        Facts {
            kind,
            uid: meta.uid(),
            mode: meta.mode() & 0o7777,
        }
    }
}

/// Why the directory `facts` describes is not private to `uid`, if it is not.
fn not_private(facts: Facts, uid: u32) -> Option<String> {
    match facts.kind {
        Kind::Directory => {}
        Kind::Symlink => return Some("is a symbolic link, not a directory".to_owned()),
        _ => return Some("is not a directory".to_owned()),
    }
    if facts.uid != uid {
        return Some(format!(
            "is owned by uid {}, not by this process's uid {uid}",
            facts.uid
        ));
    }
    if facts.mode & 0o077 != 0 {
        return Some(format!(
            "has mode {:04o}: group or others have access to it (it must be 0700)",
            facts.mode
        ));
    }
    None
}

/// Creates `dir` with mode 0700 if it is not there, then checks (with
/// `lstat`) that it is private to `uid`.
fn private_dir(dir: &Path, uid: u32) -> Result<(), String> {
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(format!("cannot be created: {e}")),
    }
    let meta = std::fs::symlink_metadata(dir).map_err(|e| format!("cannot be inspected: {e}"))?;
    match not_private(Facts::of(&meta), uid) {
        None => Ok(()),
        Some(why) => Err(why),
    }
}

/// What to do about a file found where the socket goes.
#[derive(Debug, PartialEq, Eq)]
enum Found {
    /// A socket of ours: remove it unless a cluster answers on it.
    OurSocket,
    /// Something else: leave it alone, and say what it is.
    Foreign(String),
}

fn found(facts: Facts, uid: u32) -> Found {
    let what = match facts.kind {
        Kind::Socket if facts.uid == uid => return Found::OurSocket,
        Kind::Socket => format!(
            "a socket owned by uid {} (not by this process's uid {uid})",
            facts.uid
        ),
        Kind::Symlink => "a symbolic link".to_owned(),
        Kind::Directory => "a directory".to_owned(),
        Kind::File => "a regular file".to_owned(),
        Kind::Other => "a special file".to_owned(),
    };
    Found::Foreign(format!(
        "{what} is already there; it is left intact (is the path right? remove it \
         if it is a leftover)"
    ))
}

/// Whether a live cluster answers on `path`.
fn path_is_live(path: &Path) -> bool {
    std::os::unix::net::UnixStream::connect(path).is_ok()
}

/// Binds the Unix socket at `path` with mode 0600, replacing a stale socket
/// of ours (from a cluster that died), refusing one that a live cluster
/// answers on, and leaving anything else intact. The error says what is
/// wrong, without the path.
fn bind_unix(path: &Path, uid: u32) -> Result<std::os::unix::net::UnixListener, String> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) => match found(Facts::of(&meta), uid) {
            Found::Foreign(why) => return Err(why),
            Found::OurSocket if path_is_live(path) => {
                return Err(
                    "a running cluster already answers there (give this one another \
                            name, or another control_socket path)"
                        .to_owned(),
                )
            }
            Found::OurSocket => std::fs::remove_file(path)
                .map_err(|e| format!("cannot remove the stale socket: {e}"))?,
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("cannot be inspected: {e}")),
    }
    bind_private(path).map_err(|e| e.to_string())
}

/// Binds a listening Unix socket at `path` whose file has mode 0600 from the
/// moment it exists: Linux's `bind` gives the file the socket inode's mode
/// (less the umask), so the mode is set on the socket first. Nothing to
/// chmod afterwards, hence no window.
fn bind_private(path: &Path) -> io::Result<std::os::unix::net::UnixListener> {
    let socket = socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::STREAM, None)?;
    let file = std::fs::File::from(OwnedFd::from(socket));
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    let socket = socket2::Socket::from(OwnedFd::from(file));
    socket.bind(&socket2::SockAddr::unix(path)?)?;
    #[cfg(not(target_os = "linux"))]
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    socket.listen(128)?;
    socket.set_nonblocking(true)?;
    Ok(std::os::unix::net::UnixListener::from(OwnedFd::from(
        socket,
    )))
}

/// The control server's thread: join it to let the last answers (an event
/// stream's end) go out before the process exits.
pub(crate) type ControlThread = std::thread::JoinHandle<()>;

/// Starts the control server for `cluster` on its own thread. Returns the
/// socket path, and the TCP address if one was asked for.
///
/// On the default path (no `control_socket`, no TCP listener), a problem
/// does not stop the cluster: another live cluster answering there (two
/// services that both keep the default name), a private directory that
/// is not private, a file that is not ours. The cluster runs without a
/// control server, says why in an error log, and this returns `None`. With
/// an explicit path, any problem is an [`Error::is_config`] error that names
/// the path and what is wrong.
pub(crate) fn start(
    cluster: &Cluster,
    config: &ControlConfig,
) -> Result<Option<(PathBuf, Option<SocketAddr>, ControlThread)>, Error> {
    let uid = our_uid();
    let (path, unix) = match &config.path {
        Some(path) => {
            let unix = bind_unix(path, uid).map_err(|why| {
                Error::config(format!("control socket {}: {why}", path.display()))
            })?;
            (path.clone(), unix)
        }
        None => {
            let (path, dir) = default_place(cluster.name(), uid);
            let bound = match &dir {
                Some(dir) => private_dir(dir, uid).map_err(|why| {
                    format!(
                        "control socket directory {} {why}; remove it, or set \
                         XDG_RUNTIME_DIR, or give the cluster Builder::control_socket",
                        dir.display()
                    )
                }),
                None => Ok(()),
            }
            .and_then(|()| {
                bind_unix(&path, uid)
                    .map_err(|why| format!("control socket {}: {why}", path.display()))
            });
            match bound {
                Ok(unix) => (path, unix),
                Err(why) if config.tcp.is_none() => {
                    tracing::error!(
                        "{why}; this cluster runs WITHOUT a control server (name it with \
                         Builder::name, or give it Builder::control_socket)"
                    );
                    return Ok(None);
                }
                Err(why) => return Err(Error::config(why)),
            }
        }
    };
    let tcp = match &config.tcp {
        None => None,
        Some((addr, token)) => {
            if !addr.ip().is_loopback() {
                tracing::warn!(%addr, "the TCP control listener is not on loopback: only its token guards it");
            }
            let listener = std::net::TcpListener::bind(addr)
                .and_then(|l| l.set_nonblocking(true).map(|()| l))
                .map_err(|e| Error::bind(addr, e))?;
            Some((listener, token.clone()))
        }
    };
    let tcp_addr = tcp.as_ref().and_then(|(l, _)| l.local_addr().ok());
    let cluster = cluster.clone();
    let thread = std::thread::Builder::new()
        .name(THREAD.to_owned())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!(error = %e, "the control server cannot start its runtime");
                    return;
                }
            };
            // The socket file is removed when the cluster finishes (before
            // `join` returns), not here: by now another cluster may have
            // bound the same path.
            rt.block_on(serve(cluster, unix, tcp, uid));
        })
        .map_err(|e| Error::spawn("cannot spawn the control thread", e))?;
    tracing::info!(socket = %path.display(), tcp = ?tcp_addr, "control server listening");
    Ok(Some((path, tcp_addr, thread)))
}

/// Whether the control server serves a Unix peer running as `peer`, itself
/// running as `ours`: the same user, or root.
fn peer_allowed(peer: u32, ours: u32) -> bool {
    forkless_control::peer_trusted(peer, ours)
}

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

async fn serve(
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

/// The body of an answer: a whole JSON or text document, or the event stream.
pub(crate) enum Answer {
    Whole(Full<Bytes>),
    Events(Events),
}

impl Body for Answer {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            Answer::Whole(full) => Pin::new(full).poll_frame(cx),
            Answer::Events(events) => match Pin::new(events).poll_next(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Ready(Some(event)) => {
                    // The wire types are plain data: writing them cannot fail.
                    let mut line = serde_json::to_vec(&wire_event(&event)).unwrap_or_default();
                    line.push(b'\n');
                    Poll::Ready(Some(Ok(Frame::data(Bytes::from(line)))))
                }
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Answer::Whole(full) => full.is_end_stream(),
            Answer::Events(_) => false,
        }
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        match self {
            Answer::Whole(full) => full.size_hint(),
            Answer::Events(_) => hyper::body::SizeHint::default(),
        }
    }
}

fn json_answer<T: serde::Serialize>(status: StatusCode, value: &T) -> Response<Answer> {
    // The wire types are plain data: writing them cannot fail.
    let body = serde_json::to_vec(value).unwrap_or_default();
    let mut response = Response::new(Answer::Whole(Full::new(Bytes::from(body))));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn error(status: StatusCode, message: impl std::fmt::Display) -> Response<Answer> {
    json_answer(
        status,
        &wire::ErrorBody {
            error: message.to_string(),
        },
    )
}

/// Compares in time that depends on the lengths only, not on where the
/// first difference is.
fn same_token(given: &[u8], expected: &[u8]) -> bool {
    given.len() == expected.len()
        && given
            .iter()
            .zip(expected)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// An endpoint of the control server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Status,
    Events,
    Metrics,
    Resize,
    Restart,
    Shutdown,
}

/// Why a request has no [`Route`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NoRoute {
    /// 404: no such path.
    NotFound,
    /// 405: the path takes only this method.
    Allow(&'static str),
}

/// The one table of endpoints: each (method, path) that is served, then each
/// known path asked with another method. Anything else is not found: no
/// unknown request reaches an action.
fn route(method: &Method, path: &str) -> Result<Route, NoRoute> {
    match (method, path) {
        (&Method::GET, "/status") => Ok(Route::Status),
        (&Method::GET, "/events") => Ok(Route::Events),
        (&Method::GET, "/metrics") => Ok(Route::Metrics),
        (&Method::POST, "/resize") => Ok(Route::Resize),
        (&Method::POST, "/restart") => Ok(Route::Restart),
        (&Method::POST, "/shutdown") => Ok(Route::Shutdown),
        (_, "/status" | "/events" | "/metrics") => Err(NoRoute::Allow("GET")),
        (_, "/resize" | "/restart" | "/shutdown") => Err(NoRoute::Allow("POST")),
        _ => Err(NoRoute::NotFound),
    }
}

pub(crate) async fn handle(
    req: Request<Incoming>,
    cluster: &Cluster,
    token: Option<&str>,
) -> Response<Answer> {
    if let Some(token) = token {
        let given = req
            .headers()
            .get(AUTHORIZATION)
            .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "));
        if !given.is_some_and(|g| same_token(g, token.as_bytes())) {
            let mut response = error(
                StatusCode::UNAUTHORIZED,
                "a valid `Authorization: Bearer <token>` is required",
            );
            response
                .headers_mut()
                .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            // A client without the token gets one answer per connection,
            // so it cannot hold the connection open with one bad request
            // after another.
            response
                .headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
            return response;
        }
    }
    #[cfg(test)]
    if req.uri().path() == "/test-panic" {
        panic!("a control request panicked (test)");
    }
    let route = match route(req.method(), req.uri().path()) {
        Ok(route) => route,
        Err(NoRoute::NotFound) => {
            return error(
                StatusCode::NOT_FOUND,
                format!("no such endpoint: {} {}", req.method(), req.uri().path()),
            )
        }
        Err(NoRoute::Allow(allowed)) => {
            let mut response = error(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("{} takes {allowed}", req.uri().path()),
            );
            response
                .headers_mut()
                .insert(ALLOW, HeaderValue::from_static(allowed));
            return response;
        }
    };
    let body = match tokio::time::timeout(
        READ_TIMEOUT,
        Limited::new(req.into_body(), MAX_BODY).collect(),
    )
    .await
    {
        Err(_) => {
            return error(
                StatusCode::REQUEST_TIMEOUT,
                "the request body came too slowly",
            )
        }
        Ok(Err(e))
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the body is over {MAX_BODY} bytes"),
            )
        }
        Ok(Err(e)) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("cannot read the body: {e}"),
            )
        }
        Ok(Ok(collected)) => collected.to_bytes(),
    };
    match route {
        Route::Status => json_answer(StatusCode::OK, &wire_status(&cluster.status())),
        Route::Events => {
            let mut response = Response::new(Answer::Events(cluster.events()));
            response.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("application/x-ndjson"),
            );
            response
        }
        Route::Metrics => {
            let mut response =
                Response::new(Answer::Whole(Full::new(Bytes::from(cluster.metrics()))));
            response.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            response
        }
        Route::Resize => resize(cluster, &body),
        Route::Restart => match cluster.restart() {
            Ok(()) => json_answer(StatusCode::ACCEPTED, &wire::RestartAnswer::started()),
            Err(e) => error(StatusCode::CONFLICT, e),
        },
        Route::Shutdown => {
            cluster.shutdown();
            json_answer(StatusCode::ACCEPTED, &wire::ShutdownAnswer::started())
        }
    }
}

/// `{"workers": 4}`, `{"workers": "+1"}` or `{"workers": "-2"}`.
fn resize(cluster: &Cluster, body: &[u8]) -> Response<Answer> {
    let request: wire::ResizeRequest = match serde_json::from_slice(body) {
        Ok(request) => request,
        Err(e) if e.is_data() => return error(StatusCode::BAD_REQUEST, e),
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("malformed JSON: {e}")),
    };
    let from = cluster.status().size;
    let Some(to) = request.workers.apply(from) else {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("cannot resize {from} workers by {}", request.workers),
        );
    };
    match cluster.resize(to) {
        Ok(()) => json_answer(StatusCode::OK, &wire::ResizeAnswer { from, to }),
        Err(e) if e.is_stopped() => error(StatusCode::CONFLICT, e),
        Err(e) => error(StatusCode::UNPROCESSABLE_ENTITY, e),
    }
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn wire_state(state: WorkerState) -> wire::WorkerState {
    match state {
        WorkerState::Starting => wire::WorkerState::Starting,
        WorkerState::Ready => wire::WorkerState::Ready,
        WorkerState::Stalled => wire::WorkerState::Stalled,
        WorkerState::Restarting => wire::WorkerState::Restarting,
        WorkerState::GaveUp => wire::WorkerState::GaveUp,
        WorkerState::Stopped => wire::WorkerState::Stopped,
    }
}

/// The cluster's status as the protocol writes it.
pub(crate) fn wire_status(status: &Status) -> wire::Status {
    wire::Status {
        name: status.name.clone(),
        size: status.size,
        rolling: status.rolling,
        stopping: status.stopping,
        workers: status
            .workers
            .iter()
            .map(|w| wire::WorkerStatus {
                slot: w.slot,
                generation: w.generation,
                core: w.core,
                state: wire_state(w.state),
                uptime_secs: w
                    .started_at
                    .and_then(|t| t.elapsed().ok())
                    .map(|d| d.as_secs_f64()),
                restarts: w.restarts,
                last_exit: w.last_exit.as_ref().map(ToString::to_string),
                accepted: w.accepted,
                alive_tasks: w.alive_tasks,
                busy_ratio: w.busy_ratio,
                loop_lag_ms: millis(w.loop_lag),
            })
            .collect(),
        backends: status
            .backends
            .iter()
            .map(|b| wire::BackendStatus {
                name: b.name.to_owned(),
                kind: b.kind.to_owned(),
                reachable: b.reachable,
                failures: b.failures,
            })
            .collect(),
    }
}

/// An event as the protocol writes it.
pub(crate) fn wire_event(event: &Event) -> wire::Event {
    match event.clone() {
        Event::WorkerStarted {
            slot,
            generation,
            core,
        } => wire::Event::WorkerStarted {
            slot,
            generation,
            core,
        },
        Event::WorkerReady {
            slot,
            generation,
            after,
        } => wire::Event::WorkerReady {
            slot,
            generation,
            after_ms: millis(after),
        },
        Event::WorkerExited {
            slot,
            generation,
            exit,
            ran_for,
        } => wire::Event::WorkerExited {
            slot,
            generation,
            exit: exit.to_string(),
            ran_for_ms: millis(ran_for),
        },
        Event::Restarting { slot, delay } => wire::Event::Restarting {
            slot,
            delay_ms: millis(delay),
        },
        Event::GaveUp { slot, failures } => wire::Event::GaveUp { slot, failures },
        Event::Stalled {
            slot,
            generation,
            silent_for,
        } => wire::Event::Stalled {
            slot,
            generation,
            silent_for_ms: millis(silent_for),
        },
        Event::Recovered { slot, generation } => wire::Event::Recovered { slot, generation },
        Event::TaskPanicked {
            slot,
            generation,
            message,
            location,
        } => wire::Event::TaskPanicked {
            slot,
            generation,
            message,
            location,
        },
        Event::Resized { from, to } => wire::Event::Resized { from, to },
        Event::RollStarted { slots } => wire::Event::RollStarted { slots },
        Event::RollFailed {
            slot,
            generation,
            reason,
        } => wire::Event::RollFailed {
            slot,
            generation,
            reason,
        },
        Event::RollFinished {
            restarted,
            completed,
        } => wire::Event::RollFinished {
            restarted,
            completed,
        },
        Event::Stopping { terminate } => wire::Event::Stopping { terminate },
        Event::Stopped => wire::Event::Stopped,
        Event::Lagged { missed } => wire::Event::Lagged { missed },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    /// A fresh directory for one test, mode 0755.
    fn scratch(test: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "forkless-control-unit-{}-{test}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        dir
    }

    fn mode(path: &Path) -> u32 {
        std::fs::symlink_metadata(path)
            .expect("lstat")
            .permissions()
            .mode()
            & 0o7777
    }

    /// The JSON the server wrote by hand (`json!` per event) before the
    /// typed protocol: the reference the typed answers must equal.
    mod legacy {
        use crate::observe::events::{Event, Status};
        use serde_json::{json, Value};
        use std::time::Duration;

        fn exit_json(exit: &crate::Exit) -> Value {
            Value::String(exit.to_string())
        }

        pub(super) fn status_json(status: &Status) -> Value {
            json!({
                "name": status.name,
                "size": status.size,
                "rolling": status.rolling,
                "stopping": status.stopping,
                "workers": status.workers.iter().map(|w| json!({
                    "slot": w.slot,
                    "generation": w.generation,
                    "core": w.core,
                    "state": w.state.to_string(),
                    "uptime_secs": w.started_at.and_then(|t| t.elapsed().ok()).map(|d| d.as_secs_f64()),
                    "restarts": w.restarts,
                    "last_exit": w.last_exit.as_ref().map(exit_json),
                    "accepted": w.accepted,
                    "alive_tasks": w.alive_tasks,
                    "busy_ratio": w.busy_ratio,
                    "loop_lag_ms": w.loop_lag.as_secs_f64() * 1000.0,
                })).collect::<Vec<_>>(),
                "backends": status.backends.iter().map(|b| json!({
                    "name": b.name,
                    "kind": b.kind,
                    "reachable": b.reachable,
                    "failures": b.failures,
                })).collect::<Vec<_>>(),
            })
        }

        pub(super) fn event_json(event: &Event) -> Value {
            let ms = |d: &Duration| d.as_secs_f64() * 1000.0;
            match event {
                Event::WorkerStarted {
                    slot,
                    generation,
                    core,
                } => {
                    json!({"event": "worker_started", "slot": slot, "generation": generation, "core": core})
                }
                Event::WorkerReady {
                    slot,
                    generation,
                    after,
                } => {
                    json!({"event": "worker_ready", "slot": slot, "generation": generation, "after_ms": ms(after)})
                }
                Event::WorkerExited {
                    slot,
                    generation,
                    exit,
                    ran_for,
                } => {
                    json!({"event": "worker_exited", "slot": slot, "generation": generation, "exit": exit_json(exit), "ran_for_ms": ms(ran_for)})
                }
                Event::Restarting { slot, delay } => {
                    json!({"event": "restarting", "slot": slot, "delay_ms": ms(delay)})
                }
                Event::GaveUp { slot, failures } => {
                    json!({"event": "gave_up", "slot": slot, "failures": failures})
                }
                Event::Stalled {
                    slot,
                    generation,
                    silent_for,
                } => {
                    json!({"event": "stalled", "slot": slot, "generation": generation, "silent_for_ms": ms(silent_for)})
                }
                Event::Recovered { slot, generation } => {
                    json!({"event": "recovered", "slot": slot, "generation": generation})
                }
                Event::TaskPanicked {
                    slot,
                    generation,
                    message,
                    location,
                } => {
                    json!({"event": "task_panicked", "slot": slot, "generation": generation, "message": message, "location": location})
                }
                Event::Resized { from, to } => json!({"event": "resized", "from": from, "to": to}),
                Event::RollStarted { slots } => json!({"event": "roll_started", "slots": slots}),
                Event::RollFailed {
                    slot,
                    generation,
                    reason,
                } => {
                    json!({"event": "roll_failed", "slot": slot, "generation": generation, "reason": reason})
                }
                Event::RollFinished {
                    restarted,
                    completed,
                } => {
                    json!({"event": "roll_finished", "restarted": restarted, "completed": completed})
                }
                Event::Stopping { terminate } => {
                    json!({"event": "stopping", "terminate": terminate})
                }
                Event::Stopped => json!({"event": "stopped"}),
                Event::Lagged { missed } => json!({"event": "lagged", "missed": missed}),
            }
        }
    }

    /// One of each runtime event: the `match` has no wildcard, so a new
    /// variant does not compile until it is listed here.
    fn every_event() -> Vec<Event> {
        let all = vec![
            Event::WorkerStarted {
                slot: 0,
                generation: 1,
                core: Some(3),
            },
            Event::WorkerStarted {
                slot: 1,
                generation: 0,
                core: None,
            },
            Event::WorkerReady {
                slot: 0,
                generation: 1,
                after: Duration::from_micros(1500),
            },
            Event::WorkerExited {
                slot: 0,
                generation: 1,
                exit: crate::Exit::Panicked {
                    message: "boom".to_owned(),
                    location: Some("src/main.rs:1:2".to_owned()),
                },
                ran_for: Duration::from_millis(250),
            },
            Event::WorkerExited {
                slot: 0,
                generation: 2,
                exit: crate::Exit::Normal,
                ran_for: Duration::ZERO,
            },
            Event::Restarting {
                slot: 1,
                delay: Duration::from_millis(100),
            },
            Event::GaveUp {
                slot: 1,
                failures: 5,
            },
            Event::Stalled {
                slot: 0,
                generation: 1,
                silent_for: Duration::from_secs(3),
            },
            Event::Recovered {
                slot: 0,
                generation: 1,
            },
            Event::TaskPanicked {
                slot: 0,
                generation: 1,
                message: "oops".to_owned(),
                location: None,
            },
            Event::Resized { from: 2, to: 3 },
            Event::RollStarted { slots: 3 },
            Event::RollFailed {
                slot: 2,
                generation: 4,
                reason: "not ready in time".to_owned(),
            },
            Event::RollFinished {
                restarted: 3,
                completed: true,
            },
            Event::Stopping { terminate: true },
            Event::Stopped,
            Event::Lagged { missed: 7 },
        ];
        for event in &all {
            match event {
                Event::WorkerStarted { .. }
                | Event::WorkerReady { .. }
                | Event::WorkerExited { .. }
                | Event::Restarting { .. }
                | Event::GaveUp { .. }
                | Event::Stalled { .. }
                | Event::Recovered { .. }
                | Event::TaskPanicked { .. }
                | Event::Resized { .. }
                | Event::RollStarted { .. }
                | Event::RollFailed { .. }
                | Event::RollFinished { .. }
                | Event::Stopping { .. }
                | Event::Stopped
                | Event::Lagged { .. } => {}
            }
        }
        all
    }

    /// The typed events are written exactly as the hand-built JSON was, and
    /// read back into the same typed event.
    #[test]
    fn every_event_is_written_as_before_and_reads_back() {
        for event in every_event() {
            let typed = wire_event(&event);
            let line = serde_json::to_string(&typed).expect("JSON");
            let value: serde_json::Value = serde_json::from_str(&line).expect("JSON");
            assert_eq!(value, legacy::event_json(&event), "{event:?}");
            let back: wire::Event = serde_json::from_str(&line).expect("typed");
            assert_eq!(back, typed, "{line}");
        }
    }

    #[test]
    fn the_status_is_written_as_before() {
        use crate::observe::events::{BackendStatus, WorkerStatus};
        let status = Status {
            name: "api".to_owned(),
            size: 2,
            rolling: true,
            stopping: false,
            workers: vec![
                WorkerStatus {
                    slot: 0,
                    generation: 3,
                    core: Some(1),
                    state: WorkerState::GaveUp,
                    started_at: None,
                    restarts: 3,
                    last_exit: Some(crate::Exit::Failed("no".to_owned())),
                    accepted: 10,
                    alive_tasks: 2,
                    busy_ratio: 0.25,
                    loop_lag: Duration::from_micros(500),
                },
                WorkerStatus {
                    slot: 1,
                    generation: 0,
                    core: None,
                    state: WorkerState::Starting,
                    started_at: None,
                    restarts: 0,
                    last_exit: None,
                    accepted: 0,
                    alive_tasks: 0,
                    busy_ratio: 0.0,
                    loop_lag: Duration::ZERO,
                },
            ],
            backends: vec![BackendStatus {
                name: "store",
                kind: "redis",
                reachable: false,
                failures: 7,
            }],
        };
        let typed = serde_json::to_value(wire_status(&status)).expect("JSON");
        assert_eq!(typed, legacy::status_json(&status));
        for state in [
            WorkerState::Starting,
            WorkerState::Ready,
            WorkerState::Stalled,
            WorkerState::Restarting,
            WorkerState::GaveUp,
            WorkerState::Stopped,
        ] {
            assert_eq!(wire_state(state).to_string(), state.to_string());
        }
    }

    /// Only the six endpoints route anywhere; the shutdown only from
    /// `POST /shutdown` exactly.
    #[test]
    fn one_table_routes_and_nothing_unknown_reaches_an_action() {
        let served = [
            (Method::GET, "/status", Route::Status),
            (Method::GET, "/events", Route::Events),
            (Method::GET, "/metrics", Route::Metrics),
            (Method::POST, "/resize", Route::Resize),
            (Method::POST, "/restart", Route::Restart),
            (Method::POST, "/shutdown", Route::Shutdown),
        ];
        for (method, path, to) in &served {
            assert_eq!(route(method, path), Ok(*to), "{method} {path}");
        }
        let methods = [
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::DELETE,
            Method::HEAD,
            Method::OPTIONS,
            Method::PATCH,
            Method::from_bytes(b"SHUTDOWN").expect("method"),
        ];
        for method in &methods {
            for path in [
                "/",
                "",
                "*",
                "/nowhere",
                "/shutdown/",
                "//shutdown",
                "/Shutdown",
                "/SHUTDOWN",
                "/shutdownx",
                "/shutdown/x",
                "/x/shutdown",
                "/restart/",
                "/resize/",
                "/status/",
                "/test-panic",
            ] {
                assert_eq!(
                    route(method, path),
                    Err(NoRoute::NotFound),
                    "{method} {path}"
                );
            }
            for (allowed, path, _) in &served {
                if method != allowed {
                    let allow = if *allowed == Method::GET {
                        "GET"
                    } else {
                        "POST"
                    };
                    assert_eq!(
                        route(method, path),
                        Err(NoRoute::Allow(allow)),
                        "{method} {path}"
                    );
                }
            }
        }
    }

    fn ask_at(socket: &Path, method: &str, path: &str) -> String {
        let mut stream = std::os::unix::net::UnixStream::connect(socket).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
        .expect("send");
        let mut answer = String::new();
        stream.read_to_string(&mut answer).expect("EOF");
        answer
    }

    /// The live server: `/status` parses into the typed `Status`; unknown
    /// routes are 404, a known path with the wrong method 405 with `Allow`,
    /// and none of them stops the cluster.
    #[test]
    fn the_live_status_is_typed_and_unknown_routes_are_404() {
        let dir = scratch("typed");
        let socket = dir.join("control.sock");
        let cluster = crate::Cluster::builder()
            .name("control-typed")
            .workers(1)
            .control_socket(&socket)
            .start(|worker: forkless_worker::Worker| async move {
                worker.ready();
                worker.shutdown_signal().await;
            })
            .expect("start");
        let answer = ask_at(&socket, "GET", "/status");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        let status: wire::Status = serde_json::from_str(body).expect("a typed Status");
        assert_eq!(status.name, "control-typed");
        assert_eq!(status.size, 1);
        assert_eq!(status.workers.len(), 1);
        assert!(status.backends.is_empty());
        for (method, path) in [
            ("GET", "/nowhere"),
            ("POST", "/"),
            ("POST", "/shutdown/"),
            ("POST", "//shutdown"),
            ("POST", "/Shutdown"),
            ("POST", "/shutdownx"),
            ("DELETE", "/x"),
            ("PUT", "/restart/now"),
        ] {
            let answer = ask_at(&socket, method, path);
            assert!(
                answer.starts_with("HTTP/1.1 404"),
                "{method} {path}: {answer}"
            );
            let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b);
            let error: wire::ErrorBody = serde_json::from_str(body).expect("an error body");
            assert!(error.error.contains(path), "{answer}");
        }
        for (method, path, allow) in [
            ("GET", "/shutdown", "POST"),
            ("PUT", "/shutdown", "POST"),
            ("DELETE", "/restart", "POST"),
            ("POST", "/status", "GET"),
        ] {
            let answer = ask_at(&socket, method, path);
            assert!(
                answer.starts_with("HTTP/1.1 405"),
                "{method} {path}: {answer}"
            );
            assert!(
                answer
                    .to_ascii_lowercase()
                    .contains(&format!("allow: {}", allow.to_ascii_lowercase())),
                "{answer}"
            );
        }
        assert!(!cluster.is_stopped());
        assert!(ask_at(&socket, "GET", "/status").starts_with("HTTP/1.1 200"));
        cluster.shutdown();
        cluster.join();
        std::fs::remove_dir_all(&dir).expect("clean up");
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(same_token(b"secret-token", b"secret-token"));
        assert!(!same_token(b"secret-tokem", b"secret-token"));
        assert!(!same_token(b"secret", b"secret-token"));
        assert!(!same_token(b"", b"x"));
    }

    #[test]
    fn socket_names_are_safe_file_names() {
        let path = default_control_socket("my app/../x");
        let name = path
            .file_name()
            .expect("a file")
            .to_string_lossy()
            .into_owned();
        assert_eq!(name, "forkless-my_app____x.sock");
    }

    #[test]
    fn without_xdg_the_default_socket_is_in_a_directory_named_by_uid() {
        let (path, dir) = default_place("api", 1234);
        match std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
            Some(xdg) => {
                assert_eq!(path, PathBuf::from(xdg).join("forkless-api.sock"));
                assert_eq!(dir, None);
            }
            None => {
                let dir = dir.expect("a private directory");
                assert_eq!(dir, std::env::temp_dir().join("forkless-1234"));
                assert_eq!(path, dir.join("forkless-api.sock"));
            }
        }
    }

    #[test]
    fn the_uid_comes_from_the_os() {
        use std::os::unix::fs::MetadataExt;
        // /proc/self belongs to the process's effective uid.
        let owner = std::fs::metadata("/proc/self").expect("procfs").uid();
        assert_eq!(our_uid(), owner);
    }

    fn facts(kind: Kind, uid: u32, mode: u32) -> Facts {
        Facts { kind, uid, mode }
    }

    #[test]
    fn a_private_directory_is_a_real_directory_of_ours_closed_to_others() {
        assert_eq!(not_private(facts(Kind::Directory, 7, 0o700), 7), None);
        assert_eq!(not_private(facts(Kind::Directory, 7, 0o500), 7), None);
        for (f, says) in [
            (facts(Kind::Symlink, 7, 0o777), "symbolic link"),
            (facts(Kind::File, 7, 0o600), "not a directory"),
            (facts(Kind::Socket, 7, 0o600), "not a directory"),
            (
                facts(Kind::Directory, 8, 0o700),
                "owned by uid 8, not by this process's uid 7",
            ),
            (facts(Kind::Directory, 0, 0o700), "owned by uid 0"),
            (facts(Kind::Directory, 7, 0o750), "mode 0750"),
            (facts(Kind::Directory, 7, 0o701), "mode 0701"),
            (facts(Kind::Directory, 7, 0o1777), "mode 1777"),
        ] {
            let why = not_private(f, 7).unwrap_or_else(|| panic!("{f:?} is not private"));
            assert!(why.contains(says), "{f:?}: {why}");
        }
    }

    #[test]
    fn only_a_socket_of_ours_may_be_replaced() {
        assert_eq!(found(facts(Kind::Socket, 7, 0o600), 7), Found::OurSocket);
        for (f, says) in [
            (facts(Kind::Socket, 8, 0o600), "a socket owned by uid 8"),
            (facts(Kind::Socket, 0, 0o600), "a socket owned by uid 0"),
            (facts(Kind::File, 7, 0o600), "a regular file"),
            (facts(Kind::Symlink, 7, 0o777), "a symbolic link"),
            (facts(Kind::Directory, 7, 0o700), "a directory"),
            (facts(Kind::Other, 7, 0o600), "a special file"),
        ] {
            match found(f, 7) {
                Found::Foreign(why) => {
                    assert!(why.contains(says) && why.contains("left intact"), "{why}")
                }
                Found::OurSocket => panic!("{f:?} would be removed"),
            }
        }
    }

    #[test]
    fn the_private_directory_is_created_0700_and_checked() {
        let root = scratch("private-dir");
        let uid = our_uid();
        let dir = root.join("forkless-x");
        private_dir(&dir, uid).expect("created");
        assert_eq!(mode(&dir), 0o700);
        private_dir(&dir, uid).expect("ours already");

        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let why = private_dir(&dir, uid).unwrap_err();
        assert!(why.contains("mode 0755"), "{why}");

        let link = root.join("forkless-link");
        std::os::unix::fs::symlink(&dir, &link).expect("symlink");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).expect("chmod");
        let why = private_dir(&link, uid).unwrap_err();
        assert!(why.contains("symbolic link"), "{why}");

        let why = private_dir(&dir, uid + 1).unwrap_err();
        assert!(why.contains(&format!("owned by uid {uid}")), "{why}");
        std::fs::remove_dir_all(&root).expect("clean up");
    }

    /// Without the mode set before `bind`, the file would be born with
    /// 0777 less the umask (0755 under the usual 022), and a chmod after
    /// `bind` leaves a window.
    #[test]
    fn the_socket_file_is_0600_as_it_is_bound() {
        let dir = scratch("bind-private");
        let path = dir.join("s.sock");
        let listener = bind_private(&path).expect("bind");
        assert_eq!(mode(&path), 0o600);
        drop(listener);
        std::fs::remove_dir_all(&dir).expect("clean up");
    }

    #[test]
    fn only_a_stale_socket_of_ours_is_replaced_anything_else_is_left_intact() {
        let dir = scratch("stale");
        let uid = our_uid();

        // A regular file (a database, say) given by mistake.
        let data = dir.join("data.db");
        std::fs::write(&data, b"precious").expect("write");
        let why = bind_unix(&data, uid).unwrap_err();
        assert!(
            why.contains("a regular file") && why.contains("left intact"),
            "{why}"
        );
        assert_eq!(std::fs::read(&data).expect("still there"), b"precious");

        // A symbolic link: neither it nor what it points to is touched.
        let link = dir.join("link.sock");
        std::os::unix::fs::symlink(&data, &link).expect("symlink");
        let why = bind_unix(&link, uid).unwrap_err();
        assert!(why.contains("a symbolic link"), "{why}");
        assert!(std::fs::symlink_metadata(&link)
            .expect("link")
            .file_type()
            .is_symlink());
        assert_eq!(std::fs::read(&data).expect("still there"), b"precious");

        // A dead socket of another user.
        let theirs = dir.join("theirs.sock");
        drop(std::os::unix::net::UnixListener::bind(&theirs).expect("bind"));
        let why = bind_unix(&theirs, uid + 1).unwrap_err();
        assert!(
            why.contains(&format!("a socket owned by uid {uid}")),
            "{why}"
        );
        assert!(theirs.exists());

        // A live socket of ours.
        let live = dir.join("live.sock");
        let listener = std::os::unix::net::UnixListener::bind(&live).expect("bind");
        let why = bind_unix(&live, uid).unwrap_err();
        assert!(why.contains("already answers"), "{why}");
        drop(listener);

        // Now dead: a stale socket of ours, replaced.
        let listener = bind_unix(&live, uid).expect("replaces the stale socket");
        assert_eq!(mode(&live), 0o600);
        drop(listener);
        std::fs::remove_dir_all(&dir).expect("clean up");
    }

    #[test]
    fn peers_of_our_uid_and_root_are_served() {
        assert!(peer_allowed(1000, 1000));
        assert!(peer_allowed(0, 1000));
        assert!(peer_allowed(0, 0));
        assert!(!peer_allowed(1001, 1000));
        assert!(!peer_allowed(65534, 0));
    }

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

    #[test]
    fn the_token_is_not_shown() {
        let config = ControlConfig {
            enabled: Some(true),
            path: None,
            tcp: Some((
                SocketAddr::from(([127, 0, 0, 1], 7000)),
                "a-very-secret-token-123".to_owned(),
            )),
        };
        let shown = format!("{config:?}");
        assert!(!shown.contains("a-very-secret-token-123"), "{shown}");
        assert!(
            shown.contains(r#"tcp: Some((127.0.0.1:7000, "***"))"#),
            "{shown}"
        );
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
