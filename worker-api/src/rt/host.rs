//! The worker's half of the contract: what the master that runs a
//! [`Worker`](crate::Worker) implements for it ([`Host`]: listening sockets,
//! readiness, the store and bus engines), and the figures a worker keeps for
//! the master ([`WorkerStats`]).

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use tokio::sync::watch;

use super::bus::BusBackend;
use super::store::StoreBackend;
use crate::Error;

/// The listening sockets of other slots that a slot accepts from for them
/// (slots retired by a shrink, or that gave up), as the master hands them.
pub type Adopted = Arc<[Arc<std::net::TcpListener>]>;

/// What `listen` gives a worker.
#[derive(Debug)]
pub struct Listening {
    /// A duplicate of the slot's own socket.
    pub listener: std::net::TcpListener,
    /// The sockets this slot adopts for others; the master changes it when
    /// slots retire or come back.
    pub adopted: watch::Receiver<Adopted>,
}

/// Figures a worker keeps for the master's status and watchdog. All times
/// are microseconds; `last_beat` counts from the cluster's start.
#[derive(Debug, Default)]
pub struct WorkerStats {
    /// Connections accepted by this worker's listeners.
    pub accepted: AtomicU64,
    /// Tasks alive in the worker's runtime.
    pub alive_tasks: AtomicU64,
    /// Share of the last heartbeat period the runtime was busy, in 1/1000.
    pub busy_permille: AtomicU64,
    /// How late the last heartbeat tick ran.
    pub lag_micros: AtomicU64,
    /// When the last heartbeat ran; 0 before the first.
    pub last_beat: AtomicU64,
}

/// What a worker asks of its master.
pub trait Host: Send + Sync + 'static {
    /// Returns a duplicate of the listening socket that the master keeps for
    /// (`addr`, `slot`), creating it on first use, and the sockets the slot
    /// adopts. `shown` is the address as the user wrote it, for messages.
    fn listen(&self, slot: usize, addr: SocketAddr, shown: &str) -> Result<Listening, Error>;

    /// Marks this generation of `slot` ready.
    fn ready(&self, slot: usize, generation: u64);

    /// The cluster's store engine.
    fn store(&self) -> Arc<dyn StoreBackend>;

    /// The cluster's bus router.
    fn bus(&self) -> Arc<dyn BusBackend>;
}
