//! The message bus: the in-process [`router`] (slot inboxes, subscriptions,
//! requests and their timeouts) and, with the `redis` feature, the bus across
//! hosts on Redis ([`redis`]), which delivers to this host through the
//! router. What the cluster asks of either is [`BusEngine`].

#[cfg(feature = "redis")]
pub(crate) mod redis;
pub(crate) mod router;

use std::sync::Arc;
use std::time::Duration;

use forkless_worker::rt::bus::BusBackend;
use forkless_worker::rt::Owner;
use forkless_worker::Error;

use crate::config::Backend;
use crate::observe::Health;
use crate::time::clock::Clock;
use router::Router;

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
    /// `handed_over`: this process handed over to an upgrade's new one,
    /// which goes on as the same host (so the host's presence stays).
    fn close(&self, handed_over: bool);
    /// An upgrade switched to a new process of this program: from now on
    /// the new process takes what other hosts send to this host, and this
    /// one, while its workers drain, takes nothing more for them (what it
    /// took and had not delivered goes back). Replies to this process's own
    /// requests still reach it. In-process, nothing comes from outside.
    fn switched(&self) {}
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

/// Starts the router and, for `Backend::Redis`, the bus on Redis around it.
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
            let bus = redis::RedisBus::start(config, router)?;
            Ok(BusParts {
                engine: bus.clone(),
                backend: bus,
            })
        }
    }
}
