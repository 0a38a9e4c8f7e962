//! Listening sockets: the [`registry`] holds every slot's `SO_REUSEPORT`
//! socket for as long as the cluster runs and hands workers duplicates;
//! [`activation`] adopts the sockets systemd passed.

mod activation;
pub(crate) mod registry;
