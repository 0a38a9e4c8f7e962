//! `ForklessStore`'s bounds: a default idle expiry and a cap on sessions,
//! so that clients without cookies cannot fill the process's memory.

use crate::common::{block_on, cluster};

use std::sync::Arc;
use std::time::Duration;

use forkless::{Cluster, CollectionOptions};
use forkless_sessions::{ForklessStore, DEFAULT_IDLE_EXPIRY, DEFAULT_MAX_SESSIONS};
use time::OffsetDateTime;
use tower_sessions_core::session::{Id, Record};
use tower_sessions_core::session_store;
use tower_sessions_core::{Session, SessionStore};

fn record() -> Record {
    Record {
        id: Id::default(),
        data: std::collections::HashMap::new(),
        expiry_date: OffsetDateTime::now_utc() + time::Duration::hours(1),
    }
}

fn stop(cluster: Cluster) {
    cluster.shutdown();
    cluster.join();
}

#[test]
fn the_default_idle_expiry_is_tower_sessions_default_session_duration() {
    let cluster = cluster();
    let store = Arc::new(ForklessStore::new(cluster.store().collection("age")));
    // A session without an `Expiry` lives tower-sessions' default duration.
    let session = Session::new(None, store, None);
    let age = session.expiry_age().unsigned_abs();
    let default = DEFAULT_IDLE_EXPIRY;
    assert!(
        age <= default && default - age < Duration::from_secs(5),
        "tower-sessions' default is {age:?}, ours {default:?}"
    );
    stop(cluster);
}

#[test]
fn first_use_gives_the_collection_an_idle_expiry_and_a_cap_it_lacks() {
    let cluster = cluster();
    let sessions = cluster.store().collection("bounded");
    let store = ForklessStore::new(sessions.clone());
    assert_eq!(sessions.options(), CollectionOptions::default());
    block_on(async {
        assert_eq!(store.load(&Id::default()).await.expect("load"), None);
    });
    let options = sessions.options();
    assert_eq!(options.expire_keys, Some(DEFAULT_IDLE_EXPIRY));
    assert_eq!(options.max_keys, Some(DEFAULT_MAX_SESSIONS));

    // What the collection was given before is kept; an explicit cap wins.
    let own = cluster.store().collection("own");
    let hour = Duration::from_secs(3600);
    block_on(async {
        own.configure(CollectionOptions {
            expire_keys: Some(hour),
            max_keys: Some(10),
            ..CollectionOptions::default()
        })
        .await
        .expect("configure");
        let store = ForklessStore::new(own.clone());
        store.save(&record()).await.expect("save");
        assert_eq!(
            (own.options().expire_keys, own.options().max_keys),
            (Some(hour), Some(10))
        );
        let store = store.with_max_sessions(20);
        store.save(&record()).await.expect("save");
        assert_eq!(own.options().max_keys, Some(20));
        // An idle expiry set by hand, before or after, stays.
        let store = store.with_idle_expiry(2 * hour).await.expect("idle expiry");
        store.save(&record()).await.expect("save");
        assert_eq!(
            (own.options().expire_keys, own.options().max_keys),
            (Some(2 * hour), Some(20))
        );
    });
    stop(cluster);
}

#[test]
fn a_full_store_refuses_new_sessions_and_serves_the_ones_it_has() {
    let cluster = cluster();
    let store = ForklessStore::new(cluster.store().collection("full")).with_max_sessions(3);
    block_on(async {
        let mut kept = Vec::new();
        for _ in 0..3 {
            let mut r = record();
            store.create(&mut r).await.expect("create");
            kept.push(r);
        }
        let full = |e: session_store::Error| match e {
            session_store::Error::Backend(m) => assert!(m.contains("store is full"), "{m}"),
            other => panic!("{other:?}"),
        };
        full(store.create(&mut record()).await.expect_err("a 4th create"));
        full(store.save(&record()).await.expect_err("a 4th save"));
        assert_eq!(store.collection().len().await.expect("len"), 3);

        // The sessions it has load and save as ever.
        let mut first = kept[0].clone();
        first.data.insert("visits".to_owned(), serde_json::json!(2));
        store.save(&first).await.expect("save an existing session");
        assert_eq!(store.load(&first.id).await.expect("load"), Some(first));
        // A delete makes room for one.
        store.delete(&kept[1].id).await.expect("delete");
        store
            .create(&mut record())
            .await
            .expect("create after delete");
        full(store.create(&mut record()).await.expect_err("full again"));
    });
    stop(cluster);
}

#[test]
fn a_cap_of_zero_sessions_is_a_bug() {
    let cluster = cluster();
    let collection = cluster.store().collection("zero");
    let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        ForklessStore::new(collection).with_max_sessions(0)
    }))
    .expect_err("a cap of 0 panics");
    let message = panicked.downcast_ref::<&str>().copied().unwrap_or_default();
    assert!(message.contains("at least one session"), "{message}");
    stop(cluster);
}
