//! [`Recycle`]: when a healthy worker is replaced anyway, the way gunicorn's
//! `max_requests` and uWSGI's `max-worker-lifetime` and `reload-on-rss`
//! replace theirs, and the per-generation limits drawn from it with jitter.

use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

use forkless_worker::rt::Errors as _;
use forkless_worker::Error;

/// When a worker is recycled: replaced by the slot's next generation
/// although it is healthy, to bound what a long-lived worker accumulates
/// (fragmented or leaked memory, stale caches, connection imbalance).
///
/// A recycle is a one-slot rolling restart: the next generation starts on
/// the same core and sockets, and the old one is asked to stop only once the
/// new one is ready, so no connection is lost; one slot at a time in the
/// whole cluster, so capacity never drops by more than one worker. It is not
/// a failure: it counts neither towards the restart throttle nor towards
/// giving up. Each recycle is an [`Event::Recycled`](crate::Event::Recycled)
/// with its [`RecycleReason`](crate::RecycleReason), counted in the metrics
/// (`forkless_worker_recycles_total{slot,reason}`) and shown in the status.
/// Limits are checked four times per `stall_timeout` (every 500 ms by
/// default); a slot is recycled again only once the old generation of its
/// last replacement has ended, and slots take turns.
///
/// ```no_run
/// use std::time::Duration;
/// use forkless_runtime::{Cluster, Recycle};
///
/// let cluster = Cluster::builder()
///     .recycle(
///         Recycle::new()
///             .max_connections(100_000)
///             .max_age(Duration::from_secs(6 * 3600))
///             .jitter(0.1),
///     )
///     .start(|worker| async move { worker.shutdown_signal().await })?;
/// # Ok::<(), forkless_worker::Error>(())
/// ```
///
/// The variables `FORKLESS_RECYCLE_MAX_CONNECTIONS`,
/// `FORKLESS_RECYCLE_MAX_AGE`, `FORKLESS_RECYCLE_JITTER` and
/// `FORKLESS_RECYCLE_MAX_MEMORY` override it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Recycle {
    pub(crate) max_connections: Option<u64>,
    pub(crate) max_age: Option<Duration>,
    pub(crate) jitter: f64,
    pub(crate) max_memory: Option<u64>,
}

/// The shortest `max_age`: a generation must have time to get ready and
/// serve before it is replaced again.
const MIN_AGE: Duration = Duration::from_secs(1);

impl Recycle {
    /// No limit: nothing is recycled until a limit is set.
    pub fn new() -> Recycle {
        Recycle::default()
    }

    /// Recycles a generation once it has accepted `connections` connections
    /// (at least 1).
    pub fn max_connections(mut self, connections: u64) -> Recycle {
        self.max_connections = Some(connections);
        self
    }

    /// Recycles a generation once it has served for `age` since it was
    /// ready (at least a second, at most a year).
    pub fn max_age(mut self, age: Duration) -> Recycle {
        self.max_age = Some(age);
        self
    }

    /// Spreads the recycles: each generation's connection and age limits are
    /// drawn at random between the limit and `(1 + fraction)` times it, so
    /// slots under even load do not all reach theirs at once. From 0 (the
    /// default: every generation gets the limit itself) to 1.
    pub fn jitter(mut self, fraction: f64) -> Recycle {
        self.jitter = fraction;
        self
    }

    pub(crate) fn check(&self) -> Result<(), Error> {
        if self.max_connections == Some(0) {
            return Err(Error::config(
                "recycle: max_connections must be at least 1, got 0",
            ));
        }
        if let Some(age) = self.max_age {
            if age < MIN_AGE {
                return Err(Error::config(format!(
                    "recycle: max_age must be at least {MIN_AGE:?}, got {age:?}"
                )));
            }
            crate::time::deadline::check_option("recycle: max_age", age)?;
        }
        if !(0.0..=1.0).contains(&self.jitter) {
            return Err(Error::config(format!(
                "recycle: jitter must be a fraction from 0 to 1, got {}",
                self.jitter
            )));
        }
        match self.max_memory {
            Some(0) => {
                return Err(Error::config(
                    "recycle: max_memory must be at least 1 byte, got 0",
                ))
            }
            Some(_) if !crate::alloc::is_counting() => {
                return Err(Error::config(
                    "recycle: max_memory needs forkless::alloc::Counting as the global allocator \
                     (#[global_allocator] static ALLOC: forkless::alloc::Counting<std::alloc::System> \
                     = forkless::alloc::Counting::new(std::alloc::System);): without it a worker's \
                     memory is unknown",
                ))
            }
            _ => {}
        }
        Ok(())
    }

    /// Recycles a worker whose generation holds more than `bytes` of heap
    /// (at least 1): what its thread allocated and has not freed, as
    /// [`Counting`](crate::Counting) counts it. Needs `Counting` as the
    /// program's global allocator: without it a worker's memory is unknown,
    /// and [`start`](crate::Builder::start) refuses this limit. No jitter
    /// applies: it is a ceiling. Counts are per thread: bytes a worker
    /// allocates and another thread frees (a store value another worker
    /// overwrites, a bus message read elsewhere) stay counted on the
    /// worker that allocated them, so set the limit with what a worker
    /// hands to others in mind.
    pub fn max_memory(mut self, bytes: u64) -> Recycle {
        self.max_memory = Some(bytes);
        self
    }

    /// One generation's limits, with the jitter drawn.
    pub(crate) fn draw(&self) -> Limits {
        self.draw_with(random_fraction())
    }

