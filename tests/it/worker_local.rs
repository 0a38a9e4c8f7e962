//! A worker body need not be `Send`: it runs on one thread, in a `LocalSet`.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::mpsc;

use crate::common::recv;
use forkless::{Cluster, Restart};

#[test]
fn a_body_with_rc_state_and_spawn_local_compiles_and_runs() {
    let (tx, rx) = mpsc::channel();
    let report = Cluster::builder()
        .workers(2)
        .restart(Restart::Never)
        .start(move |worker| {
            let tx = tx.clone();
            async move {
                // Rc and RefCell: not Send, held across awaits.
                let seen = Rc::new(RefCell::new(Vec::new()));
                let mut tasks = Vec::new();
                for i in 0..10 {
                    let seen = seen.clone();
                    tasks.push(tokio::task::spawn_local(async move {
                        tokio::task::yield_now().await;
                        seen.borrow_mut().push(i);
                    }));
                }
                for task in tasks {
                    task.await.expect("task");
                }
                let total: i32 = seen.borrow().iter().sum();
                tx.send((worker.slot(), total)).expect("test alive");
            }
        })
        .expect("start")
        .join();
    let mut results = vec![recv(&rx, "slot"), recv(&rx, "slot")];
    results.sort();
    assert_eq!(results, vec![(0, 45), (1, 45)]);
    assert_eq!(report.restarts(), 0);
}
