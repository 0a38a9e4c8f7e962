//! Nothing queued is lost: connections the kernel accepted while a slot's
//! worker was dead wait in the slot's socket for the next generation.

use std::net::TcpStream;
use std::sync::mpsc;
use std::time::Duration;

use crate::common::{self, read_answer, recv, serve_whoami};
use forkless::{Cluster, Exit};

#[test]
fn connections_queued_while_the_slot_is_dead_are_served_by_the_next_generation() {
    const K: usize = 32;
    let (addr_tx, addr_rx) = mpsc::channel();
    let (gone_tx, gone_rx) = mpsc::channel();
    let cluster = Cluster::builder()
        // One worker: every connection goes to its socket.
        .workers(1)
        // Generation 0 fails quickly, so its respawn waits this long: the
        // connections below arrive while no worker runs.
        .throttle_delay(Duration::from_secs(1))
        .start(move |worker| {
            let addr_tx = addr_tx.clone();
            let gone_tx = gone_tx.clone();
            async move {
                // Dropped while unwinding, after the listener declared below.
                let _gone = common::SendOnDrop(gone_tx);
                let listener = worker.listen("127.0.0.1:0").await?;
                if worker.generation() == 0 {
                    addr_tx.send(listener.local_addr()?).expect("test alive");
                    panic!("generation 0 dies with its listener open");
                }
                serve_whoami(&worker, &listener).await
            }
        })
        .expect("start");
    let addr = recv(&addr_rx, "the address");
    recv(&gone_rx, "generation 0 to be gone");

    // The kernel completes these handshakes into the slot's queue, which the
    // master kept open.
    let mut streams: Vec<TcpStream> = (0..K)
        .map(|i| TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {i}: {e}")))
        .collect();
    for (i, stream) in streams.iter_mut().enumerate() {
        let answer = read_answer(stream);
        assert_eq!(answer, "0 1\n", "connection {i} is served by generation 1");
    }

    cluster.shutdown();
    let report = cluster.join();
    let generations = &report.slots[0].generations;
    assert!(matches!(generations[0].exit, Exit::Panicked { .. }));
    assert_eq!(generations[0].restart_delay, Some(Duration::from_secs(1)));
    assert!(generations[0].ready_after.is_some());
    assert_eq!(generations[1].exit, Exit::Normal);
}

#[test]
fn every_slot_of_a_port_zero_address_shares_one_port() {
    let (cluster, rx) = common::start_whoami(Cluster::builder().workers(3), "127.0.0.1:0");
    let addrs: Vec<_> = (0..3).map(|_| recv(&rx, "an address")).collect();
    assert!(addrs.windows(2).all(|w| w[0] == w[1]), "{addrs:?}");
    // Connections spread over the slots; each is answered.
    for _ in 0..30 {
        let answer = common::ask(addrs[0]);
        assert!(answer.ends_with(" 0\n"), "{answer:?}");
    }
    cluster.shutdown();
    cluster.join();
}
