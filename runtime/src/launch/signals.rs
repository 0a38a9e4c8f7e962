//! The signal handlers of [`Builder::run`](crate::Builder::run).

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGTTIN, SIGTTOU, SIGUSR2};
use signal_hook::iterator::{Handle, Signals};

use crate::Cluster;

/// The installed handlers; [`Installed::uninstall`] gives SIGINT, SIGTERM,
/// SIGHUP and SIGUSR2 their default action (ending the process) back. SIGTTIN and
/// SIGTTOU stay ignored (their default, stopping the process, only matters
/// to a background job reading or writing its terminal).
pub(crate) struct Installed {
    handle: Handle,
    restore_default: Arc<AtomicBool>,
}

impl Installed {
    pub(crate) fn uninstall(self) {
        self.handle.close();
        // signal-hook cannot remove its handler; it emulates the default
        // action from now on.
        self.restore_default.store(true, Ordering::SeqCst);
    }
}

/// Handlers installed before the cluster starts, so that a signal that
/// comes while it starts waits for it instead of ending the process.
pub(crate) struct Prepared {
    signals: Signals,
    restore_default: Arc<AtomicBool>,
}

/// Installs the handlers; the signals queue until [`Prepared::serve`].
pub(crate) fn prepare() -> io::Result<Prepared> {
    let restore_default = Arc::new(AtomicBool::new(false));
    for signal in [SIGINT, SIGTERM, SIGHUP, SIGUSR2] {
        signal_hook::flag::register_conditional_default(signal, restore_default.clone())?;
    }
    let signals = Signals::new([SIGINT, SIGTERM, SIGHUP, SIGUSR2, SIGTTIN, SIGTTOU])?;
    Ok(Prepared {
        signals,
        restore_default,
    })
}

impl Prepared {
    /// Gives the default actions back, for a cluster that did not start.
    pub(crate) fn abandon(self) {
        self.signals.handle().close();
        self.restore_default.store(true, Ordering::SeqCst);
    }

    /// Acts on the signals for `cluster`, queued ones first.
    pub(crate) fn serve(self, cluster: Cluster) -> io::Result<Installed> {
        install(self, cluster)
    }
}

/// SIGINT or SIGTERM: graceful stop; a second one: terminate. SIGHUP:
/// rolling restart. SIGUSR2: upgrade to the program on disk. SIGTTIN /
/// SIGTTOU: one worker more / less.
fn install(prepared: Prepared, cluster: Cluster) -> io::Result<Installed> {
    let Prepared {
        mut signals,
        restore_default,
    } = prepared;
    let handle = signals.handle();
    thread::Builder::new()
        .name("forkless-signals".to_owned())
        .spawn(move || {
            let mut seen = 0;
            let faults = cluster.shared.faults.clone();
            for signal in signals.forever() {
                faults.caught("forkless-signals", "a signal", || {
                    act(&cluster, signal, &mut seen)
                });
            }
        })?;
    Ok(Installed {
        handle,
        restore_default,
    })
}

/// Acts on one signal; `seen` counts the stop signals so far.
fn act(cluster: &Cluster, signal: i32, seen: &mut u32) {
    match signal {
        SIGHUP => {
            tracing::info!(signal = "SIGHUP", "rolling restart");
            if let Err(e) = cluster.restart() {
                tracing::warn!(signal = "SIGHUP", error = %e, "no rolling restart");
            }
            return;
        }
        SIGUSR2 => {
            tracing::info!(signal = "SIGUSR2", "upgrade");
            // It waits for the new process: not on the signal thread, so
            // that SIGTERM still stops this one meanwhile.
            let cluster = cluster.clone();
            let spawned = thread::Builder::new()
                .name("forkless-upgrade".to_owned())
                .spawn(move || match cluster.upgrade() {
                    Ok(pid) => tracing::info!(signal = "SIGUSR2", pid, "upgraded"),
                    Err(e) => tracing::error!(signal = "SIGUSR2", error = %e, "no upgrade"),
                });
            if let Err(e) = spawned {
                tracing::error!(signal = "SIGUSR2", error = %e, "cannot start the upgrade");
            }
            return;
        }
        SIGTTIN | SIGTTOU => {
            let size = cluster.status().size;
            let (name, to) = if signal == SIGTTIN {
                ("SIGTTIN", size + 1)
            } else {
                ("SIGTTOU", size.saturating_sub(1))
            };
            tracing::info!(signal = name, from = size, to, "resizing");
            if let Err(e) = cluster.resize(to) {
                tracing::warn!(signal = name, error = %e, "no resize");
            }
            return;
        }
        _ => {}
    }
    *seen += 1;
    let name = if signal == SIGINT {
        "SIGINT"
    } else {
        "SIGTERM"
    };
    if *seen == 1 {
        tracing::info!(
            signal = name,
            "stopping gracefully; send it again to terminate"
        );
        cluster.shutdown();
    } else {
        tracing::warn!(signal = name, "terminating");
        cluster.terminate();
    }
}
