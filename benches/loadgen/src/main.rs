//! `loadgen`: the HTTP/1.1 load generator of forkless's benchmarks.
//!
//! N connections over M threads, each thread a `current_thread` tokio
//! runtime (pinned to a core with `--cores`), each connection sending one
//! `GET` at a time through hyper's HTTP/1.1 client and reading the whole
//! answer before the next, as wrk does; or, with `--new-connection`, a new
//! connection per request. After an optional warm-up it counts for a fixed
//! duration and prints one line of JSON on stdout:
//!
//! ```text
//! $ loadgen -c 64 -t 1 --cores 1 -w 2s -d 10s http://127.0.0.1:8080/
//! {"connections":64,"duration_s":10.0,"errors":{"connect":0,"non_2xx":0,
//!  "read_write":0,"timeout":0},"latency_ms":{"max":..,"mean":..,"p50":..,
//!  "p99":..,"p99_9":..},"mode":"keep-alive","requests":..,
//!  "requests_per_sec":..,"threads":1,"url":"http://127.0.0.1:8080/",...}
//! ```
//!
//! `requests` counts every answer received inside the measurement (non-2xx
//! too, also counted in `errors.non_2xx`); the latency percentiles are
//! over those answers (`null` when there were none). Errors: `connect`
//! (refused, failed, or over `--timeout`), `read_write` (the connection
//! broke with a request on it), `non_2xx`, `timeout` (no answer within
//! `--timeout`; the connection is then replaced). A bad argument prints an
//! error on stderr and exits with status 2; a run that measured exits 0,
//! whatever the errors it counted.

mod args;
mod inline;
mod run;

use std::process::ExitCode;

use clap::Parser;
use serde_json::json;

fn main() -> ExitCode {
    let config = match args::Cli::parse().check() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("loadgen: error: {e}");
            return ExitCode::from(2);
        }
    };
    match run::run(&config) {
        Ok(stats) => {
            println!("{}", report(&config, &stats));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("loadgen: error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The run's results as one JSON object.
fn report(config: &args::Config, stats: &run::Stats) -> serde_json::Value {
    let secs = config.duration.as_secs_f64();
    let h = &stats.latency;
    let ms = |us: u64| us as f64 / 1000.0;
    let latency = if h.is_empty() {
        json!({ "p50": null, "p99": null, "p99_9": null, "max": null, "mean": null })
    } else {
        json!({
            "p50": ms(h.value_at_quantile(0.5)),
            "p99": ms(h.value_at_quantile(0.99)),
            "p99_9": ms(h.value_at_quantile(0.999)),
            "max": ms(h.max()),
            "mean": h.mean().round() / 1000.0,
        })
    };
    json!({
        "url": config.url,
        "mode": if config.new_connection { "new-connection" } else { "keep-alive" },
        "connections": config.connections,
        "threads": config.threads,
        "cores": config.cores,
        "duration_s": secs,
        "warmup_s": config.warmup.as_secs_f64(),
        "requests": stats.requests,
        "requests_per_sec": (stats.requests as f64 / secs * 10.0).round() / 10.0,
        "latency_ms": latency,
        "errors": {
            "connect": stats.errors.connect,
            "read_write": stats.errors.read_write,
            "non_2xx": stats.errors.non_2xx,
            "timeout": stats.errors.timeout,
        },
    })
}
