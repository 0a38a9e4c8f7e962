//! Upgrades: a new process takes over the listening sockets and the store,
//! gated like a rolling restart; a new process that fails leaves the old one
//! serving.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::{self, PATIENCE};
use forkless::{Cluster, Event, Worker};

/// A one-worker cluster that answers `"{pid}"` on each connection, with
/// `upgrade_command` set to `program args`.
fn answering(program: &str, args: &[&str], ready_timeout: Duration) -> (Cluster, SocketAddr) {
    let (tx, rx) = std::sync::mpsc::channel();
    let cluster = Cluster::builder()
        .workers(1)
        .ready_timeout(ready_timeout)
        .terminate_timeout(Duration::from_secs(2))
        .control(false)
        .upgrade_command(program, args.iter().copied())
        .start(move |worker: Worker| {
            let tx = tx.clone();
            async move {
                let listener = worker.listen("127.0.0.1:0").await?;
                let _ = tx.send(listener.local_addr()?);
                while let Some(conn) = listener.accept().await {
                    let (mut stream, _) = conn?;
                    use tokio::io::AsyncWriteExt;
                    let _ = stream
                        .write_all(std::process::id().to_string().as_bytes())
                        .await;
                }
                Ok::<(), forkless::Error>(())
            }
        })
        .expect("start");
    let addr = common::recv(&rx, "the listening address");
    (cluster, addr)
}

fn pid_at(addr: SocketAddr) -> String {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(PATIENCE)).expect("timeout");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("answer");
    answer
}

#[test]
fn a_new_process_that_exits_at_start_leaves_the_old_one_serving() {
    let (cluster, addr) = answering("false", &[], PATIENCE);
    let mut events = cluster.events();
    let e = cluster.upgrade().expect_err("`false` exits at once");
    assert!(e.is_upgrade_failed(), "{e:?}");
    assert!(e.to_string().contains("exited"), "{e}");
    common::wait_event(&mut events, "UpgradeFailed", |e| match e {
        Event::UpgradeFailed { reason } => Some(reason.clone()),
        _ => None,
    });
    // It serves on, and a second upgrade may be tried.
    assert_eq!(pid_at(addr), std::process::id().to_string());
    assert!(cluster.upgrade().expect_err("again").is_upgrade_failed());
    assert!(!cluster.is_stopped());
    common::stop(cluster);
}

#[test]
fn a_new_process_that_is_never_ready_is_stopped_and_a_second_upgrade_is_refused_meanwhile() {
    let (cluster, addr) = answering("sleep", &["60"], Duration::from_millis(1500));
    let mut events = cluster.events();
    let first = {
        let cluster = cluster.clone();
        std::thread::spawn(move || cluster.upgrade())
    };
    let pid = common::wait_event(&mut events, "UpgradeStarted", |e| match e {
        Event::UpgradeStarted { pid } => Some(*pid),
        _ => None,
    });
    let second = cluster.upgrade().expect_err("one at a time");
    assert!(second.is_busy(), "{second:?}");
    let e = first.join().expect("thread").expect_err("never ready");
    assert!(e.is_upgrade_failed(), "{e:?}");
    assert!(e.to_string().contains("ready_timeout"), "{e}");
    // The new process was stopped, and the old one serves on.
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists()
            || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|s| s.contains(") Z ")),
        "the never-ready process {pid} still runs"
    );
    assert_eq!(pid_at(addr), std::process::id().to_string());
    common::stop(cluster);
}

#[test]
fn a_stopping_cluster_refuses_an_upgrade() {
    let (cluster, _) = answering("false", &[], PATIENCE);
    cluster.shutdown();
    cluster.join();
    assert!(cluster.upgrade().expect_err("stopped").is_stopped());
}

/// `POST /upgrade` on the control socket at `path`; the new process's id.
fn post_upgrade(path: &Path) -> u32 {
    let mut stream = UnixStream::connect(path).expect("connect to the control socket");
    stream.set_read_timeout(Some(PATIENCE)).expect("timeout");
    stream
        .write_all(
            b"POST /upgrade HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
        )
        .expect("write");
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    let value: serde_json::Value = serde_json::from_str(body).expect("JSON");
    value["pid"].as_u64().expect("a pid") as u32
}

