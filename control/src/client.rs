//! A client of the control socket: HTTP/1.1 over the Unix socket, one
//! request per connection, to a server checked with `SO_PEERCRED` first.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;

use crate::{
    effective_uid, peer_trusted, ErrorBody, Event, RecycleAnswer, RecycleRequest, ResizeAnswer,
    ResizeRequest, RestartAnswer, ShutdownAnswer, Status, UpgradeAnswer, Workers,
};

/// Talks to the control server of one cluster, on its Unix socket.
///
/// Each call opens a fresh connection and, before it sends anything, checks
/// who serves it (`SO_PEERCRED`): a server that runs as another user than
/// this process (root excepted) gets no request, and the call fails with
/// [`Error::Untrusted`]. So a socket that another user took first at the
/// expected path learns nothing.
///
/// The calls need a tokio runtime with the `net` driver: the connection
/// runs on a task of its own.
#[derive(Debug, Clone)]
pub struct Client {
    socket: PathBuf,
}

impl Client {
    /// A client of the control socket at `socket` (see
    /// [`default_socket`](crate::default_socket)). Connects to nothing yet.
    pub fn new(socket: impl Into<PathBuf>) -> Client {
        Client {
            socket: socket.into(),
        }
    }

    /// The socket's path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// `GET /status`.
    pub async fn status(&self) -> Result<Status, Error> {
        parse("/status", &self.get("/status").await?)
    }

    /// `POST /resize`: sets the number of workers, or changes it.
    pub async fn resize(&self, workers: Workers) -> Result<ResizeAnswer, Error> {
        self.post_json("/resize", &ResizeRequest { workers }).await
    }

    /// `POST /restart`: starts a rolling restart.
    pub async fn restart(&self) -> Result<RestartAnswer, Error> {
        parse("/restart", &self.post("/restart", b"").await?)
    }

    /// `POST /recycle`: replaces the worker of one slot by a new
    /// generation, as a rolling restart replaces each in turn (the new
    /// generation is ready before the old one is asked to stop, so no
    /// connection is lost). A slot out of range is [`Error::Refused`]; so
    /// is a server that predates recycling (404).
    ///
    /// ```no_run
    /// use forkless_control::{default_socket, Client};
    ///
    /// # async fn example() -> Result<(), forkless_control::Error> {
    /// let answer = Client::new(default_socket("api")).recycle(1).await?;
    /// println!("recycling slot {}", answer.slot);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn recycle(&self, slot: usize) -> Result<RecycleAnswer, Error> {
        self.post_json("/recycle", &RecycleRequest { slot }).await
    }

    /// `POST path` with `request` as its JSON body; the answer, parsed.
    async fn post_json<Q: serde::Serialize, A: DeserializeOwned>(
        &self,
        path: &str,
        request: &Q,
    ) -> Result<A, Error> {
        let body = serde_json::to_vec(request).map_err(|e| Error::Malformed {
            what: path.to_owned(),
            source: e,
        })?;
        parse(path, &self.post(path, &body).await?)
    }

    /// `POST /upgrade`: starts the program anew beside this process, hands
    /// it the listening sockets, and answers once it serves (this process
    /// then stops and hands it the store). A failed upgrade is
    /// [`Error::Refused`] with the reason; this process serves on.
    pub async fn upgrade(&self) -> Result<UpgradeAnswer, Error> {
        parse("/upgrade", &self.post("/upgrade", b"").await?)
    }

    /// `POST /shutdown`: starts a graceful stop.
    pub async fn shutdown(&self) -> Result<ShutdownAnswer, Error> {
        parse("/shutdown", &self.post("/shutdown", b"").await?)
    }

    /// `GET /metrics`: the Prometheus text.
    pub async fn metrics(&self) -> Result<String, Error> {
        let body = self.get("/metrics").await?;
        Ok(String::from_utf8_lossy(&body).into_owned())
    }

    /// `GET /events`: the cluster's events, from its recent history on,
    /// until it stops.
    pub async fn events(&self) -> Result<EventStream, Error> {
        let body = self.send(Method::GET, "/events", Vec::new()).await?;
        Ok(EventStream {
            body,
            pending: Vec::new(),
            socket: self.socket.clone(),
        })
    }

    /// `GET path`: the answer's body as it came, when its status is a
    /// success; [`Error::Refused`] with the server's `{"error": ...}`
    /// message otherwise.
    pub async fn get(&self, path: &str) -> Result<Vec<u8>, Error> {
        let body = self.send(Method::GET, path, Vec::new()).await?;
        self.collect(body).await
    }

    /// `POST path` with a JSON `body`: as [`get`](Client::get).
    pub async fn post(&self, path: &str, body: &[u8]) -> Result<Vec<u8>, Error> {
        let body = self.send(Method::POST, path, body.to_vec()).await?;
        self.collect(body).await
    }

    async fn collect(&self, body: Incoming) -> Result<Vec<u8>, Error> {
        match body.collect().await {
            Ok(collected) => Ok(collected.to_bytes().to_vec()),
            Err(e) => Err(self.broken(e)),
        }
    }

    fn broken(&self, e: hyper::Error) -> Error {
        Error::Broken {
            socket: self.socket.clone(),
            source: Box::new(e),
        }
    }

    /// One request on a fresh, checked connection; the body of a success.
    async fn send(&self, method: Method, path: &str, body: Vec<u8>) -> Result<Incoming, Error> {
        let stream = tokio::net::UnixStream::connect(&self.socket)
            .await
            .map_err(|source| Error::Unreachable {
                socket: self.socket.clone(),
                source,
            })?;
        let server = stream.peer_cred().map_err(|source| Error::UnknownPeer {
            socket: self.socket.clone(),
            source,
        })?;
        let ours = effective_uid();
        if !peer_trusted(server.uid(), ours) {
            return Err(Error::Untrusted {
                socket: self.socket.clone(),
                uid: server.uid(),
                ours,
            });
        }
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| self.broken(e))?;
        tokio::spawn(conn);
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "forkless")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| Error::Broken {
                socket: self.socket.clone(),
                source: Box::new(e),
            })?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| self.broken(e))?;
        let status = response.status();
        if status.is_success() {
            return Ok(response.into_body());
        }
        let text = response
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let message = serde_json::from_slice::<ErrorBody>(&text)
            .map(|body| body.error)
            .unwrap_or_else(|_| String::from_utf8_lossy(&text).into_owned());
        Err(Error::Refused {
            status: status.as_u16(),
            message,
        })
    }
}

