//! What `forkless::alloc::Counting` costs: the HTTP benchmark's `forkless`
//! server (`benches/http_per_core.rs`: `hello` on one worker on core 0, wrk
//! on core 1) and the store benchmark's forkless workloads
//! (`benches/store.rs`: 2 workers, set+get pairs, sequential and 64 tasks
//! per worker), each built twice: with the system allocator as the global
//! allocator (this binary) and with `Counting<System>` around it
//! (`benches/alloc_cost_counting.rs`).
//! A global allocator is chosen when a binary is built, so the two are two
//! binaries running the same code (`benches/alloc/child.rs`); this one
//! drives both as children, in turns (system then counting in even rounds,
//! counting then system in odd ones), and reports the median round of each
//! and their ratio.
//!
//! ```text
//! cargo bench --bench alloc_cost --bench alloc_cost_counting --no-run
//! cargo bench --bench alloc_cost
//! ```
//!
//! `BENCH_SECS` (default 10) is each HTTP measurement's length (after 2 s
//! of warm-up), `BENCH_STORE_SECS` (default 3) each store round's,
//! `BENCH_ROUNDS` (default 3) how many rounds of each, `BENCH_PARTS`
//! (default `http,store`) which parts run: `alloc` adds a loop of
//! allocations and frees of 64 bytes on a worker, the wrapper's cost per
//! call without the rest of a service around it. The counting binary
//! is found beside this one (`target/release/deps/alloc_cost_counting-*`,
//! the newest), or named by `BENCH_COUNTING_BIN`. The HTTP part needs wrk
//! and 2 cores. Before measuring, each binary is asked whether it counts
//! (`--check`): this one must not, the other must.
#![allow(missing_docs)]

// The system allocator, declared the way `Counting` is: without a
// `#[global_allocator]`, allocations go through std's precompiled
// `__rdl_alloc`, one call more than with either declared here (measured:
// `BENCH_PARTS=alloc` made the counting binary the faster one by 0.5 ns a
// call). Declared, the two binaries differ only by the count.
#[global_allocator]
static ALLOC: std::alloc::System = std::alloc::System;

#[path = "alloc/child.rs"]
mod child;
#[allow(dead_code)]
#[path = "../examples/hello.rs"]
mod hello;
#[allow(dead_code)]
#[path = "servers/mod.rs"]
mod servers;
#[allow(dead_code)]
#[path = "store.rs"]
mod store;
use store::env::env_or;

use std::path::{Path, PathBuf};
use std::process::Command;

/// `alloc_cost_counting`, beside this binary or from `BENCH_COUNTING_BIN`.
fn counting_binary(me: &Path) -> Option<PathBuf> {
    if let Ok(path) = std::env::var("BENCH_COUNTING_BIN") {
        return Some(PathBuf::from(path));
    }
    let dir = me.parent()?;
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name.starts_with("alloc_cost_counting-") && !name.contains('.')
        })
        .max_by_key(|e| e.metadata().and_then(|m| m.modified()).ok())
        .map(|e| e.path())
}

