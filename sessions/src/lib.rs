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
//! Versions: this crate implements `tower-sessions-core` 0.14's
//! `SessionStore`, the core of `tower-sessions` 0.14 (axum 0.8). The session
//! store crates of that ecosystem each pin a core version; pick the
//! `tower-sessions` whose core matches.
//!
//! [tower-sessions]: https://docs.rs/tower-sessions
//! [forkless]: https://docs.rs/forkless

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use forkless_worker::{Collection, CollectionOptions, Error};
use time::OffsetDateTime;
use tower_sessions_core::session::{Id, Record};
use tower_sessions_core::session_store::{self, SessionStore};

/// Sessions in a forkless [`Collection`].
#[derive(Clone)]
pub struct ForklessStore {
    collection: Collection,
}

impl ForklessStore {
    /// Keeps sessions in `collection`, as configured (or by default: keys
    /// stay until deleted or loaded after their expiry date).
    pub fn new(collection: Collection) -> ForklessStore {
        ForklessStore { collection }
    }

    /// Configures the collection so that a session key nobody reads or
    /// writes for `idle` is removed from the store, whatever its record
    /// says. Use the session layer's inactivity expiry (or more): a session
    /// past its own expiry date is never returned either way.
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
}

impl fmt::Debug for ForklessStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ForklessStore")
            .field("collection", &self.collection.name())
            .finish()
    }
}

fn backend(e: Error) -> session_store::Error {
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
        let value = encode(record)?;
        self.collection
            .set(&Self::key(&record.id), value)
            .await
            .map_err(backend)
    }

    /// The session, unless it is missing or past its expiry date (then its
    /// key is removed).
    async fn load(&self, id: &Id) -> session_store::Result<Option<Record>> {
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
        self.collection
            .del(&Self::key(id))
            .await
            .map(drop)
            .map_err(backend)
    }
}
