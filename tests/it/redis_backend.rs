//! What only the Redis backends promise: clusters (hosts) that share one
//! store and one bus, leases that outlive a dead host, prompt errors while
//! Redis is down and reconnection when it is back.
//!
//! Uses `FORKLESS_TEST_REDIS`, or starts `redis-server` on loopback ports.
//! Needs the `redis` feature (`cargo test --all-features`).

use std::io::BufRead;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::common::redis::{config, shared_url, unique_prefix, RedisServer};
use crate::common::{self, done, idle, recv, stop, wait_until, Op, PATIENCE};
use forkless::RedisConfig;
use forkless::{Bytes, Cluster, Worker};

/// A cluster that uses `redis` for its store and its bus, as host `host`.
/// Each worker answers requests with `"{host}/{slot}: {message}"`, drops
/// requests that say "drop", never answers those that say "wait", and
/// passes other messages to `seen` as `(slot, from host, from slot,
/// message)`.
fn host(
    redis: &RedisConfig,
    host: &str,
    seen: mpsc::Sender<(usize, Option<String>, Option<usize>, String)>,
) -> Cluster {
    let name = host.to_owned();
    Cluster::builder()
        .workers(2)
        .request_timeout(Duration::from_millis(300))
        .store_backend(redis.clone().host(host))
        .bus_backend(redis.clone().host(host))
        .start(move |worker: Worker| {
            let (seen, name) = (seen.clone(), name.clone());
            async move {
                let mut inbox = worker.inbox();
                let mut parked = Vec::new();
                while let Some(envelope) = inbox.recv().await {
                    let text = String::from_utf8_lossy(envelope.message()).into_owned();
                    if envelope.is_request() {
                        match text.as_str() {
                            "drop" => drop(envelope),
                            "wait" => parked.push(envelope),
                            _ => {
                                let answer = format!("{name}/{}: {text}", worker.slot());
                                envelope.reply(answer);
                            }
                        }
                    } else {
                        let from_host = envelope.host().map(str::to_owned);
                        let _ = seen.send((worker.slot(), from_host, envelope.from(), text));
                    }
                }
                Ok::<(), forkless::Error>(())
            }
        })
        .expect("start")
}

/// An idle 1-worker cluster with its store and its bus on `redis`.
fn idle_on(redis: RedisConfig) -> Cluster {
    idle(
        Cluster::builder()
            .store_backend(redis.clone())
            .bus_backend(redis),
    )
}

/// Sends until the receiving host is on the bus (it announces itself just
/// after it starts).
fn send_when_up(cluster: &Cluster, host: &str, slot: usize, message: &str) {
    wait_until(&format!("{host}/{slot} on the bus"), || {
        match done(cluster.bus().send_to(host, slot, message.to_owned())) {
            Ok(()) => true,
            Err(e) if e.is_no_such_slot() => false,
            Err(e) => panic!("send to {host}/{slot}: {e}"),
        }
    });
}