fn parse<T: DeserializeOwned>(what: &str, body: &[u8]) -> Result<T, Error> {
    serde_json::from_slice(body).map_err(|source| Error::Malformed {
        what: what.to_owned(),
        source,
    })
}

/// The answer to `GET /events`, line by line; from
/// [`Client::events`]. It ends when the cluster stops.
#[derive(Debug)]
pub struct EventStream {
    body: Incoming,
    pending: Vec<u8>,
    socket: PathBuf,
}

impl EventStream {
    /// The next line as it came (without its newline); `None` at the end of
    /// the stream.
    pub async fn next_line(&mut self) -> Option<Result<String, Error>> {
        loop {
            if let Some(end) = self.pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.pending.drain(..=end).collect();
                let line = String::from_utf8_lossy(&line);
                return Some(Ok(line.trim_end().to_owned()));
            }
            match self.body.frame().await? {
                Err(e) => {
                    return Some(Err(Error::Broken {
                        socket: self.socket.clone(),
                        source: Box::new(e),
                    }))
                }
                Ok(frame) => {
                    if let Ok(data) = frame.into_data() {
                        self.pending.extend_from_slice(&data);
                    }
                }
            }
        }
    }

    /// The next event; `None` at the end of the stream. A line that is not
    /// an [`Event`] this version knows is [`Error::Malformed`]; the stream
    /// goes on after it.
    pub async fn next(&mut self) -> Option<Result<Event, Error>> {
        Some(
            self.next_line()
                .await?
                .and_then(|line| parse("an event", line.as_bytes())),
        )
    }
}

/// Why a [`Client`] call failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// Nothing answers on the socket (no cluster runs there, or the path is
    /// wrong). Nothing was sent.
    Unreachable {
        /// The socket's path.
        socket: PathBuf,
        /// What `connect` said.
        source: io::Error,
    },
    /// The server's credentials could not be read. Nothing was sent.
    UnknownPeer {
        /// The socket's path.
        socket: PathBuf,
        /// What `SO_PEERCRED` said.
        source: io::Error,
    },
    /// The server runs as another user than this process (and not as
    /// root): it may have taken the socket's path first. Nothing was sent.
    Untrusted {
        /// The socket's path.
        socket: PathBuf,
        /// The server's uid.
        uid: u32,
        /// This process's effective uid.
        ours: u32,
    },
    /// The connection broke off, or the HTTP exchange failed.
    Broken {
        /// The socket's path.
        socket: PathBuf,
        /// What failed.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The server answered with an error status (4xx, 5xx).
    Refused {
        /// The HTTP status code.
        status: u16,
        /// The server's `{"error": ...}` message, or the body as text.
        message: String,
    },
    /// An answer was not the JSON document the protocol says.
    Malformed {
        /// What was read: the path, or `"an event"`.
        what: String,
        /// What the parser said.
        source: serde_json::Error,
    },
}