/// One GET over a fresh connection; the body, or why there is none.
fn get(addr: SocketAddr, path: &str) -> Result<String, String> {
    let mut stream = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(PATIENCE))
        .map_err(|e| e.to_string())?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("write: {e}"))?;
    let mut answer = String::new();
    stream
        .read_to_string(&mut answer)
        .map_err(|e| format!("read: {e}"))?;
    match answer.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.1 200") => Ok(body.to_owned()),
        _ => Err(format!("answer {answer:?}")),
    }
}

/// Starts `command` (an example, or a launcher that becomes one) with its
/// stdout piped; returns it with the `before` lines it prints first and the
/// address of its `listening on http://` line. Its stdout is then read to
/// the end on a thread: the processes its upgrades start inherit it, and
/// print their first line too.
fn spawn_example(command: &mut Command, before: usize) -> (Child, Vec<String>, SocketAddr) {
    let mut child = command
        .env_remove("RUST_BACKTRACE")
        .env_remove("FORKLESS_TEST_CHILD")
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the example");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let mut lines = Vec::new();
    for _ in 0..before {
        let mut line = String::new();
        stdout.read_line(&mut line).expect("a line");
        lines.push(line.trim().to_owned());
    }
    let mut line = String::new();
    stdout.read_line(&mut line).expect("the listening line");
    let addr = line
        .trim()
        .strip_prefix("listening on http://")
        .unwrap_or_else(|| panic!("unexpected line {line:?}"))
        .parse()
        .expect("an address");
    std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
    (child, lines, addr)
}

/// Asks process `pid` to stop gracefully.
fn sigterm(pid: u32) {
    let pid = rustix::process::Pid::from_raw(pid as i32).expect("a pid");
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).expect("SIGTERM");
}

/// Waits until process `pid` is gone (reaped by whoever is its parent).
fn wait_gone(pid: u32) {
    common::wait_until(&format!("process {pid} to stop"), || {
        !Path::new(&format!("/proc/{pid}")).exists()
    });
}

/// Waits for process `pid` (a child of this one, directly or as the
/// subreaper of its orphans) and returns whether it exited 0.
fn reap(pid: u32) -> bool {
    let pid = rustix::process::Pid::from_raw(pid as i32).expect("a pid");
    common::wait_for(
        &format!("process {pid:?} to exit"),
        || match rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::NOHANG) {
            Ok(Some((_, status))) => Some(status.exit_status() == Some(0)),
            Ok(None) => None,
            Err(e) => panic!("waiting for {pid:?}: {e}"),
        },
    )
}

/// Clients that load a server until [`Load::finish`]: `keep_alive` of them
/// send requests back to back on one connection each, as wrk does
/// ([`crate::http_drain::keep_alive_client`]: a connection closed after a
/// request was sent and before its answer is a failure), and `per_request`
/// open a new connection for each request (a connection refused or reset,
/// or an answer that does not come within [`PATIENCE`], is a failure).
struct Load {
    stop: Arc<AtomicBool>,
    keep_alive: Arc<crate::http_drain::Counts>,
    keep_alive_clients: Vec<std::thread::JoinHandle<()>>,
    per_request: Arc<PerRequest>,
    per_request_clients: Vec<std::thread::JoinHandle<()>>,
}

/// What the clients that connect per request saw.
#[derive(Default)]
struct PerRequest {
    answered: AtomicU64,
    /// Why requests failed (each client stops at its first failure).
    failures: std::sync::Mutex<Vec<String>>,
}

