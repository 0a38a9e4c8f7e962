//! `forkless-ctl`: watch and steer a running forkless cluster through its
//! control socket, as `pm2 list`, `pm2 scale` and `pm2 reload` do for Node.
//!
//! ```text
//! forkless-ctl status                 # a table of the workers
//! forkless-ctl top                    # a live view, with keys to steer
//! forkless-ctl resize 8               # or +2, -1
//! forkless-ctl restart                # rolling restart
//! forkless-ctl recycle 1              # a new generation for slot 1
//! forkless-ctl upgrade                # start the program anew, hand it over
//! forkless-ctl stop                   # graceful stop
//! forkless-ctl events                 # follow what the supervisor does
//! forkless-ctl metrics                # Prometheus text
//! forkless-ctl status                 # every cluster of this user that answers
//! forkless-ctl --name api status      # the cluster named "api"
//! forkless-ctl --socket /run/x.sock --json status
//! ```
//!
//! It talks only to a control server that runs as the same user as itself,
//! or as root: the server's credentials are checked on the socket
//! (`SO_PEERCRED`) before anything is sent, so a socket that another user
//! took first at the expected path gets no request, and `forkless-ctl`
//! says whose it is.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use forkless_control::{Client, Event, Status, Workers};
use serde_json::Value;

/// Watch and steer a running forkless cluster through its control socket.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// The control socket [default: the one of the cluster named by --name].
    #[arg(long, global = true)]
    socket: Option<std::path::PathBuf>,
    /// The cluster's name, which gives its default socket path. Without it
    /// (and without --socket), `status` lists every cluster of this user
    /// that answers, and the other commands steer the one cluster that
    /// answers (or the one named "forkless").
    #[arg(long, global = true)]
    name: Option<String>,
    /// Print the control server's JSON as it is.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// The workers: slot, generation, core, state, uptime, restarts,
    /// connections accepted, tasks, busy, lag.
    Status,
    /// Set the number of workers: N, +N or -N.
    Resize {
        /// N, +N or -N.
        #[arg(allow_hyphen_values = true)]
        workers: String,
    },
    /// A live view of the cluster, refreshed each second: per worker its
    /// state, generation, connections accepted per second, busy ratio,
    /// loop lag and restarts, and a sparkline of the cluster's connections
    /// per second. Keys: up/down select a worker, c recycles its slot,
    /// r a rolling restart (confirmed with y), +/- one worker more/fewer,
    /// q or Esc quits.
    Top,
    /// Restart every worker, one at a time, without dropping connections.
    Restart,
    /// Replace the worker of one slot by a new generation, as a rolling
    /// restart replaces each (the new one is ready before the old one
    /// stops).
    Recycle {
        /// The slot, as `status` shows it.
        slot: usize,
    },
    /// Start the program anew (the binary on disk, the same arguments),
    /// hand it the listening sockets and the store, and stop this process
    /// once the new one serves. Exits non-zero with the reason if the new
    /// process did not take over (this one then serves on).
    Upgrade,
    /// Stop the cluster gracefully.
    Stop,
    /// Follow the cluster's events until it stops.
    Events,
    /// The cluster's Prometheus metrics.
    Metrics,
}

/// A failure, and the exit code that says which kind: 2 when no trusted
/// cluster answers (or the command line is wrong), 1 otherwise.
struct Failure {
    code: u8,
    message: String,
}