impl Error {
    /// True when nothing was sent, because the server could not be reached
    /// or is not trusted ([`Unreachable`](Error::Unreachable),
    /// [`UnknownPeer`](Error::UnknownPeer), [`Untrusted`](Error::Untrusted)).
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            Error::Unreachable { .. } | Error::UnknownPeer { .. } | Error::Untrusted { .. }
        )
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Unreachable { socket, source } => write!(
                f,
                "no cluster answers on {}: {source} (is it running? are --name or --socket right?)",
                socket.display()
            ),
            Error::UnknownPeer { socket, source } => write!(
                f,
                "cannot tell who runs the server on {}: {source}",
                socket.display()
            ),
            Error::Untrusted { socket, uid, ours } => write!(
                f,
                "refusing to talk to {}: the server there runs as uid {uid}, not as this user \
                 (uid {ours}) or root; another user may have taken the socket's path",
                socket.display()
            ),
            Error::Broken { socket, source } => write!(
                f,
                "the control server at {} broke off: {source}",
                socket.display()
            ),
            Error::Refused { status, message } => match StatusCode::from_u16(*status) {
                Ok(code) => write!(f, "{code}: {message}"),
                Err(_) => write!(f, "{status}: {message}"),
            },
            Error::Malformed { what, source } => {
                write!(
                    f,
                    "the answer to {what} is not the protocol's JSON: {source}"
                )
            }
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Unreachable { source, .. } | Error::UnknownPeer { source, .. } => Some(source),
            Error::Broken { source, .. } => Some(&**source),
            Error::Malformed { source, .. } => Some(source),
            Error::Untrusted { .. } | Error::Refused { .. } => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A whole HTTP/1.1 answer with `status` and the JSON `body`, for a
    /// test server that lives as long as the test.
    fn answer_with(status: &str, body: &str) -> &'static str {
        Box::leak(
            format!(
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
            .into_boxed_str(),
        )
    }
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn scratch(test: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "forkless-control-client-{}-{test}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        dir.join("s.sock")
    }

    /// Answers one connection with `answer`, after reading the request.
    async fn server(path: &Path, answer: &'static str) -> tokio::task::JoinHandle<String> {
        let listener = tokio::net::UnixListener::bind(path).expect("bind");
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.expect("accept");
            let mut request = vec![0u8; 4096];
            let n = stream.read(&mut request).await.expect("read");
            stream.write_all(answer.as_bytes()).await.expect("write");
            String::from_utf8_lossy(&request[..n]).into_owned()
        })
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_status_is_asked_for_and_parsed() {
        let path = scratch("status");
        let body = r#"{"name":"api","size":0,"rolling":false,"stopping":false,"workers":[]}"#;
        let answer = answer_with("200 OK", body);
        let seen = server(&path, answer).await;
        let status = Client::new(&path).status().await.expect("status");
        assert_eq!(status.name, "api");
        assert!(seen
            .await
            .expect("server")
            .starts_with("GET /status HTTP/1.1"));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn an_error_answer_carries_the_server_s_message() {
        let path = scratch("refused");
        let body = r#"{"error":"cannot resize to 0 workers"}"#;
        let answer = answer_with("422 Unprocessable Entity", body);
        let seen = server(&path, answer).await;
        let e = Client::new(&path)
            .resize(Workers::Exactly(0))
            .await
            .unwrap_err();
        assert!(!e.is_unreachable());
        assert_eq!(
            e.to_string(),
            "422 Unprocessable Entity: cannot resize to 0 workers"
        );
        let request = seen.await.expect("server");
        assert!(request.starts_with("POST /resize HTTP/1.1"), "{request}");
        assert!(request.ends_with(r#"{"workers":0}"#), "{request}");
        let _ = std::fs::remove_dir_all(path.parent().expect("dir"));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_recycle_posts_the_slot_and_reads_the_answer() {
        let path = scratch("recycle");
        let body = r#"{"slot":1}"#;
        let answer = answer_with("200 OK", body);
        let seen = server(&path, answer).await;
        let recycled = Client::new(&path).recycle(1).await.expect("recycle");
        assert_eq!(recycled, RecycleAnswer { slot: 1 });
        let request = seen.await.expect("server");
        assert!(request.starts_with("POST /recycle HTTP/1.1"), "{request}");
        assert!(request.ends_with(r#"{"slot":1}"#), "{request}");
        let _ = std::fs::remove_dir_all(path.parent().expect("dir"));
    }

    /// A server that predates recycling answers 404: an error with its
    /// status, not a panic or a parse failure.
    #[tokio::test(flavor = "current_thread")]
    async fn a_recycle_refused_by_an_older_server_says_so() {
        let path = scratch("recycle-404");
        let body = r#"{"error":"no such path: /recycle"}"#;
        let answer = answer_with("404 Not Found", body);
        let seen = server(&path, answer).await;
        let e = Client::new(&path).recycle(7).await.unwrap_err();
        assert!(matches!(e, Error::Refused { status: 404, .. }), "{e:?}");
        assert_eq!(e.to_string(), "404 Not Found: no such path: /recycle");
        drop(seen.await);
        let _ = std::fs::remove_dir_all(path.parent().expect("dir"));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn no_server_is_unreachable() {
        let path = scratch("none");
        let e = Client::new(&path).status().await.unwrap_err();
        assert!(e.is_unreachable());
        assert!(e.to_string().starts_with("no cluster answers on"), "{e}");
        let _ = std::fs::remove_dir_all(path.parent().expect("dir"));
    }
}
