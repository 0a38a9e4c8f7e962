//! What every benchmark reads from its environment (`BENCH_SECS`,
//! `BENCH_ROUNDS`, ...).

/// `name`'s value, parsed; `default` when it is unset or does not parse.
pub(crate) fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// How long each measurement runs (`BENCH_SECS`, default 3) and how many
/// rounds (`BENCH_ROUNDS`, default 3) under `cargo bench`, which passes
/// `--bench`; under `cargo test --benches`, which does not, one short
/// round of each, as a smoke test.
#[allow(dead_code)]
pub(crate) fn plan() -> (f64, usize) {
    if std::env::args().any(|a| a == "--bench") {
        (env_or("BENCH_SECS", 3.0), env_or("BENCH_ROUNDS", 3))
    } else {
        (0.05, 1)
    }
}
