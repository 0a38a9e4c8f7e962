//! The Redis bus while two processes are the same host, as during an
//! upgrade's overlap (two clusters of this test process with one host name
//! model it; one test upgrades for real): replies reach their requester,
//! the host stays present across the switch, and what a stopping or dead
//! process took off the host's list and did not deliver is read by the
//! next one, in order, while a live process's batch is never taken.
//!
//! Uses `FORKLESS_TEST_REDIS`, or starts `redis-server` on loopback ports.
//! Needs the `redis` feature (`cargo test --all-features`).

use std::path::Path;
use std::sync::mpsc;

use crate::common::redis::{shared_url, unique_prefix};
use crate::common::{self, done, recv, stop, wait_until, PATIENCE};
use forkless::{Cluster, RedisConfig, Worker};

/// A cluster as host `host` on `redis`'s bus: each worker answers requests
/// with `"{host}/{slot}: {message}"` and passes other messages to `seen`.
fn host(redis: &RedisConfig, host: &str, workers: usize, seen: mpsc::Sender<String>) -> Cluster {
    let name = host.to_owned();
    Cluster::builder()
        .workers(workers)
        .request_timeout(PATIENCE)
        .bus_backend(redis.clone().host(host))
        .start(move |worker: Worker| {
            let (seen, name) = (seen.clone(), name.clone());
            async move {
                let mut inbox = worker.inbox();
                while let Some(envelope) = inbox.recv().await {
                    let text = String::from_utf8_lossy(envelope.message()).into_owned();
                    if envelope.is_request() {
                        envelope.reply(format!("{name}/{}: {text}", worker.slot()));
                    } else {
                        let _ = seen.send(text);
                    }
                }
                Ok::<(), forkless::Error>(())
            }
        })
        .expect("start")
}

/// A cluster as host `host` on `redis`'s bus whose one worker never reads
/// its inbox (of room for `capacity` messages).
fn deaf(redis: &RedisConfig, host: &str, capacity: usize) -> Cluster {
    Cluster::builder()
        .workers(1)
        .inbox_capacity(capacity)
        .bus_backend(redis.clone().host(host))
        .start(|worker: Worker| async move {
            worker.shutdown_signal().await;
        })
        .expect("start")
}

/// Waits until `from` can send to `host`'s slot 0.
fn wait_up(from: &Cluster, host: &str) {
    wait_until(&format!("{host} on the bus"), || {
        match done(from.bus().send_to(host, 0, "hello".to_owned())) {
            Ok(()) => true,
            Err(e) if e.is_no_such_slot() => false,
            Err(e) => panic!("send to {host}: {e}"),
        }
    });
}

/// A bus configuration with a prefix of its own, and the prefix.
fn config() -> (RedisConfig, String) {
    let prefix = unique_prefix();
    (
        RedisConfig::new(shared_url()).prefix(prefix.clone()),
        prefix,
    )
}

fn redis_conn() -> redis::Connection {
    redis::Client::open(shared_url())
        .expect("client")
        .get_connection()
        .expect("connection")
}

fn llen(conn: &mut redis::Connection, key: &str) -> usize {
    redis::cmd("LLEN").arg(key).query(conn).expect("LLEN")
}

fn exists(conn: &mut redis::Connection, key: &str) -> bool {
    redis::cmd("EXISTS")
        .arg(key)
        .query::<i64>(conn)
        .expect("EXISTS")
        == 1
}

/// A message frame as host `from` sends it to slot 0.
fn frame(from: &str, message: &str) -> Vec<u8> {
    format!("{{\"k\":\"m\",\"h\":\"{from}\",\"s\":0}}\n{message}").into_bytes()
}

