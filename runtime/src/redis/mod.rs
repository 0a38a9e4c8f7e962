//! The link to Redis that the store's and the bus's Redis engines
//! (`store::redis`, `bus::redis`) share the design of: one connection, the
//! thread that drives it, a worker thread's own connections, and the
//! follower of a pub/sub channel (feature `redis`).
//!
//! Each backend runs its Redis I/O on a thread of its own (`forkless-redis`)
//! with a `current_thread` tokio runtime: workers hand it an operation and
//! get the answer on a oneshot channel, as they do from the in-process
//! engine when an operation waits. So a worker never blocks on Redis, a
//! cancelled operation still finishes (or undoes itself, for a lock), and
//! code outside the workers (`Cluster::store`, a plain thread) uses it the
//! same way.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use forkless_worker::rt::Errors as _;
use forkless_worker::Error;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{FromRedisValue, RedisError, ScriptInvocation};
use tokio::runtime::Handle;
use tokio::sync::{oneshot, OnceCell};

use crate::config::RedisConfig;

thread_local! {
    /// A worker thread's own connections, by link.
    static LOCAL: std::cell::RefCell<std::collections::HashMap<usize, Arc<OnceCell<ConnectionManager>>>> =
        std::cell::RefCell::default();
}

/// Drops the connections of this worker thread: its next generation runs
/// a new runtime, and a connection's driver died with the old one.
pub(crate) fn forget_this_threads_connections() {
    LOCAL.with(|local| local.borrow_mut().clear());
}

/// Which connection an operation uses.
pub(crate) enum Via {
    /// The link's, driven by the link's thread.
    Link,
    /// A worker thread's own, driven by that worker's runtime.
    Local(Arc<OnceCell<ConnectionManager>>),
}

/// One connection to Redis and the thread that drives it.
pub(crate) struct Link {
    pub(crate) config: RedisConfig,
    client: redis::Client,
    handle: Handle,
    conn: OnceCell<ConnectionManager>,
    closed: AtomicBool,
    /// Whether the last command was answered, and how many were not.
    reachable: AtomicBool,
    failures: std::sync::atomic::AtomicU64,
    stop: Mutex<Option<oneshot::Sender<()>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// Where panics caught in its tasks are counted.
    faults: Arc<crate::fault::guard::Faults>,
}

