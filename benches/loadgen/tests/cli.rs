//! The `loadgen` binary, run for a second or so against small hyper servers
//! on loopback: its JSON, the errors it counts, and its argument checks.
//! No assertion on speed.

use std::net::{SocketAddr, TcpListener};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;

fn loadgen(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(args)
        .output()
        .expect("run loadgen")
}

/// Runs loadgen; it must succeed and print one JSON object.
fn measure(args: &[&str]) -> Value {
    let out = loadgen(args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "loadgen {args:?}: {}\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let json: Value = serde_json::from_str(stdout.trim()).expect("one JSON object");
    for field in [
        "url",
        "mode",
        "connections",
        "threads",
        "cores",
        "duration_s",
        "warmup_s",
        "requests",
        "requests_per_sec",
    ] {
        assert!(json.get(field).is_some(), "no {field} in {json}");
    }
    for field in ["p50", "p99", "p99_9", "max", "mean"] {
        assert!(
            json["latency_ms"].get(field).is_some(),
            "no latency_ms.{field} in {json}"
        );
    }
    for field in ["connect", "read_write", "non_2xx", "timeout"] {
        assert!(
            json["errors"][field].is_u64(),
            "no errors.{field} in {json}"
        );
    }
    json
}

fn n(json: &Value, path: &[&str]) -> u64 {
    let mut v = json;
    for p in path {
        v = &v[*p];
    }
    v.as_u64()
        .unwrap_or_else(|| panic!("{path:?} is not a count in {json}"))
}

/// A hyper server on a thread of its own, answering `status`; after
/// `limit` answers (if any) it stops: listener and connections closed.
fn server(status: StatusCode, limit: Option<usize>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let answered = Arc::new(AtomicUsize::new(0));
        let done = Arc::new(tokio::sync::Notify::new());
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            let accept = async {
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        continue;
                    };
                    let answered = Arc::clone(&answered);
                    let done = Arc::clone(&done);
                    tokio::spawn(async move {
                        let service = service_fn(move |_req| {
                            let count = answered.fetch_add(1, Ordering::SeqCst) + 1;
                            if limit.is_some_and(|limit| count >= limit) {
                                done.notify_one();
                            }
                            // Past the limit, while the runtime is not yet
                            // dropped, no answer: the connection is closed.
                            let over = limit.is_some_and(|limit| count > limit);
                            async move {
                                if over {
                                    return Err(std::io::Error::other("over the limit"));
                                }
                                let mut answer =
                                    Response::new(Full::new(Bytes::from_static(b"ok")));
                                *answer.status_mut() = status;
                                Ok(answer)
                            }
                        });
                        let _ = http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
            };
            tokio::select! {
                _ = accept => {}
                _ = done.notified() => {}
            }
        });
        // Dropping the runtime closes the listener and every connection.
    });
    addr
}

/// A port nothing listens on (bound, then closed).
fn closed_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
}

#[test]
fn measures_a_server_with_keep_alive() {
    let addr = server(StatusCode::OK, None);
    let url = format!("http://{addr}/");
    // Both threads pinned to a core this process may use.
    let core = core_affinity::get_core_ids().expect("cores")[0]
        .id
        .to_string();
    let json = measure(&[
        "-c",
        "4",
        "-t",
        "2",
        "--cores",
        &core,
        "-d",
        "1s",
        "--timeout",
        "60s",
        &url,
    ]);
    assert_eq!(json["mode"], "keep-alive");
    assert_eq!(
        json["cores"],
        serde_json::json!([core.parse::<u64>().unwrap()])
    );
    assert_eq!(json["url"], url.as_str());
    assert_eq!(n(&json, &["connections"]), 4);
    assert_eq!(n(&json, &["threads"]), 2);
    assert!(n(&json, &["requests"]) > 0, "{json}");
    for kind in ["connect", "read_write", "non_2xx", "timeout"] {
        assert_eq!(n(&json, &["errors", kind]), 0, "{json}");
    }
    let l = &json["latency_ms"];
    let ms = |k: &str| {
        l[k].as_f64()
            .unwrap_or_else(|| panic!("latency_ms.{k} in {json}"))
    };
    assert!(ms("p50") <= ms("p99") && ms("p99") <= ms("p99_9") && ms("p99_9") <= ms("max"));
}

