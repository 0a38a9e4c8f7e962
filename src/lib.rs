//! A per-core cluster runtime for tokio services: what Node's `cluster`
//! module and a process supervisor give a Node service, with threads instead
//! of processes.
//!
//! # The model
//!
//! A forkless cluster is one **master** thread and one **worker** thread per
//! core. Each worker runs its own single-threaded tokio runtime (with a
//! `LocalSet`, so `!Send` futures and `spawn_local` work), pinned to its core,
//! sharing nothing with the others on the hot path: no work stealing, no
//! cross-core wake-ups.
//!
//! - A **slot** is a numbered place for a worker, `0..size`. It keeps its
//!   core and its listening sockets for the cluster's whole life.
//! - Every start of a slot is a **generation** of it. The cluster calls your
//!   *worker body*, an `async fn(Worker)`, once per generation.
//! - [`Worker::listen`] gives each slot its own `SO_REUSEPORT` socket, so the
//!   kernel spreads connections over the cores. The master holds the socket;
//!   the worker gets a duplicate. When a worker dies, connections the kernel
//!   queued for it are not reset: they wait for the next generation.
//! - The master **supervises**: a body that panics, returns an error or
//!   returns is classified ([`Exit`]) and respawned per the [`Restart`]
//!   policy. A worker that fails quickly again and again is respawned with
//!   growing delays, and its slot gives up after `max_restarts` quick failures
//!   in a row while the others serve on.
//! - **Stopping** is graceful first: [`Worker::shutdown_signal`] resolves and
//!   [`Listener::accept`] returns `None`; after `shutdown_timeout` a worker
//!   still running is terminated (its future dropped); after
//!   `terminate_timeout` a thread still blocked is reported [`Exit::Hung`] and
//!   abandoned (threads cannot be killed).
//!
//! # Getting started
//!
//! ```no_run
//! #[forkless::main]
//! async fn main(worker: forkless::Worker) -> Result<(), forkless::Error> {
//!     let listener = worker.listen("127.0.0.1:8080").await?;
//!     while let Some(conn) = listener.accept().await {
//!         let (_stream, peer) = conn?;
//!         println!("worker {} accepted {peer}", worker.slot());
//!     }
//!     Ok(())
//! }
//! ```
//!
//! The same with the [`Builder`], which also embeds a cluster in a program
//! that does other things ([`Builder::start`] returns a [`Cluster`] handle):
//!
//! ```no_run
//! use std::time::Duration;
//!
//! fn main() -> Result<(), forkless::Error> {
//!     let report = forkless::Cluster::builder()
//!         .workers(4)
//!         .shutdown_timeout(Duration::from_secs(10))
//!         .run(|worker| async move {
//!             let listener = worker.listen("127.0.0.1:8080").await?;
//!             while let Some(conn) = listener.accept().await {
//!                 let (_stream, _peer) = conn?;
//!             }
//!             Ok::<(), forkless::Error>(())
//!         })?;
//!     println!("{report}");
//!     Ok(())
//! }
//! ```
//!
//! # Operating a cluster
//!
//! [`Cluster::events`] streams what the supervisor does ([`Event`]),
//! [`Cluster::status`] snapshots every slot ([`Status`]), and the cluster
//! changes shape while it serves: [`Cluster::restart`] rolls a restart one
//! slot at a time (each new generation ready before the old one is asked to
//! stop), and [`Cluster::resize`] grows or shrinks it (a retired slot's
//! listening socket is adopted by a surviving worker, so no queued connection
//! is lost). A stall watchdog reports workers whose event loop stops
//! turning. Under [`Builder::run`], SIGHUP rolls and SIGTTIN/SIGTTOU resize;
//! `FORKLESS_*` environment variables override builder values; systemd's
//! readiness, reload, watchdog and socket activation are supported. A
//! control server (HTTP + JSON on a 0600 Unix socket, on by default under
//! `run`) serves status, events, resize, restart, shutdown and Prometheus
//! metrics ([`Cluster::metrics`]) to `curl --unix-socket` and `forkless-ctl`.
//!
//! ```no_run
//! # fn body(w: forkless::Worker) -> impl std::future::Future<Output = ()> { async move { drop(w) } }
//! # fn main() -> Result<(), forkless::Error> {
//! let cluster = forkless::Cluster::builder().workers(4).start(body)?;
//! let mut events = cluster.events();
//! cluster.restart()?;
//! while let Some(event) = events.blocking_recv() {
//!     if let forkless::Event::RollFinished { restarted, completed } = event {
//!         println!("rolled {restarted} workers, completed: {completed}");
//!         break;
//!     }
//! }
//! cluster.resize(2)?;
//! println!("{:?}", cluster.status());
//! # Ok(())
//! # }
//! ```
//!
//! # The shared store
//!
//! Workers share state through the cluster's [`Store`]: named
//! [collections](Collection) of byte values ([`Bytes`]; `get_as`/`set_as`
//! store serde types as JSON), with key locks, expiry, `incr` and
//! compare-and-swap. It is the API of Node's strong-store-cluster, in
//! process: reach it with [`Worker::store`] from a worker and
//! [`Cluster::store`] from anywhere else (async code, or a plain thread
//! through [`Collection::blocking`]).
//!
//! ```no_run
//! use std::time::Duration;
//! use forkless::CollectionOptions;
//!
//! # async fn body(worker: forkless::Worker) -> Result<(), forkless::Error> {
//! let sessions = worker.store().collection("sessions");
//! sessions
//!     .configure(CollectionOptions {
//!         expire_keys: Some(Duration::from_secs(30 * 60)),
//!         ..CollectionOptions::default()
//!     })
//!     .await?;
//!
//! // A read-modify-write that no other worker can interleave with.
//! let mut lock = sessions.acquire("session:42").await?;
//! let visits: u64 = lock.get_as()?.unwrap_or(0);
//! lock.set_as(&(visits + 1))?;
//! lock.release().await?;
//! # Ok(())
//! # }
//! ```
//!
//! - An operation on a locked key waits behind the lock, first come first
//!   served; the lock's changes are committed at [`KeyLock::release`], and
//!   dropping a lock discards them.
//! - A lock held by a worker that exits (returns, fails, panics, is
//!   terminated) is released for it, and the next in line gets the key.
//! - [`Collection::try_acquire`], [`Collection::acquire_timeout`], and a lease
//!   ([`LockOptions::lease`], [`CollectionOptions::max_hold`]) after which the
//!   store takes a lock back and refuses its holder's late commit.
//! - Keys and values have size limits (4 KiB and 1 MiB by default); going
//!   over them is an error, as is every operation after the cluster stopped.
//!
//! Operations run in the calling worker's thread under a short per-shard
//! mutex (no thread hop, no I/O), and take part in tokio's cooperative
//! budget, so a loop of store calls does not starve the worker's other tasks.
//!
//! # The message bus
//!
//! Node's cluster has no channel between workers; forkless has a [`Bus`]:
//! every slot has a bounded inbox that outlives its workers (what is sent
//! while a slot restarts reaches the next generation), read with
//! [`Worker::inbox`]. Messages are [`Bytes`] (`*_as` methods send serde
//! types as JSON), kept in order per sender and receiver.
//!
//! ```no_run
//! # async fn body(worker: forkless::Worker) -> Result<(), forkless::Error> {
//! let bus = worker.bus();
//! if worker.slot() == 0 {
//!     bus.send(1, "hello, slot 1").await?;          // waits while the inbox is full
//!     let reply = bus.request(1, "ping").await?;    // with the cluster's request timeout
//!     bus.broadcast("config changed").await?;       // every live slot, once
//!     bus.publish("orders", "order 7 paid").await?; // every subscriber of the topic
//! }
//! let mut inbox = worker.inbox(); // ends once the worker is asked to stop
//! while let Some(envelope) = inbox.recv().await {
//!     if envelope.is_request() {
//!         envelope.reply("pong");
//!     }
//! }
//! # Ok(())
//! # }
//! ```
//!
//! Sending to a slot that does not exist is an error at once; a request
//! whose receiver drops it or exits before replying is an error, not a hang;
//! so is anything after the cluster stopped. From outside the workers, use
//! [`Cluster::bus`].
//!
//! # Panics and `panic = "abort"`
//!
//! Supervision catches panics with `catch_unwind`. A binary built with
//! `panic = "abort"` cannot, so [`Builder::start`] refuses to start in such a
//! build, with an error that says so.
//!
//! # Crates
//!
//! | crate | what it holds |
//! |---|---|
//! | `forkless` | this facade: re-exports and `#[forkless::main]` |
//! | `forkless-worker` | what worker code touches: [`Worker`], [`Listener`], [`Store`], [`Collection`], [`KeyLock`], [`Bus`], [`Inbox`], [`Error`]; for libraries |
//! | `forkless-runtime` | the master: [`Builder`], [`Cluster`], supervision, listener registry, the store's engine, the bus's router |
//! | `forkless-macros` | the attribute |
//! | `forkless-ctl` | the command-line client of the control socket |
//! | `forkless-sessions` | a tower-sessions store on the shared store |
//!
//! # Features
//!
//! - `http`: `forkless::http`, which serves a hyper service on a worker's
//!   [`Listener`] and drains its connections when the worker is asked to
//!   stop the way Envoy and HAProxy drain theirs (answers carry
//!   `Connection: close`, idle keep-alive connections are closed only after
//!   a linger, HTTP/2 gets a GOAWAY), so that keep-alive clients lose no
//!   request in a rolling restart, a shrink or an upgrade.
//! - `axum` (implies `http`): [`Listener`] implements
//!   `axum::serve::Listener`, and `forkless::http::serve_axum` serves and
//!   drains an axum app on each worker.
//! - `redis`: the store and the bus on Redis ([`Backend`], `RedisConfig`),
//!   so that clusters on several hosts share one store, one set of topics,
//!   and reach each other's slots ([`Bus::send_to`]).
#![doc(test(attr(deny(warnings), allow(dead_code, unused_variables))))]

