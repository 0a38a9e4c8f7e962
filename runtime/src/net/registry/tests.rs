//! The listener registry's unit tests: one port for every slot, a queue kept
//! across generations, adoption by survivors, sockets handed over by an
//! upgrade, and the steering marks.

use super::*;

fn localhost() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

#[test]
fn port_zero_is_picked_once_for_every_slot() {
    let mut registry = Registry::new(16, Vec::new());
    let a = registry
        .listen(0, localhost(), "127.0.0.1:0")
        .expect("slot 0")
        .listener;
    let b = registry
        .listen(1, localhost(), "127.0.0.1:0")
        .expect("slot 1")
        .listener;
    let port = a.local_addr().expect("addr").port();
    assert_ne!(port, 0);
    assert_eq!(b.local_addr().expect("addr").port(), port);
    // Asking by the bound address finds the same group.
    let bound = a.local_addr().expect("addr");
    let c = registry
        .listen(2, bound, &bound.to_string())
        .expect("slot 2")
        .listener;
    assert_eq!(c.local_addr().expect("addr"), bound);
}

#[test]
fn a_slot_gets_the_same_queue_back() {
    let mut registry = Registry::new(16, Vec::new());
    let first = registry
        .listen(0, localhost(), "127.0.0.1:0")
        .expect("listen")
        .listener;
    let addr = first.local_addr().expect("addr");
    drop(first); // the worker died
    let _client = std::net::TcpStream::connect(addr).expect("queued by the kernel");
    let second = registry
        .listen(0, localhost(), "127.0.0.1:0")
        .expect("listen")
        .listener;
    second.set_nonblocking(false).expect("blocking");
    let (_conn, peer) = second
        .accept()
        .expect("the queued connection is still there");
    assert!(peer.ip().is_loopback());
    second.set_nonblocking(true).expect("nonblocking again");
}

#[test]
fn a_retired_slots_queue_is_handed_to_a_survivor_and_back() {
    let mut registry = Registry::new(16, Vec::new());
    // Only slot 1 listens yet, so the kernel queues this client there.
    let one = registry
        .listen(1, localhost(), "127.0.0.1:0")
        .expect("slot 1");
    let addr = one.listener.local_addr().expect("addr");
    let _client = std::net::TcpStream::connect(addr).expect("queued on slot 1");
    drop(one);
    let zero = registry.listen(0, addr, &addr.to_string()).expect("slot 0");
    assert!(zero.adopted.borrow().is_empty());

    registry.retire_slot(1, &[0]);
    let adopted = zero.adopted.borrow().clone();
    assert_eq!(adopted.len(), 1, "slot 0 accepts for slot 1");
    adopted[0].set_nonblocking(false).expect("blocking");
    let (_conn, peer) = adopted[0].accept().expect("slot 1's queued connection");
    assert!(peer.ip().is_loopback());
    adopted[0].set_nonblocking(true).expect("nonblocking again");

    registry.restore_slot(1);
    assert!(zero.adopted.borrow().is_empty(), "slot 1 took it back");
    // With no survivor, a retired slot's socket closes.
    registry.retire_slot(0, &[]);
    registry.retire_slot(1, &[]);
    assert!(registry.groups[0].sockets.is_empty());
}

/// The core each slot socket of the first group is steered to.
fn steered(registry: &Registry) -> Vec<(usize, Option<usize>)> {
    let mut out: Vec<_> = registry.groups[0]
        .sockets
        .iter()
        .map(|(slot, socket)| (*slot, super::super::steering::get(socket).expect("get")))
        .collect();
    out.sort_unstable();
    out
}

#[test]
fn each_slots_socket_is_steered_to_its_core_but_a_retired_ones() {
    let mut registry = Registry::new(16, vec![4, 7]);
    let zero = registry.listen(0, localhost(), "127.0.0.1:0").expect("0");
    let addr = zero.listener.local_addr().expect("addr");
    for slot in 1..3 {
        registry
            .listen(slot, addr, &addr.to_string())
            .expect("listen");
    }
    // Slot 2 wraps around to the first core, as the workers are pinned.
    assert_eq!(
        steered(&registry),
        [(0, Some(4)), (1, Some(7)), (2, Some(4))]
    );
    // A retired slot's socket is accepted from on another core: the hash
    // spreads what arrives on its core instead.
    registry.retire_slot(1, &[0, 2]);
    assert_eq!(steered(&registry), [(0, Some(4)), (1, None), (2, Some(4))]);
    registry.restore_slot(1);
    assert_eq!(
        steered(&registry),
        [(0, Some(4)), (1, Some(7)), (2, Some(4))]
    );
    // One that listens late, after its slot retired, is not steered.
    registry.retire_slot(3, &[0]);
    registry.listen(3, addr, &addr.to_string()).expect("late");
    assert_eq!(steered(&registry)[3], (3, None));
}

