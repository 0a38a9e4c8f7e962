//! The cost of one store operation, with criterion: forkless's store beside
//! a `Mutex<HashMap>` used directly, from one thread (a `current_thread`
//! tokio runtime, as in a worker), 100 operations per iteration.
//!
//! ```text
//! cargo bench --bench store_ops
//! ```
#![allow(missing_docs)]

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use forkless::{Bytes, Cluster, Worker};

const BATCH: u64 = 100;

fn ops(c: &mut Criterion) {
    let cluster = Cluster::builder()
        .workers(1)
        .start(|w: Worker| async move { w.shutdown_signal().await })
        .expect("start");
    let coll = cluster.store().collection("ops");
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let map: Mutex<HashMap<String, Bytes>> = Mutex::new(HashMap::new());
    let value = Bytes::from_static(b"0123456789abcdef");
    let keys: Vec<String> = (0..BATCH).map(|i| format!("key{i}")).collect();
    rt.block_on(async {
        for k in &keys {
            coll.set(k, value.clone()).await.expect("set");
        }
    });
    for k in &keys {
        map.lock().expect("lock").insert(k.clone(), value.clone());
    }

    let mut g = c.benchmark_group("store op");
    g.throughput(Throughput::Elements(BATCH));
    g.measurement_time(Duration::from_secs(3));
    g.bench_function("forkless get", |b| {
        b.iter(|| {
            rt.block_on(async {
                for k in &keys {
                    std::hint::black_box(coll.get(k).await.expect("get"));
                }
            })
        })
    });
    g.bench_function("mutex get", |b| {
        b.iter(|| {
            rt.block_on(async {
                for k in &keys {
                    std::hint::black_box(map.lock().expect("lock").get(k.as_str()).cloned());
                }
            })
        })
    });
    g.bench_function("forkless set", |b| {
        b.iter(|| {
            rt.block_on(async {
                for k in &keys {
                    coll.set(k, value.clone()).await.expect("set");
                }
            })
        })
    });
    g.bench_function("mutex set", |b| {
        b.iter(|| {
            rt.block_on(async {
                for k in &keys {
                    map.lock().expect("lock").insert(k.clone(), value.clone());
                }
            })
        })
    });
    g.bench_function("forkless incr", |b| {
        b.iter(|| {
            rt.block_on(async {
                for _ in &keys {
                    coll.incr("counter", 1).await.expect("incr");
                }
            })
        })
    });
    g.bench_function("forkless acquire+release", |b| {
        b.iter(|| {
            rt.block_on(async {
                for k in &keys {
                    let lock = coll.acquire(k).await.expect("acquire");
                    lock.release().await.expect("release");
                }
            })
        })
    });
    g.finish();
    cluster.shutdown();
    cluster.join();
}

criterion_group!(benches, ops);
criterion_main!(benches);
