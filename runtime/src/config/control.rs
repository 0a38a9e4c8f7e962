//! Where the control server listens, as the builder says.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

/// Where the control server listens, from the builder.
#[derive(Clone, Default)]
pub(crate) struct ControlConfig {
    /// `Some(false)`: off; `Some(true)`: on; `None`: on under `run` only.
    pub(crate) enabled: Option<bool>,
    pub(crate) path: Option<PathBuf>,
    pub(crate) tcp: Option<(SocketAddr, String)>,
}

/// Shows everything but the token.
impl fmt::Debug for ControlConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ControlConfig")
            .field("enabled", &self.enabled)
            .field("path", &self.path)
            .field("tcp", &self.tcp.as_ref().map(|(addr, _)| (addr, "***")))
            .finish()
    }
}
