//! Deadlines from durations that users, workers and operators pass. The sum
//! never panics: a deadline past what `Instant` can hold saturates to
//! [`FAR`] from now, which is "no deadline" in practice (tokio does the same
//! for its timers).

use forkless_worker::rt::Errors as _;
use std::time::{Duration, Instant};

/// About thirty years: the deadline that stands for "never".
pub(crate) const FAR: Duration = Duration::from_secs(86_400 * 365 * 30);

/// The longest duration a builder option, a `FORKLESS_*` variable or a
/// backend setting may hold: longer is refused at start with
/// [`Error::is_config`](forkless_worker::Error::is_config).
pub(crate) const MAX_OPTION: Duration = Duration::from_secs(86_400 * 365);

/// `now + d`, or [`FAR`] from `now` when that overflows.
pub(crate) fn after(now: Instant, d: Duration) -> Instant {
    now.checked_add(d)
        .or_else(|| now.checked_add(FAR))
        .unwrap_or(now)
}

/// [`after`] from now.
pub(crate) fn from_now(d: Duration) -> Instant {
    after(Instant::now(), d)
}

/// Refuses a duration option over [`MAX_OPTION`], naming it.
pub(crate) fn check_option(what: &str, d: Duration) -> Result<(), forkless_worker::Error> {
    if d > MAX_OPTION {
        return Err(forkless_worker::Error::config(format!(
            "{what} must be at most {} days, got {d:?}",
            MAX_OPTION.as_secs() / 86_400
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_durations_saturate_instead_of_panicking() {
        let now = Instant::now();
        assert_eq!(
            after(now, Duration::from_secs(1)),
            now + Duration::from_secs(1)
        );
        assert_eq!(after(now, Duration::MAX), now + FAR);
        assert!(from_now(Duration::MAX) > now + MAX_OPTION);
    }

    #[test]
    fn options_over_the_maximum_are_refused_by_name() {
        assert!(check_option("shutdown_timeout", MAX_OPTION).is_ok());
        let e = check_option("shutdown_timeout", Duration::MAX).expect_err("refused");
        assert!(
            e.is_config() && e.to_string().contains("shutdown_timeout"),
            "{e}"
        );
    }
}