impl Load {
    fn start(addr: SocketAddr, keep_alive: usize, per_request: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let counts = Arc::new(crate::http_drain::Counts::default());
        let keep_alive_clients = (0..keep_alive)
            .map(|_| {
                let (stop, counts) = (stop.clone(), counts.clone());
                std::thread::spawn(move || crate::http_drain::keep_alive_client(addr, stop, counts))
            })
            .collect();
        let seen = Arc::new(PerRequest::default());
        let per_request_clients = (0..per_request)
            .map(|_| {
                let (stop, seen) = (stop.clone(), seen.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        match get(addr, "/") {
                            Ok(_) => {
                                seen.answered.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(why) => {
                                seen.failures
                                    .lock()
                                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                                    .push(why);
                                return;
                            }
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            keep_alive: counts,
            keep_alive_clients,
            per_request: seen,
            per_request_clients,
        }
    }

    /// Fails the test if a request was lost so far.
    fn check(&self) {
        assert_eq!(
            self.keep_alive.failures(),
            0,
            "keep-alive requests lost ({} answered; the clients printed why)",
            self.keep_alive.answered.load(Ordering::Relaxed)
        );
        let failures = self
            .per_request
            .failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        assert!(
            failures.is_empty(),
            "requests on new connections failed after {} answers: {failures:?}",
            self.per_request.answered.load(Ordering::Relaxed)
        );
    }

    fn lost_any(&self) -> bool {
        self.keep_alive.failures() > 0
            || !self
                .per_request
                .failures
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .is_empty()
    }

    /// Waits until clients of each kind have had `more` answers since now,
    /// and fails the test as soon as one loses a request.
    fn more(&self, more: u64) {
        for (counter, what) in [
            (&self.per_request.answered, "answers on new connections"),
            (&self.keep_alive.answered, "keep-alive answers"),
        ] {
            let target = counter.load(Ordering::Relaxed) + more;
            common::wait_until(&format!("the clients' {what} to grow by {more}"), || {
                counter.load(Ordering::Relaxed) >= target || self.lost_any()
            });
            self.check();
        }
    }

    /// Stops the clients, checks that none lost a request, and returns how
    /// many keep-alive answers said `Connection: close` (a drain).
    fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        for client in self.per_request_clients.drain(..) {
            client.join().expect("client");
        }
        for client in self.keep_alive_clients.drain(..) {
            client.join().expect("keep-alive client");
        }
        self.check();
        self.keep_alive.told_to_close.load(Ordering::Relaxed)
    }
}

impl Drop for Load {
    /// Stops the clients, also when the test fails.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Sends SIGTERM to the process it names if the test fails while it lives
/// (an upgrade's new process, a server started for the test), so that a
/// failing test leaves no server running behind it.
struct StopOnPanic(Vec<u32>);

impl Drop for StopOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for &pid in &self.0 {
                if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
                    let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
                }
            }
        }
    }
}

/// The README's deploy, end to end: `hello` with 2 workers, 2 clients that
/// connect per request and 16 keep-alive clients all along, and three
/// upgrades in a row through the control socket, each to a new file put at
/// the program's path. Every request is answered 200; the process that
/// answers `/whoami` is the new one each time, and each old one exits 0; the store's counter goes on
/// without a gap or a repeat. Runs alone in a child process, which becomes
/// the subreaper of hello's orphaned new processes to see them exit.
#[test]
fn hello_upgrades_three_times_under_load_and_loses_nothing() {
    if !common::alone_in_a_child(
        module_path!(),
        "hello_upgrades_three_times_under_load_and_loses_nothing",
        &[],
    ) {
        return;
    }
    rustix::process::set_child_subreaper(Some(rustix::process::getpid())).expect("subreaper");
    let dir = common::runtime_dir();
    // hello runs from a path of the test's, where each round puts a "new
    // build" (a fresh copy: another file at the same path, as a deploy
    // leaves it), so that the upgrade must start the file on disk.
    let program = dir.join("hello");
    let deploy = || {
        let next = dir.join("hello.next");
        std::fs::copy(common::example_binary("hello"), &next).expect("copy hello");
        std::fs::rename(&next, &program).expect("put the new build in place");
    };
    deploy();
    // Reaped by `reap` with waitpid, like the processes that follow it.
    #[allow(clippy::zombie_processes)]
    let (first, _, addr) = spawn_example(
        Command::new(&program)
            .args(["--port", "0", "--workers", "2"])
            .env("XDG_RUNTIME_DIR", &dir)
            .env("RUST_LOG", "warn"),
        0,
    );
    let mut servers = StopOnPanic(vec![first.id()]);
    let control = dir.join("forkless-hello.sock");
    let load = Load::start(addr, 16, 2);
    let mut pids = vec![first.id()];
    let mut hits = 0u64;
    let next_hit = |expected: &mut u64| {
        let body = get(addr, "/hits").expect("/hits");
        *expected += 1;
        assert_eq!(
            body.trim(),
            format!("hits {expected}"),
            "the counter moved on"
        );
    };
    next_hit(&mut hits);
    let whoami = get(addr, "/whoami").expect("/whoami");
    assert!(
        whoami.ends_with(&format!("pid {}\n", first.id())),
        "{whoami:?}"
    );
    for round in 0..3 {
        load.more(200);
        deploy();
        let old = *pids.last().expect("a process");
        let new = post_upgrade(&control);
        servers.0.push(new);
        assert!(
            !pids.contains(&new),
            "round {round}: a new process, not one of {pids:?}"
        );
        let exe = std::fs::read_link(format!("/proc/{new}/exe")).expect("its program");
        assert_eq!(exe, program, "round {round}: the file now at the path runs");
        assert!(reap(old), "round {round}: the old process {old} exits 0");
        // The old process is gone: the new one answers, every time.
        for _ in 0..8 {
            let whoami = get(addr, "/whoami").expect("/whoami");
            assert!(
                whoami.ends_with(&format!("pid {new}\n")),
                "round {round}: {whoami:?} from the new process {new}"
            );
        }
        pids.push(new);
        next_hit(&mut hits);
    }
    load.more(200);
    let told_to_close = load.finish();
    assert!(
        told_to_close > 0,
        "the old processes' drains told keep-alive clients to reconnect"
    );
    let pid = *pids.last().expect("a process");
    sigterm(pid);
    assert!(reap(pid), "the last process exits 0");
    let _ = std::fs::remove_dir_all(dir);
}