#[test]
fn hosts_reach_each_others_slots_by_name_and_share_a_store() {
    let redis = config();
    let (a_tx, a_seen) = mpsc::channel();
    let (b_tx, b_seen) = mpsc::channel();
    let a = host(&redis, "a", a_tx);
    let b = host(&redis, "b", b_tx);

    send_when_up(&a, "b", 1, "hello from a");
    assert_eq!(
        recv(&b_seen, "b's slot 1 to get a's message"),
        (1, Some("a".to_owned()), None, "hello from a".to_owned())
    );
    // In order, per sender.
    for i in 0..20 {
        done(a.bus().send_to("b", 0, format!("m{i}"))).unwrap();
    }
    for i in 0..20 {
        let (slot, _, _, text) = recv(&b_seen, "the stream");
        assert_eq!((slot, text), (0, format!("m{i}")));
    }
    send_when_up(&b, "a", 0, "hello from b");
    assert_eq!(recv(&a_seen, "a's slot 0").1.as_deref(), Some("b"));
    // A host's own name is the in-process path.
    done(a.bus().send_to("a", 1, "to myself")).unwrap();
    assert_eq!(
        recv(&a_seen, "a's slot 1"),
        (1, None, None, "to myself".to_owned())
    );

    let reply = done(a.bus().request_to("b", 1, "ping")).unwrap();
    assert_eq!(reply, Bytes::from("b/1: ping"));
    let e = done(a.bus().request_to("b", 0, "drop")).unwrap_err();
    assert!(e.is_no_reply(), "{e:?}");
    let e = done(a.bus().request_to("b", 0, "wait")).unwrap_err();
    assert!(e.is_timeout(), "{e:?}");

    let e = done(a.bus().send_to("nobody", 0, "x")).unwrap_err();
    assert!(
        e.is_no_such_slot() && e.to_string().contains("nobody"),
        "{e}"
    );
    let e = done(a.bus().send_to("b", 7, "x")).unwrap_err();
    assert!(e.is_no_such_slot() && e.to_string().contains("0..2"), "{e}");

    // One store: a counter and a lock, across hosts.
    let on_a = a.store().collection("shared").blocking();
    let on_b = b.store().collection("shared").blocking();
    assert_eq!(on_a.incr("hits", 1).unwrap(), 1);
    assert_eq!(on_b.incr("hits", 1).unwrap(), 2);
    let lock = on_a.acquire("k").unwrap();
    assert!(on_b.try_acquire("k").unwrap().is_none());
    let b_async = b.store().collection("shared");
    let mut waiting = Op::new(b_async.acquire("k"));
    assert!(waiting.poll().is_pending());
    let mut lock = lock;
    lock.set("from a");
    lock.release_blocking().unwrap();
    let got = waiting.wait("b to get the lock a released");
    assert_eq!(got.unwrap().get(), Some(Bytes::from("from a")));
    stop(a);
    stop(b);
}

#[test]
fn topics_are_shared_by_hosts() {
    let redis = config();
    let (tx, _seen) = mpsc::channel();
    let a = host(&redis, "a", tx.clone());
    let b = host(&redis, "b", tx);
    let mut on_a = a.bus().subscribe("news").unwrap();
    let mut on_b = b.bus().subscribe("news").unwrap();
    done(on_a.confirmed()).unwrap();
    done(on_b.confirmed()).unwrap();
    assert_eq!(
        done(a.bus().publish("news", "first")).unwrap(),
        2,
        "two hosts"
    );
    let got = done(on_b.recv()).unwrap();
    assert_eq!(
        (got.host(), got.topic(), got.message()),
        (Some("a"), Some("news"), &Bytes::from("first"))
    );
    let got = done(on_a.recv()).unwrap();
    assert_eq!((got.host(), got.message()), (None, &Bytes::from("first")));

    // In order, each once.
    for i in 0..20 {
        done(b.bus().publish("news", format!("n{i}"))).unwrap();
    }
    for sub in [&mut on_a, &mut on_b] {
        for i in 0..20 {
            assert_eq!(
                done(sub.recv()).unwrap().message(),
                &Bytes::from(format!("n{i}"))
            );
        }
    }
    drop(on_b);
    wait_until("b to unsubscribe on Redis", || {
        done(a.bus().publish("news", "after b left")).unwrap() == 1
    });
    stop(a);
    stop(b);
}

#[test]
fn a_lock_is_renewed_while_its_holder_lives() {
    let prefix = unique_prefix();
    let redis = RedisConfig::new(shared_url())
        .prefix(&prefix)
        .lock_lease(Duration::from_millis(300));
    let cluster = idle(Cluster::builder().store_backend(redis));
    let c = cluster.store().collection("renew").blocking();
    let lock = c.acquire("k").unwrap();
    // The lock's key in Redis: its time to live goes back up when renewed.
    let key = format!("{prefix}:s:5:renew:l:k");
    let client = redis::Client::open(shared_url()).unwrap();
    let mut conn = client.get_connection().unwrap();
    let pttl =
        |conn: &mut redis::Connection| -> i64 { redis::cmd("PTTL").arg(&key).query(conn).unwrap() };
    let first = pttl(&mut conn);
    assert!(first > 0 && first <= 300, "the lease is set: {first}");
    let mut last = first;
    wait_until("the lease to be renewed", || {
        let now = pttl(&mut conn);
        assert!(now > 0, "the lock expired while held: {now}");
        let renewed = now > last;
        last = now;
        renewed
    });
    lock.release_blocking().unwrap();
    assert_eq!(pttl(&mut conn), -2, "released: the key is gone");
    stop(cluster);
}

