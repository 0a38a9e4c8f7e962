//! Configuration: the [`Builder`](builder::Builder) and its checks, the
//! `FORKLESS_*` overrides ([`env`]), where the store and bus keep their data
//! ([`backend`], [`redis`]), where the control server listens ([`control`]),
//! when a worker is recycled ([`recycle`]), the failure policies
//! ([`policies`]),
//! and the worker body as the supervisor holds it ([`body`]). Plain data:
//! nothing here starts a thread.

pub(crate) mod backend;
pub(crate) mod body;
pub(crate) mod builder;
pub(crate) mod control;
pub(crate) mod env;
pub(crate) mod policies;
pub(crate) mod recycle;
#[cfg(feature = "redis")]
pub(crate) mod redis;

pub(crate) use backend::Backend;
pub(crate) use control::ControlConfig;
#[cfg(feature = "redis")]
pub(crate) use redis::RedisConfig;

/// The most workers `resize` (and `FORKLESS_WORKERS`) accept.
pub(crate) const MAX_WORKERS: usize = 4096;