/// Two processes of host `h` request from host `x` at once, each numbering
/// its requests from its own start: every reply reaches the request it
/// answers, in the process that sent it, and none is lost (the reply of
/// either would otherwise come on `h`'s one list, taken by whichever
/// process reads first).
#[test]
fn replies_reach_their_requester_whichever_process_of_the_host_reads() {
    let (redis, _) = config();
    let (tx, _seen) = mpsc::channel();
    let x = host(&redis, "x", 2, tx.clone());
    let old = host(&redis, "h", 1, tx.clone());
    let new = host(&redis, "h", 1, tx);
    wait_up(&old, "x");
    std::thread::scope(|s| {
        for (name, cluster) in [("old", &old), ("new", &new)] {
            s.spawn(move || {
                for i in 0..40 {
                    let slot = i % 2;
                    let asked = format!("{name} {i}");
                    let reply = done(cluster.bus().request_to("x", slot, asked.clone()))
                        .unwrap_or_else(|e| panic!("{asked}: {e}"));
                    assert_eq!(reply, format!("x/{slot}: {asked}").as_bytes(), "{asked}");
                }
            });
        }
    });
    stop(old);
    stop(new);
    stop(x);
}

/// A process of host `h` that stops while it holds a message it took off
/// `h`'s list (its worker's inbox is full) puts it back at the head of the
/// list: the next process of `h` reads it first, then the rest, in order.
#[test]
fn a_stopping_process_gives_back_what_it_took_and_did_not_deliver() {
    const CAPACITY: usize = 4;
    let (redis, prefix) = config();
    let mut conn = redis_conn();
    let list = format!("{prefix}:b:in:h");
    let (tx, seen) = mpsc::channel();
    let x = host(&redis, "x", 1, tx.clone());
    let old = deaf(&redis, "h", CAPACITY);
    wait_up(&x, "h");
    for i in 0..10 {
        done(x.bus().send_to("h", 0, format!("m{i}"))).expect("send");
    }
    // "hello" and m0..m2 fill the inbox; m3 is taken, and waits for room.
    wait_until("the old process to hold m3", || llen(&mut conn, &list) == 6);
    stop(old);
    let new = host(&redis, "h", 1, tx);
    for i in 3..10 {
        assert_eq!(recv(&seen, "the next message"), format!("m{i}"));
    }
    assert_eq!(llen(&mut conn, &list), 0);
    stop(new);
    stop(x);
}

/// What a dead process of host `h` (its alive key gone) held on its
/// batch's list comes back at the head of `h`'s list when the next process
/// of `h` starts; a live process's batch (its alive key set) is left alone
/// until that process is dead too.
#[test]
fn a_new_process_takes_back_what_a_dead_one_held_and_never_a_live_ones() {
    let (redis, p) = config();
    let mut conn = redis_conn();
    let readers = format!("{p}:b:readers:h");
    let (dead_batch, live_batch) = (
        format!("{p}:b:taken:h:1-1:0"),
        format!("{p}:b:taken:h:2-2:1"),
    );
    let live = format!("{p}:b:live:h:2-2");
    redis::pipe()
        .cmd("SADD")
        .arg(&readers)
        .arg("1-1")
        .arg("2-2")
        .cmd("SET")
        .arg(&live)
        .arg(1)
        .arg("PX")
        .arg(PATIENCE.as_millis() as u64 * 10)
        .cmd("RPUSH")
        .arg(&dead_batch)
        .arg(frame("x", "m0"))
        .arg(frame("x", "m1"))
        .cmd("RPUSH")
        .arg(&live_batch)
        .arg(frame("x", "z"))
        .cmd("RPUSH")
        .arg(format!("{p}:b:in:h"))
        .arg(frame("x", "m2"))
        .query::<()>(&mut conn)
        .expect("the dead and the live process's state");

    let (tx, seen) = mpsc::channel();
    let h = host(&redis, "h", 1, tx);
    for m in ["m0", "m1", "m2"] {
        assert_eq!(recv(&seen, "the next message"), m);
    }
    assert!(!exists(&mut conn, &dead_batch));
    assert_eq!(llen(&mut conn, &live_batch), 1, "the live batch is left");
    // The live one dies: the next sweep takes its batch back.
    redis::cmd("DEL")
        .arg(&live)
        .query::<()>(&mut conn)
        .expect("DEL");
    assert_eq!(recv(&seen, "the dead process's message"), "z");
    assert!(!exists(&mut conn, &live_batch));
    stop(h);
}