impl Link {
    /// Starts the link's thread. Connects on first use, so a cluster starts
    /// while Redis is down.
    pub(crate) fn start(config: &RedisConfig, what: &str) -> Result<Arc<Link>, Error> {
        let client = redis::Client::open(config.url.as_str())
            .map_err(|e| Error::config(config.scrub(&format!("RedisConfig: {e}"))))?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::spawn("cannot build the Redis runtime", e))?;
        let handle = runtime.handle().clone();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(format!("forkless-redis-{what}"))
            .spawn(move || {
                runtime.block_on(async {
                    let _ = stop_rx.await;
                });
                runtime.shutdown_timeout(Duration::from_millis(100));
            })
            .map_err(|e| Error::spawn("cannot spawn the Redis thread", e))?;
        let link = Arc::new(Link {
            config: config.clone(),
            client,
            handle,
            conn: OnceCell::new(),
            closed: AtomicBool::new(false),
            reachable: AtomicBool::new(false),
            failures: std::sync::atomic::AtomicU64::new(0),
            stop: Mutex::new(Some(stop_tx)),
            thread: Mutex::new(Some(thread)),
            faults: crate::fault::guard::current(),
        });
        // Connect now, to say at start-up whether Redis is there.
        let probe = link.clone();
        let what = what.to_owned();
        link.spawn(async move {
            let ping = redis::cmd("PING");
            if let Err(e) = probe.command::<()>("connect", &ping).await {
                tracing::warn!(
                    "the {what} cannot reach Redis now ({e}); its calls fail until it can"
                );
            }
        });
        Ok(link)
    }

    /// Whether Redis answers, and how many commands it failed.
    pub(crate) fn health(&self) -> crate::observe::Health {
        crate::observe::Health {
            reachable: self.reachable.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
        }
    }

    /// Notes how a command went, for [`health`](Link::health).
    fn note<T>(&self, result: Result<T, Error>) -> Result<T, Error> {
        match &result {
            Ok(_) => self.reachable.store(true, Ordering::Relaxed),
            Err(e) if e.is_unavailable() => {
                self.reachable.store(false, Ordering::Relaxed);
                self.failures.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {}
        }
        result
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// Runs `task` on the link's thread.
    pub(crate) fn spawn<F>(&self, task: F) -> tokio::task::JoinHandle<()>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        // A panic in a task is caught and counted; the link goes on.
        let caught = crate::fault::guard::Caught::new(
            self.faults.clone(),
            "forkless-redis",
            "a Redis task",
            task,
        );
        self.handle.spawn(async move {
            caught.await;
        })
    }

    /// Runs `work` so that a panic in it (a waker of a worker's, woken as a
    /// message is delivered) is caught and counted, and the link's loop that
    /// awaits this goes on with its next message.
    pub(crate) async fn caught<F: Future>(&self, what: &'static str, work: F) -> Option<F::Output> {
        crate::fault::guard::Caught::new(self.faults.clone(), "forkless-redis", what, work).await
    }

    /// Refuses new work, runs `last` (bounded by `limit`), then stops the
    /// thread: what still runs there ends, and its answer channels close.
    pub(crate) fn close<F>(&self, limit: Duration, last: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        if self.closed.swap(true, Ordering::SeqCst) {
            return;
        }
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        self.handle.spawn(async move {
            let _ = tokio::time::timeout(limit, last).await;
            let _ = done_tx.send(());
        });
        let _ = done_rx.recv_timeout(limit + Duration::from_millis(500));
        let stop = self
            .stop
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(stop) = stop {
            let _ = stop.send(());
        }
        let thread = self
            .thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        // Never join from the link's own thread (a drop there could lead
        // here).
        if let Some(thread) = thread {
            if thread.thread().id() != std::thread::current().id() {
                let _ = thread.join();
            }
        }
    }

    /// This worker thread's own connection, driven by its own runtime, so
    /// that an operation makes no trip to the link's thread; `None` on other
    /// threads. Made on first use.
    pub(crate) fn local(self: &Arc<Self>) -> Option<Via> {
        crate::current::cluster()?;
        let id = Arc::as_ptr(self) as usize;
        let cell = LOCAL.with(|local| local.borrow_mut().entry(id).or_default().clone());
        Some(Via::Local(cell))
    }

    /// The connection, made on first use and made again by itself after a
    /// failure.
    async fn connection(&self, via: &Via) -> Result<ConnectionManager, Error> {
        let cell = match via {
            Via::Link => &self.conn,
            Via::Local(cell) => &**cell,
        };
        if let Some(conn) = cell.get() {
            return Ok(conn.clone());
        }
        // No response timeout of its own: each call here has one, and a
        // second timer per command costs.
        let connect = || {
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(self.config.connect_timeout)
                .set_number_of_retries(1)
                .set_max_delay(self.config.connect_timeout.as_millis() as u64);
            ConnectionManager::new_with_config(self.client.clone(), config)
        };
        let made = tokio::time::timeout(self.config.timeout, cell.get_or_try_init(connect))
            .await
            .map_err(|_| self.late("connecting"))?;
        made.cloned().map_err(|e| self.failed("connecting", &e))
    }

    /// Runs a script, within the timeout.
    pub(crate) async fn script<T: FromRedisValue>(
        &self,
        what: &str,
        invocation: &ScriptInvocation<'_>,
    ) -> Result<T, Error> {
        self.script_via(&Via::Link, what, invocation).await
    }

    /// Runs a script on `via`'s connection, within the timeout.
    pub(crate) async fn script_via<T: FromRedisValue>(
        &self,
        via: &Via,
        what: &str,
        invocation: &ScriptInvocation<'_>,
    ) -> Result<T, Error> {
        let result = async {
            let mut conn = self.connection(via).await?;
            tokio::time::timeout(self.config.timeout, invocation.invoke_async(&mut conn))
                .await
                .map_err(|_| self.late(what))?
                .map_err(|e| self.failed(what, &e))
        };
        self.note(result.await)
    }

    /// Runs a command on `via`'s connection, within the timeout, and gives
    /// Redis's answer as it is: an error reply is a `Value::ServerError`,
    /// not an `Err` (which says Redis did not answer).
    pub(crate) async fn answer_via(
        &self,
        via: &Via,
        what: &str,
        cmd: &redis::Cmd,
    ) -> Result<redis::Value, Error> {
        use redis::aio::ConnectionLike as _;
        let result = async {
            let mut conn = self.connection(via).await?;
            tokio::time::timeout(self.config.timeout, conn.req_packed_command(cmd))
                .await
                .map_err(|_| self.late(what))?
                .map_err(|e| self.failed(what, &e))
        };
        self.note(result.await)
    }

    /// Runs a command, within the timeout.
    pub(crate) async fn command<T: FromRedisValue>(
        &self,
        what: &str,
        cmd: &redis::Cmd,
    ) -> Result<T, Error> {
        let result = async {
            let mut conn = self.connection(&Via::Link).await?;
            tokio::time::timeout(self.config.timeout, cmd.query_async(&mut conn))
                .await
                .map_err(|_| self.late(what))?
                .map_err(|e| self.failed(what, &e))
        };
        self.note(result.await)
    }

    /// Runs a pipeline whose answers are ignored, within the timeout.
    pub(crate) async fn pipeline(&self, pipe: &redis::Pipeline) -> Result<(), Error> {
        let result = async {
            let mut conn = self.connection(&Via::Link).await?;
            tokio::time::timeout(self.config.timeout, pipe.query_async::<()>(&mut conn))
                .await
                .map_err(|_| self.late("pipeline"))?
                .map_err(|e| self.failed("pipeline", &e))
        };
        self.note(result.await)
    }

    pub(crate) fn late(&self, what: &str) -> Error {
        Error::unavailable(format!(
            "Redis at {} did not answer within {:?} ({what})",
            self.config.shown_url(),
            self.config.timeout
        ))
    }

    pub(crate) fn failed(&self, what: &str, e: &RedisError) -> Error {
        if e.is_timeout() {
            return self.late(what);
        }
        Error::unavailable(self.config.scrub(&format!(
            "Redis at {} failed ({what}): {e}",
            self.config.shown_url()
        )))
    }

    /// A dedicated connection, for blocking commands and pub/sub.
    pub(crate) fn client(&self) -> &redis::Client {
        &self.client
    }
}

