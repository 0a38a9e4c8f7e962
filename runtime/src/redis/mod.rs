//! Store and bus backends on Redis, for clusters on several hosts that share
//! one store and one bus (feature `redis`).
//!
//! Each backend runs its Redis I/O on a thread of its own (`forkless-redis`)
//! with a `current_thread` tokio runtime: workers hand it an operation and
//! get the answer on a oneshot channel, as they do from the in-process
//! engine when an operation waits. So a worker never blocks on Redis, a
//! cancelled operation still finishes (or undoes itself, for a lock), and
//! code outside the workers (`Cluster::store`, a plain thread) uses it the
//! same way.

mod bus;
mod store;

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use forkless_worker::Error;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{FromRedisValue, RedisError, ScriptInvocation};
use tokio::runtime::Handle;
use tokio::sync::{oneshot, OnceCell};

pub(crate) use bus::RedisBus;
pub(crate) use store::RedisStore;

/// Where and how a cluster reaches Redis, for
/// [`Builder::store_backend`](crate::Builder::store_backend) and
/// [`Builder::bus_backend`](crate::Builder::bus_backend). Needs the `redis`
/// feature.
///
/// Every cluster (every host) that uses the same Redis and the same
/// [`prefix`](RedisConfig::prefix) shares one store and one bus.
///
/// # What differs from the in-process backend
///
/// - **Latency**: every store operation is a round trip to Redis (a Lua
///   script, so each one is atomic there). Messages between the slots of one
///   cluster still go in-process; only [`Bus::send_to`] another host,
///   [`Bus::request_to`] and topics go through Redis.
/// - **Locks** are a Redis key set with `NX` and a lease, holding a token
///   that only this lock knows; release commits and frees in one script that
///   checks the token. A lock without a lease of its own is renewed while
///   held (every third of [`lock_lease`](RedisConfig::lock_lease)), so a
///   lock whose host dies (or loses Redis) is freed when the lease runs out.
///   A worker that exits has its locks released, as in-process.
/// - **Waiting on a locked key**: a release publishes on the lock's key,
///   and a host subscribes to it while it has waiters there, so they try
///   again at once (a lock handed from one host to another took 1.3 to
///   2.5 ms here, against 65 to 66 ms by polling alone). A lease that runs
///   out publishes nothing: waiters also look again every 1 ms, doubling up
///   to 100 ms. Waiters are served in no set order (in-process: first come,
///   first served).
/// - **Expiry** is Redis's own (`PEXPIRE`), refreshed on each access;
///   [`CollectionOptions`](forkless_worker::CollectionOptions) are per
///   process, so configure a collection the same way on every host. Keys
///   set before expiry was configured keep no expiry until next touched.
/// - **`len`** scans the collection's keys (`SCAN`): use it for checks and
///   tests, not on a hot path.
/// - **Errors**: when Redis cannot be reached or does not answer within
///   [`timeout`](RedisConfig::timeout), an operation fails with
///   [`Error::is_unavailable`] (it may or may not have been applied); the
///   connection is made again by itself when Redis is back. Nothing panics
///   and nothing waits forever.
/// - **Topics** are Redis pub/sub: at most once. A host that is cut off
///   from Redis misses what is published meanwhile, and `publish` counts the
///   hosts that had subscribers. Messages to another host's slots are a
///   Redis list per host. What a host had not taken off its list when it
///   stopped waits there for its next start under the same name (up to an
///   hour); what it had taken but its workers had not read (at most its
///   inbox capacity, plus one, per host) goes with it. A send to a host that
///   is not up (its presence, renewed every 2 s, lapses 6 s after it
///   stopped, at once when it stops gracefully) is refused.
///
/// [`Bus::send_to`]: forkless_worker::Bus::send_to
/// [`Bus::request_to`]: forkless_worker::Bus::request_to
/// [`Error::is_unavailable`]: forkless_worker::Error::is_unavailable
///
/// # Examples
///
/// ```no_run
/// use forkless_runtime::{Cluster, RedisConfig};
///
/// let redis = RedisConfig::new("redis://127.0.0.1:6379/").host("web-1");
/// let cluster = Cluster::builder()
///     .store_backend(redis.clone())
///     .bus_backend(redis)
///     .start(|worker| async move {
///         let hits = worker.store().collection("hits").incr("total", 1).await?;
///         println!("hit number {hits}, counted across every host");
///         Ok::<(), forkless_worker::Error>(())
///     })?;
/// cluster.join();
/// # Ok::<(), forkless_worker::Error>(())
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct RedisConfig {
    url: String,
    prefix: String,
    host: Option<String>,
    timeout: Duration,
    connect_timeout: Duration,
    lock_lease: Duration,
}

impl RedisConfig {
    /// Redis at `url`, such as `redis://127.0.0.1:6379/` or
    /// `redis://:password@host:6379/2`. Checked when the cluster starts.
    pub fn new(url: impl Into<String>) -> RedisConfig {
        RedisConfig {
            url: url.into(),
            prefix: "forkless".to_owned(),
            host: None,
            timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(1),
            lock_lease: Duration::from_secs(10),
        }
    }