#[test]
fn a_lock_whose_host_dies_is_freed_by_its_lease() {
    // This test is also the dying host: run again as a child, it takes the
    // lock and waits to be killed.
    if let Ok(prefix) = std::env::var("FORKLESS_TEST_LOCK_HOLDER") {
        let redis = RedisConfig::new(shared_url())
            .prefix(prefix)
            .lock_lease(Duration::from_millis(500));
        let cluster = idle(Cluster::builder().store_backend(redis));
        let lock = cluster.store().collection("dies").blocking().acquire("k");
        let _lock = lock.unwrap();
        println!("holding");
        loop {
            std::thread::park();
        }
    }
    let prefix = unique_prefix();
    let redis = RedisConfig::new(shared_url()).prefix(&prefix);
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            &common::test_path(
                module_path!(),
                "a_lock_whose_host_dies_is_freed_by_its_lease",
            ),
            "--nocapture",
        ])
        .env("FORKLESS_TEST_LOCK_HOLDER", &prefix)
        .env("FORKLESS_TEST_REDIS", shared_url())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    loop {
        let line = lines.next().expect("the child to hold the lock").unwrap();
        if line.trim() == "holding" {
            break;
        }
    }
    let cluster = idle(Cluster::builder().store_backend(redis));
    let c = cluster.store().collection("dies").blocking();
    assert!(c.try_acquire("k").unwrap().is_none(), "the child holds it");
    child.kill().unwrap(); // SIGKILL: no clean-up runs.
    child.wait().unwrap();
    let lock = c.acquire_timeout("k", PATIENCE);
    assert!(
        lock.is_ok(),
        "the lease never freed the lock: {:?}",
        lock.map(drop)
    );
    drop(lock);
    stop(cluster);
}

#[test]
fn while_redis_is_down_calls_fail_promptly_and_work_again_when_it_is_back() {
    let mut server = RedisServer::start();
    let port = server.port();
    let redis = RedisConfig::new(server.url())
        .prefix("down")
        .host("h")
        .timeout(Duration::from_millis(300))
        .connect_timeout(Duration::from_millis(200));
    let cluster = idle_on(redis);
    let c = cluster.store().collection("c").blocking();
    c.set("k", "v").unwrap();

    server.stop();
    let e = c.get("k").unwrap_err();
    assert!(e.is_unavailable(), "{e:?}");
    assert!(
        e.to_string().contains(&port.to_string()),
        "names Redis: {e}"
    );
    assert!(c.acquire("k").unwrap_err().is_unavailable());
    assert!(c.len().unwrap_err().is_unavailable());
    let e = done(cluster.bus().publish("t", "x")).unwrap_err();
    assert!(e.is_unavailable(), "{e:?}");
    let e = done(cluster.bus().send_to("other", 0, "x")).unwrap_err();
    assert!(e.is_unavailable(), "{e:?}");
    let mut sub = cluster.bus().subscribe("t").unwrap();
    assert!(done(sub.confirmed()).unwrap_err().is_unavailable());
    // Local messages do not need Redis.
    done(cluster.bus().send(0, "local")).unwrap();
    // The status and the metrics say so.
    let backends = cluster.status().backends;
    assert_eq!(backends.len(), 2, "{backends:?}");
    assert!(
        backends.iter().all(|b| !b.reachable && b.failures > 0),
        "{backends:?}"
    );
    let metrics = cluster.metrics();
    for backend in ["store", "bus"] {
        assert_eq!(
            metric(&metrics, "forkless_backend_up", backend),
            0,
            "{metrics}"
        );
        assert!(metric(&metrics, "forkless_backend_failures_total", backend) > 0);
    }

    let _server = RedisServer::start_on(port);
    wait_until("the store to reconnect", || match c.set("k", "again") {
        Ok(()) => true,
        Err(e) => {
            assert!(e.is_unavailable(), "{e:?}");
            false
        }
    });
    assert_eq!(c.get("k").unwrap(), Some(Bytes::from("again")));
    assert_eq!(
        metric(&cluster.metrics(), "forkless_backend_up", "store"),
        1
    );
    // The subscription made while Redis was away takes effect: publish
    // reaches it once the bus has subscribed again.
    wait_until("the topic to be subscribed again", || {
        done(cluster.bus().publish("t", "back")).unwrap_or(0) != 0
    });
    assert_eq!(done(sub.recv()).unwrap().message(), &Bytes::from("back"));
    stop(cluster);
}

