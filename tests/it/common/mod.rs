//! Helpers shared by the integration tests: a tiny line protocol (each
//! connection is answered with `"{slot} {generation}\n"` and closed), and
//! waits with generous limits.
#![allow(dead_code, unreachable_pub, unused_macros)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc::Receiver;

use forkless::{Listener, Worker};

#[path = "../../support/wait.rs"]
mod wait;
#[allow(unused_imports)]
pub use wait::{wait_for, wait_for_within, wait_until, PATIENCE};

/// A running 1-worker cluster whose worker idles until shutdown: for tests
/// of the store, reached through the cluster's handle.
pub fn idle_cluster() -> forkless::Cluster {
    idle(forkless::Cluster::builder())
}

/// [`idle_cluster`] from `builder`'s settings (its store or bus backend).
pub fn idle(builder: forkless::Builder) -> forkless::Cluster {
    builder
        .workers(1)
        .start(|worker: Worker| async move {
            worker.shutdown_signal().await;
        })
        .expect("start")
}

/// Stops a cluster gracefully and waits for the end.
pub fn stop(cluster: forkless::Cluster) {
    cluster.shutdown();
    cluster.join();
}

/// Waits for an async operation from this (non-async) thread.
pub fn done<T>(f: impl std::future::Future<Output = T>) -> T {
    Op::new(f).wait("an operation")
}

/// The backends the conformance suites run each test against.
#[derive(Clone, Copy, Debug)]
pub enum Kind {
    InProcess,
    #[cfg(feature = "redis")]
    Redis,
}

impl Kind {
    /// The backend, on the shared test Redis with a prefix of its own.
    pub fn backend(self) -> forkless::Backend {
        match self {
            Kind::InProcess => forkless::Backend::InProcess,
            #[cfg(feature = "redis")]
            Kind::Redis => redis::config().into(),
        }
    }
}

