//! Why a worker was recycled: [`RecycleReason`], in
//! [`Event::Recycled`](crate::Event::Recycled), the status and the metrics.

use std::fmt;
use std::time::Duration;

/// Why a healthy worker was replaced by its slot's next generation (see
/// [`Recycle`](crate::Recycle)).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RecycleReason {
    /// It accepted its generation's connection limit.
    MaxConnections {
        /// The generation's limit (`max_connections`, with its jitter).
        limit: u64,
        /// What it had accepted when it was recycled.
        accepted: u64,
    },
    /// It ran for its generation's age limit.
    MaxAge {
        /// The generation's limit (`max_age`, with its jitter).
        limit: Duration,
        /// How long it had run.
        age: Duration,
    },
    /// Its generation held more heap than `max_memory` (counted by
    /// [`Counting`](crate::Counting)).
    MaxMemory {
        /// `max_memory`.
        limit: u64,
        /// What it held.
        bytes: u64,
    },
    /// [`Cluster::recycle`](crate::Cluster::recycle) asked for it (or
    /// `forkless-ctl recycle`, `POST /recycle`).
    Requested,
}

impl RecycleReason {
    /// A short name for metrics labels and logs: `"max_connections"`,
    /// `"max_age"`, `"max_memory"` or `"requested"`.
    pub fn name(&self) -> &'static str {
        match self {
            RecycleReason::MaxConnections { .. } => "max_connections",
            RecycleReason::MaxAge { .. } => "max_age",
            RecycleReason::MaxMemory { .. } => "max_memory",
            RecycleReason::Requested => "requested",
        }
    }
}

impl fmt::Display for RecycleReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecycleReason::MaxConnections { limit, accepted } => {
                write!(f, "max_connections: accepted {accepted} of {limit}")
            }
            RecycleReason::MaxAge { limit, age } => write!(
                f,
                "max_age: ran {} of {}",
                humantime::format_duration(Duration::from_secs(age.as_secs())),
                humantime::format_duration(Duration::from_secs(limit.as_secs()))
            ),
            RecycleReason::MaxMemory { limit, bytes } => {
                write!(f, "max_memory: held {bytes} bytes of {limit}")
            }
            RecycleReason::Requested => f.write_str("requested"),
        }
    }
}