/// A metric's value for one backend, from the text format.
fn metric(text: &str, name: &str, backend: &str) -> u64 {
    let prefix = format!("{name}{{backend=\"{backend}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {prefix} in:\n{text}"))
}

#[test]
fn a_cluster_starts_while_redis_is_down() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let redis = RedisConfig::new(format!("redis://127.0.0.1:{port}/"))
        .timeout(Duration::from_millis(200))
        .connect_timeout(Duration::from_millis(100));
    let cluster = idle_on(redis);
    let e = cluster
        .store()
        .collection("c")
        .blocking()
        .get("k")
        .unwrap_err();
    assert!(e.is_unavailable(), "{e:?}");
    stop(cluster);
}

#[test]
fn bad_redis_settings_are_refused_at_start() {
    let e = Cluster::builder()
        .store_backend(RedisConfig::new("http://nope"))
        .start(|w: Worker| async move {
            w.shutdown_signal().await;
        })
        .unwrap_err();
    assert!(
        e.is_config() && e.to_string().contains("http://nope"),
        "{e}"
    );
    let e = Cluster::builder()
        .bus_backend(RedisConfig::new("redis://127.0.0.1/").lock_lease(Duration::ZERO))
        .start(|w: Worker| async move {
            w.shutdown_signal().await;
        })
        .unwrap_err();
    assert!(e.is_config(), "{e}");
}

#[test]
fn messages_a_host_did_not_take_wait_for_its_next_start() {
    let redis = config();
    let (a_tx, _a_seen) = mpsc::channel();
    let a = host(&redis, "a", a_tx);
    // b's worker holds its inbox and never reads it: b takes at most its
    // inbox's capacity (2) off its list, plus one it waits to deliver.
    let (up_tx, up_rx) = mpsc::channel();
    let b = Cluster::builder()
        .workers(1)
        .inbox_capacity(2)
        .bus_backend(redis.clone().host("b"))
        .start(move |worker: Worker| {
            let up_tx = up_tx.clone();
            async move {
                let _inbox = worker.inbox();
                up_tx.send(()).unwrap();
                worker.shutdown_signal().await;
            }
        })
        .unwrap();
    recv(&up_rx, "b's worker");
    send_when_up(&a, "b", 0, "m0");
    for i in 1..10 {
        done(a.bus().send_to("b", 0, format!("m{i}"))).unwrap();
    }
    stop(b);

    let (b_tx, b_seen) = mpsc::channel();
    let b = host(&redis, "b", b_tx);
    let (_, from, _, first) = recv(&b_seen, "the first message left for b");
    assert_eq!(from.as_deref(), Some("a"));
    let first: usize = first.strip_prefix('m').unwrap().parse().unwrap();
    assert!(
        first <= 3,
        "more were lost than b could have taken: m{first}"
    );
    for i in first + 1..10 {
        let (_, _, _, text) = recv(&b_seen, "the rest, in order");
        assert_eq!(text, format!("m{i}"));
    }
    stop(a);
    stop(b);
}

/// A TCP proxy to Redis that can swallow, from a moment on, every answer
/// Redis sends on the connections open at that moment (a starved or broken
/// link whose replies never arrive), while newer connections work.
struct Blackhole {
    addr: std::net::SocketAddr,
    /// Connections with an id below this lose what Redis sends them.
    swallow_below: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    next: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Blackhole {
    fn to(redis_url: &str) -> Blackhole {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::Arc;
        let target: String = redis_url
            .trim_start_matches("redis://")
            .trim_end_matches('/')
            .to_owned();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let addr = listener.local_addr().expect("the proxy's address");
        let swallow_below = Arc::new(AtomicUsize::new(0));
        let next = Arc::new(AtomicUsize::new(0));
        let (below, counter) = (swallow_below.clone(), next.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let Ok(server) = std::net::TcpStream::connect(&target) else {
                    continue;
                };
                let id = counter.fetch_add(1, Ordering::SeqCst);
                let (mut c_read, mut s_write) = (
                    client.try_clone().expect("clone"),
                    server.try_clone().expect("clone"),
                );
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut c_read, &mut s_write);
                    let _ = s_write.shutdown(std::net::Shutdown::Both);
                });
                let (mut s_read, mut c_write, below) = (server, client, below.clone());
                std::thread::spawn(move || {
                    use std::io::{Read, Write};
                    let mut buf = [0u8; 16384];
                    loop {
                        let n = match s_read.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        if id < below.load(Ordering::SeqCst) {
                            continue;
                        }
                        if c_write.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = c_write.shutdown(std::net::Shutdown::Both);
                });
            }
        });
        Blackhole {
            addr,
            swallow_below,
            next,
        }
    }

    fn url(&self) -> String {
        format!("redis://{}/", self.addr)
    }

    /// From now on, what Redis answers on the connections open now is lost.
    fn swallow_open_connections(&self) {
        use std::sync::atomic::Ordering;
        self.swallow_below
            .store(self.next.load(Ordering::SeqCst), Ordering::SeqCst);
    }
}

