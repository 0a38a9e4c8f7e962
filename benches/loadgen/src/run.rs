//! The load: threads, each a `current_thread` runtime driving its share of
//! the connections, each connection one request at a time through hyper's
//! HTTP/1.1 client.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::{self, Connection, SendRequest};
use hyper::header::{HeaderValue, CONNECTION, HOST};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Sleep;

use crate::args::{Config, Target};
use crate::inline::Inline;

/// Highest latency the histogram holds, in µs (an hour); longer ones are
/// recorded as this.
const MAX_LATENCY_US: u64 = 3_600_000_000;
/// How long a connection waits after a failed connect before the next
/// try, so that a server that is gone costs a few attempts per ms, not a
/// busy loop.
const CONNECT_BACKOFF: Duration = Duration::from_millis(10);

/// Errors, by kind. Only those that happen inside the measurement are
/// counted.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Errors {
    /// Connects refused, failed, or not done within the timeout.
    pub(crate) connect: u64,
    /// The connection broke while sending a request or reading its answer.
    pub(crate) read_write: u64,
    /// Answers with a status outside 200-299 (also counted as requests).
    pub(crate) non_2xx: u64,
    /// Requests not answered within the timeout.
    pub(crate) timeout: u64,
}

/// What one thread, then the whole run, measured.
#[derive(Debug)]
pub(crate) struct Stats {
    /// Answers received inside the measurement, whatever their status.
    pub(crate) requests: u64,
    pub(crate) errors: Errors,
    /// Latency of each answer counted in `requests`, in µs.
    pub(crate) latency: Histogram<u64>,
}

impl Stats {
    fn new() -> Result<Stats, String> {
        Ok(Stats {
            requests: 0,
            errors: Errors::default(),
            latency: Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)
                .map_err(|e| format!("histogram: {e}"))?,
        })
    }

    fn add(&mut self, other: &Stats) -> Result<(), String> {
        self.requests += other.requests;
        self.errors.connect += other.errors.connect;
        self.errors.read_write += other.errors.read_write;
        self.errors.non_2xx += other.errors.non_2xx;
        self.errors.timeout += other.errors.timeout;
        self.latency
            .add(&other.latency)
            .map_err(|e| format!("histogram: {e}"))
    }
}

/// The counted part of the run: answers and errors from `start` (after the
/// warm-up) until `end`.
#[derive(Debug, Clone, Copy)]
struct Window {
    start: Instant,
    end: Instant,
}

impl Window {
    fn holds(&self, t: Instant) -> bool {
        t >= self.start && t < self.end
    }
}

/// Runs the load: warm-up, then the measurement; returns what all the
/// threads measured.
pub(crate) fn run(config: &Config) -> Result<Stats, String> {
    let t0 = Instant::now();
    let start = t0 + config.warmup;
    let window = Window {
        start,
        end: start + config.duration,
    };
    let config = Arc::new(config.clone());
    let mut threads = Vec::with_capacity(config.threads);
    for i in 0..config.threads {
        // Connections shared out as evenly as they go.
        let share = config.connections / config.threads
            + usize::from(i < config.connections % config.threads);
        let core = config.cores.as_ref().map(|cores| cores[i % cores.len()]);
        let config = Arc::clone(&config);
        let thread = std::thread::Builder::new()
            .name(format!("loadgen-{i}"))
            .spawn(move || load_thread(&config, share, core, window))
            .map_err(|e| format!("cannot start a load thread: {e}"))?;
        threads.push(thread);
    }
    let mut total = Stats::new()?;
    for thread in threads {
        let stats = thread
            .join()
            .map_err(|_| "a load thread panicked".to_string())??;
        total.add(&stats)?;
    }
    Ok(total)
}

/// One thread's state, shared by its connections.
struct Ctx {
    target: Target,
    timeout: Duration,
    window: Window,
    new_connection: bool,
    stats: RefCell<Stats>,
}

