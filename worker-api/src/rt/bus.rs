//! The bus's half of the contract: what a router implements
//! ([`BusBackend`]) for the client ([`Bus`](crate::Bus),
//! [`Inbox`](crate::Inbox), [`Subscription`](crate::Subscription)), and the
//! slot inbox ([`Mailbox`]) both sides share.
//!
//! Routing is the router's: a send to a slot goes into that slot's
//! [`Mailbox`], found in the table [`BusBackend::mailboxes`] returns (the
//! client keeps a copy until the cluster resizes); a broadcast, a publish
//! and a send to another host are the router's to fan out
//! ([`BusBackend::broadcast`], [`BusBackend::subscribers`],
//! [`BusBackend::send_remote`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::oneshot;

use super::Owner;
use crate::Error;

/// A slot's inbox: a bounded queue that outlives the slot's workers. The
/// generation that serves the slot reads it (see [`Mailbox::serve`]); within
/// that generation, its newest claimant (see [`Mailbox::claim`]).
pub struct Mailbox {
    /// Where messages for the slot go.
    pub tx: tokio::sync::mpsc::Sender<crate::Envelope>,
    /// Messages put in this inbox, for metrics.
    pub sent: std::sync::atomic::AtomicU64,
    rx: std::sync::Mutex<tokio::sync::mpsc::Receiver<crate::Envelope>>,
    /// 1 + the generation that reads the inbox; 0 before the first serves.
    serving: std::sync::atomic::AtomicU64,
    /// The claim that may read: the serving generation's newest.
    reading: std::sync::atomic::AtomicU64,
    readers: std::sync::Mutex<Readers>,
}

/// Claims of generations that do not serve yet, and who waits for a turn.
#[derive(Default)]
struct Readers {
    next_claim: u64,
    /// The newest claim of each generation that does not serve yet.
    early: Vec<(u64, u64)>,
    waiting: Vec<std::task::Waker>,
}

impl Mailbox {
    /// An empty inbox with room for `capacity` messages.
    pub fn new(capacity: usize) -> Mailbox {
        let (tx, rx) = tokio::sync::mpsc::channel(capacity);
        Mailbox {
            tx,
            sent: std::sync::atomic::AtomicU64::new(0),
            rx: std::sync::Mutex::new(rx),
            serving: std::sync::atomic::AtomicU64::new(0),
            reading: std::sync::atomic::AtomicU64::new(0),
            readers: std::sync::Mutex::new(Readers::default()),
        }
    }

    /// Makes `generation` the slot's reader: the one that serves. Older
    /// generations read nothing more; a newer one that claimed the inbox
    /// early (a candidate of a rolling restart that is not ready yet) waits
    /// until it serves, so that a candidate that fails leaves the inbox to
    /// the generation that serves on.
    pub fn serve(&self, generation: u64) {
        use std::sync::atomic::Ordering::SeqCst;
        let mut readers = self.readers();
        let claim = readers
            .early
            .iter()
            .filter(|(g, _)| *g == generation)
            .map(|(_, c)| *c)
            .max();
        readers.early.retain(|(g, _)| *g > generation);
        // No claim yet: none may read until one is made.
        self.reading.store(claim.unwrap_or(0), SeqCst);
        self.serving.store(generation + 1, SeqCst);
        let waiting = std::mem::take(&mut readers.waiting);
        drop(readers);
        // A waker is its task's code: one that panics does not keep the
        // others asleep, and its panic goes on to the caller afterwards.
        let mut panicked = None;
        for waker in waiting {
            let woken = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| waker.wake()));
            if let Err(payload) = woken {
                panicked.get_or_insert(payload);
            }
        }
        if let Some(payload) = panicked {
            std::panic::resume_unwind(payload);
        }
    }

    /// Makes the caller the only reader of `generation`'s turn: earlier
    /// claimants of the same generation read nothing more. Returns the claim
    /// to present to [`Mailbox::poll_recv`].
    pub fn claim(&self, generation: u64) -> u64 {
        use std::sync::atomic::Ordering::SeqCst;
        let mut readers = self.readers();
        readers.next_claim += 1;
        let claim = readers.next_claim;
        match self.serving.load(SeqCst).checked_sub(1) {
            Some(serving) if serving == generation => self.reading.store(claim, SeqCst),
            Some(serving) if serving > generation => {}
            _ => {
                readers.early.retain(|(g, _)| *g != generation);
                readers.early.push((generation, claim));
            }
        }
        claim
    }

    /// Receives for `claim` of `generation`: `Ready(None)` once a newer
    /// claim or generation reads, or the inbox is closed and empty; pending
    /// while `generation` does not serve yet.
    pub fn poll_recv(
        &self,
        generation: u64,
        claim: u64,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<crate::Envelope>> {
        use std::sync::atomic::Ordering::SeqCst;
        loop {
            match self.serving.load(SeqCst).checked_sub(1) {
                Some(serving) if serving == generation => {
                    if self.reading.load(SeqCst) != claim {
                        return std::task::Poll::Ready(None);
                    }
                    return self.receiver().poll_recv(cx);
                }
                Some(serving) if serving > generation => return std::task::Poll::Ready(None),
                _ => {
                    let mut readers = self.readers();
                    // Checked again under the lock that `serve` takes: no
                    // turn can come between this look and the waker.
                    let serving = self.serving.load(SeqCst).checked_sub(1);
                    if serving.is_some_and(|s| s >= generation) {
                        continue;
                    }
                    if !readers.waiting.iter().any(|w| w.will_wake(cx.waker())) {
                        readers.waiting.push(cx.waker().clone());
                    }
                    return std::task::Poll::Pending;
                }
            }
        }
    }

    /// Refuses new messages and drops the queued ones (whose requests then
    /// fail with "no reply"). Returns how many were dropped.
    pub fn close(&self) -> usize {
        let mut rx = self.receiver();
        rx.close();
        let mut dropped = 0;
        while rx.try_recv().is_ok() {
            dropped += 1;
        }
        dropped
    }

    /// How many messages wait in the inbox.
    pub fn len(&self) -> usize {
        self.receiver().len()
    }

    /// Returns true if no message waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn readers(&self) -> std::sync::MutexGuard<'_, Readers> {
        // Nothing runs under this lock that could panic halfway.
        self.readers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn receiver(&self) -> std::sync::MutexGuard<'_, tokio::sync::mpsc::Receiver<crate::Envelope>> {
        // Nothing runs under this lock that could panic halfway.
        self.rx
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl std::fmt::Debug for Mailbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mailbox").finish_non_exhaustive()
    }
}

