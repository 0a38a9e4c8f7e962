//! Per-core HTTP throughput: the `hello` example on one worker, beside a
//! hand-written per-core hyper server and a `#[tokio::main]` hyper server,
//! each on core 0, with wrk on core 1, measured in one run.
//!
//! ```text
//! apt-get install -y wrk
//! cargo bench --bench http_per_core
//! ```
//!
//! `BENCH_SECS` (default 10) sets each measurement's length,
//! `BENCH_ROUNDS` (default 3) how many times each server is
//! measured, in turns (A B C A B C ...), so that drift in the machine hits
//! every server alike; the median round is reported. wrk keeps 64
//! connections open with one thread. Needs 2 cores or more.
//!
//! Every server answers `GET /` with `Hello, World!` through the same hyper
//! HTTP/1.1 code; they differ only in the runtime around it:
//!
//! - `forkless`: `examples/hello.rs` in a 1-worker cluster.
//! - `per-core`: written for this comparison: one pinned thread, a
//!   `current_thread` runtime with a `LocalSet`, an `SO_REUSEPORT` listener,
//!   `spawn_local` per connection. What forkless must cost nothing against.
//! - `tokio-mt`: a multi-thread runtime as `#[tokio::main]` builds it (one
//!   worker thread per allowed core: 1 under `taskset -c 0`), `tokio::spawn`
//!   per connection.
//! - `actix-web`: actix-web 4 with as many workers as allowed cores (1).
//! - `node`: Node's `cluster` module with 1 worker (`benches/node/hello.js`;
//!   the primary shares the core), when `node` is on the PATH.
//!
//! `BENCH_SERVERS=forkless,per-core` measures only those (the
//! first one listed is the one compared; the default is all of them).
//!
//! `BENCH_WORKERS=n` (default 1) gives every server `n` cores
//! (cores `0..n`) and wrk the next one: the N-workers mode, for machines
//! with more cores (`benches/scaling.sh` runs it for 1, 2, 4 and 8).
//!
//! Results also go to `target/bench-results/http_per_core.json`, and a bar
//! chart of the medians to `target/bench-results/http_per_core.svg`
//! (plotters); `docs/http_per_core.svg`, which the README shows, is a copy
//! from the run recorded in BENCHMARKS.md.

#[path = "env/mod.rs"]
mod env;
use env::env_or;
#[allow(dead_code)]
#[path = "../examples/hello.rs"]
mod hello;
#[path = "servers/mod.rs"]
mod servers;

use std::process::{Child, Command};

