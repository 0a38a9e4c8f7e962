//! systemd's notification protocol, checked on a Unix datagram socket given
//! as `NOTIFY_SOCKET`. The test runs in a child process: every cluster of a
//! process with `NOTIFY_SOCKET` and `WATCHDOG_USEC` set notifies, and the
//! other tests' clusters must not.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use crate::common::{self, PATIENCE};
use forkless::{Cluster, Event, Worker};

/// The next datagram that contains `wanted`; skips watchdog pings unless
/// they are what is wanted.
fn expect(socket: &UnixDatagram, wanted: &str) -> String {
    let mut buf = [0u8; 4096];
    loop {
        let n = socket
            .recv(&mut buf)
            .unwrap_or_else(|e| panic!("waiting for {wanted:?}: {e}"));
        let message = String::from_utf8_lossy(&buf[..n]).into_owned();
        if message.contains(wanted) {
            return message;
        }
        assert!(
            message.trim_end() == "WATCHDOG=1",
            "unexpected {message:?} while waiting for {wanted:?}"
        );
    }
}

fn next_event(events: &mut forkless::Events, pick: impl Fn(&Event) -> bool) {
    common::wait_event(events, "the next awaited event", |event| {
        pick(event).then_some(())
    });
}

#[test]
fn ready_reloading_stopping_and_watchdog_pings_only_while_nobody_stalls() {
    let dir = std::env::temp_dir().join(format!("forkless-notify-{}", std::process::id()));
    let path = dir.join("notify.sock");
    let in_child = common::alone_in_a_child(
        module_path!(),
        "ready_reloading_stopping_and_watchdog_pings_only_while_nobody_stalls",
        &[
            ("NOTIFY_SOCKET", path.as_os_str()),
            // A 200 ms watchdog: pings every 100 ms.
            ("WATCHDOG_USEC", "200000".as_ref()),
        ],
    );
    if !in_child {
        let _ = std::fs::remove_dir_all(&dir);
        return;
    }
    // The child: its NOTIFY_SOCKET is the parent's path.
    let path = std::env::var_os("NOTIFY_SOCKET").expect("NOTIFY_SOCKET");
    let dir = std::path::Path::new(&path).parent().expect("its directory");
    std::fs::create_dir_all(dir).expect("temp dir");
    let _ = std::fs::remove_file(&path);
    let socket = UnixDatagram::bind(&path).expect("bind the notify socket");
    socket.set_read_timeout(Some(PATIENCE)).expect("timeout");

    let (tx, rx) = std::sync::mpsc::channel::<tokio::sync::oneshot::Sender<()>>();
    let cluster = Cluster::builder()
        .workers(2)
        .stall_timeout(Duration::from_millis(100))
        .start(move |worker: Worker| {
            let tx = tx.clone();
            async move {
                worker.ready();
                if worker.slot() == 1 && worker.generation() == 0 {
                    let (go, wait) = tokio::sync::oneshot::channel();
                    tx.send(go).expect("test alive");
                    wait.await.ok();
                    // Blocks its loop: a stall.
                    std::thread::sleep(Duration::from_millis(1500));
                }
                worker.shutdown_signal().await;
            }
        })
        .expect("start");
    let go = rx.recv_timeout(PATIENCE).expect("slot 1");
    let ready = expect(&socket, "READY=1");
    assert!(ready.contains("STATUS=2 workers ready"), "{ready:?}");
    expect(&socket, "WATCHDOG=1");

    // While a worker is stalled, no pings.
    let mut events = cluster.events();
    go.send(()).expect("slot 1 alive");
    next_event(&mut events, |e| matches!(e, Event::Stalled { slot: 1, .. }));
    // What was sent before the stall was seen.
    socket.set_nonblocking(true).expect("nonblocking");
    let mut buf = [0u8; 4096];
    while socket.recv(&mut buf).is_ok() {}
    // Let a few ping intervals (100 ms) pass inside the stall, take what
    // came, and only then check that the worker is still stalled: whatever
    // was taken was sent while it was.
    std::thread::sleep(Duration::from_millis(300));
    let mut during = Vec::new();
    while let Ok(n) = socket.recv(&mut buf) {
        during.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    socket.set_nonblocking(false).expect("blocking");
    let still_stalled = cluster.status().workers[1].state == forkless::WorkerState::Stalled;
    if still_stalled {
        assert!(
            during.iter().all(|m| m.trim_end() != "WATCHDOG=1"),
            "no watchdog ping while a worker is stalled: {during:?}"
        );
    } else {
        eprintln!("the stall ended before the check (a slow machine): nothing asserted about it");
    }
    next_event(&mut events, |e| {
        matches!(e, Event::Recovered { slot: 1, .. })
    });
    expect(&socket, "WATCHDOG=1");

    cluster.restart().expect("roll");
    let reloading = expect(&socket, "RELOADING=1");
    assert!(reloading.contains("MONOTONIC_USEC="), "{reloading:?}");
    expect(&socket, "READY=1");

    cluster.shutdown();
    expect(&socket, "STOPPING=1");
    cluster.join();
}