#[cfg(feature = "redis")]
pub use forkless_runtime::RedisConfig;
pub use forkless_runtime::{
    default_control_socket, Backend, BackendStatus, BodyResult, Builder, Cluster, Event, Events,
    Exit, GenerationReport, Recycle, RecycleReason, Report, Restart, SlotReport, Status, TaskPanic,
    WorkerState, WorkerStatus,
};
#[cfg(feature = "http")]
pub use forkless_worker::http;

/// Per-worker memory: [`Counting`](alloc::Counting), a global allocator
/// that counts each worker's live bytes for [`Cluster::status`],
/// `forkless-ctl status` and the metrics (`forkless_worker_memory_bytes`).
///
/// It is opt-in, a line in the program, around the system allocator or any
/// other (mimalloc, jemalloc):
///
/// ```
/// #[global_allocator]
/// static ALLOC: forkless::alloc::Counting<std::alloc::System> =
///     forkless::alloc::Counting::new(std::alloc::System);
///
/// # fn main() {}
/// ```
///
/// Without it, a worker's memory is unknown: `WorkerStatus::memory` is
/// `None`, `forkless-ctl status` shows `-`, and the metrics have no line.
pub mod alloc {
    pub use forkless_runtime::Counting;
}
pub use forkless_worker::{
    BlockingCollection, Bus, Bytes, Collection, CollectionOptions, Envelope, Error, Inbox, KeyLock,
    ListenAddr, Listener, LockOptions, ShutdownSignal, Store, Subscription, Worker,
};

