//! The drain, connection by connection, on loopback: the worker's stop is a
//! watch the test sends on, so each test knows when the drain began.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch, Notify};
use tokio::time::{timeout, Instant};

use super::{serve, Options, MAX_DURATION};
use crate::rt::host::Adopted;
use crate::Listener;

/// Long enough for a busy machine; only reached when a test fails.
const PATIENCE: Duration = Duration::from_secs(60);

/// A listener on a free loopback port, stopped by the sender.
fn listener() -> (Listener, watch::Sender<bool>) {
    let (stop, rx) = watch::channel(false);
    let std = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    std.set_nonblocking(true).expect("nonblocking");
    let listener = Listener::new(
        tokio::net::TcpListener::from_std(std).expect("tokio listener"),
        rx,
        watch::channel(Adopted::from([])).1,
        Arc::default(),
    );
    (listener, stop)
}

/// Runs `f` on a current-thread runtime inside a `LocalSet`, as a worker.
fn on_a_worker<F: std::future::Future>(f: F) -> F::Output {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    tokio::task::LocalSet::new().block_on(&runtime, f)
}

async fn hello(_req: Request<Incoming>) -> Result<Response<String>, Infallible> {
    Ok(Response::new("hello".to_owned()))
}

/// A keep-alive client connection, reading answers by their
/// `content-length`.
struct Client {
    stream: BufReader<TcpStream>,
}

/// An answer's head (status line and headers, lower-cased) and body.
struct Answer {
    head: String,
    body: String,
}

impl Answer {
    fn closes(&self) -> bool {
        self.head.lines().any(|l| l == "connection: close")
    }
}

impl Client {
    async fn connect(addr: std::net::SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).await.expect("connect");
        Client {
            stream: BufReader::new(stream),
        }
    }

    async fn send(&mut self) {
        self.stream
            .get_mut()
            .write_all(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
            .await
            .expect("send");
    }

    /// The next answer; panics if the connection ends first.
    async fn answer(&mut self) -> Answer {
        timeout(PATIENCE, async {
            let mut head = String::new();
            loop {
                let mut line = String::new();
                let n = self.stream.read_line(&mut line).await.expect("read");
                assert!(n > 0, "the connection ended before the answer: {head:?}");
                if line == "\r\n" {
                    break;
                }
                head.push_str(&line.trim_end().to_ascii_lowercase());
                head.push('\n');
            }
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .expect("a content-length")
                .parse()
                .expect("a number");
            let mut body = vec![0; length];
            self.stream.read_exact(&mut body).await.expect("the body");
            Answer {
                head,
                body: String::from_utf8(body).expect("utf-8"),
            }
        })
        .await
        .expect("an answer in time")
    }

    async fn get(&mut self) -> Answer {
        self.send().await;
        self.answer().await
    }

    /// Waits for the server to close the connection; panics if anything
    /// else comes.
    async fn closed(&mut self) {
        let mut rest = Vec::new();
        let read = timeout(PATIENCE, self.stream.read_to_end(&mut rest))
            .await
            .expect("the close in time");
        // A reset is a close too; what matters is that nothing else came.
        let _ = read;
        assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));
    }
}

#[test]
fn a_request_during_the_linger_is_answered_with_connection_close() {
    on_a_worker(async {
        let (listener, stop) = listener();
        let addr = listener.local_addr().expect("addr");
        // A linger that outlasts the test: only the clients end their
        // connections.
        let options = Options::new().linger(PATIENCE * 2);
        let server = tokio::task::spawn_local(serve(listener, |_| service_fn(hello), options));
        let mut a = Client::connect(addr).await;
        let mut b = Client::connect(addr).await;
        for client in [&mut a, &mut b] {
            let answer = client.get().await;
            assert_eq!(answer.body, "hello");
            assert!(!answer.closes(), "{}", answer.head);
        }
        stop.send(true).expect("stop");
        for client in [&mut a, &mut b] {
            let answer = client.get().await;
            assert_eq!(answer.body, "hello");
            assert!(answer.closes(), "{}", answer.head);
            client.closed().await;
        }
        // Every connection is closed: serve returns.
        timeout(PATIENCE, server)
            .await
            .expect("serve returns")
            .expect("no panic")
            .expect("no error");
    });
}

#[test]
fn an_idle_connection_is_closed_after_the_linger() {
    on_a_worker(async {
        let (listener, stop) = listener();
        let addr = listener.local_addr().expect("addr");
        let linger = Duration::from_millis(100);
        let options = Options::new().linger(linger);
        let server = tokio::task::spawn_local(serve(listener, |_| service_fn(hello), options));
        let mut used = Client::connect(addr).await;
        assert!(!used.get().await.closes());
        // Connected, never sent a byte.
        let mut silent = Client::connect(addr).await;
        // The server has it once it answers another connection after it.
        assert!(!Client::connect(addr).await.get().await.closes());
        let drain = Instant::now();
        stop.send(true).expect("stop");
        used.closed().await;
        silent.closed().await;
        assert!(drain.elapsed() >= linger, "closed before the linger");
        timeout(PATIENCE, server)
            .await
            .expect("serve returns")
            .expect("no panic")
            .expect("no error");
    });
}

