//! The bus's router: one inbox per slot, the topics and their subscribers.
//!
//! An inbox is a bounded tokio channel owned by its slot, not by a worker:
//! a generation that exits leaves the queued messages for the next one, and
//! only a slot that stops for good (or the cluster's stop) closes it. Senders
//! put messages straight into the receiver's channel: the router is not on
//! the path of a message.
//!
//! The table of inboxes is read far more often than it changes (a broadcast,
//! a send that misses the client's copy, the Redis bus's every delivery;
//! changed only by a resize), so it lives in an `ArcSwap`: a read takes no
//! lock and writes no shared counter; a resize builds a new table and swaps
//! it in.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use forkless_worker::rt::bus::{
    Alarm, Broadcast, BusBackend, Mailbox, Pending, RemoteSend, Subscribed,
};
use forkless_worker::rt::Errors as _;
use forkless_worker::rt::Owner;
use forkless_worker::{Envelope, Error};
use tokio::sync::{mpsc, oneshot};

use crate::bus::BusEngine;
use crate::time::clock::Clock;

pub(crate) struct Router {
    /// The cluster's name, which stands for its host.
    host: String,
    /// Every slot's inbox, by slot.
    mailboxes: ArcSwap<Vec<Arc<Mailbox>>>,
    /// Held while the table is replaced, so that two changes do not race.
    resizing: Mutex<()>,
    topics: Mutex<HashMap<String, Topic>>,
    closed: AtomicBool,
    next_id: AtomicU64,
    capacity: usize,
    request_timeout: Duration,
    clock: Arc<Clock>,
    published: AtomicU64,
    /// Messages of inboxes that were replaced (a slot retired or back).
    retired_sent: AtomicU64,
}

#[derive(Default)]
struct Topic {
    subscribers: Vec<Subscriber>,
    /// The subscribers' queues, as publishers take them: rebuilt on each
    /// change, so that a publish copies one pointer.
    senders: Arc<[mpsc::Sender<Envelope>]>,
}

struct Subscriber {
    id: u64,
    owner: Option<Owner>,
    tx: mpsc::Sender<Envelope>,
}

impl Topic {
    fn rebuild(&mut self) {
        self.senders = self.subscribers.iter().map(|s| s.tx.clone()).collect();
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The topic map holds no invariant that a panic could break halfway.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Router {
    pub(crate) fn new(
        size: usize,
        capacity: usize,
        request_timeout: Duration,
        clock: Arc<Clock>,
        host: String,
    ) -> Router {
        Router {
            host,
            mailboxes: ArcSwap::from_pointee(
                (0..size)
                    .map(|_| Arc::new(Mailbox::new(capacity)))
                    .collect(),
            ),
            resizing: Mutex::new(()),
            topics: Mutex::new(HashMap::new()),
            closed: AtomicBool::new(false),
            next_id: AtomicU64::new(1),
            capacity,
            request_timeout,
            clock,
            published: AtomicU64::new(0),
            retired_sent: AtomicU64::new(0),
        }
    }

    /// How many messages an inbox holds.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    /// Closes the inbox of a slot that will not run again: senders get an
    /// error from now on, and queued requests fail with "no reply".
    pub(crate) fn close_slot(&self, slot: usize) {
        if let Some(mailbox) = self.mailboxes.load().get(slot) {
            let dropped = mailbox.close();
            if dropped > 0 {
                tracing::warn!(slot, dropped, "the slot's inbox closed with messages in it");
            }
        }
    }

    /// Gives the bus `size` slots. Inboxes of slots that go away close (their
    /// queued requests fail with "no reply"); slots that come (back) get a
    /// new, empty inbox.
    pub(crate) fn resize(&self, size: usize) {
        let _resizing = lock(&self.resizing);
        let mailboxes = self.mailboxes.load_full();
        for mailbox in mailboxes.iter().take(size).filter(|m| m.tx.is_closed()) {
            self.retired_sent
                .fetch_add(mailbox.sent.load(Ordering::Relaxed), Ordering::Relaxed);
        }
        for (slot, mailbox) in mailboxes.iter().enumerate().skip(size) {
            self.retired_sent
                .fetch_add(mailbox.sent.load(Ordering::Relaxed), Ordering::Relaxed);
            let dropped = mailbox.close();
            if dropped > 0 {
                tracing::warn!(
                    slot,
                    dropped,
                    "a retired slot's inbox closed with messages in it"
                );
            }
        }
        let table = (0..size)
            .map(|slot| match mailboxes.get(slot) {
                Some(m) if !m.tx.is_closed() => m.clone(),
                _ => Arc::new(Mailbox::new(self.capacity)),
            })
            .collect();
        self.mailboxes.store(Arc::new(table));
    }

    /// Messages put in inboxes and delivered to subscribers so far.
    pub(crate) fn messages(&self) -> u64 {
        let inboxes: u64 = self
            .mailboxes
            .load()
            .iter()
            .map(|m| m.sent.load(Ordering::Relaxed))
            .sum();
        inboxes + self.retired_sent.load(Ordering::Relaxed) + self.published.load(Ordering::Relaxed)
    }

    /// Ends the subscriptions of a worker that exited (one abandoned as hung
    /// would otherwise hold up its topics' publishers).
    pub(crate) fn owner_exited(&self, owner: Owner) {
        let mut topics = lock(&self.topics);
        topics.retain(|_, topic| {
            let before = topic.subscribers.len();
            topic.subscribers.retain(|s| s.owner != Some(owner));
            if topic.subscribers.len() != before {
                topic.rebuild();
            }
            !topic.subscribers.is_empty()
        });
    }

    /// Closes the bus: every inbox and subscription ends, every call fails.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        for slot in 0..self.mailboxes.load().len() {
            self.close_slot(slot);
        }
        let topics = std::mem::take(&mut *lock(&self.topics));
        drop(topics);
    }
}