#[test]
fn measures_a_server_with_a_connection_per_request() {
    let addr = server(StatusCode::OK, None);
    let json = measure(&[
        "-c",
        "2",
        "-d",
        "1s",
        "--timeout",
        "60s",
        "--new-connection",
        &format!("http://{addr}/path?q=1"),
    ]);
    assert_eq!(json["mode"], "new-connection");
    assert!(n(&json, &["requests"]) > 0, "{json}");
    for kind in ["connect", "read_write", "non_2xx", "timeout"] {
        assert_eq!(n(&json, &["errors", kind]), 0, "{json}");
    }
}

#[test]
fn counts_answers_outside_2xx() {
    let addr = server(StatusCode::SERVICE_UNAVAILABLE, None);
    let json = measure(&[
        "-c",
        "2",
        "-d",
        "1s",
        "--timeout",
        "60s",
        &format!("http://{addr}/"),
    ]);
    let requests = n(&json, &["requests"]);
    assert!(requests > 0, "{json}");
    assert_eq!(n(&json, &["errors", "non_2xx"]), requests, "{json}");
}

#[test]
fn counts_connect_errors_when_no_server_is_there() {
    let addr = closed_port();
    let json = measure(&["-c", "2", "-d", "1s", &format!("http://{addr}/")]);
    assert_eq!(n(&json, &["requests"]), 0, "{json}");
    assert!(n(&json, &["errors", "connect"]) > 0, "{json}");
    assert!(json["latency_ms"]["p99"].is_null(), "{json}");
    assert_eq!(json["requests_per_sec"].as_f64(), Some(0.0));
}

#[test]
fn counts_errors_once_the_server_is_gone() {
    // The server answers 20 requests, then closes everything: the
    // connections break, and connecting again is refused.
    let addr = server(StatusCode::OK, Some(20));
    let json = measure(&[
        "-c",
        "4",
        "-d",
        "3s",
        "--timeout",
        "60s",
        &format!("http://{addr}/"),
    ]);
    let requests = n(&json, &["requests"]);
    assert!(requests > 0 && requests <= 20, "{json}");
    assert!(n(&json, &["errors", "connect"]) > 0, "{json}");
}

#[test]
fn counts_timeouts() {
    // Connections complete in the kernel's backlog; nothing ever answers.
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let json = measure(&[
        "-c",
        "2",
        "-d",
        "1s",
        "--timeout",
        "100ms",
        &format!("http://{addr}/"),
    ]);
    assert_eq!(n(&json, &["requests"]), 0, "{json}");
    assert!(n(&json, &["errors", "timeout"]) > 0, "{json}");
    drop(listener);
}

#[test]
fn refuses_bad_arguments() {
    let url = "http://127.0.0.1:9/";
    let cases: &[(&[&str], &str)] = &[
        (&["-c", "0", url], "--connections must be 1 to"),
        (&["-c", "1000001", url], "--connections must be 1 to"),
        (&["-c", "18446744073709551616", url], "--connections"),
        (&["-c", "-3", url], "-3"),
        (&["-t", "0", url], "--threads must be 1 to"),
        (
            &["-t", "4", "-c", "2", url],
            "must not exceed --connections",
        ),
        (&["-d", "0s", url], "--duration must be more than 0"),
        (&["-d", "0", url], "--duration must be more than 0"),
        (&["-d", "soon", url], "not a duration"),
        (&["-d", "2d", url], "at most"),
        (&["-w", "forever", url], "not a duration"),
        (&["--timeout", "0ms", url], "--timeout must be more than 0"),
        (
            &["--cores", "99999", url],
            "not one this process may run on",
        ),
        (&["--cores", "x", url], "not a core number"),
        (&["--cores", "3-1", url], "upwards"),
        (&["not a url"], "URL"),
        (&["127.0.0.1:8080"], "URL"),
        (&["https://127.0.0.1/"], "https is not supported"),
        (&["http://127.0.0.1:0/"], "port 0"),
        (&[], "<URL>"),
        (&["--frobnicate", url], "--frobnicate"),
    ];
    for (args, expected) in cases {
        let out = loadgen(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "loadgen {args:?}: {stderr}");
        assert!(out.stdout.is_empty(), "loadgen {args:?} printed results");
        assert!(
            stderr.contains(expected),
            "loadgen {args:?}: {expected:?} not in {stderr}"
        );
        assert!(!stderr.contains("panicked"), "loadgen {args:?}: {stderr}");
    }
}