const ALL_SERVERS: [&str; 5] = ["forkless", "per-core", "tokio-mt", "actix-web", "node"];
/// For diagnosis, by `BENCH_SERVERS` only: a forkless cluster
/// serving the per-core server's handler as it is (`fl-min`), and with a
/// graceful-shutdown `select!` beside each connection (`fl-sel`). What
/// `forkless` costs beyond `fl-min` is `hello`'s own code.
const DIAGNOSTIC_SERVERS: [&str; 2] = ["fl-min", "fl-sel"];

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--serve") {
        let kind = args[i + 1].as_str();
        let port: u16 = args[i + 2].parse().expect("port");
        serve(kind, port);
        return;
    }
    if Command::new("wrk").arg("--version").output().is_err() {
        println!("http_per_core: skipped, wrk is not installed (apt-get install -y wrk)");
        return;
    }
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    if cores.len() < 2 {
        println!("http_per_core: skipped, needs 2 cores (one for the server, one for wrk)");
        return;
    }
    let workers: usize = env_or("BENCH_WORKERS", 1).clamp(1, cores.len() - 1);
    let server_cores: Vec<String> = cores[..workers].iter().map(|c| c.id.to_string()).collect();
    let server_cores = server_cores.join(",");
    // wrk on the remaining cores (at most 8 threads), 64 connections per
    // server core.
    let wrk_cores: Vec<String> = cores[workers..]
        .iter()
        .take(8)
        .map(|c| c.id.to_string())
        .collect();
    let wrk_threads = wrk_cores.len();
    let wrk_core = wrk_cores.join(",");
    let connections = 64 * workers;
    let secs: u64 = env_or("BENCH_SECS", 10);
    let rounds: usize = env_or("BENCH_ROUNDS", 3);
    let node = Command::new("node").arg("--version").output().is_ok();
    let chosen = std::env::var("BENCH_SERVERS").unwrap_or_default();
    let servers: Vec<&str> = if chosen.is_empty() {
        ALL_SERVERS.to_vec()
    } else {
        chosen.split(',').map(str::trim).collect()
    };
    for s in &servers {
        assert!(
            ALL_SERVERS.contains(s) || DIAGNOSTIC_SERVERS.contains(s),
            "BENCH_SERVERS: unknown server {s:?} (known: {ALL_SERVERS:?}, \
             {DIAGNOSTIC_SERVERS:?})"
        );
    }
    let servers: Vec<&str> = servers
        .into_iter()
        .filter(|s| *s != "node" || node)
        .collect();
    if !node {
        println!("http_per_core: node is not on the PATH: its row is skipped");
    }

    println!(
        "http_per_core: servers on cores {server_cores}, wrk -t{wrk_threads} -c{connections} on cores {wrk_core}, \
         {secs}s x {rounds} rounds each"
    );
    let mut results: Vec<Vec<(f64, f64, f64)>> = vec![Vec::new(); servers.len()];
    for round in 0..rounds {
        for (i, kind) in servers.iter().enumerate() {
            let port = 20000 + (round * servers.len() + i) as u16;
            let mut server = start_server(kind, port, &server_cores);
            // Warm up: connections, caches, the CPU's clock.
            let load = Load {
                cores: &wrk_core,
                threads: wrk_threads,
                connections,
            };
            let _ = wrk(port, &load, 2);
            let (rps, p50, p99) = wrk(port, &load, secs);
            servers::stop(&mut server);
            println!(
                "  round {round} {kind:>9}: {rps:>10.0} req/s  p50 {p50:>6.2} ms  p99 {p99:>6.2} ms"
            );
            results[i].push((rps, p50, p99));
        }
    }

    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let summary: Vec<(f64, f64, f64)> = results
        .iter()
        .map(|r| {
            let mut rps: Vec<f64> = r.iter().map(|x| x.0).collect();
            let mut p50: Vec<f64> = r.iter().map(|x| x.1).collect();
            let mut p99: Vec<f64> = r.iter().map(|x| x.2).collect();
            (median(&mut rps), median(&mut p50), median(&mut p99))
        })
        .collect();
    let find = |name: &str| servers.iter().position(|s| *s == name).unwrap_or(0);
    let base = summary[find("per-core")].0;
    let forkless = summary[find("forkless")].0;
    println!("\n| server | req/s (median) | p50 ms | p99 ms | vs per-core | forkless vs it |");
    println!("|---|---:|---:|---:|---:|---:|");
    for (kind, (rps, p50, p99)) in servers.iter().zip(&summary) {
        println!(
            "| {kind} | {rps:.0} | {p50:.2} | {p99:.2} | {:.3}x | {:.2}x |",
            rps / base,
            forkless / rps
        );
    }
    write_results(&servers, &summary, &results, workers, secs);
}

/// `target/bench-results/http_per_core.json` and `docs/http_per_core.svg`.
fn write_results(
    servers: &[&str],
    summary: &[(f64, f64, f64)],
    rounds: &[Vec<(f64, f64, f64)>],
    workers: usize,
    secs: u64,
) {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let json = format!(
        "{{\"workers\":{workers},\"secs\":{secs},\"servers\":[{}]}}\n",
        servers
            .iter()
            .zip(summary)
            .zip(rounds)
            .map(|((s, (rps, p50, p99)), r)| format!(
                "{{\"server\":\"{s}\",\"rps\":{rps:.0},\"p50_ms\":{p50:.3},\"p99_ms\":{p99:.3},\"rounds_rps\":[{}]}}",
                r.iter().map(|x| format!("{:.0}", x.0)).collect::<Vec<_>>().join(",")
            ))
            .collect::<Vec<_>>()
            .join(",")
    );
    let dir = root.join("target").join("bench-results");
    let _ = std::fs::create_dir_all(&dir);
    let _ = std::fs::write(dir.join("http_per_core.json"), json);
    let svg = dir.join("http_per_core.svg");
    if let Err(e) = chart(&svg, servers, summary, workers) {
        println!("no chart: {e}");
    } else {
        println!("chart: {}", svg.display());
    }
}

fn chart(
    path: &std::path::Path,
    servers: &[&str],
    summary: &[(f64, f64, f64)],
    workers: usize,
) -> Result<(), Box<dyn std::error::Error>> {
    use plotters::prelude::*;
    let root = SVGBackend::new(path, (720, 360)).into_drawing_area();
    root.fill(&WHITE)?;
    let top = summary.iter().map(|s| s.0).fold(0.0, f64::max) * 1.15;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "GET / Hello, World!, {workers} server core(s), wrk -c{} (median req/s)",
                64 * workers
            ),
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(70)
        .build_cartesian_2d(-0.5..servers.len() as f64 - 0.5, 0.0..top)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(servers.len())
        .x_label_formatter(&|x| {
            let i = x.round();
            if (x - i).abs() < 0.01 && i >= 0.0 {
                servers
                    .get(i as usize)
                    .map_or(String::new(), |s| (*s).to_owned())
            } else {
                String::new()
            }
        })
        .y_label_formatter(&|y| format!("{:.0}k", y / 1000.0))
        .draw()?;
    chart.draw_series(summary.iter().enumerate().map(|(i, s)| {
        let color = if i == 0 {
            RGBColor(200, 60, 40)
        } else {
            RGBColor(90, 110, 140)
        };
        let x = i as f64;
        Rectangle::new([(x - 0.35, 0.0), (x + 0.35, s.0)], color.filled())
    }))?;
    chart.draw_series(summary.iter().enumerate().map(|(i, s)| {
        Text::new(
            format!("{:.0}k", s.0 / 1000.0),
            (i as f64 - 0.12, s.0 + top * 0.06),
            ("sans-serif", 14),
        )
    }))?;
    root.present()?;
    Ok(())
}

