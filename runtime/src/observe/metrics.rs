//! Prometheus metrics (crate prometheus-client), per worker and for the
//! cluster. Counters and the loop-lag histogram are live: the master and the
//! heartbeats update them as things happen. Gauges are set from the
//! cluster's status when `/metrics` is scraped.

use std::collections::HashSet;
use std::sync::atomic::AtomicU64;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::observe::events::Status;
use crate::Exit;

type Labels = Vec<(String, String)>;
type FloatGauge = Gauge<f64, AtomicU64>;

fn slot_label(slot: usize) -> Labels {
    vec![("slot".to_owned(), slot.to_string())]
}

/// How an exit is counted: its kind.
fn exit_kind(exit: &Exit) -> &'static str {
    match exit {
        Exit::Normal => "normal",
        Exit::Failed(_) => "failed",
        Exit::Panicked { .. } => "panicked",
        Exit::Terminated => "terminated",
        Exit::Hung => "hung",
    }
}

pub(crate) struct Metrics {
    registry: Mutex<Registry>,
    started: Instant,
    restarts: Family<Labels, Counter>,
    recycles: Family<Labels, Counter>,
    exits: Family<Labels, Counter>,
    task_panics: Family<Labels, Counter>,
    loop_lag: Family<Labels, Histogram, fn() -> Histogram>,
    workers: Gauge,
    uptime: FloatGauge,
    worker_generation: Family<Labels, Gauge>,
    worker_uptime: Family<Labels, FloatGauge>,
    worker_accepted: Family<Labels, Gauge>,
    worker_tasks: Family<Labels, Gauge>,
    worker_busy: Family<Labels, FloatGauge>,
    worker_stalled: Family<Labels, Gauge>,
    worker_memory: Family<Labels, Gauge>,
    active_connections: Gauge,
    store_ops: Counter,
    store_lock_waits: Counter,
    bus_messages: Counter,
    backend_up: Family<Labels, Gauge>,
    backend_failures: Family<Labels, Counter>,
    runtime_panics: Family<Labels, Counter>,
    rss: Gauge,
    cpu: Counter<f64, AtomicU64>,
}

fn lag_histogram() -> Histogram {
    // 50 us to about 1.6 s.
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.000_05, 2.0, 16,
    ))
}

