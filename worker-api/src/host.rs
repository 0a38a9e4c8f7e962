//! The boundary between a [`Worker`](crate::Worker) and the master that runs
//! it. Implemented by `forkless-runtime`; not for applications.

use std::net::SocketAddr;

use std::sync::Arc;

use crate::backend::{BusBackend, StoreBackend};
use crate::Error;

/// What a worker asks of its master.
pub trait Host: Send + Sync + 'static {
    /// Returns a duplicate of the listening socket that the master keeps for
    /// (`addr`, `slot`), creating it on first use. `shown` is the address as
    /// the user wrote it, for error messages.
    fn listen(
        &self,
        slot: usize,
        addr: SocketAddr,
        shown: &str,
    ) -> Result<std::net::TcpListener, Error>;

    /// Marks this generation of `slot` ready.
    fn ready(&self, slot: usize, generation: u64);

    /// The cluster's store engine.
    fn store(&self) -> Arc<dyn StoreBackend>;

    /// The cluster's bus router.
    fn bus(&self) -> Arc<dyn BusBackend>;
}