/// The longest pause before a lost connection is made again.
pub(crate) const MAX_RETRY: Duration = Duration::from_secs(1);

/// What a pub/sub follower is asked to do.
pub(crate) enum Follow {
    Subscribe(String),
    Unsubscribe(String),
    /// Answer once the changes before this one are in effect on Redis.
    Confirm(oneshot::Sender<Result<(), Error>>),
}

/// Keeps a pub/sub connection subscribed to the channels `channels` gives
/// (asked again after each reconnection), applies `changes` as they come,
/// and hands each message to `deliver`. Runs until the link closes or
/// `changes` ends.
pub(crate) async fn follow<C, D, F>(
    link: &Link,
    what: &str,
    channels: C,
    mut changes: tokio::sync::mpsc::UnboundedReceiver<Follow>,
    mut deliver: D,
) where
    C: Fn() -> Vec<String>,
    D: FnMut(String, Vec<u8>) -> F,
    F: Future<Output = ()>,
{
    let mut pause = Duration::from_millis(50);
    while !link.is_closed() {
        let connected = tokio::time::timeout(
            link.config.connect_timeout,
            link.client().get_async_pubsub(),
        )
        .await;
        let pubsub = match connected {
            Ok(Ok(pubsub)) => pubsub,
            _ => {
                // Changes still come while Redis is away; the channels are
                // (re)subscribed from `channels` once it is back.
                let sleep = tokio::time::sleep(pause);
                tokio::pin!(sleep);
                loop {
                    tokio::select! {
                        _ = &mut sleep => break,
                        change = changes.recv() => match change {
                            Some(Follow::Confirm(done)) => {
                                let _ = done.send(Err(Error::unavailable(format!(
                                    "the {what} cannot subscribe on Redis at {} now; it keeps \
                                     trying",
                                    link.config.shown_url()
                                ))));
                            }
                            Some(_) => {}
                            None => return,
                        },
                    }
                }
                pause = (pause * 2).min(MAX_RETRY);
                continue;
            }
        };
        pause = Duration::from_millis(50);
        let (mut sink, mut stream) = pubsub.split();
        // A Redis that takes the connection but does not answer must not
        // hold the follower (and the `confirmed` waiters) for ever.
        let limit = link.config.timeout;
        let answered = |r: Result<redis::RedisResult<()>, tokio::time::error::Elapsed>| {
            matches!(r, Ok(Ok(())))
        };
        let mut ok = true;
        for channel in channels() {
            if !answered(tokio::time::timeout(limit, sink.subscribe(channel)).await) {
                ok = false;
                break;
            }
        }
        if !ok {
            tokio::time::sleep(pause).await;
            continue;
        }
        loop {
            let next = std::future::poll_fn(|cx| {
                futures_core::Stream::poll_next(std::pin::Pin::new(&mut stream), cx)
            });
            tokio::select! {
                change = changes.recv() => {
                    let ok = match change {
                        None => return,
                        Some(Follow::Subscribe(channel)) => {
                            answered(tokio::time::timeout(limit, sink.subscribe(channel)).await)
                        }
                        Some(Follow::Unsubscribe(channel)) => {
                            answered(tokio::time::timeout(limit, sink.unsubscribe(channel)).await)
                        }
                        Some(Follow::Confirm(done)) => {
                            let _ = done.send(Ok(()));
                            true
                        }
                    };
                    if !ok {
                        break;
                    }
                }
                msg = next => {
                    let Some(msg) = msg else { break };
                    deliver(msg.get_channel_name().to_owned(), msg.get_payload_bytes().to_vec()).await;
                }
            }
        }
        if !link.is_closed() {
            tracing::warn!("the {what} lost its pub/sub connection to Redis; reconnecting");
        }
    }
}

/// A Redis key part that is safe inside a `SCAN MATCH` pattern.
pub(crate) fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_escape_escapes_pattern_characters() {
        assert_eq!(glob_escape("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
    }
}
