//! Upgrades at their edges: the TCP control listener moves, sockets and
//! control sockets the new build does not serve on close, a stop before or
//! after the switch, systemd after the switch, a second cluster in the new
//! process, and a new process that says garbage or cannot read the store.
//!
//! The new process is this test binary again, running [`new_process`]
//! (configured by `UPFAULT_*` variables), started through `sh` so that a
//! test can hold it back until a file exists: the shell `exec`s it, so its
//! parent is the old process, as an upgrade's manifest wants.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::common::{self, wait_for, wait_until, PATIENCE};
use forkless::{Builder, Cluster, Event, Worker};

/// The bearer token of the TCP control listeners here.
const TOKEN: &str = "upgrade-faults-token-0123456789";

/// The variable that makes [`new_process`] run a cluster.
const ROLE: &str = "UPFAULT_ROLE";

/// Plays the new build when `UPFAULT_ROLE` is set (and does nothing
/// otherwise): a cluster named `UPFAULT_NAME`, one worker listening on
/// `UPFAULT_LISTEN` that answers each connection with `"{pid} {hits}"`
/// (`hits`: a counter of the store, incremented), a control server on the
/// socket `UPFAULT_CONTROL` (`off`: none) and on `UPFAULT_TCP` if set,
/// under `run`: `SIGTERM` stops it.
#[test]
fn new_process() {
    let Ok(name) = std::env::var(ROLE) else {
        return;
    };
    // A test that fails before it stops this process must not leave it
    // behind: it ends with the thread of the test that started it.
    rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::TERM))
        .expect("PR_SET_PDEATHSIG");
    let var = |key: &str| std::env::var(key).ok();
    let listen: SocketAddr = var("UPFAULT_LISTEN")
        .and_then(|a| a.parse().ok())
        .expect("UPFAULT_LISTEN");
    let mut builder = Cluster::builder()
        .name(name)
        .workers(1)
        .pin_cores(false)
        .shutdown_timeout(Duration::from_secs(5))
        .terminate_timeout(Duration::from_secs(2));
    builder = match var("UPFAULT_CONTROL").as_deref() {
        None | Some("off") => builder.control(false),
        Some(path) => builder.control_socket(path),
    };
    if let Some(tcp) = var("UPFAULT_TCP") {
        builder = builder.control_tcp(tcp.parse().expect("UPFAULT_TCP"), TOKEN);
    }
    builder
        .run(move |worker: Worker| async move {
            let listener = worker.listen(listen).await?;
            let hits = worker.store().collection("upfault");
            while let Some(conn) = listener.accept().await {
                let (mut stream, _) = conn?;
                let n = hits.incr("hits", 1).await?;
                use tokio::io::AsyncWriteExt;
                let _ = stream
                    .write_all(format!("{} {n}", std::process::id()).as_bytes())
                    .await;
            }
            Ok::<(), forkless::Error>(())
        })
        .expect("the new process runs");
}

/// The upgrade command: `sh` waits until `gate` exists, then execs this
/// binary as [`new_process`] with `vars` (`KEY=value`), its output
/// discarded.
fn new_build(gate: &Path, vars: &[String]) -> (String, Vec<String>) {
    let exe = std::env::current_exe().expect("this test binary");
    let script = r#"gate=$1; shift; while [ ! -e "$gate" ]; do sleep 0.02; done; exec env "$@" >/dev/null 2>&1"#;
    let mut args = vec![
        "-c".to_owned(),
        script.to_owned(),
        "sh".to_owned(),
        gate.display().to_string(),
    ];
    args.extend(vars.iter().cloned());
    args.extend([
        exe.display().to_string(),
        "--exact".to_owned(),
        common::test_path(module_path!(), "new_process"),
        "--nocapture".to_owned(),
        "--test-threads=1".to_owned(),
    ]);
    ("sh".to_owned(), args)
}

