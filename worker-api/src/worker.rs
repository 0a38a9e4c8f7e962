use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::watch;

use crate::listener::{ListenAddr, Listener};
use crate::rt::bus::Mailbox;
use crate::rt::host::{Host, WorkerStats};
use crate::rt::Owner;
use crate::{Bus, Error, Inbox, ShutdownSignal, Store};

/// The context of one generation of one worker.
///
/// The cluster calls the worker body once per generation with a fresh
/// `Worker`. It is cheap to clone; clones share the same shutdown signal.
///
/// # Examples
///
/// ```no_run
/// async fn body(worker: forkless_worker::Worker) -> Result<(), forkless_worker::Error> {
///     println!("slot {} generation {} on core {:?}", worker.slot(), worker.generation(), worker.core());
///     let listener = worker.listen("0.0.0.0:8080").await?;
///     while let Some(conn) = listener.accept().await {
///         let (_stream, _peer) = conn?;
///     }
///     Ok(())
/// }
/// ```
#[derive(Clone)]
pub struct Worker {
    slot: usize,
    generation: u64,
    core: Option<usize>,
    host: Arc<dyn Host>,
    shutdown: watch::Receiver<bool>,
    ready: Arc<AtomicBool>,
    stats: Arc<WorkerStats>,
}

impl Worker {
    /// Creates the context for one generation (see [`rt::worker`](crate::rt::worker)).
    pub(crate) fn new(
        slot: usize,
        generation: u64,
        core: Option<usize>,
        host: Arc<dyn Host>,
        shutdown: watch::Receiver<bool>,
        stats: Arc<WorkerStats>,
    ) -> Worker {
        Worker {
            slot,
            generation,
            core,
            host,
            shutdown,
            ready: Arc::new(AtomicBool::new(false)),
            stats,
        }
    }

    /// The slot this worker runs in: `0..size` of the cluster. A slot keeps
    /// its core and its listening sockets across generations.
    pub fn slot(&self) -> usize {
        self.slot
    }

    /// How many times this slot was started before this worker: 0 for the
    /// first worker of a slot, 1 after its first respawn, and so on.
    ///
    /// Each generation gets a fresh tokio runtime, but usually not a fresh
    /// thread: a respawn runs on the thread of the generation that returned.
    /// What the body kept in a `thread_local!` is still there; keep state
    /// that must start afresh in the body itself.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The CPU core this worker's thread is pinned to, or `None` when the
    /// cluster does not pin (`Builder::pin_cores(false)`).
    pub fn core(&self) -> Option<usize> {
        self.core
    }

    /// Listens on `addr` for TCP connections.
    ///
    /// Every worker of the cluster that listens on the same address gets its
    /// own `SO_REUSEPORT` socket, and the kernel spreads new connections among
    /// them. The socket belongs to the slot, not to this worker: the master
    /// keeps it open when the worker dies, so connections queued on it wait
    /// for the slot's next generation instead of being reset.
    ///
    /// Port 0 picks a free port once, for the whole cluster: every slot that
    /// listens on the same `ip:0` shares it. [`Listener::local_addr`] tells
    /// which. IPv6 sockets are IPv6-only, so `[::]:p` and `0.0.0.0:p` can be
    /// listened on side by side.
    ///
    /// The first successful `listen` marks the worker [ready](Worker::ready).
    ///
    /// `addr` is an IP address and port (`"127.0.0.1:8080"`, `"[::1]:8080"`, a
    /// [`SocketAddr`](std::net::SocketAddr)) or a host name and port
    /// (`"localhost:8080"`, resolved once, binding the first address found;
    /// resolving may block this worker briefly).
    ///
    /// # Errors
    ///
    /// An error that names the address when it is malformed or resolves to
    /// nothing ([`Error::is_invalid_address`]), when another process (or a
    /// socket of this one that is not the cluster's) holds it
    /// ([`Error::is_addr_in_use`]), when binding is not permitted
    /// ([`Error::is_bind`]), or when the cluster is stopping
    /// ([`Error::is_stopped`]).
    pub async fn listen<A: ListenAddr>(&self, addr: A) -> Result<Listener, Error> {
        let shown = addr.describe();
        let resolved = addr
            .resolve()
            .map_err(|e| Error::invalid_address(&shown, e))?;
        let listening = self.host.listen(self.slot, resolved, &shown)?;
        let listener = tokio::net::TcpListener::from_std(listening.listener)
            .map_err(|e| Error::bind(&shown, e))?;
        self.ready();
        Ok(Listener::new(
            listener,
            self.shutdown.clone(),
            listening.adopted,
            self.stats.clone(),
        ))
    }