/// An old process shrunk from 2 slots to 1 (slot 1's socket adopted by
/// slot 0), whose workers accept nothing: the connections queue in both
/// sockets. It upgrades to `hello --workers 1` on the same port, which
/// answers every queued connection, from its own socket and the retired
/// one's, and finds the old process's counter in the store.
#[test]
fn a_retired_slots_queue_and_the_store_move_to_the_new_process() {
    let dir = common::runtime_dir();
    let hello = common::example_binary("hello");
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
        probe.local_addr().expect("addr").port()
    };
    let xdg = format!("XDG_RUNTIME_DIR={}", dir.display());
    let (hello, port_arg) = (hello.to_string_lossy().into_owned(), port.to_string());
    let (tx, rx) = std::sync::mpsc::channel();
    let cluster = Cluster::builder()
        .workers(2)
        .control(false)
        .upgrade_command(
            "env",
            [
                xdg.as_str(),
                "RUST_LOG=warn",
                hello.as_str(),
                "--port",
                port_arg.as_str(),
                "--workers",
                "1",
            ],
        )
        .start(move |worker: Worker| {
            let tx = tx.clone();
            async move {
                let listener = worker.listen(("127.0.0.1", port)).await?;
                let _ = tx.send(worker.slot());
                // Accepts nothing: what comes stays queued.
                drop(listener);
                worker.shutdown_signal().await;
                Ok::<(), forkless::Error>(())
            }
        })
        .expect("start");
    for _ in 0..2 {
        common::recv(&rx, "a slot listening");
    }
    let counter = cluster.store().collection("hello").blocking();
    assert_eq!(counter.incr("hits", 41).expect("incr"), 41);
    let mut events = cluster.events();
    cluster.resize(1).expect("shrink");
    common::wait_event(&mut events, "slot 1's exit", |e| {
        matches!(e, Event::WorkerExited { slot: 1, .. }).then_some(())
    });
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let queued: Vec<TcpStream> = (0..32)
        .map(|_| {
            let mut stream = TcpStream::connect(addr).expect("queued connection");
            stream.set_read_timeout(Some(PATIENCE)).expect("timeout");
            stream
                .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .expect("request");
            stream
        })
        .collect();

    let pid = cluster.upgrade().expect("upgraded");
    let report = cluster.join();
    assert!(
        report.exits().all(|(_, _, exit)| !exit.is_failure()),
        "{report}"
    );
    for (i, mut stream) in queued.into_iter().enumerate() {
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        assert!(
            answer.starts_with("HTTP/1.1 200") && answer.ends_with("Hello, World!"),
            "queued connection {i}: {answer:?}"
        );
    }
    assert_eq!(get(addr, "/hits").as_deref().map(str::trim), Ok("hits 42"));
    // The new process is this process's child: the cluster's upgrade reaps
    // it when it ends, so here it is enough to see it gone.
    sigterm(pid);
    wait_gone(pid);
    let _ = std::fs::remove_dir_all(dir);
}

