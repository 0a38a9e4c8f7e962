//! The signal handlers of [`Builder::run`](crate::Builder::run).

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGTTIN, SIGTTOU};
use signal_hook::iterator::{Handle, Signals};

use crate::Cluster;

/// The installed handlers; [`Installed::uninstall`] gives SIGINT, SIGTERM
/// and SIGHUP their default action (ending the process) back. SIGTTIN and
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

/// SIGINT or SIGTERM: graceful stop; a second one: terminate. SIGHUP:
/// rolling restart. SIGTTIN / SIGTTOU: one worker more / less.
pub(crate) fn install(cluster: Cluster) -> io::Result<Installed> {
    let restore_default = Arc::new(AtomicBool::new(false));
    for signal in [SIGINT, SIGTERM, SIGHUP] {
        signal_hook::flag::register_conditional_default(signal, restore_default.clone())?;
    }
    let mut signals = Signals::new([SIGINT, SIGTERM, SIGHUP, SIGTTIN, SIGTTOU])?;
    let handle = signals.handle();
    thread::Builder::new()
        .name("forkless-signals".to_owned())
        .spawn(move || {
            let mut seen = 0;
            for signal in signals.forever() {
                match signal {
                    SIGHUP => {
                        tracing::info!(signal = "SIGHUP", "rolling restart");
                        if let Err(e) = cluster.restart() {
                            tracing::warn!(signal = "SIGHUP", error = %e, "no rolling restart");
                        }
                        continue;
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
                        continue;
                    }
                    _ => {}
                }
                seen += 1;
                let name = if signal == SIGINT {
                    "SIGINT"
                } else {
                    "SIGTERM"
                };
                if seen == 1 {
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
        })?;
    Ok(Installed {
        handle,
        restore_default,
    })
}