impl BusEngine for Router {
    fn close_slot(&self, slot: usize) {
        Router::close_slot(self, slot);
    }

    fn serve(&self, slot: usize, generation: u64) {
        if let Some(mailbox) = self.mailboxes.load().get(slot) {
            mailbox.serve(generation);
        }
    }

    fn resize(&self, size: usize) {
        Router::resize(self, size);
    }

    fn messages(&self) -> u64 {
        Router::messages(self)
    }

    fn owner_exited(&self, owner: Owner) {
        Router::owner_exited(self, owner);
    }

    fn close(&self, _handed_over: bool) {
        Router::close(self);
    }
}

impl BusBackend for Router {
    fn host(&self) -> &str {
        &self.host
    }

    fn send_remote(&self, send: RemoteSend) -> Pending<Option<Bytes>> {
        let (tx, rx) = oneshot::channel();
        let _ = tx.send(Err(Error::no_such_address(format!(
            "no host {:?} (slot {}): this cluster's bus is in-process and reaches its own \
             host {:?} only; clusters share a bus through the Redis backend",
            send.host, send.slot, self.host
        ))));
        rx
    }

    fn mailboxes(&self) -> Arc<Vec<Arc<Mailbox>>> {
        self.mailboxes.load_full()
    }

    fn broadcast(&self, from: Option<usize>, message: Bytes) -> Broadcast {
        let mailboxes = self.mailboxes.load_full();
        Box::pin(async move {
            let mut reached = 0;
            for mailbox in mailboxes.iter() {
                let envelope =
                    forkless_worker::rt::envelope(None, from, None, message.clone(), None);
                if mailbox.tx.send(envelope).await.is_ok() {
                    mailbox.sent.fetch_add(1, Ordering::Relaxed);
                    reached += 1;
                }
            }
            reached
        })
    }

    fn subscribe(&self, owner: Option<Owner>, topic: &str) -> Result<Subscribed, Error> {
        let mut topics = lock(&self.topics);
        // Checked under the lock that `close` takes after setting the flag:
        // no subscription is added to a closed bus.
        if self.closed.load(Ordering::SeqCst) {
            return Err(Error::stopped(&format!("subscribe to topic {topic:?}")));
        }
        let (tx, rx) = mpsc::channel(self.capacity);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let entry = topics.entry(topic.to_owned()).or_default();
        entry.subscribers.push(Subscriber { id, owner, tx });
        entry.rebuild();
        Ok(Subscribed {
            id,
            rx,
            confirmed: None,
        })
    }

    fn unsubscribe(&self, topic: &str, id: u64) {
        let mut topics = lock(&self.topics);
        if let Some(entry) = topics.get_mut(topic) {
            entry.subscribers.retain(|s| s.id != id);
            entry.rebuild();
            if entry.subscribers.is_empty() {
                topics.remove(topic);
            }
        }
    }

    fn subscribers(&self, topic: &str) -> Arc<[mpsc::Sender<Envelope>]> {
        lock(&self.topics)
            .get(topic)
            .map_or_else(|| Arc::from([]), |t| t.senders.clone())
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    fn alarm(&self, after: Duration) -> Alarm {
        let (tx, rx) = oneshot::channel();
        let key = self
            .clock
            .schedule(crate::time::deadline::from_now(after), move || {
                let _ = tx.send(());
            });
        let clock = self.clock.clone();
        Alarm {
            rx,
            cancel: Some(Box::new(move || clock.cancel(Some(key)))),
        }
    }

    fn request_timeout(&self) -> Duration {
        self.request_timeout
    }

    fn published(&self, delivered: usize) {
        self.published
            .fetch_add(delivered as u64, Ordering::Relaxed);
    }
}