    /// Marks this worker ready to serve, for bodies that do not
    /// [`listen`](Worker::listen) (which marks it ready by itself). Calling it
    /// more than once is harmless.
    pub fn ready(&self) {
        if !self.ready.swap(true, Ordering::AcqRel) {
            self.host.ready(self.slot, self.generation);
        }
    }

    /// Resolves when this worker is asked to stop: the cluster is shutting
    /// down, or this generation is being replaced.
    ///
    /// From then on, the worker's listeners hand out no more connections, and
    /// the body has the cluster's `shutdown_timeout` to finish and return
    /// before it is terminated (its future dropped).
    ///
    /// ```no_run
    /// # async fn body(worker: forkless_worker::Worker) {
    /// let mut ticker = tokio::time::interval(std::time::Duration::from_secs(1));
    /// let stop = worker.shutdown_signal();
    /// tokio::pin!(stop);
    /// loop {
    ///     tokio::select! {
    ///         _ = &mut stop => break,
    ///         _ = ticker.tick() => { /* periodic work */ }
    ///     }
    /// }
    /// # }
    /// ```
    pub fn shutdown_signal(&self) -> ShutdownSignal {
        ShutdownSignal::new(self.shutdown.clone())
    }

    /// The cluster's shared [`Store`].
    ///
    /// Locks taken through this handle belong to this generation of the
    /// worker: if it exits (returns, fails, panics or is terminated) while
    /// holding one, the store releases it and the next waiter gets the key.
    pub fn store(&self) -> Store {
        Store::new(
            self.host.store(),
            Some(Owner {
                slot: self.slot,
                generation: self.generation,
            }),
        )
    }

    /// The cluster's message [`Bus`]. Messages sent through it name this
    /// worker's slot as their sender.
    pub fn bus(&self) -> Bus {
        Bus::new(
            self.host.bus(),
            Some(Owner {
                slot: self.slot,
                generation: self.generation,
            }),
        )
    }

    /// This slot's inbox: the messages sent to the slot through the
    /// [`Bus`], including those that arrived while the slot was restarting.
    ///
    /// A slot has one reader: the generation that serves it, and within it
    /// the newest `Inbox` taken (taking it again ends the earlier one). A
    /// new generation of a rolling restart may take its inbox before it is
    /// ready: it receives once it serves, when the old generation's inbox
    /// ends; if it fails instead, the old generation reads on. An inbox
    /// also ends once its worker is asked to stop, leaving what is queued
    /// for the next generation.
    ///
    /// ```no_run
    /// # async fn body(worker: forkless_worker::Worker) {
    /// let mut inbox = worker.inbox();
    /// while let Some(envelope) = inbox.recv().await {
    ///     if envelope.is_request() {
    ///         let answer = format!("slot {} got {} bytes", worker.slot(), envelope.message().len());
    ///         envelope.reply(answer);
    ///     }
    /// }
    /// # }
    /// ```
    pub fn inbox(&self) -> Inbox {
        let mailboxes = self.host.bus().mailboxes();
        let mailbox = mailboxes.get(self.slot).cloned().unwrap_or_else(|| {
            // Not a slot of the cluster: an inbox that has ended.
            let closed = Mailbox::new(1);
            closed.close();
            closed.serve(self.generation);
            Arc::new(closed)
        });
        Inbox::new(mailbox, self.generation, self.shutdown_signal())
    }

    /// Returns true once this worker has been asked to stop.
    pub fn is_shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }
}

impl fmt::Debug for Worker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Worker")
            .field("slot", &self.slot)
            .field("generation", &self.generation)
            .field("core", &self.core)
            .field("shutting_down", &self.is_shutting_down())
            .finish()
    }
}
