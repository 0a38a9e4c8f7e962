//! The shared key/value store's engines: the in-process one ([`memory`]) and,
//! with the `redis` feature, the one on Redis ([`redis`]); what the cluster
//! asks of either ([`StoreEngine`]), the checks and errors both share
//! ([`checks`]), and the copy of the in-process store that moves to a new
//! process in an upgrade ([`snapshot`]).
//!
//! Workers reach an engine through `forkless_worker::rt::store::StoreBackend`;
//! the supervisor through [`StoreEngine`] (counts, clean-up after a worker
//! exits, the handover in an upgrade, the end).

pub(crate) mod checks;
pub(crate) mod memory;
#[cfg(feature = "redis")]
pub(crate) mod redis;
pub(crate) mod snapshot;

use std::sync::Arc;

use forkless_worker::rt::store::StoreBackend;
use forkless_worker::rt::Errors as _;
use forkless_worker::Error;

use crate::config::Backend;
use crate::observe::Health;
use crate::time::clock::Clock;

pub(crate) use snapshot::Snapshot;

/// What the cluster asks of a store engine: metrics, clean-up after a
/// worker, the handover in an upgrade, and the end.
///
/// In an upgrade the in-process store moves with the switch, and no two
/// processes mutate it at once: the new process [`hold`](Self::hold)s its
/// engine before its workers start; the old one, once its workers have all
/// exited, [`export`](Self::export)s (which closes its engine) and sends
/// the snapshot; the new one [`import`](Self::import)s it and
/// [`release_hold`](Self::release_hold)s, or releases with an empty store
/// if none came. The defaults fit an engine whose data lives outside the
/// process (Redis): there is nothing to move, and both processes may use
/// the data at once, as two hosts do.
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

    /// Whether [`export`](Self::export) gives a snapshot to move (the
    /// in-process engine); `false` (the default): the data lives outside the
    /// process, and nothing moves. Asks without closing anything, so that an
    /// upgrade can check, before its switch, that the new process reads the
    /// snapshot's version.
    fn moves(&self) -> bool {
        false
    }

    /// Closes the store to every operation and returns what it holds, to
    /// load into the engine of the process that takes over. `None`: there
    /// is nothing to move (the default: the data lives outside the
    /// process). The in-process engine's export takes back the locks still
    /// held (their holders' releases fail with lock-lost) and refuses every
    /// later operation with a "stopped" error, so that no write is
    /// acknowledged that the snapshot does not have.
    fn export(&self) -> Option<Snapshot> {
        None
    }

    /// Loads a snapshot exported by the process this one takes over from,
    /// into this engine, which holds no key yet (made for a held engine).
    /// The default checks it, loads an empty one (nothing to do) and
    /// refuses one with keys: the data of an engine outside the process is
    /// not loaded from a snapshot.
    ///
    /// # Errors
    ///
    /// [`Error::is_invalid_value`] for a snapshot that does not hold
    /// together, [`Error::is_config`] for an engine that cannot take it,
    /// [`Error::is_stopped`] once closed.
    fn import(&self, snapshot: Snapshot) -> Result<(), Error> {
        snapshot.check()?;
        if snapshot.is_empty() {
            return Ok(());
        }
        Err(Error::config(format!(
            "store import: this store's data lives outside the process, so the {} keys of the \
             in-process store of the process it takes over from cannot be loaded into it",
            snapshot.keys()
        )))
    }

    /// Holds the engine: every operation from now on (of workers and
    /// outside handles, async and blocking, `configure` and `count`
    /// included) waits until [`release_hold`](Self::release_hold) or
    /// [`close`](Self::close), which the caller guarantees. The default
    /// does nothing: an engine outside the process has nothing to wait for.
    fn hold(&self) {}

    /// Runs the operations that waited in the hold, in the order they
    /// arrived, then lets operations run at once again. Does nothing
    /// unless held (the default: nothing ever is).
    fn release_hold(&self) {}
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
