//! The README's main job, end to end: the `hello` example as a process,
//! answering, crashing and respawning on request, staying inside its CPU
//! affinity mask, stopping on SIGTERM.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

fn hello_binary() -> PathBuf {
    common::example_binary("hello")
}

use crate::common::{self, runtime_dir, signal};

/// A GET over a fresh connection; returns (status line, body).
fn get(addr: SocketAddr, path: &str) -> (String, String) {
    let mut stream = TcpStream::connect(addr).expect("connect");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .expect("write");
    let response = common::read_answer(&mut stream);
    let (head, body) = response.split_once("\r\n\r\n").expect("a full response");
    let status = head.lines().next().expect("status line").to_owned();
    (status, body.to_owned())
}

/// Starts `hello --port 0` with `args` (under `taskset -c cpus` if given)
/// and returns it with the address it listens on.
fn start_hello(args: &[&str], cpus: Option<&str>) -> (Child, SocketAddr) {
    start_hello_with(args, cpus, "warn")
}

/// `start_hello` with `RUST_LOG=log`.
fn start_hello_logging(args: &[&str], log: &str) -> (Child, SocketAddr) {
    start_hello_with(args, None, log)
}

fn start_hello_with(args: &[&str], cpus: Option<&str>, log: &str) -> (Child, SocketAddr) {
    let mut command = match cpus {
        Some(cpus) => {
            let mut c = Command::new("taskset");
            c.args(["-c", cpus]).arg(hello_binary());
            c
        }
        None => Command::new(hello_binary()),
    };
    common::spawn_listening(
        command
            .args(["--port", "0"])
            .args(args)
            .env("XDG_RUNTIME_DIR", runtime_dir())
            .env("RUST_LOG", log)
            .env_remove("RUST_BACKTRACE")
            .stderr(Stdio::piped()),
    )
}

#[test]
fn hello_serves_crashes_respawns_and_stops_on_sigterm() {
    let (mut child, addr) = start_hello(&["--workers", "1"], None);
    let (status, whoami) = get(addr, "/whoami");
    assert_eq!(status, "HTTP/1.1 200 OK");
    // `slot 0 generation 0 core <core> pid <pid>`: the pid is the process's.
    let (core, pid) = whoami
        .strip_prefix("slot 0 generation 0 core ")
        .and_then(|rest| rest.trim().split_once(" pid "))
        .map(|(core, pid)| (core.to_owned(), pid.to_owned()))
        .unwrap_or_else(|| panic!("{whoami:?}"));
    assert_eq!(pid, child.id().to_string(), "{whoami:?}");

    assert_eq!(
        get(addr, "/"),
        ("HTTP/1.1 200 OK".into(), "Hello, World!".into())
    );
    assert_eq!(get(addr, "/nowhere").0, "HTTP/1.1 404 Not Found");
    assert_eq!(get(addr, "/hits").1, "hits 1\n");
    // One worker asks itself over the bus.
    assert_eq!(get(addr, "/ask").1, "slot 0 asked slot 0: slot 0 says hi\n");
    // Answers, then the worker panics; the next request waits in the slot's
    // queue for generation 1, on the same core.
    assert_eq!(
        get(addr, "/crash"),
        ("HTTP/1.1 200 OK".into(), "slot 0 crashes now\n".into())
    );
    assert_eq!(
        get(addr, "/whoami").1,
        format!("slot 0 generation 1 core {core} pid {pid}\n")
    );
    // The store outlives the worker.
    assert_eq!(get(addr, "/hits").1, "hits 2\n");

    signal(&child, "TERM");
    let stdout = child.stdout.take();
    drop(stdout);
    let output = child.wait_with_output().expect("hello exits");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{:?}\n{stderr}", output.status);
    assert!(
        stderr.contains("slot 0 gen 0 core")
            && stderr.contains("crash requested through GET /crash"),
        "{stderr}"
    );
    assert!(stderr.contains("slot 0 gen 1 core"), "{stderr}");
    assert!(stderr.contains("returned"), "graceful stop: {stderr}");
}