/// Under systemd, the old process says `RELOADING=1` when the upgrade
/// starts, and names the new process the main one with `READY=1` once it
/// serves. Alone in a child process, which has `NOTIFY_SOCKET`.
#[test]
fn systemd_hears_reloading_then_the_new_main_pid() {
    let dir = std::env::temp_dir().join(format!("forkless-upgrade-notify-{}", std::process::id()));
    let path = dir.join("notify.sock");
    if !common::alone_in_a_child(
        module_path!(),
        "systemd_hears_reloading_then_the_new_main_pid",
        &[("NOTIFY_SOCKET", path.as_os_str())],
    ) {
        let _ = std::fs::remove_dir_all(&dir);
        return;
    }
    let path = std::env::var_os("NOTIFY_SOCKET").expect("NOTIFY_SOCKET");
    let dir = Path::new(&path).parent().expect("its directory").to_owned();
    std::fs::create_dir_all(&dir).expect("temp dir");
    let _ = std::fs::remove_file(&path);
    let socket = std::os::unix::net::UnixDatagram::bind(&path).expect("bind the notify socket");
    socket.set_read_timeout(Some(PATIENCE)).expect("timeout");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let xdg = format!("XDG_RUNTIME_DIR={}", dir.display());
    let hello = common::example_binary("hello")
        .to_string_lossy()
        .into_owned();
    let port_arg = port.to_string();
    let cluster = Cluster::builder()
        .workers(1)
        .control(false)
        .upgrade_command(
            "env",
            [
                xdg.as_str(),
                "RUST_LOG=warn",
                hello.as_str(),
                "--port",
                port_arg.as_str(),
                "--workers",
                "1",
            ],
        )
        .start(move |worker: Worker| async move {
            let _listener = worker.listen(("127.0.0.1", port)).await?;
            worker.shutdown_signal().await;
            Ok::<(), forkless::Error>(())
        })
        .expect("start");
    // Every message until one has `wanted` (the new process notifies the
    // same socket: its own READY=1 is ignored by systemd until it is main).
    let until = |wanted: &str| -> String {
        let mut buf = [0u8; 4096];
        loop {
            let n = socket
                .recv(&mut buf)
                .unwrap_or_else(|e| panic!("waiting for {wanted:?}: {e}"));
            let message = String::from_utf8_lossy(&buf[..n]).into_owned();
            if message.contains(wanted) {
                return message;
            }
        }
    };
    until("READY=1");
    let pid = cluster.upgrade().expect("upgraded");
    until("RELOADING=1");
    let main = until("MAINPID=");
    assert!(main.contains(&format!("MAINPID={pid}")), "{main:?}");
    assert!(main.contains("READY=1"), "{main:?}");
    cluster.join();
    sigterm(pid);
    wait_gone(pid);
}

/// With the store on Redis there is nothing to move: the new process of
/// `two_hosts` finds the counter where the old one left it. Alone in a
/// child process, the subreaper of the new process.
#[cfg(feature = "redis")]
#[test]
fn with_the_store_on_redis_the_counter_goes_on() {
    let redis = common::redis::shared_url();
    if !common::alone_in_a_child(
        module_path!(),
        "with_the_store_on_redis_the_counter_goes_on",
        &[("FORKLESS_TEST_REDIS", redis.as_ref())],
    ) {
        return;
    }
    rustix::process::set_child_subreaper(Some(rustix::process::getpid())).expect("subreaper");
    let dir = common::runtime_dir();
    let prefix = common::redis::unique_prefix();
    #[allow(clippy::zombie_processes)] // reaped by `reap`
    let (old, _, addr) = spawn_example(
        Command::new(common::example_binary("two_hosts"))
            .args(["--host", "a", "--port", "0", "--workers", "2"])
            .args(["--redis", redis.as_str(), "--prefix", prefix.as_str()])
            .env("XDG_RUNTIME_DIR", &dir)
            .env("RUST_LOG", "warn"),
        0,
    );
    let mut servers = StopOnPanic(vec![old.id()]);
    for n in 1..=2 {
        let hits = get(addr, "/hits").expect("/hits");
        assert!(hits.starts_with(&format!("hits {n} ")), "{hits:?}");
    }
    let new = post_upgrade(&dir.join("forkless-two_hosts.sock"));
    servers.0.push(new);
    assert_ne!(new, old.id());
    assert!(reap(old.id()), "the old process exits 0");
    let hits = get(addr, "/hits").expect("/hits");
    assert!(hits.starts_with("hits 3 "), "the counter went on: {hits:?}");
    sigterm(new);
    assert!(reap(new), "the new process exits 0");
    let _ = std::fs::remove_dir_all(dir);
}