impl From<forkless_control::Error> for Failure {
    fn from(e: forkless_control::Error) -> Failure {
        Failure {
            code: if e.is_unreachable() { 2 } else { 1 },
            message: e.to_string(),
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("forkless-ctl: {e}");
            return ExitCode::from(1);
        }
    };
    let chosen = args
        .socket
        .clone()
        .or_else(|| args.name.as_deref().map(forkless_control::default_socket));
    let result = rt.block_on(async {
        match chosen {
            Some(socket) => run(&args, &Client::new(socket)).await,
            None => {
                let answering = answering().await;
                match (&args.command, answering.as_slice()) {
                    (Command::Status, _) => list(&args, &answering),
                    (Command::Top, []) => Err(none_answers()),
                    (_, [(socket, _)]) => run(&args, &Client::new(socket.clone())).await,
                    (_, []) => {
                        let socket = forkless_control::default_socket("forkless");
                        run(&args, &Client::new(socket)).await
                    }
                    (_, several) => Err(Failure {
                        code: 2,
                        message: format!(
                            "{} clusters answer ({}): choose one with --name",
                            several.len(),
                            several
                                .iter()
                                .map(|(_, s)| s.name.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    }),
                }
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("forkless-ctl: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

/// The clusters of this user whose control socket answers, with their
/// status (a socket left by a crashed cluster, or one nobody trusted
/// holds, is skipped).
async fn answering() -> Vec<(std::path::PathBuf, Status)> {
    let mut found = Vec::new();
    for socket in forkless_control::discover() {
        if let Ok(status) = Client::new(socket.clone()).status().await {
            found.push((socket, status));
        }
    }
    found
}

/// `status` without --name: a line per cluster, as `pm2 list` shows apps.
fn list(args: &Args, clusters: &[(std::path::PathBuf, Status)]) -> Result<(), Failure> {
    if clusters.is_empty() {
        return Err(none_answers());
    }
    if args.json {
        let statuses: Vec<&Status> = clusters.iter().map(|(_, s)| s).collect();
        let text = serde_json::to_string(&statuses).map_err(|e| Failure {
            code: 1,
            message: e.to_string(),
        })?;
        println!("{text}");
        return Ok(());
    }
    print!("{}", clusters_table(clusters));
    Ok(())
}

/// Neither --name nor --socket, and no cluster found.
fn none_answers() -> Failure {
    let place = forkless_control::default_socket("x");
    let dir = place
        .parent()
        .map_or_else(String::new, |d| d.display().to_string());
    Failure {
        code: 2,
        message: format!(
            "no forkless cluster of this user answers (looked for forkless-*.sock in {dir})"
        ),
    }
}

/// One line per cluster: name, pid, workers ready of all, uptime, restarts,
/// the socket.
fn clusters_table(clusters: &[(std::path::PathBuf, Status)]) -> String {
    let mut out = format!(
        "{:<20} {:>8} {:>8} {:>9} {:>8}  {}\n",
        "name", "pid", "workers", "uptime", "restarts", "socket"
    );
    for (socket, s) in clusters {
        let ready = s
            .workers
            .iter()
            .filter(|w| w.state == forkless_control::WorkerState::Ready)
            .count();
        let restarts: u64 = s.workers.iter().map(|w| w.restarts).sum();
        out.push_str(&format!(
            "{:<20} {:>8} {:>8} {:>9} {:>8}  {}\n",
            s.name,
            s.pid,
            format!("{ready}/{}", s.size),
            uptime(s.uptime_secs),
            restarts,
            socket.display()
        ));
    }
    out
}

/// Parses `body` as a `T` (so that an answer the protocol does not know is
/// an error), and returns it with the text as it came.
fn typed<T: serde::de::DeserializeOwned>(what: &str, body: &[u8]) -> Result<(T, String), Failure> {
    let value = serde_json::from_slice(body).map_err(|e| Failure {
        code: 1,
        message: format!("the answer to {what} is not the protocol's JSON: {e}"),
    })?;
    Ok((value, String::from_utf8_lossy(body).into_owned()))
}

async fn run(args: &Args, client: &Client) -> Result<(), Failure> {
    match &args.command {
        Command::Status => {
            let (status, raw): (Status, _) = typed("/status", &client.get("/status").await?)?;
            if args.json {
                println!("{raw}");
            } else {
                print!("{}", table(&status));
            }
        }
        Command::Resize { workers } => {
            let workers: Workers = workers.parse().map_err(|e| Failure {
                code: 2,
                message: format!("resize {workers:?}: {e}"),
            })?;
            if args.json {
                let body = serde_json::to_vec(&forkless_control::ResizeRequest { workers })
                    .map_err(|e| Failure {
                        code: 1,
                        message: e.to_string(),
                    })?;
                let (_, raw): (forkless_control::ResizeAnswer, _) =
                    typed("/resize", &client.post("/resize", &body).await?)?;
                println!("{raw}");
            } else {
                let answer = client.resize(workers).await?;
                println!("resizing: {} -> {} workers", answer.from, answer.to);
            }
        }
        Command::Top => {
            if args.json {
                return Err(Failure {
                    code: 2,
                    message: "top draws a live view: --json is for the other commands".to_owned(),
                });
            }
            let first = client.status().await?;
            // The view blocks this thread until a quit key; it talks to the
            // cluster from a thread (and a runtime) of its own.
            forkless_ctl::top::run(client.clone(), first)
                .map_err(|message| Failure { code: 1, message })?;
        }
        Command::Recycle { slot } => {
            if args.json {
                let body = serde_json::to_vec(&forkless_control::RecycleRequest { slot: *slot })
                    .map_err(|e| Failure {
                        code: 1,
                        message: e.to_string(),
                    })?;
                let (_, raw): (forkless_control::RecycleAnswer, _) =
                    typed("/recycle", &client.post("/recycle", &body).await?)?;
                println!("{raw}");
            } else {
                let answer = client.recycle(*slot).await?;
                println!("recycling slot {}", answer.slot);
            }
        }
        Command::Restart => {
            let (_, raw): (forkless_control::RestartAnswer, _) =
                typed("/restart", &client.post("/restart", b"").await?)?;
            print_or(args.json, &raw, "rolling restart started");
        }
        Command::Upgrade => {
            let (answer, raw): (forkless_control::UpgradeAnswer, _) =
                typed("/upgrade", &client.post("/upgrade", b"").await?)?;
            print_or(
                args.json,
                &raw,
                &format!("upgraded: process {} serves now", answer.pid),
            );
        }
        Command::Stop => {
            let (_, raw): (forkless_control::ShutdownAnswer, _) =
                typed("/shutdown", &client.post("/shutdown", b"").await?)?;
            print_or(args.json, &raw, "stopping");
        }
        Command::Events => {
            let mut events = client.events().await?;
            while let Some(line) = events.next_line().await {
                let line = line?;
                if args.json {
                    println!("{line}");
                } else {
                    println!("{}", event_line(&line));
                }
            }
        }
        Command::Metrics => print!("{}", client.metrics().await?),
    }
    Ok(())
}

fn print_or(raw: bool, answer: &str, text: &str) {
    if raw {
        println!("{answer}");
    } else {
        println!("{text}");
    }
}

/// A `pm2 list`-like table. "accepted" is the connections each generation
/// has accepted since it started (cumulative), as the status reports it.
fn table(status: &Status) -> String {
    let mut out = format!(
        "cluster {} ({} workers{}{})\n",
        status.name,
        status.size,
        if status.rolling {
            ", rolling restart"
        } else {
            ""
        },
        if status.stopping { ", stopping" } else { "" },
    );
    out.push_str(&format!(
        "{:>4} {:>4} {:>4} {:<10} {:>9} {:>8} {:>8} {:>6} {:>6} {:>9} {:>10}\n",
        "slot",
        "gen",
        "core",
        "state",
        "uptime",
        "restarts",
        "accepted",
        "tasks",
        "busy",
        "lag",
        "memory"
    ));
    for w in &status.workers {
        let dash = || "-".to_owned();
        out.push_str(&format!(
            "{:>4} {:>4} {:>4} {:<10} {:>9} {:>8} {:>8} {:>6} {:>5.0}% {:>7.2}ms {:>10}\n",
            w.slot,
            w.generation,
            w.core.map_or_else(dash, |c| c.to_string()),
            w.state.to_string(),
            w.uptime_secs.map_or_else(dash, uptime),
            w.restarts,
            w.accepted,
            w.alive_tasks,
            w.busy_ratio * 100.0,
            w.loop_lag_ms,
            w.memory.map_or_else(dash, bytes),
        ));
    }
    for b in &status.backends {
        out.push_str(&format!(
            "{} on {}: {} ({} failed commands)\n",
            b.name,
            b.kind,
            if b.reachable {
                "answers"
            } else {
                "NOT REACHABLE"
            },
            b.failures,
        ));
    }
    out
}

/// `512 B`, `12.3 MiB`: a worker's memory (unknown is `-`, not 0).
fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

fn uptime(secs: f64) -> String {
    let s = secs as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{}s", s / 60, s % 60),
        _ => format!("{}h{}m", s / 3600, (s % 3600) / 60),
    }
}

/// `worker_exited exit="panicked at ..." generation=1 ran_for_ms=2.5 slot=0`:
/// the event's name, then its fields by name. A line that is not an event
/// this version knows is shown the same way if it is a JSON object, as it
/// came otherwise.
fn event_line(line: &str) -> String {
    let value = match serde_json::from_str::<Event>(line) {
        Ok(event) => serde_json::to_value(event).ok(),
        Err(_) => serde_json::from_str::<Value>(line).ok(),
    };
    let Some(Value::Object(map)) = value else {
        return line.to_owned();
    };
    let name = map
        .get("event")
        .and_then(Value::as_str)
        .unwrap_or("event")
        .to_owned();
    let mut fields: Vec<(&String, &Value)> = map.iter().filter(|(k, _)| *k != "event").collect();
    fields.sort_by(|a, b| a.0.cmp(b.0));
    let mut out = name;
    for (k, v) in fields {
        out.push_str(&format!(" {k}={v}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_has_a_row_per_worker() {
        let status = serde_json::json!({
            "name": "api", "size": 2, "rolling": false, "stopping": false,
            "workers": [
                {"slot": 0, "generation": 3, "core": 0, "state": "ready", "uptime_secs": 75.0,
                 "restarts": 3, "accepted": 10, "alive_tasks": 1, "busy_ratio": 0.25, "loop_lag_ms": 0.5},
                {"slot": 1, "generation": 0, "core": null, "state": "starting", "uptime_secs": null,
                 "restarts": 0, "accepted": 0, "alive_tasks": 0, "busy_ratio": 0.0, "loop_lag_ms": 0.0},
            ]
        });
        let text = table(&serde_json::from_value(status).expect("a Status"));
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert!(lines[0].contains("api (2 workers)"), "{text}");
        assert!(
            lines[2].contains("ready") && lines[2].contains("1m15s") && lines[2].contains("25%"),
            "{text}"
        );
        assert!(lines[3].contains("starting"), "{text}");
    }

    /// Memory shows in binary units when the cluster counts it, and as
    /// `-` (unknown, not 0) when it does not.
    #[test]
    fn the_memory_column_is_a_size_or_unknown() {
        let status = serde_json::json!({
            "name": "api", "size": 2, "rolling": false, "stopping": false,
            "workers": [
                {"slot": 0, "generation": 0, "core": 0, "state": "ready", "uptime_secs": 1.0,
                 "restarts": 0, "accepted": 0, "alive_tasks": 1, "busy_ratio": 0.0,
                 "loop_lag_ms": 0.0, "memory": 12_897_485},
                {"slot": 1, "generation": 0, "core": 1, "state": "ready", "uptime_secs": 1.0,
                 "restarts": 0, "accepted": 0, "alive_tasks": 1, "busy_ratio": 0.0,
                 "loop_lag_ms": 0.0},
            ]
        });
        let text = table(&serde_json::from_value(status).expect("a Status"));
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[1].trim_end().ends_with("memory"), "{text}");
        assert!(lines[2].trim_end().ends_with("12.3 MiB"), "{text}");
        assert!(lines[3].trim_end().ends_with(" -"), "{text}");
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(u64::MAX), "16384.0 PiB");
    }

    #[test]
    fn the_table_says_whether_redis_answers() {
        let status = serde_json::json!({
            "name": "api", "size": 0, "rolling": false, "stopping": false, "workers": [],
            "backends": [
                {"name": "store", "kind": "redis", "reachable": true, "failures": 0},
                {"name": "bus", "kind": "redis", "reachable": false, "failures": 7},
            ]
        });
        let text = table(&serde_json::from_value(status).expect("a Status"));
        assert!(
            text.contains("store on redis: answers (0 failed commands)"),
            "{text}"
        );
        assert!(
            text.contains("bus on redis: NOT REACHABLE (7 failed commands)"),
            "{text}"
        );
    }

    #[test]
    fn only_a_server_of_our_uid_or_root_is_trusted() {
        let server_trusted = forkless_control::peer_trusted;
        assert!(server_trusted(1000, 1000));
        assert!(server_trusted(0, 1000));
        assert!(server_trusted(0, 0));
        assert!(!server_trusted(1001, 1000));
        assert!(!server_trusted(65534, 0));
    }

    #[test]
    fn events_print_as_name_and_fields() {
        assert_eq!(
            event_line(r#"{"event":"resized","from":2,"to":3}"#),
            "resized from=2 to=3"
        );
        assert_eq!(event_line("not json"), "not json");
    }

    #[test]
    fn events_are_read_as_typed_events_fields_by_name() {
        assert_eq!(
            event_line(r#"{"event":"roll_finished","restarted":3,"completed":true}"#),
            "roll_finished completed=true restarted=3"
        );
        assert_eq!(event_line(r#"{"event":"stopped"}"#), "stopped");
        // An event of a newer server is still shown.
        assert_eq!(
            event_line(r#"{"event":"from_the_future","b":2,"a":1}"#),
            "from_the_future a=1 b=2"
        );
    }

    /// The column shows the status's `accepted`: connections accepted since
    /// the generation started, not the connections open now.
    #[test]
    fn the_accepted_column_is_named_for_what_it_counts() {
        let status = serde_json::json!({
            "name": "api", "size": 1, "rolling": false, "stopping": false,
            "workers": [
                {"slot": 0, "generation": 0, "core": 0, "state": "ready", "uptime_secs": 1.0,
                 "restarts": 0, "last_exit": null, "accepted": 12345, "alive_tasks": 1,
                 "busy_ratio": 0.0, "loop_lag_ms": 0.0},
            ]
        });
        let text = table(&serde_json::from_value(status).expect("a Status"));
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[1].contains("accepted") && !lines[1].contains("conns"),
            "{text}"
        );
        assert!(lines[2].contains("12345"), "{text}");
    }
}