#[test]
fn across_an_upgrade_the_marks_are_the_last_writers_and_steer_all_puts_them_back() {
    let mut old = Registry::new(16, vec![0, 1]);
    let zero = old.listen(0, localhost(), "127.0.0.1:0").expect("0");
    let addr = zero.listener.local_addr().expect("addr");
    old.listen(1, addr, &addr.to_string()).expect("1");
    assert_eq!(steered(&old), [(0, Some(0)), (1, Some(1))]);
    // The new build does not steer. The sockets it takes over are the
    // old process's own, so they lose its marks, every slot's at once.
    let mut new = Registry::new(16, Vec::new());
    new.take_over(old.hand_over().expect("hand over"), 2);
    new.listen(0, addr, &addr.to_string()).expect("0");
    assert_eq!(steered(&new), [(0, None), (1, None)]);
    assert_eq!(
        steered(&old),
        [(0, None), (1, None)],
        "one socket, one mark"
    );
    // A worker of the old process that listens again during the overlap
    // (a respawn) marks its own slot's socket only.
    old.listen(1, addr, &addr.to_string()).expect("respawn");
    assert_eq!(steered(&new), [(0, None), (1, Some(1))]);
    // Once the old process has handed over, the new one marks them all
    // as it steers; if the upgrade fails, the old one does.
    new.steer_all();
    assert_eq!(steered(&new), [(0, None), (1, None)]);
    old.steer_all();
    assert_eq!(steered(&old), [(0, Some(0)), (1, Some(1))]);
}

#[test]
fn a_slot_the_old_process_had_and_a_grow_brings_back_is_steered_and_its_own() {
    let mut old = Registry::new(16, vec![0, 1]);
    let zero = old.listen(0, localhost(), "127.0.0.1:0").expect("0");
    let addr = zero.listener.local_addr().expect("addr");
    old.listen(1, addr, &addr.to_string()).expect("1");
    // The new build runs 1 worker: slot 1's socket is retired, adopted
    // by slot 0, unmarked.
    let mut new = Registry::new(16, vec![0, 1]);
    new.take_over(old.hand_over().expect("hand over"), 1);
    let new_zero = new.listen(0, addr, &addr.to_string()).expect("0");
    assert_eq!(new_zero.adopted.borrow().len(), 1);
    assert_eq!(steered(&new), [(0, Some(0)), (1, None)]);
    // A grow to 2 restores slot 1 (as the supervisor's resize does for a
    // slot it never ran), which then listens on its own socket, marked.
    new.restore_slot(1);
    let one = new.listen(1, addr, &addr.to_string()).expect("1");
    assert!(new_zero.adopted.borrow().is_empty(), "slot 0 gave it back");
    assert!(one.adopted.borrow().is_empty());
    assert_eq!(steered(&new), [(0, Some(0)), (1, Some(1))]);
}

#[test]
fn a_retired_slot_that_listens_late_is_adopted_at_once() {
    let mut registry = Registry::new(16, Vec::new());
    let zero = registry
        .listen(0, localhost(), "127.0.0.1:0")
        .expect("slot 0");
    let addr = zero.listener.local_addr().expect("addr");
    // Slot 1 retires before its worker got to listen.
    registry.retire_slot(1, &[0]);
    let late = registry
        .listen(1, addr, &addr.to_string())
        .expect("late listen");
    assert!(late.adopted.borrow().is_empty());
    assert_eq!(
        zero.adopted.borrow().len(),
        1,
        "slot 0 accepts for slot 1 at once"
    );
}

#[test]
fn a_foreign_reuseport_socket_is_refused() {
    let foreign = bind(localhost(), 16).expect("foreign socket");
    let addr = local_addr(&foreign).expect("addr");
    let mut registry = Registry::new(16, Vec::new());
    let err = registry
        .listen(0, addr, &addr.to_string())
        .expect_err("must not join another group");
    assert!(err.is_addr_in_use(), "{err}");
    assert!(err.to_string().contains(&addr.to_string()), "{err}");
}

#[test]
fn handed_sockets_nobody_claims_close_and_the_claimed_stay() {
    let (claimed, unclaimed) = (
        bind(localhost(), 16).expect("a"),
        bind(localhost(), 16).expect("b"),
    );
    let (a, b) = (
        local_addr(&claimed).expect("addr"),
        local_addr(&unclaimed).expect("addr"),
    );
    let handed = |socket: &Socket, bound: SocketAddr, slot| Handed {
        requested: bound,
        bound,
        slot,
        socket: socket.try_clone().expect("dup"),
    };
    let mut registry = Registry::new(16, Vec::new());
    // Slot 1's socket of `a` is a retired slot's: the new cluster has
    // one slot.
    let retired = bind(a, 16).expect("slot 1 of a");
    registry.take_over(
        vec![
            handed(&claimed, a, Some(0)),
            handed(&retired, a, Some(1)),
            handed(&unclaimed, b, Some(0)),
        ],
        1,
    );
    drop((claimed, unclaimed, retired));
    let zero = registry.listen(0, a, &a.to_string()).expect("a");
    registry.close_unclaimed();
    assert!(registry.handed.is_empty());
    assert_eq!(
        zero.adopted.borrow().len(),
        1,
        "slot 1's socket of a is drained"
    );
    assert!(
        std::net::TcpStream::connect(b).is_err(),
        "nobody holds b any more: refused"
    );
    assert!(std::net::TcpStream::connect(a).is_ok());
    // A socket handed over for an address listened on later is bound
    // anew.
    let later = registry.listen(0, b, &b.to_string()).expect("b again");
    assert_eq!(later.listener.local_addr().expect("addr"), b);
}

#[test]
fn closed_registry_refuses() {
    let mut registry = Registry::new(16, Vec::new());
    registry.close_all();
    let err = registry
        .listen(0, localhost(), "127.0.0.1:0")
        .expect_err("closed");
    assert!(err.is_stopped());
}
