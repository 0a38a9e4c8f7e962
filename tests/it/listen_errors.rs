//! Bad listen addresses are errors that name the address, never panics.

use std::net::{SocketAddr, TcpListener};
use std::sync::mpsc;

use crate::common::{self, recv};
use forkless::{Cluster, Restart};

/// Runs one worker that tries to listen on `addr` and returns the outcome as
/// (Ok(local address) | Err(error text, predicates)).
fn try_listen(addr: String) -> Result<SocketAddr, (String, bool, bool)> {
    let (tx, rx) = mpsc::channel();
    let cluster = Cluster::builder()
        .workers(1)
        .restart(Restart::Never)
        .start(move |worker| {
            let tx = tx.clone();
            let addr = addr.clone();
            async move {
                let outcome = match worker.listen(addr.as_str()).await {
                    Ok(listener) => Ok(listener.local_addr().expect("local addr")),
                    Err(e) => Err((e.to_string(), e.is_addr_in_use(), e.is_invalid_address())),
                };
                tx.send(outcome).expect("test alive");
            }
        })
        .expect("start");
    let outcome = recv(&rx, "the listen outcome");
    cluster.join();
    outcome
}

#[test]
fn an_address_held_by_another_socket_is_refused() {
    let other = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = other.local_addr().expect("addr").to_string();
    let (message, in_use, _) = try_listen(addr.clone()).expect_err("in use");
    assert!(in_use, "{message}");
    assert!(message.contains(&addr), "{message}");
}

#[test]
fn an_address_held_by_another_reuseport_group_is_refused() {
    // What a second instance of the same service would hold.
    use socket2::{Domain, Socket, Type};
    let other = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
    other.set_reuse_port(true).expect("reuseport");
    other
        .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .expect("bind");
    other.listen(16).expect("listen");
    let addr = other
        .local_addr()
        .expect("addr")
        .as_socket()
        .expect("ip")
        .to_string();
    let (message, in_use, _) = try_listen(addr.clone()).expect_err("in use");
    assert!(in_use, "{message}");
    assert!(message.contains(&addr), "{message}");
}

#[test]
fn malformed_addresses_are_refused_with_their_text() {
    for addr in ["127.0.0.1:99999", "no-port-here", "[::1:80", "300.1.1.1:80"] {
        let (message, _, invalid) = try_listen(addr.to_owned()).expect_err(addr);
        assert!(invalid, "{addr}: {message}");
        assert!(message.contains(addr), "{message}");
    }
}

#[test]
fn ipv6_loopback_works() {
    // The tests take `::1` for the IPv6 loopback: a machine without it
    // cannot check this, and says so rather than pass.
    if let Err(e) = TcpListener::bind("[::1]:0") {
        panic!("this machine cannot bind the IPv6 loopback [::1]: {e}");
    }
    let (cluster, rx) = common::start_whoami(Cluster::builder().workers(2), "[::1]:0");
    let addr = recv(&rx, "an address");
    assert_eq!(recv(&rx, "an address"), addr);
    assert!(addr.is_ipv6());
    assert!(common::ask(addr).ends_with(" 0\n"));
    cluster.shutdown();
    cluster.join();
}
