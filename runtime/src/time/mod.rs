//! Time: deadlines that saturate instead of overflowing, with the one-year
//! maximum of duration options ([`deadline`]), and the cluster's timer
//! thread ([`clock`]) that fires lock leases, acquire and request timeouts
//! and expiry sweeps.

pub(crate) mod clock;
pub(crate) mod deadline;
