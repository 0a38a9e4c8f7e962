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
        let watchdog = if enabled { watchdog_usec() } else { None }
            .map(|usec| Duration::from_micros(usec) / 2);
        Systemd { enabled, watchdog }
    }

    /// How often systemd wants a `WATCHDOG=1`, and whether it wants one at
    /// all.
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

    /// An upgrade's new process serves: it is the service's main process
    /// from now on (`NotifyAccess=` must let this process send it).
    pub(crate) fn main_pid(&self, pid: u32) {
        self.send(&[
            NotifyState::MainPid(pid),
            NotifyState::Ready,
            NotifyState::Status("upgraded"),
        ]);
    }

    pub(crate) fn stopping(&self) {
        self.send(&[NotifyState::Stopping]);
    }

    pub(crate) fn ping(&self) {
        self.send(&[NotifyState::Watchdog]);
    }
}

/// `WATCHDOG_USEC`, as `sd_watchdog_enabled(3)` reads it: ignored when
/// `WATCHDOG_PID` names another process; 0 means no watchdog.
///
/// `sd_notify::watchdog_enabled` reads both variables and checks the pid. In
/// sd-notify 0.4 it also wants `WATCHDOG_PID` to be set, where
/// `sd_watchdog_enabled(3)` (and sd-notify 0.5) take a lone `WATCHDOG_USEC`
/// as meant for this process: only that case is read here.
fn watchdog_usec() -> Option<u64> {
    let mut usec = 0;
    let enabled = if std::env::var_os("WATCHDOG_PID").is_some() {
        // The environment is left as it is: unsetting it is not safe once
        // other threads run.
        sd_notify::watchdog_enabled(false, &mut usec)
    } else {
        match std::env::var("WATCHDOG_USEC").map(|v| v.trim().parse()) {
            Ok(Ok(value)) => {
                usec = value;
                true
            }
            _ => false,
        }
    };
    (enabled && usec > 0).then_some(usec)
}