/// The diagnostic servers: forkless with the per-core server's handler,
/// with or without a graceful-shutdown `select!` per connection.
fn fl(select: bool, port: u16) {
    use hyper::server::conn::http1;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    forkless::Cluster::builder()
        .run(move |worker: forkless::Worker| async move {
            let listener = worker.listen(("127.0.0.1", port)).await?;
            while let Some(conn) = listener.accept().await {
                let (stream, _) = conn?;
                let stop = worker.shutdown_signal();
                tokio::task::spawn_local(async move {
                    let conn = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service_fn(servers::hello_world));
                    if !select {
                        let _ = conn.await;
                        return;
                    }
                    tokio::pin!(conn);
                    tokio::select! {
                        _ = conn.as_mut() => {}
                        _ = stop => {
                            conn.as_mut().graceful_shutdown();
                            let _ = conn.await;
                        }
                    }
                });
            }
            Ok::<(), forkless::Error>(())
        })
        .expect("forkless");
}

fn start_server(kind: &str, port: u16, cores: &str) -> Child {
    let mut command = Command::new("taskset");
    command.args(["-c", cores]);
    if kind == "node" {
        servers::node(&mut command, port, cores.split(',').count());
    } else {
        command
            .arg(std::env::current_exe().expect("bench binary"))
            .args(["--serve", kind, &port.to_string()]);
    }
    servers::launch(command, kind, port)
}

/// Where and how hard wrk loads the server.
struct Load<'a> {
    cores: &'a str,
    threads: usize,
    connections: usize,
}

/// Runs wrk; returns (requests/s, p50 and p99 latency in ms).
fn wrk(port: u16, load: &Load<'_>, secs: u64) -> (f64, f64, f64) {
    let output = Command::new("taskset")
        .args(["-c", load.cores])
        .arg("wrk")
        .arg(format!("-t{}", load.threads))
        .arg(format!("-c{}", load.connections))
        .arg("--latency")
        .arg(format!("-d{secs}s"))
        .arg(format!("http://127.0.0.1:{port}/"))
        .output()
        .expect("wrk");
    let text = String::from_utf8_lossy(&output.stdout);
    let rps = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no Requests/sec in wrk's output:\n{text}"));
    let percentile = |p: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(p))
            .map(|v| to_ms(v.trim()))
            .unwrap_or_else(|| panic!("no {p} line in wrk's output:\n{text}"))
    };
    let (p50, p99) = (percentile("50%"), percentile("99%"));
    if text.contains("Non-2xx") || text.contains("Socket errors") {
        println!("  wrk reported errors:\n{text}");
    }
    (rps, p50, p99)
}

fn to_ms(value: &str) -> f64 {
    let (number, unit) = value.split_at(
        value
            .find(|c: char| c.is_alphabetic())
            .unwrap_or(value.len()),
    );
    let number: f64 = number.parse().unwrap_or(f64::NAN);
    match unit {
        "us" => number / 1000.0,
        "ms" => number,
        "s" => number * 1000.0,
        _ => f64::NAN,
    }
}

fn serve(kind: &str, port: u16) {
    match kind {
        "forkless" => {
            let args = hello::Args {
                port,
                workers: None,
                host: [127, 0, 0, 1].into(),
            };
            forkless::Cluster::builder()
                .run(move |worker| hello::serve(worker, args.clone()))
                .expect("forkless");
        }
        "fl-min" | "fl-sel" => fl(kind == "fl-sel", port),
        "per-core" => servers::per_core(port, None),
        "tokio-mt" => servers::tokio_mt(port, None),
        "actix-web" => actix(port),
        other => panic!("unknown server {other}"),
    }
}

/// actix-web 4, one worker per allowed core (its default).
fn actix(port: u16) {
    use actix_web::{web, App, HttpServer};
    actix_web::rt::System::new()
        .block_on(async move {
            HttpServer::new(|| App::new().route("/", web::get().to(|| async { "Hello, World!" })))
                .bind(("127.0.0.1", port))?
                .run()
                .await
        })
        .expect("actix-web");
}
