//! The control protocol of a forkless cluster, typed: what the control
//! server (in `forkless-runtime`) sends and what `forkless-ctl` reads, as
//! one set of `serde` types that both sides use, so that they cannot drift.
//!
//! The protocol is HTTP/1.1 + JSON on a Unix socket (mode 0600):
//!
//! | request | answer |
//! |---|---|
//! | `GET /status` | [`Status`] |
//! | `GET /events` | one [`Event`] per line (newline-delimited JSON), until the cluster stops |
//! | `POST /resize` | body [`ResizeRequest`]; answer [`ResizeAnswer`] |
//! | `POST /restart` | [`RestartAnswer`]: a rolling restart began |
//! | `POST /recycle` | body [`RecycleRequest`]; answer [`RecycleAnswer`]: one slot's worker is being replaced |
//! | `POST /shutdown` | [`ShutdownAnswer`]: a graceful stop began |
//! | `GET /metrics` | Prometheus metrics, in the text format |
//!
//! Any other path is `404`; a known path with another method is `405` with
//! `Allow`. Every error is 4xx with an [`ErrorBody`]: `{"error": "..."}`.
//!
//! Besides the types: [`default_socket`], where a cluster's socket is by
//! default, and [`Client`], which talks to a server only after checking
//! (`SO_PEERCRED`) that it runs as this user or as root.
//!
//! # Example
//!
//! ```no_run
//! use forkless_control::{default_socket, Client, Workers};
//!
//! # async fn example() -> Result<(), forkless_control::Error> {
//! let client = Client::new(default_socket("api"));
//! let status = client.status().await?;
//! for worker in &status.workers {
//!     println!("slot {} is {}", worker.slot, worker.state);
//! }
//! let resized = client.resize(Workers::More(1)).await?;
//! println!("{} -> {} workers", resized.from, resized.to);
//! # Ok(())
//! # }
//! ```

mod client;
mod socket;
mod wire;

pub use client::{Client, Error, EventStream};
pub use socket::{
    default_socket, default_socket_place, discover, effective_uid, peer_trusted, SocketPlace,
};
pub use wire::{
    BackendStatus, ErrorBody, Event, RecycleAnswer, RecycleRequest, ResizeAnswer, ResizeRequest,
    RestartAnswer, ShutdownAnswer, Status, UpgradeAnswer, WorkerState, WorkerStatus, Workers,
};
