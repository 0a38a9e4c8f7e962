//! What a cluster tells about itself: its [`events`] (a numbered log every
//! reader follows), its status (the view the supervisor publishes), and
//! its Prometheus [`metrics`], and why a worker was [`recycle`]d. Written by the supervisor and the engines,
//! read by the cluster's handle and the control server.

pub(crate) mod events;
pub(crate) mod metrics;
pub(crate) mod recycle;

/// How a remote backend (Redis) is doing, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Health {
    /// Whether its last command was answered.
    pub(crate) reachable: bool,
    /// Commands that failed because it could not be reached or did not
    /// answer.
    pub(crate) failures: u64,
}
