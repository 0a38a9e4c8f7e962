//! `forkless-ctl`: watch and steer a running forkless cluster through its
//! control socket, as `pm2 list`, `pm2 scale` and `pm2 reload` do for Node.
//!
//! ```text
//! forkless-ctl status                 # a table of the workers
//! forkless-ctl resize 8               # or +2, -1
//! forkless-ctl restart                # rolling restart
//! forkless-ctl stop                   # graceful stop
//! forkless-ctl events                 # follow what the supervisor does
//! forkless-ctl metrics                # Prometheus text
//! forkless-ctl --name api status      # the cluster named "api"
//! forkless-ctl --socket /run/x.sock --json status
//! ```
//!
//! It talks only to a control server that runs as the same user as itself,
//! or as root: the server's credentials are checked on the socket
//! (`SO_PEERCRED`) before anything is sent, so a socket that another user
//! took first at the expected path gets no request, and `forkless-ctl`
//! says whose it is.

use std::path::PathBuf;
use std::process::ExitCode;

use bytes::Bytes;
use clap::{Parser, Subcommand};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::Value;

/// Watch and steer a running forkless cluster through its control socket.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// The control socket [default: the one of the cluster named by --name].
    #[arg(long, global = true)]
    socket: Option<PathBuf>,
    /// The cluster's name, which gives its default socket path.
    #[arg(long, global = true, default_value = "forkless")]
    name: String,
    /// Print the control server's JSON as it is.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// The workers: slot, generation, core, state, uptime, restarts,
    /// connections, tasks, busy, lag.
    Status,
    /// Set the number of workers: N, +N or -N.
    Resize {
        /// N, +N or -N.
        #[arg(allow_hyphen_values = true)]
        workers: String,
    },
    /// Restart every worker, one at a time, without dropping connections.
    Restart,
    /// Stop the cluster gracefully.
    Stop,
    /// Follow the cluster's events until it stops.
    Events,
    /// The cluster's Prometheus metrics.
    Metrics,
}

/// A failure, and the exit code that says which kind.
struct Failure {
    code: u8,
    message: String,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let socket = args
        .socket
        .clone()
        .unwrap_or_else(|| forkless_runtime::default_control_socket(&args.name));
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
    match rt.block_on(run(&args, &socket)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("forkless-ctl: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

async fn run(args: &Args, socket: &PathBuf) -> Result<(), Failure> {
    match &args.command {
        Command::Status => {
            let status = json(call(socket, Method::GET, "/status", None).await?).await?;
            if args.json {
                println!("{status}");
            } else {
                print!("{}", table(&status));
            }
        }
        Command::Resize { workers } => {
            let value = if workers.starts_with('+') || workers.starts_with('-') {
                Value::String(workers.clone())
            } else {
                match workers.parse::<u64>() {
                    Ok(n) => Value::from(n),
                    Err(_) => {
                        return Err(Failure {
                            code: 2,
                            message: format!("resize {workers:?}: expected N, +N or -N"),
                        })
                    }
                }
            };
            let body = serde_json::json!({ "workers": value }).to_string();
            let answer = json(call(socket, Method::POST, "/resize", Some(body)).await?).await?;
            if args.json {
                println!("{answer}");
            } else {
                println!("resizing: {} -> {} workers", answer["from"], answer["to"]);
            }
        }
        Command::Restart => {
            let answer = json(call(socket, Method::POST, "/restart", None).await?).await?;
            print_or(args.json, &answer, "rolling restart started");
        }
        Command::Stop => {
            let answer = json(call(socket, Method::POST, "/shutdown", None).await?).await?;
            print_or(args.json, &answer, "stopping");
        }
        Command::Events => {
            let mut body = call(socket, Method::GET, "/events", None)
                .await?
                .into_body();
            let mut pending = Vec::new();
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|e| Failure {
                    code: 1,
                    message: format!("the event stream broke: {e}"),
                })?;
                if let Ok(data) = frame.into_data() {
                    pending.extend_from_slice(&data);
                    while let Some(end) = pending.iter().position(|b| *b == b'\n') {
                        let line: Vec<u8> = pending.drain(..=end).collect();
                        let line = String::from_utf8_lossy(&line);
                        let line = line.trim_end();
                        if args.json {
                            println!("{line}");
                        } else {
                            println!("{}", event_line(line));
                        }
                    }
                }
            }
        }
        Command::Metrics => {
            let response = call(socket, Method::GET, "/metrics", None).await?;
            let text = response
                .into_body()
                .collect()
                .await
                .map_err(|e| Failure {
                    code: 1,
                    message: format!("reading the metrics: {e}"),
                })?
                .to_bytes();
            print!("{}", String::from_utf8_lossy(&text));
        }
    }
    Ok(())
}

fn print_or(raw: bool, answer: &Value, text: &str) {
    if raw {
        println!("{answer}");
    } else {
        println!("{text}");
    }
}

/// One request on a fresh connection to the control socket.
async fn call(
    socket: &PathBuf,
    method: Method,
    path: &str,
    body: Option<String>,
) -> Result<Response<Incoming>, Failure> {
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(|e| Failure {
            code: 2,
            message: format!(
                "no cluster answers on {}: {e} (is it running? are --name or --socket right?)",
                socket.display()
            ),
        })?;
    let server = stream.peer_cred().map_err(|e| Failure {
        code: 2,
        message: format!(
            "cannot tell who runs the server on {}: {e}",
            socket.display()
        ),
    })?;
    let ours = rustix::process::geteuid().as_raw();
    if !server_trusted(server.uid(), ours) {
        return Err(Failure {
            code: 2,
            message: format!(
                "refusing to talk to {}: the server there runs as uid {}, not as this user \
                 (uid {ours}) or root; another user may have taken the socket's path",
                socket.display(),
                server.uid()
            ),
        });
    }
    let broken = |e: hyper::Error| Failure {
        code: 1,
        message: format!("the control server at {} broke off: {e}", socket.display()),
    };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(broken)?;
    tokio::spawn(conn);
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "forkless")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .map_err(|e| Failure {
            code: 1,
            message: e.to_string(),
        })?;
    let response = sender.send_request(request).await.map_err(broken)?;
    if response.status().is_success() {
        return Ok(response);
    }
    let status = response.status();
    let text = response
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let message = serde_json::from_slice::<Value>(&text)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(&text).into_owned());
    Err(Failure {
        code: 1,
        message: format!("{status}: {message}"),
    })
}