    /// What every Redis key of this store and bus starts with; clusters
    /// with different prefixes share nothing. The default is `"forkless"`.
    pub fn prefix(mut self, prefix: impl Into<String>) -> RedisConfig {
        self.prefix = prefix.into();
        self
    }

    /// This host's name on the bus: other hosts reach its slots with
    /// [`Bus::send_to`](forkless_worker::Bus::send_to)`(name, slot, ..)`.
    /// Names must be unique among the hosts on one Redis and prefix. The
    /// default is the machine's host name and this process's id
    /// (`web-1-4242`), which changes at each start: set a stable name if
    /// messages should wait for a host that restarts.
    pub fn host(mut self, name: impl Into<String>) -> RedisConfig {
        self.host = Some(name.into());
        self
    }

    /// How long one Redis command may take, connecting included, before
    /// the operation fails with [`Error::is_unavailable`](forkless_worker::Error::is_unavailable).
    /// The default is 2 seconds.
    pub fn timeout(mut self, timeout: Duration) -> RedisConfig {
        self.timeout = timeout;
        self
    }

    /// How long one attempt to connect may take. The default is 1 second.
    pub fn connect_timeout(mut self, timeout: Duration) -> RedisConfig {
        self.connect_timeout = timeout;
        self
    }

    /// The lease of a lock taken without one of its own: renewed while the
    /// lock is held, it frees the lock this long after its host died or lost
    /// Redis. The default is 10 seconds; at least 30 ms.
    pub fn lock_lease(mut self, lease: Duration) -> RedisConfig {
        self.lock_lease = lease;
        self
    }

    pub(crate) fn check(&self) -> Result<(), Error> {
        redis::Client::open(self.url.as_str()).map_err(|e| {
            Error::config(self.scrub(&format!(
                "RedisConfig: cannot use the URL {}: {e}",
                self.shown_url()
            )))
        })?;
        for (what, d) in [
            ("RedisConfig: timeout", self.timeout),
            ("RedisConfig: connect_timeout", self.connect_timeout),
            ("RedisConfig: lock_lease", self.lock_lease),
        ] {
            crate::deadline::check_option(what, d)?;
        }
        if self.timeout.is_zero() || self.connect_timeout.is_zero() {
            return Err(Error::config(
                "RedisConfig: timeout and connect_timeout must be more than zero",
            ));
        }
        if self.lock_lease < Duration::from_millis(30) {
            return Err(Error::config(format!(
                "RedisConfig: lock_lease must be at least 30ms, got {:?}",
                self.lock_lease
            )));
        }
        if self.prefix.is_empty() {
            return Err(Error::config("RedisConfig: the prefix must not be empty"));
        }
        if self.host.as_deref() == Some("") {
            return Err(Error::config(
                "RedisConfig: the host name must not be empty",
            ));
        }
        Ok(())
    }

    /// The host name, chosen if not set.
    pub(crate) fn host_name(&self) -> String {
        self.host.clone().unwrap_or_else(|| {
            let machine = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|s| s.trim().to_owned())
                .ok()
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "host".to_owned());
            format!("{machine}-{}", std::process::id())
        })
    }

    /// The URL without its secrets, for messages: everything between the
    /// scheme and the last `@` (user and password, whatever characters the
    /// password holds), and the value of every query parameter but `db`
    /// and `protocol` (`redis+unix:///run/redis.sock?pass=...`), are `***`.
    pub(crate) fn shown_url(&self) -> String {
        let (scheme, userinfo, rest) = self.parts();
        let mut shown = String::from(scheme);
        if userinfo.is_some() {
            shown.push_str("***@");
        }
        let (head, query) = match rest.split_once('?') {
            Some((head, query)) => (head, Some(query)),
            None => (rest, None),
        };
        shown.push_str(head);
        if let Some(query) = query {
            let pairs: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((k, v)) if matches!(k, "db" | "protocol") => format!("{k}={v}"),
                    Some((k, _)) => format!("{k}=***"),
                    None => pair.to_owned(),
                })
                .collect();
            shown.push('?');
            shown.push_str(&pairs.join("&"));
        }
        shown
    }

    /// The URL as `scheme://`, the user part before the last `@` (if any),
    /// and the rest.
    fn parts(&self) -> (&str, Option<&str>, &str) {
        let url = self.url.as_str();
        let Some(i) = url.find("://") else {
            return ("", None, url);
        };
        let (scheme, after) = url.split_at(i + 3);
        match after.rfind('@') {
            Some(at) => (scheme, Some(&after[..at]), &after[at + 1..]),
            None => (scheme, None, after),
        }
    }

    /// The parts of the URL that [`shown_url`](RedisConfig::shown_url)
    /// hides, longest first.
    fn secrets(&self) -> Vec<&str> {
        let (_, userinfo, rest) = self.parts();
        let mut secrets = Vec::new();
        if let Some(userinfo) = userinfo {
            secrets.push(userinfo);
            secrets.extend(userinfo.split(':'));
        }
        let query = rest.split_once('?').map_or("", |(_, q)| q);
        for pair in query.split('&') {
            if let Some((k, v)) = pair.split_once('=') {
                if !matches!(k, "db" | "protocol") {
                    secrets.push(v);
                }
            }
        }
        secrets.retain(|s| s.len() >= 3);
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        secrets
    }

    /// `text` with every secret of the URL replaced by `***`: for messages
    /// that quote what the Redis client said.
    pub(crate) fn scrub(&self, text: &str) -> String {
        let mut text = text.to_owned();
        for secret in self.secrets() {
            text = text.replace(secret, "***");
        }
        text
    }
}

