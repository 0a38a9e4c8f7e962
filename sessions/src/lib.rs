//! A [tower-sessions] store on a [forkless] cluster's shared store: sessions
//! that every worker of the cluster sees, as strong-cluster-connect-store
//! gave Express apps on a Node cluster.
//!
//! Each session is one key of a forkless [`Collection`], its record stored
//! as JSON. Give each app (or each kind of session) its own collection name
//! and they never see each other's sessions.
//!
//! ```no_run
//! use std::time::Duration;
//! use forkless_sessions::ForklessStore;
//! use tower_sessions_core::SessionStore;
//!
//! # async fn body(worker: forkless_worker::Worker) -> Result<(), forkless_worker::Error> {
//! let store = ForklessStore::new(worker.store().collection("sessions"))
//!     // Sessions nobody touched for a day leave the store's memory.
//!     .with_idle_expiry(Duration::from_secs(24 * 3600))
//!     .await?;
//! // tower_sessions::SessionManagerLayer::new(store) ...
//! # drop(store);
//! # Ok(())
//! # }
//! ```
//!
//! # Bounds
//!
//! Anyone without a cookie can make the server create a session, so the
//! store bounds them. On its first use, a `ForklessStore` gives its
//! collection what it has not been configured with:
//!
//! - an idle expiry of [`DEFAULT_IDLE_EXPIRY`] (two weeks, tower-sessions'
//!   own default session duration): a session key nobody reads or writes
//!   that long leaves the store's memory;
//! - a cap of [`DEFAULT_MAX_SESSIONS`] sessions (a million; change it with
//!   [`with_max_sessions`](ForklessStore::with_max_sessions)): past it,
//!   creating or saving a new session fails with a
//!   [`session_store::Error::Backend`] that says the store is full, while
//!   existing sessions go on being loaded, saved and deleted.
//!
//! On the Redis backend, which cannot count keys that Redis expires, the
//! default cap is left out (bound Redis with its `maxmemory`); a cap set
//! with `with_max_sessions` is an error there.
//!
//! Versions: this crate implements `tower-sessions-core` 0.14's
//! `SessionStore`, the core of `tower-sessions` 0.14 (axum 0.8). The session
//! store crates of that ecosystem each pin a core version; pick the
//! `tower-sessions` whose core matches.
//!
//! [tower-sessions]: https://docs.rs/tower-sessions
//! [forkless]: https://docs.rs/forkless

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use forkless_worker::{Collection, CollectionOptions, Error};
use time::OffsetDateTime;
use tower_sessions_core::session::{Id, Record};
use tower_sessions_core::session_store::{self, SessionStore};

/// How long a session key nobody reads or writes stays in the store, unless
/// its collection has an expiry of its own: two weeks, the default session
/// duration of `tower-sessions-core` 0.14 (`DEFAULT_DURATION` in its
/// `session` module, which it uses when a session has no `Expiry`).
///
/// ```
/// use std::time::Duration;
///
/// assert_eq!(
///     forkless_sessions::DEFAULT_IDLE_EXPIRY,
///     Duration::from_secs(14 * 24 * 3600)
/// );
/// ```
pub const DEFAULT_IDLE_EXPIRY: Duration = Duration::from_secs(14 * 24 * 3600);

/// The most sessions a store holds unless told otherwise
/// ([`ForklessStore::with_max_sessions`]): a million.
///
/// ```
/// assert_eq!(forkless_sessions::DEFAULT_MAX_SESSIONS, 1_000_000);
/// ```
pub const DEFAULT_MAX_SESSIONS: usize = 1_000_000;

/// Sessions in a forkless [`Collection`].
///
/// Cheap to clone; clones share the collection and its set-up.
#[derive(Clone)]
pub struct ForklessStore {
    collection: Collection,
    /// A cap set with `with_max_sessions`.
    max_sessions: Option<usize>,
    /// Whether the collection has its bounds (see `bounded`).
    bounded: Arc<AtomicBool>,
}

