//! The worker side of a [forkless] cluster: everything code running inside a
//! worker touches.
//!
//! A forkless cluster runs one single-threaded tokio runtime per core. Each of
//! them runs the same *worker body*, an `async fn(Worker)`. The [`Worker`]
//! handed to it says where it runs ([`slot`](Worker::slot),
//! [`generation`](Worker::generation), [`core`](Worker::core)), opens
//! listeners that outlive the worker ([`listen`](Worker::listen)), and tells
//! it when to stop ([`shutdown_signal`](Worker::shutdown_signal)), and reaches
//! the cluster's shared key/value [`Store`] ([`store`](Worker::store)) and
//! message [`Bus`] ([`bus`](Worker::bus), [`inbox`](Worker::inbox)).
//!
//! This crate knows nothing about threads or supervision: those belong to the
//! master, in `forkless-runtime`, which implements the contract in [`rt`]. Libraries that only need a worker's context
//! (a session store, a metrics layer) depend on this crate alone. Applications
//! use the `forkless` facade, which re-exports everything here.
//!
//! ```no_run
//! # async fn body(worker: forkless_worker::Worker) -> Result<(), forkless_worker::Error> {
//! let listener = worker.listen("127.0.0.1:8080").await?;
//! while let Some(conn) = listener.accept().await {
//!     let (stream, peer) = conn?;
//!     // hand `stream` to hyper, axum, or your own protocol...
//!     # drop((stream, peer));
//! }
//! // `accept` returned `None`: the worker is asked to stop; finish in-flight
//! // work and return.
//! # Ok(())
//! # }
//! ```
//!
//! # Features
//!
//! - `http`: the `http` module, which serves a hyper service on a worker's
//!   [`Listener`] and drains its connections when the worker is asked to
//!   stop without losing a keep-alive client's request.
//! - `axum` (implies `http`): [`Listener`] implements
//!   `axum::serve::Listener`, and `http::serve_axum` serves an axum app.
//!
//! [forkless]: https://docs.rs/forkless
#![doc(test(attr(deny(warnings), allow(dead_code, unused_variables))))]

mod bus;
mod error;
#[cfg(feature = "http")]
pub mod http;
mod json;
mod listener;
pub mod rt;
mod shutdown;
mod store;
mod worker;

pub use bus::{Bus, Envelope, Inbox, Subscription};
pub use error::Error;
pub use listener::{ListenAddr, Listener};
pub use shutdown::ShutdownSignal;
pub use store::{BlockingCollection, Collection, CollectionOptions, KeyLock, LockOptions, Store};
pub use worker::Worker;

pub use bytes::Bytes;
