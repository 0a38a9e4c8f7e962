//! No secret leaves the process through a message: the Redis password (in
//! the URL's user part or as a `?pass=` parameter) and the control bearer
//! token appear in no error, log line, `Debug` output, status or metrics.
//!
//! The test runs in a child process: it reads the logs through the global
//! log subscriber, which would see every other test's clusters too.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common;
use forkless::{Cluster, RedisConfig};

const PASSWORD: &str = "pw-Zq81-never-shown";
const UNIX_PASSWORD: &str = "pw-Kx52-never-shown";
const TOKEN: &str = "token-Vb37-never-shown";

/// Every log line of the (child) process.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("lock")).into_owned()
    }
}

fn assert_clean(what: &str, text: &str) {
    for secret in [PASSWORD, UNIX_PASSWORD, TOKEN] {
        assert!(!text.contains(secret), "{what} shows a secret: {text}");
    }
}

/// A loopback port that nothing listens on.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

#[test]
fn no_secret_in_errors_logs_debug_status_or_metrics() {
    if !common::alone_in_a_child(
        module_path!(),
        "no_secret_in_errors_logs_debug_status_or_metrics",
        &[],
    ) {
        return;
    }
    let logs = Logs::default();
    let writer = logs.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .init();

    let store_url = format!("redis://admin:{PASSWORD}@127.0.0.1:{}/", closed_port());
    let bus_url = format!("redis+unix:///nonexistent/forkless-test.sock?db=1&pass={UNIX_PASSWORD}");
    let store = RedisConfig::new(&store_url)
        .timeout(Duration::from_millis(300))
        .connect_timeout(Duration::from_millis(100));
    let bus = RedisConfig::new(&bus_url)
        .timeout(Duration::from_millis(300))
        .connect_timeout(Duration::from_millis(100));
    assert_clean("RedisConfig's Debug", &format!("{store:?} {bus:?}"));

    let dir = common::runtime_dir();
    let builder = Cluster::builder()
        .workers(1)
        .name("secrets")
        .store_backend(store)
        .bus_backend(bus)
        .control_socket(dir.join("secrets.sock"))
        .control_tcp("127.0.0.1:0".parse().expect("addr"), TOKEN);
    assert_clean("Builder's Debug", &format!("{builder:?}"));

    // A bad URL's start-up error.
    let bad = Cluster::builder()
        .store_backend(RedisConfig::new(format!(
            "redis://:{PASSWORD}@db:notaport/"
        )))
        .start(|_worker| async {})
        .expect_err("a bad URL is refused");
    assert_clean("a config error", &format!("{bad} {bad:?}"));

    let cluster = common::idle(builder);
    let store_error =
        common::done(cluster.store().collection("c").get("k")).expect_err("Redis is not there");
    assert!(store_error.is_unavailable(), "{store_error}");
    assert_clean("a store error", &format!("{store_error} {store_error:?}"));
    let bus_error =
        common::done(cluster.bus().publish("topic", "hello")).expect_err("Redis is not there");
    assert_clean("a bus error", &format!("{bus_error} {bus_error:?}"));

    assert_clean("the status", &format!("{:?}", cluster.status()));
    assert_clean("the metrics", &cluster.metrics());
    assert_clean("the cluster's Debug", &format!("{cluster:?}"));

    // The start-up probes log that Redis cannot be reached: wait for both.
    common::wait_until("both warnings logged", || {
        logs.text().matches("cannot reach Redis").count() >= 2
    });
    common::stop(cluster);
    let text = logs.text();
    assert!(
        text.contains("127.0.0.1"),
        "the logs name the store's Redis: {text}"
    );
    assert_clean("the logs", &text);
}
