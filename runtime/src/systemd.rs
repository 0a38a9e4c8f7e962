//! systemd's notification protocol (`sd_notify(3)`), through the sd-notify
//! crate: readiness, reloading, stopping, and watchdog pings.

use std::time::Duration;

use sd_notify::NotifyState;

pub(crate) struct Systemd {
    enabled: bool,
    /// How often to ping the watchdog: half of `WATCHDOG_USEC`.
    watchdog: Option<Duration>,
}

impl Systemd {
    /// Notifies only when asked to and `NOTIFY_SOCKET` is set.
    pub(crate) fn new(asked: bool) -> Systemd {
        let enabled = asked && std::env::var_os("NOTIFY_SOCKET").is_some();
        let mut usec = 0;
        let watchdog = (enabled && sd_notify::watchdog_enabled(false, &mut usec) && usec > 0)
            .then(|| Duration::from_micros(usec) / 2);
        Systemd { enabled, watchdog }
    }

    pub(crate) fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog
    }

    fn send(&self, states: &[NotifyState<'_>]) {
        if self.enabled {
            if let Err(e) = sd_notify::notify(false, states) {
                tracing::warn!(error = %e, "cannot notify systemd");
            }
        }
    }

    pub(crate) fn ready(&self, status: &str) {
        self.send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    pub(crate) fn reloading(&self) {
        match NotifyState::monotonic_usec_now() {
            Ok(now) => self.send(&[NotifyState::Reloading, now]),
            Err(e) => tracing::warn!(error = %e, "cannot read CLOCK_MONOTONIC for systemd"),
        }
    }

    pub(crate) fn stopping(&self) {
        self.send(&[NotifyState::Stopping]);
    }

    pub(crate) fn ping(&self) {
        self.send(&[NotifyState::Watchdog]);
    }
}