/// Host `b` on `prefix`, its bus through a [`Blackhole`] proxy (a 500 ms
/// timeout), whose one worker passes every message it reads to the
/// returned channel.
fn host_behind_a_proxy(prefix: &str) -> (Blackhole, Cluster, mpsc::Receiver<String>) {
    let proxy = Blackhole::to(&shared_url());
    let through_proxy = RedisConfig::new(proxy.url())
        .prefix(prefix)
        .timeout(Duration::from_millis(500));
    let (seen_tx, seen) = mpsc::channel::<String>();
    let b = Cluster::builder()
        .workers(1)
        .bus_backend(through_proxy.host("b"))
        .start(move |worker: Worker| {
            let seen_tx = seen_tx.clone();
            async move {
                let mut inbox = worker.inbox();
                while let Some(envelope) = inbox.recv().await {
                    let text = String::from_utf8_lossy(envelope.message()).into_owned();
                    let _ = seen_tx.send(text);
                }
            }
        })
        .expect("start b");
    (proxy, b, seen)
}

#[test]
fn a_message_whose_read_answer_is_lost_is_still_delivered() {
    let prefix = unique_prefix();
    let direct = RedisConfig::new(shared_url()).prefix(&prefix);
    let (proxy, b, seen) = host_behind_a_proxy(&prefix);
    let a = idle(Cluster::builder().bus_backend(direct.host("a")));
    send_when_up(&a, "b", 0, "one");
    assert_eq!(recv(&seen, "b reads its list"), "one");
    // b's reader waits on Redis for the next message, and its answer, the
    // message, is lost on the way: b must read it again, not drop it.
    proxy.swallow_open_connections();
    done(a.bus().send_to("b", 0, "two")).unwrap();
    assert_eq!(recv(&seen, "the message whose answer was lost"), "two");
    done(a.bus().send_to("b", 0, "three")).unwrap();
    assert_eq!(recv(&seen, "the next message, once"), "three");
    stop(a);
    stop(b);
}

#[test]
fn waiters_listen_to_their_lock_and_a_release_tells_them() {
    let prefix = unique_prefix();
    let redis = RedisConfig::new(shared_url()).prefix(&prefix);
    let start = |h: &str| idle(Cluster::builder().store_backend(redis.clone().host(h)));
    let (a, b) = (start("a"), start("b"));
    let key = format!("{prefix}:s:4:wait:l:k");
    let client = redis::Client::open(shared_url()).unwrap();
    let mut conn = client.get_connection().unwrap();
    let listeners = |conn: &mut redis::Connection| -> i64 {
        let (_, n): (String, i64) = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg(&key)
            .query(conn)
            .unwrap();
        n
    };
    let until = |conn: &mut redis::Connection, n: i64, what: &str| {
        wait_until(what, || listeners(conn) == n);
    };
    // A raw listener on the lock's channel sees the release.
    let mut raw = client.get_connection().unwrap();
    let mut heard = raw.as_pubsub();
    heard.subscribe(&key).unwrap();
    heard.set_read_timeout(Some(PATIENCE)).unwrap();

    let lock = a
        .store()
        .collection("wait")
        .blocking()
        .acquire("k")
        .unwrap();
    let on_b = b.store().collection("wait");
    let mut waiting = Op::new(on_b.acquire("k"));
    assert!(waiting.poll().is_pending());
    until(&mut conn, 2, "b to listen to the lock's releases");
    lock.release_blocking().unwrap();
    let message = heard.get_message().expect("the release's message");
    assert_eq!(message.get_channel_name(), key);
    drop(waiting.wait("b to get the lock"));
    until(&mut conn, 1, "b to stop listening once it got the lock");
    stop(a);
    stop(b);
}