impl ForklessStore {
    /// Keeps sessions in `collection`. On first use, the collection gets an
    /// idle expiry of [`DEFAULT_IDLE_EXPIRY`] if it has no expiry, and a cap
    /// of [`DEFAULT_MAX_SESSIONS`] keys if it has no `max_keys` (see the
    /// [crate docs](crate#bounds)).
    ///
    /// ```no_run
    /// # fn f(worker: forkless_worker::Worker) {
    /// let store = forkless_sessions::ForklessStore::new(worker.store().collection("sessions"));
    /// # drop(store);
    /// # }
    /// ```
    pub fn new(collection: Collection) -> ForklessStore {
        ForklessStore {
            collection,
            max_sessions: None,
            bounded: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Holds at most `max` sessions (default [`DEFAULT_MAX_SESSIONS`], or
    /// the collection's own `max_keys` if it has one): creating or saving a
    /// session past it fails with an error that says the store is full.
    /// Applied on the store's first use, over the collection's `max_keys`.
    ///
    /// ```no_run
    /// # fn f(worker: forkless_worker::Worker) {
    /// use forkless_sessions::ForklessStore;
    ///
    /// let store = ForklessStore::new(worker.store().collection("sessions"))
    ///     .with_max_sessions(50_000);
    /// # drop(store);
    /// # }
    /// ```
    ///
    /// # Panics
    ///
    /// If `max` is zero.
    #[track_caller]
    pub fn with_max_sessions(mut self, max: usize) -> ForklessStore {
        assert!(
            max > 0,
            "with_max_sessions: a store must hold at least one session"
        );
        self.max_sessions = Some(max);
        self.bounded = Arc::new(AtomicBool::new(false));
        self
    }

    /// Configures the collection so that a session key nobody reads or
    /// writes for `idle` is removed from the store, whatever its record
    /// says. Use the session layer's inactivity expiry (or more): a session
    /// past its own expiry date is never returned either way. Without it,
    /// the idle expiry is [`DEFAULT_IDLE_EXPIRY`].
    ///
    /// # Errors
    ///
    /// [`Error::is_config`] if `idle` is zero or over 365 days.
    pub async fn with_idle_expiry(self, idle: Duration) -> Result<ForklessStore, Error> {
        let options = CollectionOptions {
            expire_keys: Some(idle),
            ..self.collection.options()
        };
        self.collection.configure(options).await?;
        Ok(self)
    }

    /// The collection the sessions live in.
    pub fn collection(&self) -> &Collection {
        &self.collection
    }

    fn key(id: &Id) -> String {
        id.to_string()
    }

    /// Gives the collection the bounds it lacks, once.
    async fn bounded(&self) -> session_store::Result<()> {
        if self.bounded.load(Ordering::Acquire) {
            return Ok(());
        }
        let current = self.collection.options();
        let mut options = current.clone();
        options.expire_keys = options.expire_keys.or(Some(DEFAULT_IDLE_EXPIRY));
        options.max_keys = self
            .max_sessions
            .or(options.max_keys)
            .or(Some(DEFAULT_MAX_SESSIONS));
        if options != current {
            if let Err(e) = self.collection.configure(options.clone()).await {
                if !(e.is_config() && self.max_sessions.is_none() && current.max_keys.is_none()) {
                    return Err(backend(e));
                }
                // A backend without key caps (Redis): the expiry only.
                options.max_keys = None;
                if options != current {
                    self.collection.configure(options).await.map_err(backend)?;
                }
            }
        }
        self.bounded.store(true, Ordering::Release);
        Ok(())
    }
}

impl fmt::Debug for ForklessStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ForklessStore")
            .field("collection", &self.collection.name())
            .field("max_sessions", &self.max_sessions)
            .finish()
    }
}

fn backend(e: Error) -> session_store::Error {
    if e.is_full() {
        return session_store::Error::Backend(format!("the session store is full: {e}"));
    }
    session_store::Error::Backend(e.to_string())
}

fn encode(record: &Record) -> session_store::Result<Vec<u8>> {
    serde_json::to_vec(record).map_err(|e| session_store::Error::Encode(e.to_string()))
}

#[async_trait]
impl SessionStore for ForklessStore {
    /// Stores a new session under an id that no other session has: the
    /// key is claimed with a compare-and-swap, and a taken id is replaced
    /// by a fresh random one, across all workers at once.
    async fn create(&self, record: &mut Record) -> session_store::Result<()> {
        self.bounded().await?;
        loop {
            let value = encode(record)?;
            let claimed = self
                .collection
                .compare_and_swap(&Self::key(&record.id), None, Some(value.into()))
                .await
                .map_err(backend)?;
            if claimed {
                return Ok(());
            }
            record.id = Id::default();
        }
    }

    async fn save(&self, record: &Record) -> session_store::Result<()> {
        self.bounded().await?;
        let value = encode(record)?;
        self.collection
            .set(&Self::key(&record.id), value)
            .await
            .map_err(backend)
    }

    /// The session, unless it is missing or past its expiry date (then its
    /// key is removed).
    async fn load(&self, id: &Id) -> session_store::Result<Option<Record>> {
        self.bounded().await?;
        let key = Self::key(id);
        let Some(value) = self.collection.get(&key).await.map_err(backend)? else {
            return Ok(None);
        };
        let record: Record = serde_json::from_slice(&value)
            .map_err(|e| session_store::Error::Decode(e.to_string()))?;
        if record.expiry_date <= OffsetDateTime::now_utc() {
            self.collection.del(&key).await.map_err(backend)?;
            return Ok(None);
        }
        Ok(Some(record))
    }

    async fn delete(&self, id: &Id) -> session_store::Result<()> {
        self.bounded().await?;
        self.collection
            .del(&Self::key(id))
            .await
            .map(drop)
            .map_err(backend)
    }
}