/// An old cluster named `name`: one worker listening on each of
/// `addresses` that answers `"{pid} old"`, its store's counter at 41.
/// Returns it with the addresses bound.
fn old_cluster(
    builder: Builder,
    addresses: &[SocketAddr],
    command: (String, Vec<String>),
) -> (Cluster, Vec<SocketAddr>) {
    let (tx, rx) = std::sync::mpsc::channel();
    let addresses = addresses.to_vec();
    let cluster = builder
        .workers(1)
        .pin_cores(false)
        .ready_timeout(PATIENCE)
        .terminate_timeout(Duration::from_secs(2))
        .upgrade_command(command.0, command.1)
        .start(move |worker: Worker| {
            let (tx, addresses) = (tx.clone(), addresses.clone());
            async move {
                let mut listeners = Vec::new();
                for addr in addresses {
                    let listener = worker.listen(addr).await?;
                    listeners.push(listener.local_addr()?);
                    let answer = format!("{} old", std::process::id());
                    tokio::task::spawn_local(async move {
                        while let Some(Ok((mut stream, _))) = listener.accept().await {
                            use tokio::io::AsyncWriteExt;
                            let _ = stream.write_all(answer.as_bytes()).await;
                        }
                    });
                }
                let _ = tx.send(listeners);
                worker.shutdown_signal().await;
                Ok::<(), forkless::Error>(())
            }
        })
        .expect("start");
    let bound = common::recv(&rx, "the listening addresses");
    let counter = cluster.store().collection("upfault").blocking();
    assert_eq!(counter.incr("hits", 41).expect("incr"), 41);
    (cluster, bound)
}

/// What answers at `addr`: `"{pid} {hits}"` or `"{pid} old"`.
fn answer_at(addr: SocketAddr) -> String {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(PATIENCE)).expect("timeout");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("answer");
    answer
}

fn localhost() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// A port free now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// A file that exists: the gate of a new build that starts at once.
fn open_gate() -> PathBuf {
    std::env::current_exe().expect("this test binary")
}

/// Asks process `pid` to stop, and waits until it is gone (the upgrade's
/// reaper thread in this process reaps it).
fn stop_new(pid: u32) {
    let id = rustix::process::Pid::from_raw(pid as i32).expect("a pid");
    let _ = rustix::process::kill_process(id, rustix::process::Signal::TERM);
    wait_until(&format!("process {pid} to end"), || !running(pid));
}

/// Whether process `pid` runs (a zombie does not).
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        !stat
            .rsplit_once(')')
            .is_some_and(|(_, s)| s.starts_with(" Z"))
    })
}

/// `GET /status` on the TCP control listener at `addr`: the cluster's name.
fn status_name_over_tcp(addr: SocketAddr) -> Option<String> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(PATIENCE)).ok()?;
    write!(
        stream,
        "GET /status HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    let body = answer.split_once("\r\n\r\n")?.1;
    let status: serde_json::Value = serde_json::from_str(body).ok()?;
    status["name"].as_str().map(str::to_owned)
}

#[test]
fn an_upgrade_hands_the_tcp_control_listener_to_the_new_process() {
    let dir = common::runtime_dir();
    let socket = dir.join("control.sock");
    let tcp = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let vars = [
        format!("{ROLE}=upfault-tcp-new"),
        format!("UPFAULT_LISTEN={}", localhost()),
        format!("UPFAULT_CONTROL={}", socket.display()),
        format!("UPFAULT_TCP={tcp}"),
    ];
    let (cluster, _) = old_cluster(
        Cluster::builder()
            .name("upfault-tcp-old")
            .control_socket(&socket)
            .control_tcp(tcp, TOKEN),
        &[localhost()],
        new_build(&open_gate(), &vars),
    );
    assert_eq!(
        cluster.control_address().and_then(|(_, tcp)| tcp),
        Some(tcp)
    );
    assert_eq!(
        status_name_over_tcp(tcp).as_deref(),
        Some("upfault-tcp-old")
    );
    let pid = cluster.upgrade().expect("an upgrade with control_tcp set");
    cluster.join();
    // The same address, the same listener: the new process answers there
    // (the old one's control thread may take a last connection as it ends).
    wait_for(
        "the new process to answer on the TCP control address",
        || (status_name_over_tcp(tcp)? == "upfault-tcp-new").then_some(()),
    );
    stop_new(pid);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_socket_the_new_build_does_not_listen_on_is_closed_and_refuses() {
    // The new build listens on the old one's first address only.
    let first = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let vars = [
        format!("{ROLE}=upfault-unclaimed-new"),
        format!("UPFAULT_LISTEN={first}"),
    ];
    let (cluster, bound) = old_cluster(
        Cluster::builder()
            .name("upfault-unclaimed-old")
            .control(false),
        &[first, localhost()],
        new_build(&open_gate(), &vars),
    );
    let (kept, dropped) = (bound[0], bound[1]);
    assert!(answer_at(dropped).ends_with(" old"));
    let pid = cluster.upgrade().expect("upgraded");
    cluster.join();
    assert_eq!(answer_at(kept), format!("{pid} 42"), "the store moved too");
    let e = TcpStream::connect(dropped).expect_err("nobody listens there any more");
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e}");
    stop_new(pid);
}