/// Runs an `async fn main(worker: forkless::Worker)` as a forkless cluster,
/// one worker per core, in place of `#[tokio::main]`.
///
/// The function is the worker body: it runs once per generation of every
/// worker. It returns `()` or `Result<(), E>` with `E: Display`. The
/// generated `main` blocks until the cluster stops (SIGINT or SIGTERM stop
/// it gracefully, a second one terminates it), and exits with failure if the
/// cluster could not start or a slot gave up.
///
/// # Options
///
/// | option | meaning | default |
/// |---|---|---|
/// | `workers = 4` | number of workers | the cores this process may run on |
/// | `shutdown_timeout = "5s"` | time to return once asked to stop | 5 s |
/// | `terminate_timeout = "5s"` | time to return once terminated | 5 s |
/// | `throttle_delay = "2s"` | a shorter run is a quick failure | 2 s |
/// | `crate = "forkless"` | path to this crate, if renamed | `::forkless` |
///
/// Durations are strings like `"500ms"`, `"5s"` or `"1m 30s"`.
///
/// # Examples
///
/// ```no_run
/// #[forkless::main(workers = 2, shutdown_timeout = "10s")]
/// async fn main(worker: forkless::Worker) -> Result<(), forkless::Error> {
///     let listener = worker.listen("127.0.0.1:8080").await?;
///     while let Some(conn) = listener.accept().await {
///         let (_stream, _peer) = conn?;
///     }
///     Ok(())
/// }
/// ```
///
/// is the same as
///
/// ```no_run
/// fn main() -> std::process::ExitCode {
///     async fn body(worker: forkless::Worker) -> Result<(), forkless::Error> {
///         let listener = worker.listen("127.0.0.1:8080").await?;
///         while let Some(conn) = listener.accept().await {
///             let (_stream, _peer) = conn?;
///         }
///         Ok(())
///     }
///     let result = forkless::Cluster::builder()
///         .workers(2)
///         .shutdown_timeout(std::time::Duration::from_secs(10))
///         .run(body);
///     match result {
///         Ok(report) if report.slots.iter().any(|s| s.gave_up) => {
///             eprintln!("{report}");
///             std::process::ExitCode::FAILURE
///         }
///         Ok(_) => std::process::ExitCode::SUCCESS,
///         Err(e) => {
///             eprintln!("error: {e}");
///             std::process::ExitCode::FAILURE
///         }
///     }
/// }
/// ```
pub use forkless_macros::main;

/// Not public API: what `#[forkless::main]` expands to calls these.
#[doc(hidden)]
pub mod __private {
    use std::process::ExitCode;

    use crate::{Error, Report};

    /// The process's exit status after `Builder::run`.
    pub fn exit_code(result: Result<Report, Error>) -> ExitCode {
        match result {
            Ok(report) if report.slots.iter().any(|s| s.gave_up) => {
                eprintln!("{report}");
                ExitCode::FAILURE
            }
            Ok(_) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        }
    }
}
