//! What every benchmark reads from its environment (`BENCH_SECS`,
//! `BENCH_ROUNDS`, ...).

/// `name`'s value, parsed; `default` when it is unset or does not parse.
pub(crate) fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