#[test]
fn a_stop_before_the_switch_cancels_the_upgrade_and_waits_for_the_new_process() {
    let dir = common::runtime_dir();
    let gate = dir.join("gate");
    let vars = [
        format!("{ROLE}=upfault-cancel-new"),
        format!("UPFAULT_LISTEN={}", localhost()),
    ];
    let (cluster, bound) = old_cluster(
        Cluster::builder().name("upfault-cancel-old").control(false),
        &[localhost()],
        new_build(&gate, &vars),
    );
    let mut events = cluster.events();
    let upgrade = {
        let cluster = cluster.clone();
        std::thread::spawn(move || cluster.upgrade())
    };
    let pid = common::wait_event(&mut events, "UpgradeStarted", |e| match e {
        Event::UpgradeStarted { pid } => Some(*pid),
        _ => None,
    });
    assert!(running(pid));
    cluster.shutdown();
    cluster.join();
    // The stop cancelled the upgrade and waited for the new process: it is
    // gone before the old cluster's end, and letting it go on now changes
    // nothing.
    assert!(
        !running(pid),
        "the new process {pid} outlived the old cluster"
    );
    std::fs::write(&gate, b"").expect("open the gate");
    let e = upgrade
        .join()
        .expect("the upgrade's thread")
        .expect_err("the cluster stopped before the switch");
    assert!(e.is_upgrade_failed(), "{e:?}");
    assert!(e.to_string().contains("stopping"), "{e}");
    let reason = common::wait_event(&mut events, "UpgradeFailed", |e| match e {
        Event::UpgradeFailed { reason } => Some(reason.clone()),
        _ => None,
    });
    assert!(reason.contains("stopping"), "{reason}");
    // Nobody serves: refused once the wrapper's last `sleep` (a child of the
    // `sh` that was stopped, holding the inherited sockets for at most its
    // 20 ms) is gone too.
    common::wait_until("the old socket to refuse connections", || {
        TcpStream::connect(bound[0]).is_err()
    });
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_stop_after_the_switch_still_hands_the_store_over() {
    let vars = [
        format!("{ROLE}=upfault-late-stop-new"),
        format!("UPFAULT_LISTEN={}", localhost()),
    ];
    let (cluster, bound) = old_cluster(
        Cluster::builder()
            .name("upfault-late-stop-old")
            .control(false),
        &[localhost()],
        new_build(&open_gate(), &vars),
    );
    let pid = cluster.upgrade().expect("upgraded");
    cluster.shutdown();
    cluster.terminate();
    cluster.join();
    assert_eq!(answer_at(bound[0]), format!("{pid} 42"));
    stop_new(pid);
}

#[test]
fn a_new_build_without_a_control_server_closes_the_control_socket() {
    let dir = common::runtime_dir();
    let socket = dir.join("control.sock");
    let vars = [
        format!("{ROLE}=upfault-no-control-new"),
        format!("UPFAULT_LISTEN={}", localhost()),
        "UPFAULT_CONTROL=off".to_owned(),
    ];
    let (cluster, bound) = old_cluster(
        Cluster::builder()
            .name("upfault-no-control-old")
            .control_socket(&socket),
        &[localhost()],
        new_build(&open_gate(), &vars),
    );
    let pid = cluster.upgrade().expect("upgraded");
    cluster.join();
    assert_eq!(answer_at(bound[0]), format!("{pid} 42"));
    // Once the old process's control thread has let its copy go, nobody
    // holds the socket: a client is refused, not left waiting.
    wait_until("the control socket to refuse connections", || {
        refused(&socket)
    });
    stop_new(pid);
    let _ = std::fs::remove_dir_all(dir);
}

/// Whether a connection to the Unix socket at `path` is refused. The
/// connect does not block: a socket whose queue is full says so at once.
fn refused(path: &Path) -> bool {
    let socket =
        socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::STREAM, None).expect("a socket");
    socket.set_nonblocking(true).expect("nonblocking");
    let to = socket2::SockAddr::unix(path).expect("a socket address");
    matches!(socket.connect(&to), Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused)
}