/// Set in the process that [`presence_stays`]'s upgrade starts: the file
/// that says the Redis URL and prefix of the new build's bus.
const NEW_BUILD: &str = "FORKLESS_TEST_BUS_NEW_BUILD";

/// A process that upgrades to a new one leaves its host's presence when it
/// stops: another host can send to it all along. One that stops for good
/// (the new one) deletes it.
#[test]
fn presence_stays_when_the_old_process_stops_after_an_upgrade() {
    if let Some(build) = std::env::var_os(NEW_BUILD) {
        let part = std::fs::read_to_string(&build).expect("the new build's part");
        let (url, prefix) = part.split_once(' ').expect("url prefix");
        Cluster::builder()
            .workers(1)
            .control(false)
            .bus_backend(RedisConfig::new(url).prefix(prefix).host("h"))
            .run(|worker: Worker| async move {
                worker.ready();
                worker.shutdown_signal().await;
            })
            .expect("the new build runs");
        return;
    }
    let (redis, prefix) = config();
    let mut conn = redis_conn();
    let presence = format!("{prefix}:b:host:h");
    let dir = common::runtime_dir();
    let build = dir.join("new-build");
    std::fs::write(&build, format!("{} {prefix}", shared_url())).expect("write");
    let test = "presence_stays_when_the_old_process_stops_after_an_upgrade";
    let old = upgrading_to(Cluster::builder(), NEW_BUILD, &build, test)
        .workers(1)
        .control(false)
        .ready_timeout(PATIENCE)
        .bus_backend(redis.clone().host("h"))
        .start(|worker: Worker| async move {
            worker.ready();
            worker.shutdown_signal().await;
        })
        .expect("start");
    let (x, server) = upgrade_beside_x(&redis, &old);
    let new = server.0;
    old.join();
    assert!(
        exists(&mut conn, &presence),
        "the old process deleted the host's presence"
    );
    done(x.bus().send_to("h", 0, "after".to_owned())).expect("h is up");

    sigterm(new);
    common::wait_until(&format!("process {new} to stop"), || {
        !Path::new(&format!("/proc/{new}")).exists()
    });
    assert!(!exists(&mut conn, &presence), "the last process left");
    stop(x);
    let _ = std::fs::remove_dir_all(dir);
}

/// What tells this test binary, run again by an upgrade, to be the new
/// build of `after_the_switch_only_the_new_process_takes_the_hosts_messages`:
/// a file with the Redis URL, the prefix and where to write what it gets.
const SWITCH_BUILD: &str = "FORKLESS_TEST_BUS_SWITCH_BUILD";