/// A socket systemd passed (socket activation) moves to the new process
/// too: the new process serves on it (it could not bind that address
/// itself: the socket has no `SO_REUSEPORT`). Alone in a child process, the
/// subreaper of the new process.
#[test]
fn a_socket_from_systemd_moves_to_the_new_process() {
    assert!(
        Command::new("python3").arg("--version").output().is_ok(),
        "this test needs python3 to play systemd's part (.ci/run installs it)"
    );
    if !common::alone_in_a_child(
        module_path!(),
        "a_socket_from_systemd_moves_to_the_new_process",
        &[],
    ) {
        return;
    }
    rustix::process::set_child_subreaper(Some(rustix::process::getpid())).expect("subreaper");
    let dir = common::runtime_dir();
    // The launcher prints the port, then hello its listening line.
    #[allow(clippy::zombie_processes)] // reaped by `reap`
    let (old, _, addr) = spawn_example(
        Command::new("python3")
            .args(["-c", common::SYSTEMD_LAUNCHER])
            .arg(common::example_binary("hello"))
            .env("XDG_RUNTIME_DIR", &dir)
            .env("RUST_LOG", "warn"),
        1,
    );
    let mut servers = StopOnPanic(vec![old.id()]);
    let whoami = get(addr, "/whoami").expect("/whoami");
    assert!(
        whoami.ends_with(&format!("pid {}\n", old.id())),
        "{whoami:?}"
    );

    let new = post_upgrade(&dir.join("forkless-hello.sock"));
    servers.0.push(new);
    assert!(reap(old.id()), "the old process exits 0");
    for _ in 0..8 {
        let whoami = get(addr, "/whoami").expect("/whoami");
        assert!(whoami.ends_with(&format!("pid {new}\n")), "{whoami:?}");
    }
    sigterm(new);
    assert!(reap(new), "the new process exits 0");
    let _ = std::fs::remove_dir_all(dir);
}

/// Set in a process that a test's upgrade starts: the test binary again,
/// running the same test as the new build, which reads what to do from the
/// file this names (see [`as_a_new_build`]).
const NEW_BUILD: &str = "FORKLESS_TEST_NEW_BUILD";

/// In a process that [`upgradable`]'s upgrade started, plays the new build
/// that the file `$FORKLESS_TEST_NEW_BUILD` describes, a forkless program
/// under `run` with one worker, and returns `true` (the test then returns):
/// `serves` serves [`serve_http`] until SIGTERM; `panics` has a worker that
/// panics at start, before it listens, until its slot gives up and the
/// process exits with a failure; `never ready` has a worker that never
/// listens (so is never ready) and waits for the stop. Elsewhere returns
/// `false`.
fn as_a_new_build() -> bool {
    let Some(build) = std::env::var_os(NEW_BUILD) else {
        return false;
    };
    let part = std::fs::read_to_string(&build).expect("the new build's part");
    let builder = Cluster::builder().workers(1).control(false);
    match part.as_str() {
        "serves" => {
            builder
                .run(|worker: Worker| serve_http(worker, None))
                .expect("the new build runs");
        }
        "panics" => {
            let report = builder
                .max_restarts(1)
                .run(panics_at_start)
                .expect("the new build runs");
            panic!("the new build's worker gave up, as meant:\n{report}");
        }
        "never ready" => {
            builder
                .run(|worker: Worker| async move { worker.shutdown_signal().await })
                .expect("the new build runs");
        }
        other => panic!("no such new build: {other:?}"),
    }
    true
}

