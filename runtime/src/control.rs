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
//! Errors are 4xx with `{"error": "..."}`.

use std::convert::Infallible;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_core::Stream;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Body, Frame, Incoming};
use hyper::header::{HeaderValue, ALLOW, AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::{json, Value};

use crate::events::{Event, Events, Status};
use crate::Cluster;
use forkless_worker::Error;

/// The most a request body may hold.
const MAX_BODY: usize = 4096;

/// How long a client has to send its headers, then its body.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the control server listens, from the builder.
#[derive(Clone, Default)]
pub(crate) struct ControlConfig {
    /// `Some(false)`: off; `Some(true)`: on; `None`: on under `run` only.
    pub(crate) enabled: Option<bool>,
    pub(crate) path: Option<PathBuf>,
    pub(crate) tcp: Option<(SocketAddr, String)>,
}

/// Shows everything but the token.
impl fmt::Debug for ControlConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ControlConfig")
            .field("enabled", &self.enabled)
            .field("path", &self.path)
            .field("tcp", &self.tcp.as_ref().map(|(addr, _)| (addr, "***")))
            .finish()
    }
}

/// The default socket path for a cluster named `name`:
/// `$XDG_RUNTIME_DIR/forkless-{name}.sock`, or, without it,
/// `{temp dir}/forkless-{name}-{uid}.sock`.
pub fn default_control_socket(name: &str) -> PathBuf {
    let file: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        Some(dir) => PathBuf::from(dir).join(format!("forkless-{file}.sock")),
        None => {
            use std::os::unix::fs::MetadataExt;
            let uid = std::fs::metadata("/proc/self").map_or(0, |m| m.uid());
            std::env::temp_dir().join(format!("forkless-{file}-{uid}.sock"))
        }
    }
}

/// Binds the Unix socket at `path` with mode 0600, replacing a stale file
/// from a cluster that died, refusing one that a live cluster answers on.
/// Whether a live cluster answers on `path`.
fn path_is_live(path: &Path) -> bool {
    std::os::unix::net::UnixStream::connect(path).is_ok()
}

fn bind_unix(path: &Path) -> Result<std::os::unix::net::UnixListener, Error> {
    use std::os::unix::fs::PermissionsExt;
    let shown = path.display();
    if path.exists() {
        if path_is_live(path) {
            return Err(Error::config(format!(
                "control socket {shown}: a running cluster already answers there \
                 (give this one another name, or another control_socket path)"
            )));
        }
        std::fs::remove_file(path).map_err(|e| {
            Error::config(format!(
                "control socket {shown}: cannot remove the stale file: {e}"
            ))
        })?;
    }
    let listener = std::os::unix::net::UnixListener::bind(path)
        .map_err(|e| Error::config(format!("control socket {shown}: {e}")))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| Error::config(format!("control socket {shown}: cannot set mode 0600: {e}")))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| Error::config(format!("control socket {shown}: {e}")))?;
    Ok(listener)
}

/// Starts the control server for `cluster` on its own thread. Returns the
/// socket path, and the TCP address if one was asked for.
/// The control server's thread: join it to let the last answers (an event
/// stream's end) go out before the process exits.
pub(crate) type ControlThread = std::thread::JoinHandle<()>;

///
/// A default path (no `control_socket`, no TCP listener) that another live
/// cluster already answers on does not stop this one: it runs without a
/// control server, and says so in an error log. (Two services that both
/// keep the default name would otherwise keep each other from starting.)
/// Returns `None` then.
pub(crate) fn start(
    cluster: &Cluster,
    config: &ControlConfig,
) -> Result<Option<(PathBuf, Option<SocketAddr>, ControlThread)>, Error> {
    let path = config
        .path
        .clone()
        .unwrap_or_else(|| default_control_socket(cluster.name()));
    let unix = match bind_unix(&path) {
        Ok(unix) => unix,
        Err(e) if config.path.is_none() && config.tcp.is_none() && path_is_live(&path) => {
            tracing::error!(
                "{e}; this cluster runs WITHOUT a control server (name it with \
                 Builder::name, or give it Builder::control_socket)"
            );
            return Ok(None);
        }
        Err(e) => return Err(e),
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
        .name("forkless-control".to_owned())
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
            rt.block_on(serve(cluster, unix, tcp));
        })
        .map_err(|e| Error::spawn("cannot spawn the control thread", e))?;
    tracing::info!(socket = %path.display(), tcp = ?tcp_addr, "control server listening");
    Ok(Some((path, tcp_addr, thread)))
}