/// Resolves at a deadline kept by the cluster's timer thread, for code that
/// runs without a tokio timer. Dropping it cancels the timer.
pub struct Alarm {
    /// Fires at the deadline.
    pub rx: oneshot::Receiver<()>,
    /// Cancels the timer.
    pub cancel: Option<Box<dyn FnOnce() + Send>>,
}

impl Drop for Alarm {
    fn drop(&mut self) {
        if let Some(cancel) = self.cancel.take() {
            cancel();
        }
    }
}

/// A subscription's queue, as the bus's router gives it.
pub struct Subscribed {
    /// Identifies the subscription, to unsubscribe it.
    pub id: u64,
    /// The messages published on the topic from now on.
    pub rx: tokio::sync::mpsc::Receiver<crate::Envelope>,
    /// Answers once the subscription is in effect beyond this process (a
    /// shared bus); `None` when it is at once.
    pub confirmed: Option<Pending<()>>,
}

/// A broadcast under way: resolves to how many slots it reached.
pub type Broadcast = Pin<Box<dyn Future<Output = usize> + Send>>;

/// An answer that comes later, on a channel; if the channel closes without
/// one, the bus or store was closed.
pub type Pending<T> = oneshot::Receiver<Result<T, Error>>;

/// How a message to another host's slot is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendMode {
    /// Wait while the inbox is full.
    Wait,
    /// Fail with a "full" error if the inbox is full.
    Try,
    /// Send as a request and wait at most this long for the reply.
    Request(Duration),
}

/// A message for a slot of another host.
#[derive(Debug, Clone)]
pub struct RemoteSend {
    /// The sender's slot, if a worker sends it.
    pub from: Option<usize>,
    /// The receiving host.
    pub host: String,
    /// The receiving slot on that host.
    pub slot: usize,
    /// The message.
    pub message: Bytes,
    /// How to send it.
    pub mode: SendMode,
}

/// The router behind a [`Bus`](crate::Bus): slot inboxes and topics.
pub trait BusBackend: Send + Sync + 'static {
    /// This host's name, by which other hosts address its slots.
    fn host(&self) -> &str;

    /// Sends to a slot of another host. The answer is the reply, for a
    /// request. A bus that does not reach other hosts answers with a
    /// "no such slot" error.
    fn send_remote(&self, send: RemoteSend) -> Pending<Option<Bytes>>;

    /// Publishes on a topic that other hosts share, and answers how many
    /// receivers it reached; `None` if topics are this process's own (then
    /// the client delivers to [`subscribers`](BusBackend::subscribers)).
    fn publish_shared(
        &self,
        from: Option<usize>,
        topic: &str,
        message: &[u8],
    ) -> Option<Pending<usize>> {
        let _ = (from, topic, message);
        None
    }

    /// Every slot's inbox, by slot: read on every send that misses the
    /// client's copy and by [`Bus::size`](crate::Bus::size); replaced, never
    /// changed in place, when the cluster resizes.
    fn mailboxes(&self) -> Arc<Vec<Arc<Mailbox>>>;

    /// Sends `message` from `from` to every live slot of this cluster, once
    /// each, waiting while an inbox is full; resolves to how many slots it
    /// reached (an inbox that closed, a slot stopped for good, is skipped).
    fn broadcast(&self, from: Option<usize>, message: Bytes) -> Broadcast;

    /// Subscribes `owner` to `topic`.
    fn subscribe(&self, owner: Option<Owner>, topic: &str) -> Result<Subscribed, Error>;

    /// Ends subscription `id` to `topic`.
    fn unsubscribe(&self, topic: &str, id: u64);

    /// The queues of `topic`'s subscribers.
    fn subscribers(&self, topic: &str) -> Arc<[tokio::sync::mpsc::Sender<crate::Envelope>]>;

    /// Returns true once the cluster has stopped.
    fn is_closed(&self) -> bool;

    /// Fires after `after`, on the cluster's timer thread.
    fn alarm(&self, after: Duration) -> Alarm;

    /// How long a request waits for its reply unless told otherwise.
    fn request_timeout(&self) -> Duration;

    /// Counts messages delivered to topic subscribers, for metrics.
    fn published(&self, delivered: usize);
}