/// A worker body that panics before it listens.
async fn panics_at_start(_: Worker) {
    panic!("the new build panics at start");
}

/// One worker's HTTP server (`forkless::http`, which drains keep-alive
/// connections): `GET /ttl` answers how many keys the store's `ttl`
/// collection holds (which touches none), anything else this process's id.
/// Sends the address it listens on to `tx`, if any.
async fn serve_http(
    worker: Worker,
    tx: Option<std::sync::mpsc::Sender<SocketAddr>>,
) -> Result<(), forkless::Error> {
    use http_body_util::Full;
    use hyper::body::Bytes;
    let listener = worker.listen("127.0.0.1:0").await?;
    if let Some(tx) = tx {
        let _ = tx.send(listener.local_addr()?);
    }
    let ttl = worker.store().collection("ttl");
    forkless::http::serve(
        listener,
        move |_peer| {
            let ttl = ttl.clone();
            hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let ttl = ttl.clone();
                async move {
                    let body = if req.uri().path() == "/ttl" {
                        match ttl.len().await {
                            Ok(n) => n.to_string(),
                            Err(e) => e.to_string(),
                        }
                    } else {
                        std::process::id().to_string()
                    };
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(Bytes::from(
                        body,
                    ))))
                }
            })
        },
        forkless::http::Options::default(),
    )
    .await
}

/// A one-worker cluster in this process serving [`serve_http`], whose
/// upgrade starts this test binary again to run test `test` of this module
/// as the new build: the file `build`, which the test writes before each
/// upgrade, says which ([`as_a_new_build`]).
fn upgradable(test: &str, build: &Path, ready_timeout: Duration) -> (Cluster, SocketAddr) {
    let exe = std::env::current_exe().expect("this test binary");
    let (tx, rx) = std::sync::mpsc::channel();
    let cluster = Cluster::builder()
        .workers(1)
        .ready_timeout(ready_timeout)
        .control(false)
        .upgrade_command(
            "env",
            [
                format!("{NEW_BUILD}={}", build.display()).into(),
                // The panicking one's message is enough.
                "RUST_BACKTRACE=0".into(),
                // The new build's own test harness reports a build that
                // panics as a failed test: into a file beside `build`, not
                // into this run's output. `exec`, so that the new build is
                // still the old process's child.
                "sh".into(),
                "-c".into(),
                format!("exec \"$@\" >>\"${NEW_BUILD}.log\" 2>&1").into(),
                "sh".into(),
                exe.into_os_string(),
                "--exact".into(),
                common::test_path(module_path!(), test).into(),
                "--test-threads=1".into(),
                "-q".into(),
            ],
        )
        .start(move |worker: Worker| serve_http(worker, Some(tx.clone())))
        .expect("start");
    let addr = common::recv(&rx, "the listening address");
    (cluster, addr)
}

/// Stops the new process `pid` that served since the upgrade, a child of
/// this one: the cluster's upgrade reaps it when it ends.
fn stop_new_build(pid: u32) {
    sigterm(pid);
    wait_gone(pid);
}