fn output(bin: &Path, args: &[&str]) -> String {
    let out = Command::new(bin)
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", bin.display()));
    assert!(
        out.status.success(),
        "{} {args:?}: {:?}\n{}",
        bin.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs wrk on `core` against `port`; requests/s.
fn wrk(port: u16, core: &str, secs: u64) -> f64 {
    let out = Command::new("taskset")
        .args(["-c", core, "wrk", "-t1", "-c64"])
        .arg(format!("-d{secs}s"))
        .arg(format!("http://127.0.0.1:{port}/"))
        .output()
        .expect("wrk");
    let text = String::from_utf8_lossy(&out.stdout);
    if text.contains("Non-2xx") || text.contains("Socket errors") {
        println!("  wrk reported errors:\n{text}");
    }
    text.lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no Requests/sec in wrk's output:\n{text}"))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if child::run(&args) {
        return;
    }
    let me = std::env::current_exe().expect("this binary");
    let Some(counting) = counting_binary(&me) else {
        println!(
            "alloc_cost: skipped, no alloc_cost_counting binary beside this one: build both \
             with `cargo bench --bench alloc_cost --bench alloc_cost_counting --no-run`"
        );
        return;
    };
    let variants = [("system", me.clone()), ("counting", counting)];
    for (name, bin) in &variants {
        let counted = output(bin, &["--check"]).trim() == "counted true";
        assert_eq!(
            counted,
            *name == "counting",
            "{}: memory counted {counted}",
            bin.display()
        );
    }
    // `cargo test --benches` passes no `--bench`: one short store round
    // each, as a smoke test.
    let benching = args.iter().any(|a| a == "--bench");
    let rounds: usize = if benching {
        env_or("BENCH_ROUNDS", 3)
    } else {
        1
    };
    let http_secs: u64 = env_or("BENCH_SECS", 10);
    let store_secs: f64 = if benching {
        env_or("BENCH_STORE_SECS", 3.0)
    } else {
        0.05
    };
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    let wrk_here = Command::new("wrk").arg("--version").output().is_ok();
    let parts = std::env::var("BENCH_PARTS").unwrap_or_else(|_| "http,store".to_owned());
    let parts: Vec<&str> = parts.split(',').map(str::trim).collect();
    for part in &parts {
        assert!(
            ["http", "store", "alloc"].contains(part),
            "BENCH_PARTS: unknown part {part:?} (known: http, store, alloc)"
        );
    }
    let http = parts.contains(&"http") && benching && wrk_here && cores.len() >= 2;
    let store = parts.contains(&"store");
    if !http {
        println!("alloc_cost: the HTTP part is skipped (it needs `cargo bench`, wrk and 2 cores)");
    }
    println!(
        "alloc_cost: {rounds} rounds; HTTP: hello on core 0, wrk -t1 -c64 on core 1, {http_secs} s; \
         store: 2 workers, {store_secs} s"
    );

    // (benchmark, [system rounds, counting rounds])
    let mut results: Vec<(String, [Vec<f64>; 2])> = Vec::new();
    let mut record = |what: &str, v: usize, figure: f64| {
        if !results.iter().any(|(w, _)| w == what) {
            results.push((what.to_owned(), [Vec::new(), Vec::new()]));
        }
        let row = results
            .iter_mut()
            .find(|(w, _)| w == what)
            .expect("the row");
        row.1[v].push(figure);
    };
    // Even rounds run the system allocator first, odd ones the counting
    // one, so that neither always runs second.
    let order = |round: usize| {
        let mut both: Vec<(usize, &(&str, PathBuf))> = variants.iter().enumerate().collect();
        if round % 2 == 1 {
            both.reverse();
        }
        both
    };
    for round in 0..rounds {
        if http {
            let (server_core, wrk_core) = (cores[0].id.to_string(), cores[1].id.to_string());
            for (v, (name, bin)) in order(round) {
                let port = 21000 + (round * variants.len() + v) as u16;
                let mut command = Command::new("taskset");
                command
                    .args(["-c", &server_core])
                    .arg(bin)
                    .args(["--serve-http", &port.to_string()]);
                let mut server = servers::launch(command, name, port);
                let _ = wrk(port, &wrk_core, 2);
                let rps = wrk(port, &wrk_core, http_secs);
                servers::stop(&mut server);
                println!("  round {round} http {name:>8}: {rps:>10.0} req/s");
                record("HTTP hello, req/s", v, rps);
            }
        }
        for workload in ["sequential", "concurrent"].into_iter().filter(|_| store) {
            for (v, (name, bin)) in order(round) {
                let text = output(bin, &["--store", workload, &store_secs.to_string()]);
                let ops: f64 = text
                    .lines()
                    .find_map(|l| l.strip_prefix("ops/s "))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or_else(|| panic!("no ops/s in {text:?}"));
                println!("  round {round} store {workload} {name:>8}: {ops:>10.0} ops/s");
                record(&format!("store {workload}, ops/s"), v, ops);
            }
        }
    }
    if parts.contains(&"alloc") {
        for round in 0..rounds {
            for (v, (name, bin)) in order(round) {
                let text = output(bin, &["--alloc-loop"]);
                let ns: f64 = text
                    .lines()
                    .find_map(|l| l.strip_prefix("ns/op "))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or_else(|| panic!("no ns/op in {text:?}"));
                println!("  round {round} alloc+free 64 B {name:>8}: {ns:.2} ns");
                record("alloc+free of 64 B on a worker, ns", v, ns);
            }
        }
    }
    println!("\n| benchmark | system (median) | counting (median) | counting / system |");
    println!("|---|---:|---:|---:|");
    for (what, [system, counting]) in results {
        let (s, c) = (median(system), median(counting));
        let digits = if s < 1000.0 { 2 } else { 0 };
        println!("| {what} | {s:.digits$} | {c:.digits$} | {:.3} |", c / s);
    }
}