#[test]
fn a_request_in_flight_is_answered_before_the_close_even_without_a_linger() {
    on_a_worker(async {
        let (listener, stop) = listener();
        let addr = listener.local_addr().expect("addr");
        let (entered_tx, mut entered) = mpsc::unbounded_channel();
        let release = std::rc::Rc::new(Notify::new());
        let service = {
            let release = release.clone();
            move |_| {
                let (entered_tx, release) = (entered_tx.clone(), release.clone());
                service_fn(move |_req| {
                    let (entered_tx, release) = (entered_tx.clone(), release.clone());
                    async move {
                        let _ = entered_tx.send(());
                        release.notified().await;
                        Ok::<_, Infallible>(Response::new("late".to_owned()))
                    }
                })
            }
        };
        let options = Options::new().linger(Duration::ZERO);
        let server = tokio::task::spawn_local(serve(listener, service, options));
        let mut client = Client::connect(addr).await;
        client.send().await;
        timeout(PATIENCE, entered.recv())
            .await
            .expect("the request reaches the service");
        stop.send(true).expect("stop");
        release.notify_one();
        let answer = client.answer().await;
        assert_eq!(answer.body, "late");
        assert!(answer.closes(), "{}", answer.head);
        client.closed().await;
        timeout(PATIENCE, server)
            .await
            .expect("serve returns")
            .expect("no panic")
            .expect("no error");
    });
}

#[test]
fn http2_gets_a_goaway_and_its_streams_are_answered() {
    use http_body_util::{BodyExt, Empty};
    use hyper::body::Bytes;
    use hyper_util::rt::{TokioExecutor, TokioIo};

    on_a_worker(async {
        let (listener, stop) = listener();
        let addr = listener.local_addr().expect("addr");
        let server = tokio::task::spawn_local(serve(
            listener,
            |_| service_fn(hello),
            Options::new().linger(PATIENCE * 2),
        ));
        let stream = TcpStream::connect(addr).await.expect("connect");
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .expect("an HTTP/2 handshake");
        let conn = tokio::task::spawn_local(conn);
        let get = || {
            Request::builder()
                .uri(format!("http://{addr}/"))
                .body(Empty::<Bytes>::new())
                .expect("a request")
        };
        let answer = sender.send_request(get()).await.expect("an answer");
        assert_eq!(answer.version(), hyper::Version::HTTP_2);
        let body = answer.into_body().collect().await.expect("a body");
        assert_eq!(body.to_bytes(), "hello");
        stop.send(true).expect("stop");
        // The GOAWAY ends the client's connection cleanly, linger or not.
        timeout(PATIENCE, conn)
            .await
            .expect("the connection ends")
            .expect("no panic")
            .expect("a clean end");
        timeout(PATIENCE, server)
            .await
            .expect("serve returns")
            .expect("no panic")
            .expect("no error");
    });
}

#[test]
fn a_header_read_timeout_closes_a_stalled_request() {
    on_a_worker(async {
        let (listener, _stop) = listener();
        let addr = listener.local_addr().expect("addr");
        let options = Options::new().header_read_timeout(Some(Duration::from_millis(50)));
        let _server = tokio::task::spawn_local(serve(listener, |_| service_fn(hello), options));
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        stream
            .write_all(b"GET / HTTP/1.1\r\nHo")
            .await
            .expect("send");
        let mut rest = Vec::new();
        let _ = timeout(PATIENCE, stream.read_to_end(&mut rest))
            .await
            .expect("the server closes the connection");
    });
}

#[test]
fn options_out_of_range_are_config_errors_not_panics() {
    let year = MAX_DURATION;
    for options in [
        Options::new().linger(Duration::MAX),
        Options::new().linger(year + Duration::from_nanos(1)),
        Options::new().header_read_timeout(Some(Duration::ZERO)),
        Options::new().header_read_timeout(Some(Duration::MAX)),
    ] {
        let error = options.check().expect_err(&format!("{options:?}"));
        assert!(error.is_config(), "{error}");
        // serve says so at once.
        on_a_worker(async {
            let (listener, _stop) = listener();
            let error = serve(listener, |_| service_fn(hello), options)
                .await
                .expect_err("refused");
            assert!(error.is_config(), "{error}");
        });
    }
    for options in [
        Options::new(),
        Options::new().linger(Duration::ZERO),
        Options::new().linger(year),
        Options::new().header_read_timeout(None),
        Options::new().header_read_timeout(Some(Duration::from_nanos(1))),
        Options::new().header_read_timeout(Some(year)),
    ] {
        options.check().expect("accepted");
    }
    assert_eq!(Options::default(), Options::new());
    assert_eq!(Options::DEFAULT_LINGER, Duration::from_secs(1));
}

#[test]
fn the_longest_linger_serves_and_stops_with_nothing_open() {
    on_a_worker(async {
        let (listener, stop) = listener();
        let addr = listener.local_addr().expect("addr");
        let options = Options::new().linger(MAX_DURATION);
        let server = tokio::task::spawn_local(serve(listener, |_| service_fn(hello), options));
        let mut client = Client::connect(addr).await;
        client.get().await;
        stop.send(true).expect("stop");
        // Its answer during the drain closes it; no deadline overflows.
        assert!(client.get().await.closes());
        client.closed().await;
        timeout(PATIENCE, server)
            .await
            .expect("serve returns")
            .expect("no panic")
            .expect("no error");
    });
}