/// Once an upgrade switched, what other hosts send to the host goes to the
/// new process only: the old one, whose worker still reads its inbox while
/// it drains, takes nothing more off the host's list (before, both read it
/// until the old one stopped, and what the old one put in its draining
/// worker's inbox was lost with it when that worker did not read it).
#[test]
fn after_the_switch_only_the_new_process_takes_the_hosts_messages() {
    use std::io::Write as _;
    use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
    use std::sync::Arc;
    if let Some(build) = std::env::var_os(SWITCH_BUILD) {
        let part = std::fs::read_to_string(&build).expect("the new build's part");
        let words: Vec<String> = part.split(' ').map(str::to_owned).collect();
        let (url, prefix, got) = (words[0].clone(), words[1].clone(), words[2].clone());
        Cluster::builder()
            .workers(1)
            .control(false)
            .bus_backend(RedisConfig::new(url).prefix(prefix).host("h"))
            .run(move |worker: Worker| {
                let got = got.clone();
                async move {
                    worker.ready();
                    let mut inbox = worker.inbox();
                    let mut file = std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(&got)
                        .expect("open the file of what the new build got");
                    loop {
                        tokio::select! {
                            envelope = inbox.recv() => match envelope {
                                Some(e) => writeln!(file, "{}", String::from_utf8_lossy(e.message()))
                                    .expect("write"),
                                None => break,
                            },
                            () = worker.shutdown_signal() => break,
                        }
                    }
                }
            })
            .expect("the new build runs");
        return;
    }
    let (redis, prefix) = config();
    let dir = common::runtime_dir();
    let build = dir.join("switch-build");
    let got = dir.join("new-got");
    std::fs::write(
        &build,
        format!("{} {prefix} {}", shared_url(), got.display()),
    )
    .expect("write");
    let test = "after_the_switch_only_the_new_process_takes_the_hosts_messages";
    let (old_tx, old_seen) = mpsc::channel::<String>();
    let release = Arc::new(AtomicBool::new(false));
    let hold = release.clone();
    let old = upgrading_to(Cluster::builder(), SWITCH_BUILD, &build, test)
        .workers(1)
        .control(false)
        .ready_timeout(PATIENCE)
        .shutdown_timeout(PATIENCE)
        .bus_backend(redis.clone().host("h"))
        .start(move |worker: Worker| {
            let (seen, hold) = (old_tx.clone(), hold.clone());
            async move {
                worker.ready();
                let mut inbox = worker.inbox();
                // Reads its inbox, draining too, until the test lets it go.
                while !hold.load(Relaxed) {
                    tokio::select! {
                        Some(e) = inbox.recv() => {
                            let _ = seen.send(String::from_utf8_lossy(e.message()).into_owned());
                        }
                        () = tokio::time::sleep(std::time::Duration::from_millis(10)) => {}
                    }
                }
            }
        })
        .expect("start");
    let (x, server) = upgrade_beside_x(&redis, &old);
    let new = server.0;
    // The old process drains (its worker holds on) while x sends.
    for i in 0..20 {
        done(x.bus().send_to("h", 0, format!("m{i}"))).expect("send to h");
    }
    let count = || {
        std::fs::read_to_string(&got)
            .map(|t| t.lines().filter(|l| l.starts_with('m')).count())
            .unwrap_or(0)
    };
    wait_until("the new process to get all 20 messages", || count() == 20);
    let taken: Vec<String> = old_seen.try_iter().filter(|m| m.starts_with('m')).collect();
    assert!(
        taken.is_empty(),
        "the old process took {taken:?} after the switch"
    );
    release.store(true, Relaxed);
    old.join();
    sigterm(new);
    common::wait_until(&format!("process {new} to stop"), || {
        !Path::new(&format!("/proc/{new}")).exists()
    });
    stop(x);
    let _ = std::fs::remove_dir_all(dir);
}

/// `builder`, whose upgrade runs this test binary again as test `test` of
/// this module, the new build, with `var` naming its file `build`.
fn upgrading_to(
    builder: forkless::Builder,
    var: &str,
    build: &Path,
    test: &str,
) -> forkless::Builder {
    let exe = std::env::current_exe().expect("this test binary");
    let args: Vec<std::ffi::OsString> = vec![
        format!("{var}={}", build.display()).into(),
        exe.into_os_string(),
        "--exact".into(),
        common::test_path(module_path!(), test).into(),
        "--test-threads=1".into(),
        "-q".into(),
    ];
    builder.upgrade_command("env", args)
}

fn sigterm(pid: u32) {
    let pid = rustix::process::Pid::from_raw(pid as i32).expect("a pid");
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).expect("SIGTERM");
}

/// Starts host `x` (1 worker, what it is sent goes nowhere), waits until
/// it reaches host `h` (`old`), and upgrades `old`: returns `x`, and what
/// stops the new process if the test fails.
fn upgrade_beside_x(redis: &RedisConfig, old: &Cluster) -> (Cluster, StopOnPanic) {
    let (tx, _) = mpsc::channel();
    let x = host(redis, "x", 1, tx);
    wait_up(&x, "h");
    let new = old.upgrade().expect("upgraded");
    (x, StopOnPanic(new))
}

/// Stops the upgrade's new process if the test fails.
struct StopOnPanic(u32);

impl Drop for StopOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let _ = rustix::process::Pid::from_raw(self.0 as i32)
                .map(|pid| rustix::process::kill_process(pid, rustix::process::Signal::TERM));
        }
    }
}
