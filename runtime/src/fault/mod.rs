//! Faults: how a worker's generation ended ([`exit`]: `Exit`, the panic
//! hook that records where a worker panicked) and the guard around what the
//! runtime's own threads run ([`guard`]: a panic there is caught, logged and
//! counted, never the end of the master).

pub(crate) mod exit;
pub(crate) mod guard;
