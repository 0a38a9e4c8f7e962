//! Without `forkless::alloc::Counting` as the global allocator (this
//! binary has none), a worker's memory is unknown, not 0: `None` in the
//! status and no line in the metrics. (`tests/alloc_counting.rs` has it.)

use crate::common;
use forkless::{Cluster, Event};

#[test]
fn memory_is_unknown_without_the_counting_allocator() {
    let cluster = common::idle(Cluster::builder().name("alloc-unknown"));
    let mut events = cluster.events();
    common::wait_event(&mut events, "slot 0 started", |e| {
        matches!(e, Event::WorkerStarted { slot: 0, .. }).then_some(())
    });
    let status = cluster.status();
    assert_eq!(status.workers[0].memory, None, "{status:?}");
    let text = cluster.metrics();
    assert!(!text.contains("forkless_worker_memory_bytes{"), "{text}");
    common::stop(cluster);
}