impl Metrics {
    pub(crate) fn new() -> Metrics {
        let m = Metrics {
            registry: Mutex::new(Registry::with_prefix("forkless")),
            started: Instant::now(),
            restarts: Family::default(),
            recycles: Family::default(),
            exits: Family::default(),
            task_panics: Family::default(),
            loop_lag: Family::new_with_constructor(lag_histogram),
            workers: Gauge::default(),
            uptime: FloatGauge::default(),
            worker_generation: Family::default(),
            worker_uptime: Family::default(),
            worker_accepted: Family::default(),
            worker_tasks: Family::default(),
            worker_busy: Family::default(),
            worker_stalled: Family::default(),
            worker_memory: Family::default(),
            active_connections: Gauge::default(),
            store_ops: Counter::default(),
            store_lock_waits: Counter::default(),
            bus_messages: Counter::default(),
            backend_up: Family::default(),
            backend_failures: Family::default(),
            runtime_panics: Family::default(),
            rss: Gauge::default(),
            cpu: Counter::default(),
        };
        {
            let mut r = m.registry.lock().unwrap_or_else(PoisonError::into_inner);
            r.register("workers", "Slots of the cluster", m.workers.clone());
            r.register(
                "uptime_seconds",
                "Time since the cluster started",
                m.uptime.clone(),
            );
            r.register(
                "worker_restarts",
                "Starts of a slot after an exit",
                m.restarts.clone(),
            );
            r.register(
                "worker_recycles",
                "Recycles of a slot's worker (replaced although healthy), by reason",
                m.recycles.clone(),
            );
            r.register(
                "worker_exits",
                "Ends of a worker generation, by kind",
                m.exits.clone(),
            );
            r.register(
                "worker_task_panics",
                "Panics of tasks a worker spawned",
                m.task_panics.clone(),
            );
            r.register(
                "worker_loop_lag_seconds",
                "How late the worker's heartbeat ran: its event loop's lag",
                m.loop_lag.clone(),
            );
            r.register(
                "worker_generation",
                "The slot's serving generation",
                m.worker_generation.clone(),
            );
            r.register(
                "worker_uptime_seconds",
                "Time since the serving generation started",
                m.worker_uptime.clone(),
            );
            r.register(
                "worker_accepted_connections",
                "Connections the serving generation accepted",
                m.worker_accepted.clone(),
            );
            r.register(
                "worker_alive_tasks",
                "Tasks alive on the worker's runtime (tokio::spawn)",
                m.worker_tasks.clone(),
            );
            r.register(
                "worker_busy_ratio",
                "Share of time the worker's runtime was busy",
                m.worker_busy.clone(),
            );
            r.register(
                "worker_stalled",
                "1 while the worker's event loop does not turn",
                m.worker_stalled.clone(),
            );
            r.register(
                "worker_memory_bytes",
                "Bytes the serving generation's thread holds, when the program's global \
                 allocator is forkless::alloc::Counting (absent without it)",
                m.worker_memory.clone(),
            );
            r.register(
                "active_connections",
                "Established TCP connections on the cluster's listening ports",
                m.active_connections.clone(),
            );
            r.register("store_operations", "Store operations", m.store_ops.clone());
            r.register(
                "store_lock_waits",
                "Store operations that waited behind a key lock",
                m.store_lock_waits.clone(),
            );
            r.register(
                "bus_messages",
                "Messages put in slot inboxes and topic subscriptions",
                m.bus_messages.clone(),
            );
            r.register(
                "backend_up",
                "1 while the store's or the bus's remote backend (Redis) answers, by backend",
                m.backend_up.clone(),
            );
            r.register(
                "backend_failures",
                "Commands to the remote backend (Redis) that it failed or did not answer in time",
                m.backend_failures.clone(),
            );
            r.register(
                "runtime_panics",
                "Panics caught on the runtime's own threads (master, timers, control, signals, \
                 backend links), by thread; each one is a bug worth reporting",
                m.runtime_panics.clone(),
            );
            r.register(
                "process_resident_memory_bytes",
                "Resident memory of the process",
                m.rss.clone(),
            );
            r.register(
                "process_cpu_seconds",
                "CPU time of the process, user and system",
                m.cpu.clone(),
            );
        }
        m
    }

    pub(crate) fn restarted(&self, slot: usize) {
        self.restarts.get_or_create(&slot_label(slot)).inc();
    }

    pub(crate) fn recycled(&self, slot: usize, reason: &crate::RecycleReason) {
        let mut labels = slot_label(slot);
        labels.push(("reason".to_owned(), reason.name().to_owned()));
        self.recycles.get_or_create(&labels).inc();
    }

    pub(crate) fn exited(&self, slot: usize, exit: &Exit) {
        let mut labels = slot_label(slot);
        labels.push(("kind".to_owned(), exit_kind(exit).to_owned()));
        self.exits.get_or_create(&labels).inc();
    }

    pub(crate) fn task_panicked(&self, slot: usize) {
        self.task_panics.get_or_create(&slot_label(slot)).inc();
    }

    pub(crate) fn observe_lag(&self, slot: usize, lag: Duration) {
        self.loop_lag
            .get_or_create(&slot_label(slot))
            .observe(lag.as_secs_f64());
    }