/// The old process's notifications, once it stopped after a switch: no
/// `STOPPING=1` (it is not the main process any more); a cluster stopped
/// without an upgrade says it. Alone in a child process, with
/// `NOTIFY_SOCKET`; the new process is started without it.
#[test]
fn after_the_switch_the_old_process_does_not_tell_systemd_it_stops() {
    let dir = std::env::temp_dir().join(format!("forkless-upfault-notify-{}", std::process::id()));
    let path = dir.join("notify.sock");
    if !common::alone_in_a_child(
        module_path!(),
        "after_the_switch_the_old_process_does_not_tell_systemd_it_stops",
        &[("NOTIFY_SOCKET", path.as_os_str())],
    ) {
        let _ = std::fs::remove_dir_all(&dir);
        return;
    }
    // The parent's path (this child's process id differs).
    let path = PathBuf::from(std::env::var_os("NOTIFY_SOCKET").expect("NOTIFY_SOCKET"));
    let dir = path.parent().expect("its directory").to_owned();
    std::fs::create_dir_all(&dir).expect("temp dir");
    let _ = std::fs::remove_file(&path);
    let socket = std::os::unix::net::UnixDatagram::bind(&path).expect("the notify socket");
    let heard = || {
        socket.set_nonblocking(true).expect("nonblocking");
        let mut all = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = socket.recv(&mut buf) {
            all.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        all
    };
    let vars = [
        "-u".to_owned(),
        "NOTIFY_SOCKET".to_owned(),
        format!("{ROLE}=upfault-notify-new"),
        format!("UPFAULT_LISTEN={}", localhost()),
    ];
    let (cluster, _) = old_cluster(
        Cluster::builder().name("upfault-notify-old").control(false),
        &[localhost()],
        new_build(&open_gate(), &vars),
    );
    let pid = cluster.upgrade().expect("upgraded");
    cluster.join();
    stop_new(pid);
    let messages = heard();
    assert!(
        messages
            .iter()
            .any(|m| m.contains(&format!("MAINPID={pid}"))),
        "{messages:?}"
    );
    assert!(
        !messages.iter().any(|m| m.contains("STOPPING=1")),
        "the old process said it stops after the switch: {messages:?}"
    );
    // The same harness hears a plain stop's STOPPING=1.
    let plain = common::idle(
        Cluster::builder()
            .name("upfault-notify-plain")
            .control(false),
    );
    plain.shutdown();
    plain.join();
    let messages = heard();
    assert!(
        messages.iter().any(|m| m.contains("STOPPING=1")),
        "{messages:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Only the first cluster of a process reads `FORKLESS_UPGRADE`: here it
/// names a descriptor that is not open, so the first start fails, and a
/// second one starts as if the variable were not there. Alone in a child
/// process, whose parent (this process) the manifest names.
#[test]
fn only_the_first_cluster_of_a_process_reads_the_upgrade_manifest() {
    let manifest = format!(
        r#"{{"parent":{},"channel":1000000,"control":null,"sockets":[]}}"#,
        std::process::id()
    );
    if !common::alone_in_a_child(
        module_path!(),
        "only_the_first_cluster_of_a_process_reads_the_upgrade_manifest",
        &[("FORKLESS_UPGRADE", manifest.as_ref())],
    ) {
        return;
    }
    let start = || {
        Cluster::builder()
            .name("upfault-once")
            .workers(1)
            .pin_cores(false)
            .control(false)
            .start(|worker: Worker| async move {
                worker.ready();
                worker.shutdown_signal().await;
            })
    };
    let e = start().expect_err("the manifest names a closed descriptor");
    assert!(e.is_config() && e.to_string().contains("1000000"), "{e}");
    for _ in 0..2 {
        let cluster = start().expect("the manifest is not read again");
        common::stop(cluster);
    }
}

/// A new process that cannot read this process's store (it says so in its
/// ready line), or that says garbage instead, is refused before the switch:
/// stopped, and the old one serves on. The "new process" is `sh` writing on
/// the channel (descriptor 3), then waiting.
#[test]
fn a_new_process_that_cannot_read_the_store_or_says_garbage_is_refused() {
    for (says, why) in [
        (r"printf 'ready 1 snapshots 99\n'", "version 99"),
        (r"printf 'hello\n'", "instead of ready"),
        (r"printf 'ready 12 snapshots 1 x\n'", "unknown fields"),
        (r"printf '\377\376\n'", "instead of ready"),
        ("head -c 100000 /dev/zero", "without a line end"),
    ] {
        let script = format!("{says} >&3; exec sleep 60");
        let (cluster, bound) = old_cluster(
            Cluster::builder().name("upfault-garbage").control(false),
            &[localhost()],
            ("sh".to_owned(), vec!["-c".to_owned(), script]),
        );
        let e = cluster.upgrade().expect_err(says);
        assert!(e.is_upgrade_failed(), "{says}: {e:?}");
        assert!(e.to_string().contains(why), "{says}: {e}");
        assert_eq!(
            answer_at(bound[0]),
            format!("{} old", std::process::id()),
            "{says}: the old process serves on"
        );
        assert!(!cluster.is_stopped());
        common::stop(cluster);
    }
}
