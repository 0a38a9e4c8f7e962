//! The signal handlers of [`Builder::run`](crate::Builder::run).

use std::io;
use std::thread;

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::{Handle, Signals};

use crate::Cluster;

/// SIGINT or SIGTERM: graceful stop; a second one: terminate.
pub(crate) fn install(cluster: Cluster) -> io::Result<Handle> {
    let mut signals = Signals::new([SIGINT, SIGTERM])?;
    let handle = signals.handle();
    thread::Builder::new()
        .name("forkless-signals".to_owned())
        .spawn(move || {
            let mut seen = 0;
            for signal in signals.forever() {
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
    Ok(handle)
}
