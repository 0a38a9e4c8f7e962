//! The two_hosts example as two processes on one Redis: one counter, one
//! topic, and requests from one host to the other's slots.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};

use crate::common;

fn start(host: &str, redis: &str, prefix: &str) -> (Child, SocketAddr) {
    common::spawn_listening(
        Command::new(common::example_binary("two_hosts"))
            .args(["--host", host, "--port", "0", "--workers", "2"])
            .args(["--redis", redis, "--prefix", prefix])
            .env("XDG_RUNTIME_DIR", common::runtime_dir())
            .env("RUST_LOG", "warn")
            .stderr(Stdio::piped()),
    )
}

/// A GET over a new connection: the status code and the body.
fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).expect("connect");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .expect("write");
    let answer = common::read_answer(&mut stream);
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("a status line: {answer:?}"));
    let body = answer
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or("")
        .trim()
        .to_owned();
    (status, body)
}

/// GETs `path` until `done` says the answer is the one awaited.
fn get_until(addr: SocketAddr, path: &str, done: impl Fn(u16, &str) -> bool) -> String {
    common::wait_for(&format!("the awaited answer to GET {path}"), || {
        let (status, body) = get(addr, path);
        done(status, &body).then_some(body)
    })
}

#[test]
fn two_hosts_share_a_counter_and_a_topic_and_reach_each_other() {
    let redis = common::redis::shared_url();
    let prefix = common::redis::unique_prefix();
    let (a, a_addr) = start("a", &redis, &prefix);
    let (b, b_addr) = start("b", &redis, &prefix);

    let hits = |addr| {
        let (status, body) = get(addr, "/hits");
        assert_eq!(status, 200, "{body}");
        body.split(' ')
            .nth(1)
            .expect("a count")
            .parse::<u64>()
            .expect("a number")
    };
    assert_eq!(hits(a_addr), 1);
    assert_eq!(hits(b_addr), 2);
    assert_eq!(hits(a_addr), 3);

    // b may not have announced itself on the bus yet.
    let reply = get_until(a_addr, "/ask/b", |status, _| status == 200);
    assert_eq!(reply, "b/0 says hi to a");
    let (status, body) = get(a_addr, "/ask/nobody");
    assert_eq!(status, 404, "{body}");

    // Each host followed the topic before it listened.
    let (status, body) = get(a_addr, "/say/hello");
    assert_eq!(
        (status, body.as_str()),
        (200, "published \"hello\" to 2 hosts")
    );
    get_until(b_addr, "/heard", |_, body| {
        body.lines().any(|l| l == "a: hello")
    });
    get_until(a_addr, "/heard", |_, body| {
        body.lines().any(|l| l == "me: hello")
    });

    common::stop_example(a);
    common::stop_example(b);
}
