//! What the control server answers: the bearer-token check, the one table
//! of endpoints ([`route`]), the handlers behind it (status, events,
//! metrics, resize, restart, shutdown), the 4xx errors, and the body of an
//! answer, a whole document or the event stream.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use forkless_control as wire;
use futures_core::Stream;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Body, Frame, Incoming};
use hyper::header::{
    HeaderValue, ALLOW, AUTHORIZATION, CONNECTION, CONTENT_TYPE, WWW_AUTHENTICATE,
};
use hyper::{Method, Request, Response, StatusCode};

use super::convert::{wire_event, wire_status};
use super::{MAX_BODY, READ_TIMEOUT};
use crate::observe::events::Events;
use crate::Cluster;

/// The body of an answer: a whole JSON or text document, or the event stream.
pub(super) enum Answer {
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
    Recycle,
    Upgrade,
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
        (&Method::POST, "/recycle") => Ok(Route::Recycle),
        (&Method::POST, "/upgrade") => Ok(Route::Upgrade),
        (&Method::POST, "/shutdown") => Ok(Route::Shutdown),
        (_, "/status" | "/events" | "/metrics") => Err(NoRoute::Allow("GET")),
        (_, "/resize" | "/restart" | "/recycle" | "/upgrade" | "/shutdown") => {
            Err(NoRoute::Allow("POST"))
        }
        _ => Err(NoRoute::NotFound),
    }
}

pub(super) async fn handle(
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
        Route::Recycle => recycle(cluster, &body),
        Route::Upgrade => match upgrade_body(&body) {
            Ok(()) => upgrade(cluster).await,
            Err(why) => error(StatusCode::BAD_REQUEST, why),
        },
        Route::Shutdown => {
            cluster.shutdown();
            json_answer(StatusCode::ACCEPTED, &wire::ShutdownAnswer::started())
        }
    }
}

/// `POST /upgrade` takes no parameters: its body is empty, or the empty
/// JSON object `{}` (whitespace around it allowed). Anything else is
/// refused (400) before an upgrade starts, rather than ignored: a client
/// that sends options expects them to count.
fn upgrade_body(body: &[u8]) -> Result<(), String> {
    if body.trim_ascii().is_empty() {
        return Ok(());
    }
    match serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(body) {
        Ok(fields) if fields.is_empty() => Ok(()),
        Ok(fields) => Err(format!(
            "POST /upgrade takes no parameters; the body has {} field(s)",
            fields.len()
        )),
        Err(e) => Err(format!(
            "POST /upgrade takes an empty body or {{}}: malformed JSON: {e}"
        )),
    }
}