/// A collection whose keys expire 30 s after their last access: one key
/// set 10 s before an upgrade, one just before it. In the new process both
/// are there; the aged one expires first, alone (the expiry of the two was
/// not started again at the handover), no sooner than 30 s after it was
/// set, and the young one no sooner than 30 s after it was set: each kept
/// the time it had left. Read through `len`, which touches no key.
#[test]
fn keys_keep_the_time_they_have_left_before_they_expire_across_an_upgrade() {
    const EXPIRY: Duration = Duration::from_secs(30);
    const AGE: Duration = Duration::from_secs(10);
    if as_a_new_build() {
        return;
    }
    let dir = common::runtime_dir();
    let build = dir.join("new-build");
    std::fs::write(&build, "serves").expect("write the new build's part");
    let (cluster, addr) = upgradable(
        "keys_keep_the_time_they_have_left_before_they_expire_across_an_upgrade",
        &build,
        PATIENCE,
    );
    let ttl = cluster.store().collection("ttl").blocking();
    ttl.configure(forkless::CollectionOptions {
        expire_keys: Some(EXPIRY),
        ..forkless::CollectionOptions::default()
    })
    .expect("configure");
    let aged_at = Instant::now();
    ttl.set("aged", "a").expect("set");
    common::wait_until("the first key to age", || aged_at.elapsed() >= AGE);
    let young_at = Instant::now();
    ttl.set("young", "y").expect("set");

    let new = cluster.upgrade().expect("upgraded");
    let _server = StopOnPanic(vec![new]);
    cluster.join();
    // Only the new process serves now; its store answers once the old
    // one's has moved.
    let keys = || -> usize {
        let body = get(addr, "/ttl").expect("/ttl");
        body.parse()
            .unwrap_or_else(|_| panic!("a number of keys: {body:?}"))
    };
    assert_eq!(
        keys(),
        2,
        "both keys moved ({:?} after the first was set)",
        aged_at.elapsed()
    );
    let left = common::wait_for("the aged key to expire", || {
        let n = keys();
        (n < 2).then_some(n)
    });
    let aged_for = aged_at.elapsed();
    assert_eq!(
        left, 1,
        "the aged key expired first, alone ({aged_for:?} after it was set): its time was not \
         started again in the new process"
    );
    assert!(
        aged_for >= EXPIRY,
        "the aged key expired {aged_for:?} after it was set, before its {EXPIRY:?}"
    );
    common::wait_until("the young key to expire", || keys() == 0);
    let young_for = young_at.elapsed();
    assert!(
        young_for >= EXPIRY,
        "the young key expired {young_for:?} after it was set, before its {EXPIRY:?}"
    );
    stop_new_build(new);
    let _ = std::fs::remove_dir_all(dir);
}

/// While clients load the old process (16 keep-alive connections and 2
/// clients that connect per request), an upgrade to a new build whose
/// worker panics at start, then one to a new build that is never ready:
/// each fails with the reason, the old process serves on, and no request
/// is lost. The next upgrade, to a new build that serves, succeeds, and the
/// clients go on with the new process, again losing nothing.
#[test]
fn a_new_build_that_panics_or_is_never_ready_loses_no_request_and_the_next_try_succeeds() {
    if as_a_new_build() {
        return;
    }
    let dir = common::runtime_dir();
    let build = dir.join("new-build");
    // Long enough for the new build that serves to start on a busy machine,
    // and what the one that is never ready costs.
    let ready_timeout = Duration::from_secs(15);
    let (cluster, addr) = upgradable(
        "a_new_build_that_panics_or_is_never_ready_loses_no_request_and_the_next_try_succeeds",
        &build,
        ready_timeout,
    );
    let me = std::process::id().to_string();
    let load = Load::start(addr, 16, 2);
    load.more(200);
    for (part, reason) in [
        ("panics", "before it was ready"),
        ("never ready", "not ready within ready_timeout"),
    ] {
        std::fs::write(&build, part).expect("write the new build's part");
        let e = cluster.upgrade().expect_err(part);
        assert!(e.is_upgrade_failed(), "{part}: {e:?}");
        assert!(e.to_string().contains(reason), "{part}: {e}");
        assert!(!cluster.is_stopped(), "{part}");
        load.more(200);
        assert_eq!(
            get(addr, "/").as_deref(),
            Ok(me.as_str()),
            "{part}: the old process serves on"
        );
    }
    std::fs::write(&build, "serves").expect("write the new build's part");
    let new = cluster.upgrade().expect("the next try upgrades");
    let _server = StopOnPanic(vec![new]);
    let report = cluster.join();
    assert!(
        report.exits().all(|(_, _, exit)| !exit.is_failure()),
        "{report}"
    );
    for _ in 0..8 {
        assert_eq!(
            get(addr, "/"),
            Ok(new.to_string()),
            "the new process serves"
        );
    }
    load.more(200);
    assert!(
        load.finish() > 0,
        "the old process's drain told keep-alive clients to reconnect"
    );
    stop_new_build(new);
    let _ = std::fs::remove_dir_all(dir);
}