async fn serve(
    cluster: Cluster,
    unix: std::os::unix::net::UnixListener,
    tcp: Option<(std::net::TcpListener, String)>,
) {
    let Ok(unix) = tokio::net::UnixListener::from_std(unix) else {
        return;
    };
    let tcp = tcp.and_then(|(l, token)| {
        tokio::net::TcpListener::from_std(l)
            .ok()
            .map(|l| (l, token))
    });
    let stopped = cluster.stopped();
    tokio::pin!(stopped);
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let mut connections = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            _ = &mut stopped => break,
            // Reap finished connections as they end.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            conn = unix.accept() => {
                if let Ok((stream, _)) = conn {
                    connections.spawn(connection(TokioIo::new(stream), cluster.clone(), None, stopping.clone()));
                }
            }
            conn = async { match &tcp { Some((l, _)) => l.accept().await, None => std::future::pending().await } } => {
                if let (Ok((stream, _)), Some((_, token))) = (conn, &tcp) {
                    connections.spawn(connection(TokioIo::new(stream), cluster.clone(), Some(token.clone()), stopping.clone()));
                }
            }
        }
    }
    // The cluster stopped: idle connections close, and the answers in
    // flight (an event stream's last lines, say) go out, for a moment.
    let _ = stop.send(true);
    let drain = async { while connections.join_next().await.is_some() {} };
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
                    let mut line = event_json(&event).to_string();
                    line.push('\n');
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

fn json_answer(status: StatusCode, value: &Value) -> Response<Answer> {
    let mut response = Response::new(Answer::Whole(Full::new(Bytes::from(value.to_string()))));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn error(status: StatusCode, message: impl std::fmt::Display) -> Response<Answer> {
    json_answer(status, &json!({ "error": message.to_string() }))
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
            return response;
        }
    }
    let allowed = match req.uri().path() {
        "/status" | "/events" | "/metrics" => Method::GET,
        "/resize" | "/restart" | "/shutdown" => Method::POST,
        other => return error(StatusCode::NOT_FOUND, format!("no such endpoint: {other}")),
    };
    if req.method() != allowed {
        let mut response = error(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{} takes {allowed}", req.uri().path()),
        );
        response.headers_mut().insert(
            ALLOW,
            HeaderValue::from_static(if allowed == Method::GET {
                "GET"
            } else {
                "POST"
            }),
        );
        return response;
    }
    let path = req.uri().path().to_owned();
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
    match path.as_str() {
        "/status" => json_answer(StatusCode::OK, &status_json(&cluster.status())),
        "/events" => {
            let mut response = Response::new(Answer::Events(cluster.events()));
            response.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("application/x-ndjson"),
            );
            response
        }
        "/metrics" => {
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
        "/resize" => resize(cluster, &body),
        "/restart" => match cluster.restart() {
            Ok(()) => json_answer(StatusCode::ACCEPTED, &json!({ "restart": "started" })),
            Err(e) => error(StatusCode::CONFLICT, e),
        },
        _ => {
            cluster.shutdown();
            json_answer(StatusCode::ACCEPTED, &json!({ "shutdown": "started" }))
        }
    }
}

/// `{"workers": 4}`, `{"workers": "+1"}` or `{"workers": "-2"}`.
fn resize(cluster: &Cluster, body: &[u8]) -> Response<Answer> {
    let value: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("malformed JSON: {e}")),
    };
    let from = cluster.status().size;
    let to = match value.get("workers") {
        Some(Value::Number(n)) => n.as_u64().and_then(|n| usize::try_from(n).ok()),
        Some(Value::String(s)) if s.starts_with('+') || s.starts_with('-') => {
            s[1..].parse::<usize>().ok().and_then(|d| {
                if s.starts_with('+') {
                    from.checked_add(d)
                } else {
                    from.checked_sub(d)
                }
            })
        }
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                r#"expected {"workers": N} or {"workers": "+N"} / "-N""#,
            )
        }
    };
    let Some(to) = to else {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("cannot resize {from} workers by {value}"),
        );
    };
    match cluster.resize(to) {
        Ok(()) => json_answer(StatusCode::OK, &json!({ "from": from, "to": to })),
        Err(e) if e.is_stopped() => error(StatusCode::CONFLICT, e),
        Err(e) => error(StatusCode::UNPROCESSABLE_ENTITY, e),
    }
}

fn exit_json(exit: &crate::Exit) -> Value {
    Value::String(exit.to_string())
}

pub(crate) fn status_json(status: &Status) -> Value {
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

pub(crate) fn event_json(event: &Event) -> Value {
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
        } => json!({"event": "roll_finished", "restarted": restarted, "completed": completed}),
        Event::Stopping { terminate } => json!({"event": "stopping", "terminate": terminate}),
        Event::Stopped => json!({"event": "stopped"}),
        Event::Lagged { missed } => json!({"event": "lagged", "missed": missed}),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_whole() {
        assert!(same_token(b"secret-token", b"secret-token"));
        assert!(!same_token(b"secret-tokem", b"secret-token"));
        assert!(!same_token(b"secret", b"secret-token"));
        assert!(!same_token(b"", b"x"));
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

    #[test]
    fn socket_names_are_safe_file_names() {
        let path = default_control_socket("my app/../x");
        let name = path
            .file_name()
            .expect("a file")
            .to_string_lossy()
            .into_owned();
        assert!(name.starts_with("forkless-my_app____x"), "{name}");
    }
}
