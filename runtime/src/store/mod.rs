//! The shared key/value store's engines: the in-process one ([`memory`]) and,
//! with the `redis` feature, the one on Redis ([`redis`]); what the cluster
//! asks of either ([`StoreEngine`]), and the checks and errors both share
//! ([`checks`]).
//!
//! Workers reach an engine through `forkless_worker::rt::store::StoreBackend`;
//! the supervisor through [`StoreEngine`] (counts, clean-up after a worker
//! exits, the end).

pub(crate) mod checks;
pub(crate) mod memory;
#[cfg(feature = "redis")]
pub(crate) mod redis;

use std::sync::Arc;

use forkless_worker::rt::store::StoreBackend;
use forkless_worker::Error;

use crate::config::Backend;
use crate::observe::Health;
use crate::time::clock::Clock;

/// What the cluster asks of a store engine: metrics, clean-up after a
/// worker, and the end.
pub(crate) trait StoreEngine: Send + Sync {
    /// How its remote backend is doing; `None` in-process.
    fn health(&self) -> Option<Health> {
        None
    }

    /// Operations so far, and those that waited behind a key lock.
    fn counts(&self) -> (u64, u64);
    /// Takes back every lock held by this generation of `slot`, and refuses
    /// it any lock from now on.
    fn owner_exited(&self, slot: usize, generation: u64);
    /// Closes the store: every waiting operation and every later one fails
    /// with a "stopped" error.
    fn close(&self);
}

/// A store engine, seen both ways.
pub(crate) struct StoreParts {
    pub(crate) engine: Arc<dyn StoreEngine>,
    pub(crate) backend: Arc<dyn StoreBackend>,
}

/// Starts the engine `backend` names.
pub(crate) fn start_store(backend: &Backend, clock: &Arc<Clock>) -> Result<StoreParts, Error> {
    match backend {
        Backend::InProcess => {
            let engine = memory::Engine::new(clock.clone());
            Ok(StoreParts {
                engine: engine.clone(),
                backend: engine,
            })
        }
        #[cfg(feature = "redis")]
        Backend::Redis(config) => {
            let store = redis::RedisStore::start(config)?;
            Ok(StoreParts {
                engine: store.clone(),
                backend: store,
            })
        }
    }
}