#[test]
fn a_redis_that_stops_answering_gives_errors_not_a_hang() {
    let server = RedisServer::start();
    let redis = RedisConfig::new(server.url())
        .prefix("paused")
        .host("h")
        .timeout(Duration::from_millis(300));
    let cluster = idle_on(redis);
    let c = cluster.store().collection("c").blocking();
    c.set("k", "v").unwrap();
    let client = redis::Client::open(server.url()).unwrap();
    let mut admin = client.get_connection().unwrap();
    // Every client's commands wait for 5 s: an operation that waited for
    // its answer would succeed then instead of failing.
    let () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(5_000)
        .arg("ALL")
        .query(&mut admin)
        .unwrap();
    let e = c.get("k").unwrap_err();
    assert!(
        e.is_unavailable() && e.to_string().contains("did not answer"),
        "{e}"
    );
    assert!(c.acquire("k").unwrap_err().is_unavailable());
    let e = done(cluster.bus().publish("t", "x")).unwrap_err();
    assert!(e.is_unavailable(), "{e:?}");
    let e = done(cluster.bus().send_to("other", 0, "x")).unwrap_err();
    assert!(e.is_unavailable(), "{e:?}");

    // Answers again once the pause is over.
    wait_until("the store to answer again", || match c.get("k") {
        Ok(v) => {
            assert_eq!(v, Some(Bytes::from("v")));
            true
        }
        Err(e) => {
            assert!(e.is_unavailable(), "{e:?}");
            false
        }
    });
    stop(cluster);
}

/// This cluster's count of store operations that waited behind a lock.
fn lock_waits(cluster: &Cluster) -> u64 {
    let text = cluster.metrics();
    text.lines()
        .find_map(|l| l.strip_prefix("forkless_store_lock_waits_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no forkless_store_lock_waits_total in:\n{text}"))
}

#[test]
fn plain_operations_wait_for_a_lock_another_host_holds_and_a_lapsed_lock_keeps_the_value() {
    // Get, set, del and incr run as plain Redis commands that fail on a
    // locked key: none may go through while host "a" holds the lock.
    let redis = RedisConfig::new(shared_url()).prefix(unique_prefix());
    let a = idle(Cluster::builder().store_backend(redis.clone().host("a")));
    let b = idle(Cluster::builder().store_backend(redis.host("b")));
    let (ca, cb) = (
        a.store().collection("plain").blocking(),
        b.store().collection("plain").blocking(),
    );
    type Plain = fn(&forkless::BlockingCollection) -> String;
    let ops: [(&str, Plain); 4] = [
        ("get", |c| format!("{:?}", c.get("k").unwrap())),
        ("set", |c| format!("{:?}", c.set("k", "20").unwrap())),
        ("del", |c| format!("{:?}", c.del("k").unwrap())),
        ("incr", |c| format!("{:?}", c.incr("k", 1).unwrap())),
    ];
    for (name, op) in ops {
        ca.set("k", "1").unwrap();
        let mut lock = ca.acquire("k").unwrap();
        let waits = lock_waits(&b);
        let (tx, rx) = mpsc::channel();
        let cb2 = cb.clone();
        let other = std::thread::spawn(move || tx.send(op(&cb2)).unwrap());
        wait_until(&format!("{name} to wait"), || {
            assert!(
                rx.try_recv().is_err(),
                "{name} went through a lock held by another host"
            );
            lock_waits(&b) != waits
        });
        lock.set("10");
        lock.release_blocking().unwrap();
        let answer = recv(&rx, name);
        other.join().unwrap();
        let (want, then) = match name {
            "get" => ("Some(b\"10\")", Some("10")),
            "set" => ("()", Some("20")),
            "del" => ("true", None),
            _ => ("11", Some("11")),
        };
        assert_eq!(answer, want, "{name} ran after the release");
        assert_eq!(ca.get("k").unwrap().as_deref(), then.map(str::as_bytes));
    }

    // A lock whose lease lapses leaves the value as it was; a key locked
    // without a value is free again.
    ca.set("kept", "before").unwrap();
    let mut late = ca
        .acquire_with(
            "kept",
            forkless::LockOptions::new().lease(Duration::from_millis(50)),
        )
        .unwrap();
    late.set("late");
    let empty = ca
        .acquire_with(
            "empty",
            forkless::LockOptions::new().lease(Duration::from_millis(50)),
        )
        .unwrap();
    assert_eq!(cb.get("kept").unwrap().as_deref(), Some(&b"before"[..]));
    cb.set("empty", "now").unwrap();
    assert_eq!(ca.get("empty").unwrap().as_deref(), Some(&b"now"[..]));
    assert!(late.release_blocking().unwrap_err().is_lock_lost());
    assert!(empty.release_blocking().unwrap_err().is_lock_lost());
    assert_eq!(ca.get("kept").unwrap().as_deref(), Some(&b"before"[..]));
    assert_eq!(cb.len().unwrap(), 3, "k, kept and empty");
    stop(a);
    stop(b);
}