impl std::fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &self.shown_url())
            .field("prefix", &self.prefix)
            .field("host", &self.host)
            .field("timeout", &self.timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("lock_lease", &self.lock_lease)
            .finish()
    }
}

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
    faults: Arc<crate::guard::Faults>,
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
            faults: crate::guard::current(),
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
    pub(crate) fn health(&self) -> crate::backend::Health {
        crate::backend::Health {
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
        let caught =
            crate::guard::Caught::new(self.faults.clone(), "forkless-redis", "a Redis task", task);
        self.handle.spawn(async move {
            caught.await;
        })
    }

    /// Runs `work` so that a panic in it (a waker of a worker's, woken as a
    /// message is delivered) is caught and counted, and the link's loop that
    /// awaits this goes on with its next message.
    pub(crate) async fn caught<F: Future>(&self, what: &'static str, work: F) -> Option<F::Output> {
        crate::guard::Caught::new(self.faults.clone(), "forkless-redis", what, work).await
    }

    /// Refuses new work, runs `last` (bounded by the timeout), then stops the
    /// thread: what still runs there ends, and its answer channels close.
    pub(crate) fn close<F>(&self, last: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        if self.closed.swap(true, Ordering::SeqCst) {
            return;
        }
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let limit = self.config.timeout;
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
        crate::worker_thread::current_cluster()?;
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
        let connect = || {
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(self.config.connect_timeout)
                .set_response_timeout(self.config.timeout)
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
    fn config_checks_name_the_bad_value() {
        assert!(RedisConfig::new("redis://127.0.0.1/").check().is_ok());
        let e = RedisConfig::new("nope://x").check().unwrap_err();
        assert!(e.is_config() && e.to_string().contains("nope://x"), "{e}");
        let e = RedisConfig::new("redis://127.0.0.1/")
            .lock_lease(Duration::from_millis(1))
            .check()
            .unwrap_err();
        assert!(e.is_config() && e.to_string().contains("lock_lease"), "{e}");
        let e = RedisConfig::new("redis://127.0.0.1/")
            .timeout(Duration::ZERO)
            .check()
            .unwrap_err();
        assert!(e.is_config(), "{e}");
        let e = RedisConfig::new("redis://127.0.0.1/")
            .timeout(Duration::MAX)
            .check()
            .unwrap_err();
        assert!(e.is_config() && e.to_string().contains("timeout"), "{e}");
    }

    #[test]
    fn passwords_stay_out_of_messages() {
        let c = RedisConfig::new("redis://:s3cret@db:6379/1");
        assert_eq!(c.shown_url(), "redis://***@db:6379/1");
        assert_eq!(RedisConfig::new("redis://db/").shown_url(), "redis://db/");
        let c = RedisConfig::new("redis://admin:s3cret@db:6379/1");
        assert_eq!(c.shown_url(), "redis://***@db:6379/1");
        let c = RedisConfig::new("redis+unix:///run/redis.sock?db=2&pass=s3cret");
        assert_eq!(c.shown_url(), "redis+unix:///run/redis.sock?db=2&pass=***");
        assert_eq!(c.scrub("AUTH s3cret refused"), "AUTH *** refused");
        // A password with `/`, `?`, `#` or `@` in it, which the URL parser
        // may refuse: hidden whole all the same.
        for url in [
            "redis://:ab/cd+ef=@db:6379/0",
            "redis://user:a?b#c@db/",
            "redis://:p@ss@db/",
        ] {
            let c = RedisConfig::new(url);
            let shown = format!("{} {c:?}", c.shown_url());
            for part in ["ab/cd", "a?b#c", "p@ss"] {
                assert!(!shown.contains(part), "{shown}");
            }
            if let Err(e) = c.check() {
                let text = e.to_string();
                for part in ["ab/cd", "a?b#c", "p@ss"] {
                    assert!(!text.contains(part), "{text}");
                }
            }
        }
        let debug = format!(
            "{:?}",
            RedisConfig::new("redis://u:s3cret@db/?password=t0ken")
        );
        assert!(
            !debug.contains("s3cret") && !debug.contains("t0ken"),
            "{debug}"
        );
        // A bad URL's error names the URL without its password.
        let e = RedisConfig::new("redis://:s3cret@db:notaport/")
            .check()
            .expect_err("bad port");
        assert!(!e.to_string().contains("s3cret"), "{e}");
    }

    #[test]
    fn glob_escape_escapes_pattern_characters() {
        assert_eq!(glob_escape("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
    }
}