    /// The metrics in the text format, as of now.
    pub(crate) fn scrape(&self, status: &Status, figures: Figures) -> String {
        self.workers.set(status.size as i64);
        self.uptime.set(self.started.elapsed().as_secs_f64());
        for w in &status.workers {
            let l = slot_label(w.slot);
            self.worker_generation
                .get_or_create(&l)
                .set(w.generation as i64);
            let up = w
                .started_at
                .and_then(|t| t.elapsed().ok())
                .map_or(0.0, |d| d.as_secs_f64());
            self.worker_uptime.get_or_create(&l).set(up);
            self.worker_accepted
                .get_or_create(&l)
                .set(w.accepted as i64);
            self.worker_tasks
                .get_or_create(&l)
                .set(w.alive_tasks as i64);
            self.worker_busy.get_or_create(&l).set(w.busy_ratio);
            self.worker_stalled
                .get_or_create(&l)
                .set(i64::from(w.state == crate::WorkerState::Stalled));
            // Unknown memory has no line, rather than a 0.
            match w.memory {
                Some(bytes) => {
                    self.worker_memory
                        .get_or_create(&l)
                        .set(i64::try_from(bytes).unwrap_or(i64::MAX));
                }
                None => {
                    self.worker_memory.remove(&l);
                }
            }
        }
        self.active_connections
            .set(figures.active_connections as i64);
        raise(&self.store_ops, figures.store_ops);
        raise(&self.store_lock_waits, figures.store_lock_waits);
        raise(&self.bus_messages, figures.bus_messages);
        for (backend, health) in [("store", figures.store_health), ("bus", figures.bus_health)] {
            if let Some(health) = health {
                let l = vec![("backend".to_owned(), backend.to_owned())];
                self.backend_up
                    .get_or_create(&l)
                    .set(i64::from(health.reachable));
                raise(&self.backend_failures.get_or_create(&l), health.failures);
            }
        }
        for (thread, n) in figures.runtime_panics {
            let l = vec![("thread".to_owned(), thread.to_owned())];
            raise(&self.runtime_panics.get_or_create(&l), n);
        }
        if let Some(rss) = process_rss() {
            self.rss.set(rss as i64);
        }
        if let Some(cpu) = process_cpu_seconds() {
            let now = self.cpu.get();
            if cpu > now {
                self.cpu.inc_by(cpu - now);
            }
        }
        let mut text = String::new();
        let registry = self.registry.lock().unwrap_or_else(PoisonError::into_inner);
        // Writing to a String cannot fail.
        let _ = encode(&mut text, &registry);
        text
    }
}

/// Brings a counter up to a total counted elsewhere.
fn raise(counter: &Counter, total: u64) {
    let now = counter.get();
    if total > now {
        counter.inc_by(total - now);
    }
}

/// What the scrape reads from the store, the bus and the kernel.
pub(crate) struct Figures {
    pub(crate) active_connections: usize,
    pub(crate) store_ops: u64,
    pub(crate) store_lock_waits: u64,
    pub(crate) bus_messages: u64,
    pub(crate) store_health: Option<crate::observe::Health>,
    pub(crate) bus_health: Option<crate::observe::Health>,
    /// Panics caught on the runtime's own threads, by thread.
    pub(crate) runtime_panics: Vec<(&'static str, u64)>,
}

/// `VmRSS` of `/proc/self/status`, in bytes.
fn process_rss() -> Option<u64> {
    let kib = procfs::process::Process::myself()
        .ok()?
        .status()
        .ok()?
        .vmrss?;
    Some(kib * 1024)
}

/// User and system time of `/proc/self/stat`, in seconds: clock ticks over
/// the system's `CLK_TCK` (`sysconf(_SC_CLK_TCK)`).
fn process_cpu_seconds() -> Option<f64> {
    let stat = procfs::process::Process::myself().ok()?.stat().ok()?;
    let ticks = procfs::ticks_per_second();
    (ticks > 0).then(|| (stat.utime + stat.stime) as f64 / ticks as f64)
}

/// Established TCP connections of this process on `ports`, IPv4 and IPv6
/// (IPv4-mapped addresses of a dual-stack listener are in the IPv6 table):
/// sockets of `/proc/net/tcp{,6}` in state ESTABLISHED whose local port is
/// one of `ports` and whose inode is one of this process's file
/// descriptors. A connection still in a listener's accept queue has no file
/// yet and is not counted.
///
/// Cost, once per scrape, on the thread that scrapes: the kernel walks its
/// TCP hash tables and formats every socket of the network namespace, not
/// only ours, and procfs parses them; then, when some socket matches, the
/// descriptors of `/proc/self/fd` are read (one `readlink` each) until all
/// matches are found. Measured in release on a busy 2-core machine
/// (`active_connections_cost` below): about 3 ms with 300 sockets in the
/// tables (each table costs about 1.3 ms to read even nearly empty: the
/// kernel walks its whole hash table), 50-66 ms with 10,000 sockets, 5,000
/// of them ours (the tables alone 16-30 ms).
pub(crate) fn active_connections(ports: &HashSet<u16>) -> usize {
    if ports.is_empty() {
        return 0;
    }
    // Inodes of the established sockets on our ports, whoever holds them.
    let mut candidates = HashSet::new();
    for table in [procfs::net::tcp(), procfs::net::tcp6()] {
        let Ok(entries) = table else { continue };
        candidates.extend(
            entries
                .iter()
                .filter(|e| {
                    e.state == procfs::net::TcpState::Established
                        && ports.contains(&e.local_address.port())
                })
                .map(|e| e.inode),
        );
    }
    if candidates.is_empty() {
        return 0;
    }
    let Ok(fds) = procfs::process::Process::myself().and_then(|me| me.fd()) else {
        return 0;
    };
    let mut count = 0;
    for fd in fds.flatten() {
        // A socket held by two descriptors (dup) is one connection.
        if let procfs::process::FDTarget::Socket(inode) = fd.target {
            if candidates.remove(&inode) {
                count += 1;
                if candidates.is_empty() {
                    break;
                }
            }
        }
    }
    count
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};