fn load_thread(
    config: &Config,
    connections: usize,
    core: Option<usize>,
    window: Window,
) -> Result<Stats, String> {
    if let Some(id) = core {
        if !core_affinity::set_for_current(core_affinity::CoreId { id }) {
            return Err(format!("cannot pin a load thread to core {id}"));
        }
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    let ctx = Rc::new(Ctx {
        target: config.target.clone(),
        timeout: config.timeout,
        window,
        new_connection: config.new_connection,
        stats: RefCell::new(Stats::new()?),
    });
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async {
        for _ in 0..connections {
            let ctx = Rc::clone(&ctx);
            if ctx.new_connection {
                tokio::task::spawn_local(new_connections(ctx));
            } else {
                tokio::task::spawn_local(keep_alive(ctx));
            }
        }
        tokio::time::sleep_until(window.end.into()).await;
    });
    // Drops the connections, requests in flight with them: they ended
    // after the measurement.
    drop(local);
    let ctx =
        Rc::try_unwrap(ctx).map_err(|_| "a connection outlived its load thread".to_string())?;
    Ok(ctx.stats.into_inner())
}

/// How one request ended.
enum Outcome {
    Answer(StatusCode),
    /// The connection was closed before the request went out (a server may
    /// close an idle keep-alive connection).
    Closed,
    /// The connection broke after the request went out.
    Broken,
    TimedOut,
}

type Conn = Connection<TokioIo<TcpStream>, Empty<Bytes>>;

impl Ctx {
    fn request(&self) -> Request<Empty<Bytes>> {
        let mut request = Request::new(Empty::new());
        *request.uri_mut() = self.target.path.clone();
        let headers = request.headers_mut();
        headers.insert(HOST, self.target.host.clone());
        if self.new_connection {
            headers.insert(CONNECTION, HeaderValue::from_static("close"));
        }
        request
    }

    /// A connection, or `None` (counted) after a failure and a short pause.
    async fn connect(&self, deadline: Instant) -> Option<(SendRequest<Empty<Bytes>>, Conn)> {
        let stream =
            tokio::time::timeout_at(deadline.into(), TcpStream::connect(self.target.addr)).await;
        let stream = match stream {
            Ok(Ok(stream)) => stream,
            Ok(Err(_)) | Err(_) => {
                self.count(|e| e.connect += 1);
                tokio::time::sleep(CONNECT_BACKOFF).await;
                return None;
            }
        };
        // Like wrk: small requests go out at once.
        let _ = stream.set_nodelay(true);
        match http1::handshake(TokioIo::new(stream)).await {
            Ok(pair) => Some(pair),
            Err(_) => {
                self.count(|e| e.read_write += 1);
                None
            }
        }
    }

    /// Sends a request on the connection and reads the whole answer,
    /// driving the connection (`Some` while it runs) in this same task,
    /// until `deadline`. `timer` is the connection's: it is moved only
    /// when it fires before the deadline, not for every request.
    async fn exchange(&self, link: &mut Link<'_>, deadline: Instant) -> Outcome {
        let request = self.request();
        let sender = &mut *link.sender;
        let talk = async {
            if sender.ready().await.is_err() {
                return Outcome::Closed;
            }
            let Ok(answer) = sender.send_request(request).await else {
                return Outcome::Broken;
            };
            let status = answer.status();
            let mut body = answer.into_body();
            while let Some(frame) = body.frame().await {
                if frame.is_err() {
                    return Outcome::Broken;
                }
            }
            Outcome::Answer(status)
        };
        let mut talk = std::pin::pin!(talk);
        let conn = &mut link.conn;
        let timer = &mut link.timer;
        let inline = link.inline;
        std::future::poll_fn(|cx| {
            inline.poll(cx, |cx| {
                if let Poll::Ready(outcome) = talk.as_mut().poll(cx) {
                    return Poll::Ready(outcome);
                }
                if let Some(running) = conn.as_mut().as_pin_mut() {
                    if running.poll(cx).is_ready() {
                        // The connection is done (the server closed it, or
                        // it broke): dropping it hands a request still
                        // waiting its error, and an answer it may have just
                        // read is there to take.
                        conn.set(None);
                        if let Poll::Ready(outcome) = talk.as_mut().poll(cx) {
                            return Poll::Ready(outcome);
                        }
                    }
                }
                while timer.as_mut().poll(cx).is_ready() {
                    if Instant::now() >= deadline {
                        return Poll::Ready(Outcome::TimedOut);
                    }
                    timer.as_mut().reset(deadline.into());
                }
                Poll::Pending
            })
        })
        .await
    }