#[test]
fn workers_stay_inside_the_affinity_mask() {
    let cores = core_affinity::get_core_ids().expect("affinity");
    let last = cores.last().expect("a core").id.to_string();
    // Two workers, one allowed core: both are pinned to it.
    let (child, addr) = start_hello(&["--workers", "2"], Some(&last));
    let mut seen = std::collections::HashSet::new();
    // The kernel spreads connections over both slots; ask until both
    // answered.
    common::wait_until("both slots to answer", || {
        let (status, body) = get(addr, "/whoami");
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert!(body.contains(&format!(" core {last} pid ")), "{body}");
        seen.insert(body);
        seen.len() == 2
    });
    signal(&child, "TERM");
    let output = child.wait_with_output().expect("hello exits");
    assert!(output.status.success());
    assert_eq!(seen.len(), 2, "both slots answered: {seen:?}");
}

/// Asks `/whoami` until `done` accepts an answer.
fn whoami_until(addr: SocketAddr, what: &str, mut done: impl FnMut(&str) -> bool) {
    common::wait_until(what, || done(&get(addr, "/whoami").1));
}

#[test]
fn sighup_rolls_and_sigttin_sigttou_resize() {
    let (child, addr) = start_hello_logging(&["--workers", "1"], "info");
    signal(&child, "HUP");
    whoami_until(addr, "generation 1 after SIGHUP", |b| {
        b.starts_with("slot 0 generation 1 ")
    });
    signal(&child, "TTIN");
    whoami_until(addr, "slot 1 after SIGTTIN", |b| b.starts_with("slot 1 "));
    signal(&child, "TTOU");
    // Once slot 1 has retired, slot 0 answers everything, its socket's
    // connections included.
    let mut in_a_row = 0;
    whoami_until(addr, "slot 0 alone after SIGTTOU", |b| {
        in_a_row = if b.starts_with("slot 0 ") {
            in_a_row + 1
        } else {
            0
        };
        in_a_row == 30
    });
    let stderr = common::stop_example(child);
    assert!(stderr.contains("gen 1"), "{stderr}");
    // Each worker logs inside a span that names its slot, generation and core.
    assert!(
        stderr.contains("worker{slot=0 generation=1 core="),
        "{stderr}"
    );
    assert!(
        stderr.contains("worker{slot=1 generation=0 core="),
        "{stderr}"
    );
}

#[test]
fn forkless_variables_configure_the_cluster_and_bad_ones_stop_it() {
    let mut child = Command::new(hello_binary())
        .args(["--port", "0"])
        .env("XDG_RUNTIME_DIR", runtime_dir())
        .env("FORKLESS_WORKERS", "two")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start hello");
    drop(child.stdout.take());
    let output = child.wait_with_output().expect("hello exits");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("FORKLESS_WORKERS") && stderr.contains("\"two\""),
        "{stderr}"
    );

    // A good one overrides the builder: 2 workers where hello asks for 1.
    let (child, addr) = common::spawn_listening(
        Command::new(hello_binary())
            .args(["--port", "0", "--workers", "1"])
            .env("XDG_RUNTIME_DIR", runtime_dir())
            .env("FORKLESS_WORKERS", "2")
            .env("RUST_LOG", "warn")
            .stderr(Stdio::piped()),
    );
    whoami_until(addr, "slot 1", |b| b.starts_with("slot 1 "));
    common::stop_example(child);
}

#[test]
fn a_socket_inherited_from_systemd_is_used() {
    // `.ci/run` installs python3: missing, it is this machine's fault to
    // fix, not a reason to pass without checking.
    if let Err(e) = Command::new("python3").arg("--version").output() {
        panic!("python3 is needed to play systemd's part, and cannot be run: {e}");
    }
    let mut child = Command::new("python3")
        .args([
            "-c",
            common::SYSTEMD_LAUNCHER,
            &hello_binary().display().to_string(),
        ])
        .env("XDG_RUNTIME_DIR", runtime_dir())
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the launcher");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let mut port = String::new();
    stdout.read_line(&mut port).expect("the port");
    let port: u16 = port.trim().parse().expect("a port");
    let mut line = String::new();
    stdout.read_line(&mut line).expect("the listening line");
    assert!(line.contains(&format!(":{port}")), "{line:?}");
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    // Both workers accept from the one inherited socket.
    whoami_until(addr, "slot 0", |b| b.starts_with("slot 0 "));
    whoami_until(addr, "slot 1", |b| b.starts_with("slot 1 "));
    drop(stdout);
    let stderr = common::stop_example(child);
    assert!(stderr.contains("inherited from systemd"), "{stderr}");
}