/// Runs each named test function, `fn(Kind)`, once per backend: as
/// `<module>::in_process::name` and, with the `redis` feature,
/// `<module>::redis::name`.
macro_rules! conformance_suite {
    ($($test:ident),* $(,)?) => {
        mod in_process {
            $( #[test] fn $test() { super::$test($crate::common::Kind::InProcess) } )*
        }
        #[cfg(feature = "redis")]
        mod redis {
            $( #[test] fn $test() { super::$test($crate::common::Kind::Redis) } )*
        }
    };
}

/// Waits for the first of the cluster's events that `pick` accepts, and
/// returns what it picked; at most [`PATIENCE`] in all, then the test fails
/// naming `what`.
pub fn wait_event<T>(
    events: &mut forkless::Events,
    what: &str,
    mut pick: impl FnMut(&forkless::Event) -> Option<T>,
) -> T {
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match events.recv_timeout(left) {
            Ok(event) => {
                if let Some(found) = pick(&event) {
                    return found;
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                panic!("waited {PATIENCE:?} for {what}")
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                panic!("the events ended before {what}")
            }
        }
    }
}

/// [`wait_event`] for an event `pick` says yes to; returns every event seen
/// up to and including it.
pub fn events_until(
    events: &mut forkless::Events,
    what: &str,
    mut pick: impl FnMut(&forkless::Event) -> bool,
) -> Vec<forkless::Event> {
    let mut seen = Vec::new();
    wait_event(events, what, |event| {
        seen.push(event.clone());
        pick(event).then_some(())
    });
    seen
}

/// Sends `signal` (`"TERM"`, `"HUP"`, ...) to `child` with kill(1).
pub fn signal(child: &std::process::Child, signal: &str) {
    let sent = std::process::Command::new("kill")
        .args([&format!("-{signal}"), &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(sent.success());
}

/// Stops an example with SIGTERM, expects it to exit with success, and
/// returns what it wrote on stderr (which the caller must have piped).
pub fn stop_example(mut child: std::process::Child) -> String {
    signal(&child, "TERM");
    drop(child.stdout.take());
    let output = child.wait_with_output().expect("the example exits");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "{:?}\n{stderr}", output.status);
    stderr
}

/// Answers connections with `"{slot} {generation}\n"` until shutdown.
pub async fn serve_whoami(worker: &Worker, listener: &Listener) -> Result<(), forkless::Error> {
    while let Some(conn) = listener.accept().await {
        let (stream, _) = conn?;
        answer(worker, stream).await?;
    }
    Ok(())
}

/// Starts `builder`'s cluster with workers that listen on `addr` (`host:0`
/// for a port the kernel picks), say the address they listen on, and
/// answer each connection with `"{slot} {generation}\n"`; returns the
/// cluster and where the addresses come, one per worker.
pub fn start_whoami(
    builder: forkless::Builder,
    addr: &'static str,
) -> (forkless::Cluster, Receiver<SocketAddr>) {
    let (tx, rx) = std::sync::mpsc::channel();
    let cluster = builder
        .start(move |worker| {
            let tx = tx.clone();
            async move {
                let listener = worker.listen(addr).await?;
                tx.send(listener.local_addr()?).expect("test alive");
                serve_whoami(&worker, &listener).await
            }
        })
        .expect("start");
    (cluster, rx)
}

/// Answers one connection with `"{slot} {generation}\n"`.
pub async fn answer(worker: &Worker, mut stream: tokio::net::TcpStream) -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt;
    let line = format!("{} {}\n", worker.slot(), worker.generation());
    stream.write_all(line.as_bytes()).await?;
    stream.shutdown().await
}

/// Connects and reads the whole answer; panics on any error.
pub fn ask(addr: SocketAddr) -> String {
    let mut stream = TcpStream::connect(addr).expect("connect");
    read_answer(&mut stream)
}

pub fn read_answer(stream: &mut TcpStream) -> String {
    stream.set_read_timeout(Some(PATIENCE)).expect("timeout");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("read the answer");
    answer
}

/// Sends a line, for tests whose servers read one.
pub fn send_line(stream: &mut TcpStream, line: &str) {
    stream.write_all(line.as_bytes()).expect("write");
}

pub fn recv<T>(rx: &Receiver<T>, what: &str) -> T {
    rx.recv_timeout(PATIENCE)
        .unwrap_or_else(|e| panic!("waiting for {what}: {e}"))
}

/// Waits until `counter` (counted by client threads) has grown by `more`
/// since now; fails, naming `what`, if it stalls for [`PATIENCE`].
pub fn more_counted(counter: &std::sync::atomic::AtomicU64, more: u64, what: &str) {
    use std::sync::atomic::Ordering::Relaxed;
    let target = counter.load(Relaxed) + more;
    wait_until(&format!("the clients' {what} to grow by {more}"), || {
        counter.load(Relaxed) >= target
    });
}

/// Sends `"dropped"` when dropped: tells a test that a worker's future or
/// task is gone (during unwinding, termination, or a normal end).
pub struct SendOnDrop(pub std::sync::mpsc::Sender<&'static str>);

impl Drop for SendOnDrop {
    fn drop(&mut self) {
        let _ = self.0.send("dropped");
    }
}

/// A boxed future that a test polls by hand, to see whether an operation
/// finished at once or waits in line.
pub struct Op<'a, T>(std::pin::Pin<Box<dyn std::future::Future<Output = T> + 'a>>);

impl<'a, T> Op<'a, T> {
    pub fn new(f: impl std::future::Future<Output = T> + 'a) -> Op<'a, T> {
        Op(Box::pin(f))
    }

    /// Polls once, with a waker that does nothing: whoever polls next
    /// ([`Op::wait`], or this again) gets the result.
    pub fn poll(&mut self) -> std::task::Poll<T> {
        self.0.as_mut().poll(&mut std::task::Context::from_waker(
            futures_task::noop_waker_ref(),
        ))
    }

    /// Polls once and expects the operation still waiting.
    pub fn pending(mut self, what: &str) -> Op<'a, T> {
        assert!(
            self.poll().is_pending(),
            "{what}: finished, expected it to wait"
        );
        self
    }

    /// Runs the future to its end on this thread, on a tokio
    /// `current_thread` runtime, for at most [`PATIENCE`].
    pub fn wait(self, what: &str) -> T {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("a runtime for the test thread")
            // The timer is made inside the runtime, which drives it.
            .block_on(async { tokio::time::timeout(PATIENCE, self.0).await })
            .unwrap_or_else(|_| panic!("{what}: still waiting after {PATIENCE:?}"))
    }
}

/// Starts `f` and expects it to finish at once.
pub fn now<T>(f: impl std::future::Future<Output = T>) -> T {
    match Op::new(f).poll() {
        std::task::Poll::Ready(v) => v,
        std::task::Poll::Pending => panic!("expected the operation to finish at once"),
    }
}

/// The name the test harness knows test `test` of module `module` by, for a
/// filter (`--exact`): `control_security::umask_child` for
/// `test_path(module_path!(), "umask_child")` in `control_security`.
/// `module_path!()` starts with this binary's crate name, which test names
/// do not.
pub fn test_path(module: &str, test: &str) -> String {
    match module.split_once("::") {
        Some((_crate, path)) => format!("{path}::{test}"),
        None => test.to_owned(),
    }
}

/// Set in a child that [`alone_in_a_child`] starts: the test it runs.
const CHILD_TEST: &str = "FORKLESS_TEST_CHILD";

/// For a test that needs what is process-wide set its own way (environment
/// variables that every cluster of the process reads, the global log
/// subscriber): the tests of this binary share one process and run at once,
/// so such a test runs in a child process of the binary, alone, with `env`
/// added to its environment.
///
/// In the test process, this runs test `test` of module `module` (its
/// `module_path!()`) in the child, expects it to pass, and returns `false`:
/// the test returns at once. In the child, it returns `true`: the test goes
/// on. The child's output is printed (the harness shows it when the test
/// fails, or with `--nocapture`).
pub fn alone_in_a_child(module: &str, test: &str, env: &[(&str, &std::ffi::OsStr)]) -> bool {
    let name = test_path(module, test);
    if std::env::var_os(CHILD_TEST).is_some_and(|child| child == name.as_str()) {
        return true;
    }
    let exe = std::env::current_exe().expect("this test binary");
    let output = std::process::Command::new(exe)
        .args(["--exact", &name, "--nocapture", "--test-threads=1"])
        .env(CHILD_TEST, &name)
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run the child");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("the child that ran {name}:\n{stdout}\n{stderr}");
    assert!(
        output.status.success() && stdout.contains("test result: ok. 1 passed"),
        "the child that ran {name} failed ({}): see its output above",
        output.status
    );
    false
}

/// Plays systemd's part for an example given as its first argument: a
/// listening socket on fd 3, `LISTEN_FDS=1` and `LISTEN_PID` of the process
/// it becomes; prints the socket's port, then execs the example with
/// `--port <port> --workers 2`.
pub const SYSTEMD_LAUNCHER: &str = r#"
import os, socket, sys
s = socket.socket()
s.bind(("127.0.0.1", 0))
s.listen(128)
port = str(s.getsockname()[1])
print(port, flush=True)
if s.fileno() != 3:
    os.dup2(s.fileno(), 3)
os.set_inheritable(3, True)
os.environ["LISTEN_FDS"] = "1"
os.environ["LISTEN_PID"] = str(os.getpid())
os.execv(sys.argv[1], [sys.argv[1], "--port", port, "--workers", "2"])
"#;

/// `target/<profile>/examples/<name>`, which `cargo test --workspace` builds.
pub fn example_binary(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>");
    let path = dir.join("examples").join(name);
    assert!(
        path.exists(),
        "{} is missing: run the whole suite (`cargo test --workspace`), which builds the examples",
        path.display()
    );
    path
}

/// A fresh directory for a child's control socket
/// (`$XDG_RUNTIME_DIR/forkless-<name>.sock`), so that tests running at once
/// do not meet on one path.
pub fn runtime_dir() -> std::path::PathBuf {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("forkless-test-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("runtime dir");
    dir
}

/// Spawns an example whose first line on stdout is `listening on
/// http://<addr>` and returns it with that address. Its stdout is taken;
/// the command says what becomes of its stderr.
pub fn spawn_listening(
    command: &mut std::process::Command,
) -> (std::process::Child, std::net::SocketAddr) {
    use std::io::BufRead;
    let mut child = command
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start the example");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("the listening line");
    let addr = line
        .trim()
        .strip_prefix("listening on http://")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .parse()
        .expect("an address");
    (child, addr)
}

/// Shared with `benches/store.rs`, which includes the file by its path.
#[path = "../../common/redis_server.rs"]
pub mod redis_server;

/// Redis servers for the tests of the Redis backends (feature `redis`).
#[cfg(feature = "redis")]
pub mod redis {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::OnceLock;

    use forkless::RedisConfig;

    pub use super::redis_server::RedisServer;

    /// The URL of the Redis the tests share: `FORKLESS_TEST_REDIS` (as
    /// `.ci/run` sets it), or a server started for this test process.
    pub fn shared_url() -> String {
        static SHARED: OnceLock<String> = OnceLock::new();
        SHARED
            .get_or_init(|| {
                if let Ok(url) = std::env::var("FORKLESS_TEST_REDIS") {
                    return url;
                }
                let server = RedisServer::start();
                let url = server.url();
                // Lives as long as the test process.
                Box::leak(Box::new(server));
                url
            })
            .clone()
    }

    /// A configuration on the shared Redis with a prefix of its own, so
    /// that tests running at once share nothing.
    pub fn config() -> RedisConfig {
        RedisConfig::new(shared_url()).prefix(unique_prefix())
    }

    /// A key prefix no other test uses.
    pub fn unique_prefix() -> String {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        format!(
            "test-{}-{}-{n}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        )
    }
}
