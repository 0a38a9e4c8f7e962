//! The control server: its endpoints, bad input, the TCP listener's token,
//! and a fuzz of what arrives on the socket.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::common::{self, wait_until, PATIENCE};
use forkless::{Cluster, Event, Worker};
use proptest::prelude::*;

fn socket_path(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("forkless-control-{}-{test}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    dir.join("control.sock")
}

fn cluster(path: &Path, builder: forkless::Builder) -> Cluster {
    builder
        .workers(1)
        .control_socket(path)
        .start(|worker: Worker| async move {
            worker.ready();
            worker.shutdown_signal().await;
        })
        .expect("start")
}

/// Sends raw bytes, reads until the server closes (or PATIENCE), returns
/// what came back.
fn raw<S: Read + Write>(mut stream: S, request: &[u8]) -> String {
    let _ = stream.write_all(request);
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

fn unix(path: &Path) -> UnixStream {
    let stream = UnixStream::connect(path).expect("connect");
    stream.set_read_timeout(Some(PATIENCE)).expect("timeout");
    stream
}

/// A request with `Connection: close`, so that the answer ends the stream.
fn request(method: &str, path: &str, body: &str, extra: &str) -> Vec<u8> {
    format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n{extra}\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn status_line(answer: &str) -> &str {
    answer.lines().next().unwrap_or("")
}

fn body(answer: &str) -> &str {
    answer.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}

#[test]
fn endpoints_answer_and_the_socket_is_private() {
    let path = socket_path("endpoints");
    let cluster = cluster(&path, Cluster::builder().name("control-endpoints"));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&path)
        .expect("socket")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "mode {mode:o}");
    assert_eq!(cluster.control_address().map(|a| a.0), Some(path.clone()));
    let mut events = cluster.events();
    common::wait_event(&mut events, "slot 0 ready", |e| {
        matches!(e, Event::WorkerReady { slot: 0, .. }).then_some(())
    });

    let answer = raw(unix(&path), &request("GET", "/status", "", ""));
    assert_eq!(status_line(&answer), "HTTP/1.1 200 OK", "{answer}");
    let status: serde_json::Value = serde_json::from_str(body(&answer)).expect("JSON");
    assert_eq!(status["name"], "control-endpoints");
    assert_eq!(status["size"], 1);
    assert_eq!(status["workers"][0]["state"], "ready");

    let answer = raw(
        unix(&path),
        &request("POST", "/resize", r#"{"workers": "+1"}"#, ""),
    );
    assert_eq!(status_line(&answer), "HTTP/1.1 200 OK", "{answer}");
    assert_eq!(body(&answer), r#"{"from":1,"to":2}"#);
    common::wait_event(&mut events, "slot 1 ready", |e| {
        matches!(e, Event::WorkerReady { slot: 1, .. }).then_some(())
    });
    let answer = raw(
        unix(&path),
        &request("POST", "/resize", r#"{"workers": 1}"#, ""),
    );
    assert_eq!(body(&answer), r#"{"from":2,"to":1}"#, "{answer}");

    let answer = raw(unix(&path), &request("POST", "/restart", "", ""));
    assert_eq!(status_line(&answer), "HTTP/1.1 202 Accepted", "{answer}");
    let seen = common::events_until(&mut events, "the roll's end", |e| {
        matches!(e, Event::RollFinished { .. })
    });
    assert!(
        matches!(
            seen.last(),
            Some(Event::RollFinished {
                completed: true,
                ..
            })
        ),
        "{seen:?}"
    );
    // The retired slot 1's exit is in the metrics below: wait for it if it
    // came after the roll's end.
    let slot_1_exited = |e: &Event| matches!(e, Event::WorkerExited { slot: 1, .. });
    if !seen.iter().any(slot_1_exited) {
        common::wait_event(&mut events, "the retired slot 1's exit", |e| {
            slot_1_exited(e).then_some(())
        });
    }

    let answer = raw(unix(&path), &request("GET", "/metrics", "", ""));
    assert_eq!(status_line(&answer), "HTTP/1.1 200 OK", "{answer}");
    for metric in [
        "forkless_workers 1",
        "forkless_worker_exits_total{slot=\"1\",kind=\"normal\"} 1",
        "forkless_worker_generation{slot=\"0\"} 1",
        "forkless_worker_loop_lag_seconds_count{slot=\"0\"}",
        "forkless_store_operations_total",
        "forkless_bus_messages_total",
        "forkless_process_resident_memory_bytes",
        "forkless_process_cpu_seconds_total",
        "forkless_active_connections",
    ] {
        assert!(answer.contains(metric), "{metric} in\n{answer}");
    }

    // Events stream as JSON lines; the stream ends when the cluster stops.
    let mut stream = unix(&path);
    stream
        .write_all(&request("GET", "/events", "", ""))
        .expect("send");
    let answer = raw(unix(&path), &request("POST", "/shutdown", "", ""));
    assert_eq!(status_line(&answer), "HTTP/1.1 202 Accepted", "{answer}");
    let mut streamed = String::new();
    stream
        .read_to_string(&mut streamed)
        .expect("the event stream");
    assert!(streamed.contains(r#""event":"roll_started""#), "{streamed}");
    assert!(streamed.contains(r#"{"event":"stopped"}"#), "{streamed}");
    cluster.join();
    // The socket file goes with the cluster.
    wait_until("the socket file to go", || !path.exists());
}

#[test]
fn bad_requests_get_4xx_json_errors_and_the_cluster_runs_on() {
    let path = socket_path("bad");
    let cluster = cluster(&path, Cluster::builder().name("control-bad"));
    let cases: [(&[u8], &str); 7] = [
        (&request("GET", "/nowhere", "", ""), "404"),
        (&request("DELETE", "/status", "", ""), "405"),
        (&request("GET", "/resize", "", ""), "405"),
        (&request("POST", "/resize", "{not json", ""), "400"),
        (&request("POST", "/resize", r#"{"workers": 0}"#, ""), "422"),
        (
            &request("POST", "/resize", r#"{"workers": "-5"}"#, ""),
            "422",
        ),
        (&request("POST", "/resize", &"x".repeat(10_000), ""), "413"),
    ];
    for (req, code) in cases {
        let answer = raw(unix(&path), req);
        assert!(
            status_line(&answer).starts_with(&format!("HTTP/1.1 {code}")),
            "{}: {answer}",
            String::from_utf8_lossy(&req[..20])
        );
        let error: serde_json::Value = serde_json::from_str(body(&answer)).expect("a JSON error");
        assert!(
            error["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{answer}"
        );
    }
    // A client that never finishes its headers is cut off.
    let mut slow = unix(&path);
    slow.write_all(b"GET /status HTTP/1.1\r\nHost: x\r\n")
        .expect("send");
    let mut rest = Vec::new();
    let _ = slow.read_to_end(&mut rest);
    assert!(!String::from_utf8_lossy(&rest).contains("200 OK"));
    // Still running, still answering.
    let answer = raw(unix(&path), &request("GET", "/status", "", ""));
    assert_eq!(status_line(&answer), "HTTP/1.1 200 OK", "{answer}");
    assert!(!cluster.is_stopped());
    cluster.shutdown();
    cluster.join();
}

/// Route matching is one table: an unknown path is 404, a known path with
/// another method 405 with `Allow`, and none of them (lookalikes of
/// `/shutdown` included) stops the cluster.
#[test]
fn unknown_routes_are_404_and_never_stop_the_cluster() {
    let path = socket_path("routes");
    let cluster = cluster(&path, Cluster::builder().name("control-routes"));
    for (method, target) in [
        ("GET", "/"),
        ("POST", "/"),
        ("POST", "/nowhere"),
        ("POST", "/shutdown/"),
        ("POST", "//shutdown"),
        ("POST", "/Shutdown"),
        ("POST", "/shutdown/now"),
        ("POST", "/shutdownx"),
        ("DELETE", "/cluster"),
        ("PUT", "/restart/"),
    ] {
        let answer = raw(unix(&path), &request(method, target, "", ""));
        assert!(
            status_line(&answer).starts_with("HTTP/1.1 404"),
            "{method} {target}: {answer}"
        );
        let error: serde_json::Value = serde_json::from_str(body(&answer)).expect("a JSON error");
        assert!(
            error["error"].as_str().is_some_and(|e| e.contains(target)),
            "{answer}"
        );
    }
    for (method, target, allow) in [
        ("GET", "/shutdown", "POST"),
        ("PUT", "/shutdown", "POST"),
        ("DELETE", "/shutdown", "POST"),
        ("GET", "/restart", "POST"),
        ("POST", "/status", "GET"),
        ("POST", "/events", "GET"),
    ] {
        let answer = raw(unix(&path), &request(method, target, "", ""));
        assert!(
            status_line(&answer).starts_with("HTTP/1.1 405"),
            "{method} {target}: {answer}"
        );
        assert!(
            answer
                .to_ascii_lowercase()
                .contains(&format!("\r\nallow: {}\r\n", allow.to_ascii_lowercase())),
            "{answer}"
        );
    }
    assert!(!cluster.is_stopped());
    let answer = raw(unix(&path), &request("GET", "/status", "", ""));
    assert_eq!(status_line(&answer), "HTTP/1.1 200 OK", "{answer}");
    let status: serde_json::Value = serde_json::from_str(body(&answer)).expect("JSON");
    assert_eq!(status["stopping"], false);
    cluster.shutdown();
    cluster.join();
}

#[test]
fn the_tcp_listener_wants_the_token() {
    let path = socket_path("tcp");
    let token = "0123456789abcdef0123";
    let cluster = cluster(
        &path,
        Cluster::builder()
            .name("control-tcp")
            .control_tcp(SocketAddr::from(([127, 0, 0, 1], 0)), token),
    );
    let addr = cluster
        .control_address()
        .and_then(|(_, tcp)| tcp)
        .expect("a TCP address");
    let tcp = || {
        let stream = std::net::TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(PATIENCE)).expect("timeout");
        stream
    };
    let answer = raw(tcp(), &request("GET", "/status", "", ""));
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    assert!(
        answer
            .to_ascii_lowercase()
            .contains("www-authenticate: bearer"),
        "{answer}"
    );
    let answer = raw(
        tcp(),
        &request(
            "GET",
            "/status",
            "",
            "Authorization: Bearer 0123456789abcdef0124\r\n",
        ),
    );
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    let answer = raw(
        tcp(),
        &request(
            "GET",
            "/status",
            "",
            &format!("Authorization: Bearer {token}\r\n"),
        ),
    );
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // The Unix socket needs no token: its mode guards it.
    let answer = raw(unix(&path), &request("GET", "/status", "", ""));
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    cluster.shutdown();
    cluster.join();

    // Never without a real token.
    let e = Cluster::builder()
        .control_tcp(SocketAddr::from(([127, 0, 0, 1], 0)), "short")
        .start(|_w: Worker| async {})
        .unwrap_err();
    assert!(e.is_config() && e.to_string().contains("token"), "{e}");
}

/// Runs in a child process whose `XDG_RUNTIME_DIR` is a directory of its
/// own: the default socket path of every cluster in a process depends on
/// it.
#[test]
fn a_second_cluster_on_a_live_socket_is_refused_and_a_stale_file_is_replaced() {
    let xdg = socket_path("twice").with_file_name("xdg");
    let in_child = common::alone_in_a_child(
        module_path!(),
        "a_second_cluster_on_a_live_socket_is_refused_and_a_stale_file_is_replaced",
        &[("XDG_RUNTIME_DIR", xdg.as_os_str())],
    );
    if !in_child {
        let _ = std::fs::remove_dir_all(xdg.parent().expect("dir"));
        return;
    }
    let path = socket_path("twice");
    let first = cluster(&path, Cluster::builder().name("control-twice"));
    let e = Cluster::builder()
        .control_socket(&path)
        .start(|_w: Worker| async {})
        .unwrap_err();
    assert!(e.to_string().contains("already answers"), "{e}");
    // On the default path, a second cluster of the same name runs on,
    // without a control server.
    let dir = PathBuf::from(std::env::var_os("XDG_RUNTIME_DIR").expect("XDG_RUNTIME_DIR"));
    std::fs::create_dir_all(&dir).expect("dir");
    let default = dir.join("forkless-control-default.sock");
    let busy = std::os::unix::net::UnixListener::bind(&default).expect("a live socket");
    let second = Cluster::builder()
        .name("control-default")
        .control(true)
        .start(|w: Worker| async move { w.shutdown_signal().await })
        .expect("starts anyway");
    assert_eq!(second.control_address(), None);
    second.shutdown();
    second.join();
    drop(busy);
    first.shutdown();
    first.join();
    // A stale file, as a crashed process leaves it.
    drop(std::os::unix::net::UnixListener::bind(&path).expect("stale socket"));
    assert!(path.exists());
    let second = cluster(&path, Cluster::builder().name("control-twice"));
    let answer = raw(unix(&path), &request("GET", "/status", "", ""));
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    second.shutdown();
    second.join();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Whatever arrives on the socket, the server answers 4xx (or closes)
    /// and the cluster runs on.
    #[test]
    fn arbitrary_bytes_never_hurt_the_server(bytes in proptest::collection::vec(any::<u8>(), 0..512),
                                             prefix in prop_oneof![Just(""), Just("GET /status HTTP/1.1\r\n"), Just("POST /resize HTTP/1.1\r\nContent-Length: 20\r\n\r\n")]) {
        static CLUSTER: std::sync::OnceLock<(Cluster, PathBuf)> = std::sync::OnceLock::new();
        let (cluster, path) = CLUSTER.get_or_init(|| {
            let path = socket_path("fuzz");
            (cluster(&path, Cluster::builder().name("control-fuzz")), path)
        });
        let stream = unix(path);
        stream.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
        let mut input = prefix.as_bytes().to_vec();
        input.extend_from_slice(&bytes);
        // Close our side after sending, so the server sees the end.
        let mut s = stream;
        let _ = s.write_all(&input);
        let _ = s.shutdown(std::net::Shutdown::Write);
        let mut answer = Vec::new();
        let _ = s.read_to_end(&mut answer);
        let answer = String::from_utf8_lossy(&answer);
        if let Some(line) = answer.lines().next() {
            prop_assert!(
                line.starts_with("HTTP/1.1 4") || line.starts_with("HTTP/1.1 200") || line.starts_with("HTTP/1.1 202"),
                "{line}"
            );
        }
        prop_assert!(!cluster.is_stopped());
        let status = raw(unix(path), &request("GET", "/status", "", ""));
        prop_assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    }
}