/// Whether to talk to a control server that runs as `server`, this client
/// running as `ours`: only to the same user, or to root.
fn server_trusted(server: u32, ours: u32) -> bool {
    server == ours || server == 0
}

async fn json(response: Response<Incoming>) -> Result<Value, Failure> {
    let bytes = response
        .into_body()
        .collect()
        .await
        .map_err(|e| Failure {
            code: 1,
            message: format!("reading the answer: {e}"),
        })?
        .to_bytes();
    serde_json::from_slice(&bytes).map_err(|e| Failure {
        code: 1,
        message: format!("the answer is not JSON: {e}"),
    })
}

/// A `pm2 list`-like table.
fn table(status: &Value) -> String {
    let mut out = format!(
        "cluster {} ({} workers{}{})\n",
        status["name"].as_str().unwrap_or("?"),
        status["size"],
        if status["rolling"] == Value::Bool(true) {
            ", rolling restart"
        } else {
            ""
        },
        if status["stopping"] == Value::Bool(true) {
            ", stopping"
        } else {
            ""
        },
    );
    out.push_str(&format!(
        "{:>4} {:>4} {:>4} {:<10} {:>9} {:>8} {:>8} {:>6} {:>6} {:>9}\n",
        "slot", "gen", "core", "state", "uptime", "restarts", "conns", "tasks", "busy", "lag"
    ));
    for w in status["workers"].as_array().into_iter().flatten() {
        let dash = || "-".to_owned();
        out.push_str(&format!(
            "{:>4} {:>4} {:>4} {:<10} {:>9} {:>8} {:>8} {:>6} {:>5.0}% {:>7.2}ms\n",
            w["slot"].to_string(),
            w["generation"].to_string(),
            w["core"].as_u64().map_or_else(dash, |c| c.to_string()),
            w["state"].as_str().unwrap_or("?"),
            w["uptime_secs"].as_f64().map_or_else(dash, uptime),
            w["restarts"].to_string(),
            w["accepted"].to_string(),
            w["alive_tasks"].to_string(),
            w["busy_ratio"].as_f64().unwrap_or(0.0) * 100.0,
            w["loop_lag_ms"].as_f64().unwrap_or(0.0),
        ));
    }
    for b in status["backends"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "{} on {}: {} ({} failed commands)\n",
            b["name"].as_str().unwrap_or("?"),
            b["kind"].as_str().unwrap_or("?"),
            if b["reachable"] == Value::Bool(true) {
                "answers"
            } else {
                "NOT REACHABLE"
            },
            b["failures"],
        ));
    }
    out
}

fn uptime(secs: f64) -> String {
    let s = secs as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{}s", s / 60, s % 60),
        _ => format!("{}h{}m", s / 3600, (s % 3600) / 60),
    }
}

/// `worker_exited slot=0 generation=1 exit="panicked at ..."`.
fn event_line(line: &str) -> String {
    let Ok(Value::Object(map)) = serde_json::from_str::<Value>(line) else {
        return line.to_owned();
    };
    let name = map
        .get("event")
        .and_then(Value::as_str)
        .unwrap_or("event")
        .to_owned();
    let fields: Vec<String> = map
        .iter()
        .filter(|(k, _)| *k != "event")
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    format!("{name} {}", fields.join(" "))
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
        let text = table(&status);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert!(lines[0].contains("api (2 workers)"), "{text}");
        assert!(
            lines[2].contains("ready") && lines[2].contains("1m15s") && lines[2].contains("25%"),
            "{text}"
        );
        assert!(lines[3].contains("starting"), "{text}");
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
        let text = table(&status);
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
}