    /// [`draw`](Recycle::draw) with `u` in `[0, 1)` as the random draw.
    pub(crate) fn draw_with(&self, u: f64) -> Limits {
        let stretch = 1.0 + self.jitter * u;
        Limits {
            // Float to integer casts saturate: no overflow at u64::MAX.
            connections: self
                .max_connections
                .map(|n| ((n as f64) * stretch).max(n as f64) as u64),
            age: self.max_age.map(|age| {
                Duration::try_from_secs_f64(age.as_secs_f64() * stretch)
                    .unwrap_or(age)
                    .min(crate::time::deadline::MAX_OPTION.max(age))
            }),
        }
    }
}

/// A generation's own limits: [`Recycle`]'s with its jitter drawn.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct Limits {
    pub(crate) connections: Option<u64>,
    pub(crate) age: Option<Duration>,
}

/// A number in `[0, 1)`, different each call (std's randomly seeded hasher:
/// no random-number crate for one draw per generation).
fn random_fraction() -> f64 {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(0);
    (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// Parses a size in bytes: `"512"`, `"64k"`, `"512MiB"`, `"1.5G"`. The
/// suffixes are binary (`k` = 1024), with or without `iB`/`B`.
pub(crate) fn parse_bytes(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let unit = unit.trim().to_ascii_lowercase();
    let unit = unit
        .strip_suffix("ib")
        .or_else(|| unit.strip_suffix('b'))
        .unwrap_or(&unit);
    let scale: f64 = match unit {
        "" => 1.0,
        "k" => 1024.0,
        "m" => 1024.0 * 1024.0,
        "g" => 1024.0 * 1024.0 * 1024.0,
        "t" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    };
    let bytes = number * scale;
    (bytes.is_finite() && bytes >= 1.0 && bytes < u64::MAX as f64).then_some(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_bad_value_is_refused_with_its_name() {
        for (recycle, said) in [
            (Recycle::new().max_connections(0), "max_connections"),
            (Recycle::new().max_age(Duration::ZERO), "max_age"),
            (
                Recycle::new().max_age(Duration::from_millis(999)),
                "max_age",
            ),
            (Recycle::new().max_age(Duration::MAX), "max_age"),
            (Recycle::new().jitter(-0.1), "jitter"),
            (Recycle::new().jitter(1.5), "jitter"),
            (Recycle::new().jitter(f64::NAN), "jitter"),
            (Recycle::new().jitter(f64::INFINITY), "jitter"),
            (Recycle::new().max_memory(0), "max_memory"),
            // The unit tests run under the system allocator.
            (Recycle::new().max_memory(1 << 30), "Counting"),
        ] {
            let e = recycle.check().expect_err(said);
            assert!(e.is_config() && e.to_string().contains(said), "{e}");
        }
        Recycle::new()
            .max_connections(1)
            .max_age(Duration::from_secs(1))
            .jitter(1.0)
            .check()
            .expect("the smallest values");
        Recycle::new()
            .max_connections(u64::MAX)
            .max_age(crate::time::deadline::MAX_OPTION)
            .check()
            .expect("the largest values");
        assert!(Recycle::new().jitter(0.5).check().is_ok());
    }

    #[test]
    fn jitter_spreads_limits_between_the_limit_and_one_plus_the_fraction() {
        let recycle = Recycle::new()
            .max_connections(1000)
            .max_age(Duration::from_secs(100))
            .jitter(0.5);
        assert_eq!(
            recycle.draw_with(0.0),
            Limits {
                connections: Some(1000),
                age: Some(Duration::from_secs(100)),
            }
        );
        let high = recycle.draw_with(0.999_999);
        assert_eq!(high.connections, Some(1499));
        assert!(high.age.is_some_and(|a| a > Duration::from_secs(149)));
        let drawn: Vec<Limits> = (0..64).map(|_| recycle.draw()).collect();
        for limits in &drawn {
            let n = limits.connections.expect("set");
            assert!((1000..=1500).contains(&n), "{n}");
            let age = limits.age.expect("set");
            assert!(age >= Duration::from_secs(100) && age <= Duration::from_secs(150));
        }
        assert!(
            drawn.iter().any(|l| l != &drawn[0]),
            "64 draws are not all the same"
        );
        // No jitter: every generation gets the limit itself.
        let exact = Recycle::new().max_connections(7);
        assert!((0..16).all(|_| exact.draw().connections == Some(7)));
        // The extremes neither overflow nor panic.
        let huge = Recycle::new()
            .max_connections(u64::MAX)
            .max_age(crate::time::deadline::MAX_OPTION)
            .jitter(1.0)
            .draw_with(0.999);
        assert_eq!(huge.connections, Some(u64::MAX));
        assert_eq!(huge.age, Some(crate::time::deadline::MAX_OPTION));
    }

    #[test]
    fn sizes_parse_with_binary_suffixes_and_garbage_does_not() {
        assert_eq!(parse_bytes("512"), Some(512));
        assert_eq!(parse_bytes("64k"), Some(65_536));
        assert_eq!(parse_bytes("512MiB"), Some(512 << 20));
        assert_eq!(parse_bytes(" 2 GB "), Some(2 << 30));
        assert_eq!(parse_bytes("1.5g"), Some(3 << 29));
        for garbage in ["", "0", "-5", "abc", "12 parsecs", "1e400", "99999999999T"] {
            assert_eq!(parse_bytes(garbage), None, "{garbage:?}");
        }
    }
}