    /// A listener on `addr` and `n` connections to it from `to`, both ends
    /// kept open; `None` where the address cannot be bound here.
    fn connections(addr: &str, to: &str, n: usize) -> Option<(TcpListener, u16, Vec<TcpStream>)> {
        let listener = TcpListener::bind(addr).ok()?;
        let port = listener.local_addr().expect("local address").port();
        let mut held = Vec::new();
        for _ in 0..n {
            let client = TcpStream::connect(format!("{to}:{port}")).ok()?;
            let (server, _) = listener.accept().expect("accept");
            held.push(server);
            held.push(client);
        }
        Some((listener, port, held))
    }

    fn ports(ports: &[u16]) -> HashSet<u16> {
        ports.iter().copied().collect()
    }

    /// A one-worker status whose worker holds `memory`.
    fn status(memory: Option<u64>) -> Status {
        Status {
            name: "x".to_owned(),
            size: 0,
            rolling: false,
            stopping: false,
            pid: 1,
            uptime: Duration::ZERO,
            workers: vec![crate::observe::events::WorkerStatus {
                slot: 0,
                generation: 1,
                core: None,
                state: crate::WorkerState::Ready,
                started_at: None,
                restarts: 1,
                last_exit: None,
                recycles: 1,
                last_recycle: None,
                accepted: 1,
                alive_tasks: 1,
                busy_ratio: 0.5,
                loop_lag: Duration::ZERO,
                memory,
            }],
            backends: Vec::new(),
        }
    }

    fn figures(health: Option<crate::observe::Health>) -> Figures {
        Figures {
            active_connections: 0,
            store_ops: 1,
            store_lock_waits: 1,
            bus_messages: 1,
            store_health: health,
            bus_health: health,
            runtime_panics: vec![("forkless-master", 1)],
        }
    }

    /// A worker's memory is a line while it is known, and no line (rather
    /// than 0) once it is not.
    #[test]
    fn worker_memory_is_exported_only_when_known() {
        let m = Metrics::new();
        let text = m.scrape(&status(None), figures(None));
        assert!(!text.contains("forkless_worker_memory_bytes{"), "{text}");
        let text = m.scrape(&status(Some(5 << 20)), figures(None));
        assert!(
            text.contains("forkless_worker_memory_bytes{slot=\"0\"} 5242880"),
            "{text}"
        );
        let text = m.scrape(&status(None), figures(None));
        assert!(!text.contains("forkless_worker_memory_bytes{"), "{text}");
    }