    /// Counts an answer that came at `done` for a request sent at `sent`.
    fn record(&self, sent: Instant, done: Instant, status: StatusCode) {
        if !self.window.holds(done) {
            return;
        }
        let mut stats = self.stats.borrow_mut();
        stats.requests += 1;
        if !status.is_success() {
            stats.errors.non_2xx += 1;
        }
        let us = u64::try_from(done.duration_since(sent).as_micros()).unwrap_or(u64::MAX);
        stats.latency.saturating_record(us.min(MAX_LATENCY_US));
    }

    /// Counts an error if it happened inside the measurement.
    fn count(&self, kind: impl FnOnce(&mut Errors)) {
        if self.window.holds(Instant::now()) {
            kind(&mut self.stats.borrow_mut().errors);
        }
    }

    /// Counts a request that ended without an answer; a connection closed
    /// before a request on it is an error only if it never answered.
    fn failed(&self, outcome: &Outcome, answered: bool) {
        match outcome {
            Outcome::Answer(_) => {}
            Outcome::Closed if answered => {}
            Outcome::Closed | Outcome::Broken => self.count(|e| e.read_write += 1),
            Outcome::TimedOut => self.count(|e| e.timeout += 1),
        }
    }
}

/// What [`Ctx::exchange`] drives: one connection's halves, its timer and
/// its waker.
struct Link<'a> {
    sender: &'a mut SendRequest<Empty<Bytes>>,
    conn: Pin<&'a mut Option<Conn>>,
    timer: Pin<&'a mut Sleep>,
    inline: &'a Inline,
}

/// One keep-alive connection: a request, its answer, the next request; a
/// new connection after an error or a timeout, or when the server closes it.
async fn keep_alive(ctx: Rc<Ctx>) {
    let inline = Inline::new();
    loop {
        let Some((mut sender, conn)) = ctx.connect(Instant::now() + ctx.timeout).await else {
            continue;
        };
        let conn = std::pin::pin!(Some(conn));
        let timer = std::pin::pin!(tokio::time::sleep(ctx.timeout));
        let mut link = Link {
            sender: &mut sender,
            conn,
            timer,
            inline: &inline,
        };
        let mut answered = false;
        loop {
            let sent = Instant::now();
            let outcome = ctx.exchange(&mut link, sent + ctx.timeout).await;
            if let Outcome::Answer(status) = outcome {
                ctx.record(sent, Instant::now(), status);
                answered = true;
            } else {
                ctx.failed(&outcome, answered);
                break;
            }
        }
    }
}

/// A new connection per request; the latency includes the connect.
async fn new_connections(ctx: Rc<Ctx>) {
    let inline = Inline::new();
    loop {
        let sent = Instant::now();
        let deadline = sent + ctx.timeout;
        let Some((mut sender, conn)) = ctx.connect(deadline).await else {
            continue;
        };
        let mut link = Link {
            sender: &mut sender,
            conn: std::pin::pin!(Some(conn)),
            timer: std::pin::pin!(tokio::time::sleep_until(deadline.into())),
            inline: &inline,
        };
        let outcome = ctx.exchange(&mut link, deadline).await;
        if let Outcome::Answer(status) = outcome {
            ctx.record(sent, Instant::now(), status);
        } else {
            ctx.failed(&outcome, false);
        }
    }
}