#[test]
fn a_batch_whose_read_answer_is_lost_is_delivered_whole_and_once() {
    // As above, with three frames pushed at once: the reader takes them in
    // one batch, whose answer is lost.
    let prefix = unique_prefix();
    let (proxy, b, seen) = host_behind_a_proxy(&prefix);
    let a = idle(
        Cluster::builder().bus_backend(RedisConfig::new(shared_url()).prefix(&prefix).host("a")),
    );
    send_when_up(&a, "b", 0, "one");
    assert_eq!(recv(&seen, "b reads its list"), "one");
    proxy.swallow_open_connections();
    let frame = |text: &str| format!("{{\"k\":\"m\",\"h\":\"a\",\"s\":0}}\n{text}");
    let mut conn = redis::Client::open(shared_url())
        .unwrap()
        .get_connection()
        .unwrap();
    let _: i64 = redis::cmd("RPUSH")
        .arg(format!("{prefix}:b:in:b"))
        .arg(frame("two"))
        .arg(frame("three"))
        .arg(frame("four"))
        .query(&mut conn)
        .unwrap();
    for text in ["two", "three", "four"] {
        assert_eq!(recv(&seen, text), text);
    }
    done(a.bus().send_to("b", 0, "five")).unwrap();
    assert_eq!(recv(&seen, "the next message, once"), "five");
    stop(a);
    stop(b);
}

/// The bus reader's batch script takes at most what it is told, nothing
/// when told 0 (an inbox full), and copies what it takes before trimming.
#[test]
fn the_batch_script_takes_no_more_than_the_room_it_is_given() {
    let prefix = unique_prefix();
    let (list, taken) = (format!("{prefix}:in"), format!("{prefix}:taken"));
    let client = redis::Client::open(shared_url()).unwrap();
    let mut conn = client.get_connection().unwrap();
    let script = redis::Script::new(include_str!("../../runtime/src/bus/scripts/bus_take.lua"));
    let _: () = redis::cmd("RPUSH")
        .arg(&list)
        .arg(&["a", "b", "c"])
        .query(&mut conn)
        .unwrap();
    let take = |conn: &mut redis::Connection, most: i64| -> Vec<String> {
        script
            .key(&list)
            .key(&taken)
            .arg(most)
            .arg(1 << 20)
            .invoke(conn)
            .unwrap()
    };
    let len = |conn: &mut redis::Connection, key: &str| -> i64 {
        redis::cmd("LLEN").arg(key).query(conn).unwrap()
    };
    assert!(take(&mut conn, 0).is_empty(), "no room: nothing taken");
    assert!(take(&mut conn, -1).is_empty());
    assert_eq!((len(&mut conn, &list), len(&mut conn, &taken)), (3, 0));
    assert_eq!(take(&mut conn, 2), ["a", "b"]);
    assert_eq!((len(&mut conn, &list), len(&mut conn, &taken)), (1, 2));
    assert_eq!(take(&mut conn, 64), ["c"]);
    assert_eq!((len(&mut conn, &list), len(&mut conn, &taken)), (0, 3));
    let _: () = redis::cmd("DEL").arg(&taken).query(&mut conn).unwrap();
}
