//! A `redis-server` on a loopback port, for the tests (through
//! `common::redis` of `tests/it`) and the store benchmark, which both
//! include this file by its path: it stays here, outside `tests/it`, for
//! `benches/store.rs`.
#![allow(dead_code, unreachable_pub)]

use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a server may take to listen.
const WAIT: Duration = Duration::from_secs(60);

/// Returns true if `redis-server` is on the PATH.
pub fn installed() -> bool {
    Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A `redis-server` of this test process on a loopback port. It goes
/// with this handle, or with the process: a shell between them kills
/// it when its stdin (held here) closes.
pub struct RedisServer {
    port: u16,
    child: Option<Child>,
}

impl RedisServer {
    /// A server on a free port.
    pub fn start() -> RedisServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        RedisServer::start_on(port)
    }

    /// A server on `port` (again, after [`stop`](RedisServer::stop)).
    pub fn start_on(port: u16) -> RedisServer {
        let child = Command::new("sh")
            .args([
                "-c",
                "redis-server \"$@\" & pid=$!; read _; kill $pid; wait $pid",
                "sh",
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("start sh");
        let server = RedisServer {
            port,
            child: Some(child),
        };
        let deadline = Instant::now() + WAIT;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not listen on port {port}: is it installed? \
                 (`apt-get install -y redis-server`, or set FORKLESS_TEST_REDIS to a \
                 running one's URL)"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        server
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Stops the server, and returns once it is gone.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Some(mut stdin) = child.stdin.take() {
                let _ = stdin.write_all(b"stop\n");
            }
            let _ = child.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}
