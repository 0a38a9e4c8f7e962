//! Where a cluster's store and bus keep their data, and what the cluster
//! asks of each engine besides the clients' operations.

use std::sync::Arc;
use std::time::Duration;

use forkless_worker::backend::{BusBackend, Owner, StoreBackend};
use forkless_worker::Error;

use crate::bus::Router;
use crate::clock::Clock;
use crate::store::Engine;

/// Where a cluster's [`Store`](forkless_worker::Store) or
/// [`Bus`](forkless_worker::Bus) keeps its data, for
/// [`Builder::store_backend`](crate::Builder::store_backend) and
/// [`Builder::bus_backend`](crate::Builder::bus_backend).
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub enum Backend {
    /// In this process, shared by this cluster's workers only: the fastest,
    /// and the default.
    #[default]
    InProcess,
    /// In a Redis server, shared by every cluster (every host) that points
    /// at it with the same prefix. Needs the `redis` feature.
    #[cfg(feature = "redis")]
    Redis(crate::RedisConfig),
}

#[cfg(feature = "redis")]
impl From<crate::RedisConfig> for Backend {
    fn from(config: crate::RedisConfig) -> Backend {
        Backend::Redis(config)
    }
}

impl Backend {
    pub(crate) fn check(&self) -> Result<(), Error> {
        match self {
            Backend::InProcess => Ok(()),
            #[cfg(feature = "redis")]
            Backend::Redis(config) => config.check(),
        }
    }
}

/// How a remote backend (Redis) is doing, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Health {
    /// Whether its last command was answered.
    pub(crate) reachable: bool,
    /// Commands that failed because it could not be reached or did not
    /// answer.
    pub(crate) failures: u64,
}

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

/// What the cluster asks of a bus engine.
pub(crate) trait BusEngine: Send + Sync {
    /// How its remote backend is doing; `None` in-process.
    fn health(&self) -> Option<Health> {
        None
    }

    /// A slot stopped for good: its inbox closes.
    fn close_slot(&self, slot: usize);
    /// `generation` serves `slot` now: it reads the slot's inbox.
    fn serve(&self, slot: usize, generation: u64);
    /// The cluster now has `size` slots.
    fn resize(&self, size: usize);
    /// Messages put in inboxes and delivered to subscribers so far.
    fn messages(&self) -> u64;
    /// Ends the subscriptions of a worker that exited.
    fn owner_exited(&self, owner: Owner);
    /// Closes the bus: every inbox and subscription ends, every call fails.
    fn close(&self);
}

/// A store engine, seen both ways.
pub(crate) struct StoreParts {
    pub(crate) engine: Arc<dyn StoreEngine>,
    pub(crate) backend: Arc<dyn StoreBackend>,
}

/// A bus engine, seen both ways.
pub(crate) struct BusParts {
    pub(crate) engine: Arc<dyn BusEngine>,
    pub(crate) backend: Arc<dyn BusBackend>,
}

/// What the bus needs to start.
pub(crate) struct BusSettings {
    pub(crate) size: usize,
    pub(crate) capacity: usize,
    pub(crate) request_timeout: Duration,
    pub(crate) name: String,
}

pub(crate) fn start_store(backend: &Backend, clock: &Arc<Clock>) -> Result<StoreParts, Error> {
    match backend {
        Backend::InProcess => {
            let engine = Engine::new(clock.clone());
            Ok(StoreParts {
                engine: engine.clone(),
                backend: engine,
            })
        }
        #[cfg(feature = "redis")]
        Backend::Redis(config) => {
            let store = crate::redis::RedisStore::start(config)?;
            Ok(StoreParts {
                engine: store.clone(),
                backend: store,
            })
        }
    }
}

pub(crate) fn start_bus(
    backend: &Backend,
    settings: BusSettings,
    clock: &Arc<Clock>,
) -> Result<BusParts, Error> {
    let router = Arc::new(Router::new(
        settings.size,
        settings.capacity,
        settings.request_timeout,
        clock.clone(),
        settings.name,
    ));
    match backend {
        Backend::InProcess => Ok(BusParts {
            engine: router.clone(),
            backend: router,
        }),
        #[cfg(feature = "redis")]
        Backend::Redis(config) => {
            let bus = crate::redis::RedisBus::start(config, router)?;
            Ok(BusParts {
                engine: bus.clone(),
                backend: bus,
            })
        }
    }
}