    /// The Grafana dashboard in `docs/` reads only metrics this module
    /// exports (each family given a sample, so that it is in the text).
    #[test]
    fn the_dashboard_reads_only_exported_metrics() {
        let m = Metrics::new();
        m.restarted(0);
        m.recycled(0, &crate::RecycleReason::Requested);
        m.exited(0, &Exit::Normal);
        m.task_panicked(0);
        m.observe_lag(0, Duration::from_micros(10));
        let health = Some(crate::observe::Health {
            reachable: true,
            failures: 1,
        });
        let status = status(Some(1 << 20));
        let text = m.scrape(&status, figures(health));
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../docs/grafana-dashboard.json"
        );
        let dashboard: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).expect("the dashboard"))
                .expect("the dashboard is JSON");
        let exprs: Vec<&str> = dashboard["panels"]
            .as_array()
            .expect("panels")
            .iter()
            .flat_map(|p| p["targets"].as_array().into_iter().flatten())
            .filter_map(|t| t["expr"].as_str())
            .collect();
        assert!(exprs.len() >= 12, "{exprs:?}");
        let mut checked = 0;
        for expr in exprs {
            for (i, _) in expr.match_indices("forkless_") {
                let name: String = expr[i..]
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                    .collect();
                let family = ["_bucket", "_total"]
                    .iter()
                    .find_map(|suffix| name.strip_suffix(suffix))
                    .unwrap_or(&name);
                assert!(
                    text.contains(&format!("# TYPE {family} ")),
                    "{name} (in {expr}) is not exported:\n{text}"
                );
                checked += 1;
            }
        }
        assert!(checked >= 15, "{checked}");
    }

    #[test]
    fn counts_established_connections_on_the_ports_ipv4_and_ipv6() {
        let (_l4, p4, mut held4) = connections("127.0.0.1:0", "127.0.0.1", 3).expect("IPv4");
        assert_eq!(active_connections(&ports(&[])), 0);
        assert_eq!(active_connections(&ports(&[p4])), 3);
        // The clients' ends are on other ports; a port nobody listens on
        // has none.
        let unused = TcpListener::bind("127.0.0.1:0").expect("bind");
        let unused = unused.local_addr().expect("address").port();
        assert_eq!(active_connections(&ports(&[unused])), 0);
        // A server end closed is no longer established.
        drop(held4.remove(0));
        assert_eq!(active_connections(&ports(&[p4])), 2);

        match connections("[::1]:0", "[::1]", 2) {
            Some((_l6, p6, _held6)) => {
                assert_eq!(active_connections(&ports(&[p6])), 2);
                assert_eq!(active_connections(&ports(&[p4, p6])), 4);
            }
            None => eprintln!("no IPv6 loopback here: the IPv6 table is not checked"),
        }
        // A dual-stack listener: IPv4 clients show in the IPv6 table as
        // IPv4-mapped addresses.
        if let Some((_ld, pd, _held)) = connections("[::]:0", "127.0.0.1", 2) {
            assert_eq!(active_connections(&ports(&[pd])), 2);
        }
    }

    #[test]
    fn process_figures_read_from_proc() {
        let rss = process_rss().expect("VmRSS");
        assert!(rss > 1 << 20, "{rss}");
        let before = process_cpu_seconds().expect("CPU time");
        // Busy until the process has used 50 ms more CPU (in CLK_TCK steps).
        let start = Instant::now();
        let mut x = 0u64;
        let mut after = before;
        while after < before + 0.05 && start.elapsed() < Duration::from_secs(30) {
            for _ in 0..100_000 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(1));
            }
            after = process_cpu_seconds().expect("CPU time");
        }
        assert!(after >= before + 0.05, "{before} -> {after}");
        // In seconds, not in ticks: far below an hour.
        assert!(after < 3600.0, "{after}");
    }

    /// What a scrape's connection count costs with 10,000 sockets in the
    /// tables: `cargo test -p forkless-runtime --release --lib
    /// active_connections_cost -- --ignored --nocapture`.
    #[test]
    #[ignore = "a measurement: opens 5,000 loopback connections"]
    fn active_connections_cost() {
        let (_l, port, _held) =
            connections("127.0.0.1:0", "127.0.0.1", 5_000).expect("connections");
        let set = ports(&[port]);
        assert_eq!(active_connections(&set), 5_000);
        let mut times: Vec<Duration> = (0..21)
            .map(|_| {
                let t = Instant::now();
                std::hint::black_box(active_connections(&set));
                t.elapsed()
            })
            .collect();
        times.sort();
        eprintln!("active_connections, 10,000 sockets: median {:?}", times[10]);
        let none = ports(&[1]);
        let mut times: Vec<Duration> = (0..21)
            .map(|_| {
                let t = Instant::now();
                std::hint::black_box(active_connections(&none));
                t.elapsed()
            })
            .collect();
        times.sort();
        eprintln!(
            "active_connections, 10,000 sockets, none ours: median {:?}",
            times[10]
        );
    }
}
