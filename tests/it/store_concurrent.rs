//! Several workers, several tasks in each, and a plain thread at once on the
//! same keys: locked read-modify-writes lose no update, `incr` and
//! compare-and-swap are atomic.

use std::sync::mpsc;

use crate::common::recv;
use forkless::{Bytes, Cluster, Collection, Worker};

const ROUNDS: i64 = 300;
const TASKS: i64 = 4;

/// One participant's rounds: a locked increment, an `incr`, and a
/// compare-and-swap increment retried until it lands.
async fn rounds(c: &Collection) -> Result<(), forkless::Error> {
    for _ in 0..ROUNDS {
        let mut lock = c.acquire("locked").await?;
        let n: i64 = lock.get_as()?.unwrap_or(0);
        // Yield while holding the lock, so that others queue behind it.
        tokio::task::yield_now().await;
        lock.set_as(&(n + 1))?;
        lock.release().await?;

        c.incr("incr", 1).await?;

        loop {
            let current = c.get("cas").await?;
            let n: i64 = match &current {
                Some(v) => std::str::from_utf8(v).expect("utf8").parse().expect("int"),
                None => 0,
            };
            let next = Bytes::from((n + 1).to_string());
            if c.compare_and_swap("cas", current.as_deref(), Some(next))
                .await?
            {
                break;
            }
            tokio::task::yield_now().await;
        }
    }
    Ok(())
}

#[test]
fn concurrent_updates_from_workers_tasks_and_a_thread_lose_nothing() {
    let (tx, rx) = mpsc::channel();
    let cluster = Cluster::builder()
        .workers(2)
        .start(move |worker: Worker| {
            let tx = tx.clone();
            async move {
                let c = worker.store().collection("concurrent");
                let tasks: Vec<_> = (0..TASKS)
                    .map(|_| {
                        let c = c.clone();
                        tokio::task::spawn_local(async move { rounds(&c).await })
                    })
                    .collect();
                for task in tasks {
                    task.await.expect("task")?;
                }
                tx.send(worker.slot()).expect("test alive");
                worker.shutdown_signal().await;
                Ok::<_, forkless::Error>(())
            }
        })
        .expect("start");

    let store = cluster.store();
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        rt.block_on(rounds(&store.collection("concurrent")))
    });
    recv(&rx, "the first worker's rounds");
    recv(&rx, "the second worker's rounds");
    thread.join().expect("thread").expect("thread's rounds");

    let total = (2 * TASKS + 1) * ROUNDS;
    let c = cluster.store().collection("concurrent").blocking();
    for key in ["locked", "incr", "cas"] {
        assert_eq!(
            c.get(key).unwrap(),
            Some(Bytes::from(total.to_string())),
            "{key}"
        );
    }
    cluster.shutdown();
    cluster.join();
}
