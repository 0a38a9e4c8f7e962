//! Steering by CPU (`Builder::incoming_cpu`): a connection goes to the worker
//! pinned to the core that received it. On loopback that is the core the
//! connecting thread runs on, so a client thread pinned to a core is served
//! by that core's worker, every time; without steering, the kernel's hash
//! spreads the same client over both.

use std::collections::BTreeMap;

use crate::common::{self, recv, PATIENCE};
use forkless::Cluster;

/// How many connections each client thread makes.
const K: usize = 40;

/// The first two cores this process may run on; the cluster pins slot `i`
/// to the `i`-th. Fails the test, saying why, on a machine with one.
fn two_cores() -> [usize; 2] {
    let cores = core_affinity::get_core_ids().expect("read this process's CPU affinity");
    assert!(
        cores.len() >= 2,
        "this test needs 2 cores in the affinity mask, has {}",
        cores.len()
    );
    [cores[0].id, cores[1].id]
}

/// Starts 2 workers, with or without steering, and returns the cluster and
/// the address they share.
fn cluster(steer: bool) -> (Cluster, std::net::SocketAddr) {
    let builder = Cluster::builder().workers(2).incoming_cpu(steer);
    let (cluster, rx) = common::start_whoami(builder, "127.0.0.1:0");
    // Both workers' addresses, so that no worker sends to a channel gone.
    let addr = recv(&rx, "an address");
    assert_eq!(recv(&rx, "the other address"), addr);
    cluster.wait_ready(PATIENCE).expect("both slots listen");
    (cluster, addr)
}

/// How many of `K` connections, made from a thread pinned to `core`, each
/// slot served.
fn served_from(core: usize, addr: std::net::SocketAddr) -> BTreeMap<usize, usize> {
    std::thread::spawn(move || {
        assert!(
            core_affinity::set_for_current(core_affinity::CoreId { id: core }),
            "pin the client to core {core}"
        );
        let mut served = BTreeMap::new();
        for _ in 0..K {
            let answer = common::ask(addr);
            let slot: usize = answer
                .split_whitespace()
                .next()
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("answer {answer:?}"));
            *served.entry(slot).or_insert(0) += 1;
        }
        served
    })
    .join()
    .expect("client thread")
}

#[test]
fn a_client_on_a_core_is_served_by_that_cores_worker() {
    let cores = two_cores();
    let (cluster, addr) = cluster(true);
    for (slot, core) in cores.into_iter().enumerate() {
        assert_eq!(
            served_from(core, addr),
            BTreeMap::from([(slot, K)]),
            "a client on core {core} is served by slot {slot}, pinned there (Linux {}: \
             reuseport groups steer by SO_INCOMING_CPU from 6.2, or where the fix, kernel \
             commit b261eda84ec1, was backported)",
            std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
        );
    }
    cluster.shutdown();
    cluster.join();
}

#[test]
fn without_steering_the_same_client_is_spread_over_both_workers() {
    // What makes the test above able to fail: the same client, unsteered,
    // lands on both slots (all 40 on one would happen once in 2^39 runs).
    let cores = two_cores();
    let (cluster, addr) = cluster(false);
    let served = served_from(cores[1], addr);
    assert_eq!(served.len(), 2, "both slots serve: {served:?}");
    assert_eq!(served.values().sum::<usize>(), K);
    cluster.shutdown();
    cluster.join();
}
