//! `ForklessStore` against tower-sessions' `SessionStore` contract.

use crate::common::{block_on, cluster, wait_until};

use std::collections::HashSet;
use std::time::Duration;

use forkless_sessions::ForklessStore;
use time::OffsetDateTime;
use tower_sessions_core::session::{Id, Record};
use tower_sessions_core::SessionStore;

fn record(id: Id, expires_in: time::Duration) -> Record {
    let mut data = std::collections::HashMap::new();
    data.insert("user".to_owned(), serde_json::json!("ada"));
    Record {
        id,
        data,
        expiry_date: OffsetDateTime::now_utc() + expires_in,
    }
}

#[test]
fn save_load_and_delete() {
    let cluster = cluster();
    let store = ForklessStore::new(cluster.store().collection("sessions"));
    block_on(async {
        let r = record(Id::default(), time::Duration::hours(1));
        store.save(&r).await.expect("save");
        assert_eq!(store.load(&r.id).await.expect("load"), Some(r.clone()));
        store.delete(&r.id).await.expect("delete");
        assert_eq!(store.load(&r.id).await.expect("load"), None);
        assert_eq!(store.collection().len().await.expect("len"), 0);
        // Deleting what is not there is fine.
        store.delete(&r.id).await.expect("delete again");
    });
    cluster.shutdown();
    cluster.join();
}

#[test]
fn an_expired_session_is_never_returned_and_its_key_goes() {
    let cluster = cluster();
    let store = ForklessStore::new(cluster.store().collection("expiring"));
    let store = block_on(async {
        let r = record(Id::default(), time::Duration::seconds(-1));
        store.save(&r).await.expect("save");
        assert_eq!(store.collection().len().await.expect("len"), 1);
        assert_eq!(store.load(&r.id).await.expect("load"), None);
        assert_eq!(
            store.collection().len().await.expect("len"),
            0,
            "the key went"
        );

        // With idle expiry, a key nobody touches leaves the store.
        let store = store
            .with_idle_expiry(Duration::from_millis(50))
            .await
            .expect("configure");
        let r = record(Id::default(), time::Duration::hours(1));
        store.save(&r).await.expect("save");
        store
    });
    wait_until("the idle key to leave the store", || {
        block_on(store.collection().len()).expect("len") == 0
    });
    cluster.shutdown();
    cluster.join();
}

#[test]
fn stores_with_different_collection_names_do_not_see_each_other() {
    let cluster = cluster();
    let a = ForklessStore::new(cluster.store().collection("app-a"));
    let b = ForklessStore::new(cluster.store().collection("app-b"));
    block_on(async {
        let r = record(Id::default(), time::Duration::hours(1));
        a.save(&r).await.expect("save");
        assert!(a.load(&r.id).await.expect("load").is_some());
        assert_eq!(b.load(&r.id).await.expect("load"), None);
        b.delete(&r.id).await.expect("delete in b");
        assert!(
            a.load(&r.id).await.expect("load").is_some(),
            "b's delete is b's"
        );
    });
    cluster.shutdown();
    cluster.join();
}

#[test]
fn concurrent_creates_get_unique_ids() {
    let cluster = cluster();
    let store = ForklessStore::new(cluster.store().collection("create"));
    // Every creator starts from the same id: all but one must move.
    let same = Id::default();
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let store = store.clone();
            std::thread::spawn(move || {
                block_on(async {
                    let mut ids = Vec::new();
                    for _ in 0..25 {
                        let mut r = record(same, time::Duration::hours(1));
                        store.create(&mut r).await.expect("create");
                        ids.push(r.id);
                    }
                    ids
                })
            })
        })
        .collect();
    let ids: Vec<Id> = threads
        .into_iter()
        .flat_map(|t| t.join().expect("thread"))
        .collect();
    let unique: HashSet<Id> = ids.iter().copied().collect();
    assert_eq!(unique.len(), 100, "every create got its own id");
    assert!(
        unique.contains(&same),
        "the first one kept the id it asked for"
    );
    block_on(async {
        assert_eq!(store.collection().len().await.expect("len"), 100);
        for id in &ids {
            assert!(store.load(id).await.expect("load").is_some());
        }
    });
    cluster.shutdown();
    cluster.join();
}
