//! Where a cluster's store and bus keep their data.

use forkless_worker::Error;

/// Where a cluster's [`Store`](forkless_worker::Store) or
/// [`Bus`](forkless_worker::Bus) keeps its data, for
/// [`Builder::store_backend`](crate::Builder::store_backend) and
/// [`Builder::bus_backend`](crate::Builder::bus_backend).
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub enum Backend {
    /// In this process, shared by this cluster's workers only: the fastest,
    /// and the default.
    #[default]
    InProcess,
    /// In a Redis server, shared by every cluster (every host) that points
    /// at it with the same prefix. Needs the `redis` feature.
    #[cfg(feature = "redis")]
    Redis(super::RedisConfig),
}

#[cfg(feature = "redis")]
impl From<super::RedisConfig> for Backend {
    fn from(config: super::RedisConfig) -> Backend {
        Backend::Redis(config)
    }
}

impl Backend {
    pub(crate) fn check(&self) -> Result<(), Error> {
        match self {
            Backend::InProcess => Ok(()),
            #[cfg(feature = "redis")]
            Backend::Redis(config) => config.check(),
        }
    }
}
