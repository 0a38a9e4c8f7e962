//! forkless-sessions' `ForklessStore` on both store backends: sessions
//! round-trip, and the store's bounds are given to the collection (the cap
//! only where the backend has key caps; on Redis a cap set by hand is an
//! error that says so).
//!
//! The Redis half needs the `redis` feature (`cargo test --all-features`).

use crate::common::{self, done, stop, Kind};
use forkless::Cluster;
use forkless_sessions::{ForklessStore, DEFAULT_IDLE_EXPIRY, DEFAULT_MAX_SESSIONS};
use tower_sessions::session::{Id, Record};
use tower_sessions::session_store;
use tower_sessions::SessionStore;

conformance_suite!(sessions_round_trip_and_the_collection_is_bounded);

fn record() -> Record {
    Record {
        id: Id::default(),
        data: std::collections::HashMap::new(),
        expiry_date: time::OffsetDateTime::now_utc() + time::Duration::hours(1),
    }
}

fn sessions_round_trip_and_the_collection_is_bounded(kind: Kind) {
    let cluster = common::idle(Cluster::builder().store_backend(kind.backend()));
    let sessions = cluster.store().collection("sessions");
    let store = ForklessStore::new(sessions.clone());
    let mut r = record();
    done(store.create(&mut r)).expect("create");
    assert_eq!(done(store.load(&r.id)).expect("load"), Some(r.clone()));
    done(store.delete(&r.id)).expect("delete");
    assert_eq!(done(store.load(&r.id)).expect("load"), None);

    let options = sessions.options();
    assert_eq!(options.expire_keys, Some(DEFAULT_IDLE_EXPIRY));
    let capped = match kind {
        Kind::InProcess => Some(DEFAULT_MAX_SESSIONS),
        #[cfg(feature = "redis")]
        Kind::Redis => None,
    };
    assert_eq!(options.max_keys, capped, "{kind:?}");

    // A cap asked for by hand: kept, or refused where it cannot be.
    let store = ForklessStore::new(cluster.store().collection("capped")).with_max_sessions(1);
    let message = |e: session_store::Error| match e {
        session_store::Error::Backend(m) => m,
        other => panic!("{other:?}"),
    };
    if capped.is_some() {
        done(store.save(&record())).expect("the first session");
        let e = message(done(store.save(&record())).expect_err("over the cap"));
        assert!(e.contains("store is full"), "{e}");
    } else {
        let e = message(done(store.save(&record())).expect_err("no caps on Redis"));
        assert!(e.contains("maxmemory"), "{e}");
    }
    stop(cluster);
}