/// Runs the upgrade (it waits for the new process, at most `ready_timeout`)
/// off the control thread's loop, and answers once it is over: 200 with the
/// new process's id, 409 if one is under way or the cluster stops, 500 with
/// the reason if the new process did not take over.
async fn upgrade(cluster: &Cluster) -> Response<Answer> {
    let cluster = cluster.clone();
    match tokio::task::spawn_blocking(move || cluster.upgrade()).await {
        Ok(Ok(pid)) => json_answer(
            StatusCode::OK,
            &wire::UpgradeAnswer {
                upgraded: true,
                pid,
            },
        ),
        Ok(Err(e)) if e.is_busy() || e.is_stopped() => error(StatusCode::CONFLICT, e),
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the upgrade's thread failed: {e}"),
        ),
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

/// `POST /recycle` with `{"slot": N}`: 202 with the slot, 422 for a slot
/// the cluster does not have (or that does not serve), 409 once it stops.
fn recycle(cluster: &Cluster, body: &[u8]) -> Response<Answer> {
    let request: wire::RecycleRequest = match serde_json::from_slice(body) {
        Ok(request) => request,
        Err(e) if e.is_data() => return error(StatusCode::BAD_REQUEST, e),
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("malformed JSON: {e}")),
    };
    match cluster.recycle(request.slot) {
        Ok(()) => json_answer(
            StatusCode::ACCEPTED,
            &wire::RecycleAnswer { slot: request.slot },
        ),
        Err(e) if e.is_stopped() => error(StatusCode::CONFLICT, e),
        Err(e) => error(StatusCode::UNPROCESSABLE_ENTITY, e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::tests::scratch;
    use std::io::{Read, Write};
    use std::path::Path;
    use std::time::Duration;

    /// Only the eight endpoints route anywhere; the shutdown only from
    /// `POST /shutdown` exactly.
    #[test]
    fn one_table_routes_and_nothing_unknown_reaches_an_action() {
        let served = [
            (Method::GET, "/status", Route::Status),
            (Method::GET, "/events", Route::Events),
            (Method::GET, "/metrics", Route::Metrics),
            (Method::POST, "/resize", Route::Resize),
            (Method::POST, "/restart", Route::Restart),
            (Method::POST, "/recycle", Route::Recycle),
            (Method::POST, "/upgrade", Route::Upgrade),
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

    /// A one-worker cluster named `control-{test}` that idles, ready, with
    /// its control socket in a scratch directory.
    fn idle_with_socket(test: &str) -> (std::path::PathBuf, crate::Cluster) {
        let socket = scratch(test).join("control.sock");
        let cluster = crate::Cluster::builder()
            .name(format!("control-{test}"))
            .workers(1)
            .control_socket(&socket)
            .start(|worker: forkless_worker::Worker| async move {
                worker.ready();
                worker.shutdown_signal().await;
            })
            .expect("start");
        (socket, cluster)
    }

    /// `POST /recycle`: a slot the cluster has is recycled (202, then the
    /// event); garbage, a missing slot and a stopping cluster are errors.
    #[test]
    fn recycle_answers_by_what_it_was_asked() {
        let (socket, cluster) = idle_with_socket("recycle");
        cluster.wait_ready(Duration::from_secs(60)).expect("ready");
        let post = |body: &str| {
            let mut stream = std::os::unix::net::UnixStream::connect(&socket).expect("connect");
            stream
                .set_read_timeout(Some(Duration::from_secs(30)))
                .expect("timeout");
            write!(
                stream,
                "POST /recycle HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
            .expect("send");
            let mut answer = String::new();
            stream.read_to_string(&mut answer).expect("EOF");
            answer
        };
        let mut events = cluster.events();
        let answer = post(r#"{"slot":0}"#);
        assert!(answer.starts_with("HTTP/1.1 202"), "{answer}");
        assert!(answer.ends_with(r#"{"slot":0}"#), "{answer}");
        loop {
            match events.recv_timeout(Duration::from_secs(60)) {
                Ok(crate::Event::Recycled { slot: 0, .. }) => break,
                Ok(_) => {}
                Err(e) => panic!("no Recycled event: {e:?}"),
            }
        }
        for (body, code) in [
            ("", "400"),
            ("{", "400"),
            (r#"{"slot":-1}"#, "400"),
            (r#"{"slot":"0"}"#, "400"),
            (r#"{"slot":1}"#, "422"),
            (r#"{"slot":18446744073709551615}"#, "422"),
        ] {
            let answer = post(body);
            assert!(
                answer.starts_with(&format!("HTTP/1.1 {code}")),
                "{body}: {answer}"
            );
        }
        cluster.shutdown();
        let answer = post(r#"{"slot":0}"#);
        assert!(answer.starts_with("HTTP/1.1 409"), "{answer}");
        cluster.join();
        if let Some(dir) = socket.parent() {
            std::fs::remove_dir_all(dir).expect("clean up");
        }
    }

    /// `POST /upgrade` with a body other than nothing or `{}` is refused
    /// with 400 and a JSON error before an upgrade starts; with nothing or
    /// `{}`, the upgrade runs (and fails here: the command is `false`).
    #[test]
    fn upgrade_refuses_a_body_with_anything_in_it() {
        for (body, refused) in [
            ("", false),
            ("{}", false),
            (" { }\n", false),
            ("\r\n", false),
            ("x", true),
            ("{", true),
            ("[]", true),
            ("null", true),
            ("0", true),
            (r#""{}""#, true),
            (r#"{"force":true}"#, true),
            ("{}{}", true),
            ("{}\u{0}", true),
        ] {
            assert_eq!(upgrade_body(body.as_bytes()).is_err(), refused, "{body:?}");
        }
        assert!(upgrade_body(&[0xff, 0xfe]).is_err());
        assert!(upgrade_body(&[b'{'; 4096]).is_err());

        let socket = scratch("upgrade-body").join("control.sock");
        let cluster = crate::Cluster::builder()
            .name("control-upgrade-body")
            .workers(1)
            .control_socket(&socket)
            .upgrade_command("false", std::iter::empty::<&str>())
            .start(|worker: forkless_worker::Worker| async move {
                worker.ready();
                worker.shutdown_signal().await;
            })
            .expect("start");
        let post = |body: &str| {
            let mut stream = std::os::unix::net::UnixStream::connect(&socket).expect("connect");
            stream
                .set_read_timeout(Some(Duration::from_secs(60)))
                .expect("timeout");
            write!(
                stream,
                "POST /upgrade HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
            .expect("send");
            let mut answer = String::new();
            stream.read_to_string(&mut answer).expect("EOF");
            answer
        };
        for body in ["x", r#"{"force":true}"#, "[]"] {
            let answer = post(body);
            assert!(answer.starts_with("HTTP/1.1 400"), "{body}: {answer}");
            let json = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b);
            let error: wire::ErrorBody = serde_json::from_str(json).expect("an error body");
            assert!(error.error.contains("POST /upgrade"), "{answer}");
        }
        // An empty object is no parameter: the upgrade runs, and fails.
        let answer = post("{}");
        assert!(answer.starts_with("HTTP/1.1 500"), "{answer}");
        assert!(answer.contains("upgrade failed"), "{answer}");
        cluster.shutdown();
        cluster.join();
        if let Some(dir) = socket.parent() {
            std::fs::remove_dir_all(dir).expect("clean up");
        }
    }

    /// The live server: `/status` parses into the typed `Status`; unknown
    /// routes are 404, a known path with the wrong method 405 with `Allow`,
    /// and none of them stops the cluster.
    #[test]
    fn the_live_status_is_typed_and_unknown_routes_are_404() {
        let (socket, cluster) = idle_with_socket("typed");
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
            ("GET", "/upgrade", "POST"),
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
        if let Some(dir) = socket.parent() {
            std::fs::remove_dir_all(dir).expect("clean up");
        }
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(same_token(b"secret-token", b"secret-token"));
        assert!(!same_token(b"secret-tokem", b"secret-token"));
        assert!(!same_token(b"secret", b"secret-token"));
        assert!(!same_token(b"", b"x"));
    }
}
