//! The message bus between workers: slot inboxes, broadcast, topics, and
//! request/reply.

use std::borrow::Cow;
use std::cell::Cell;
use std::fmt;
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use crate::rt::bus::{BusBackend, Mailbox, Pending, RemoteSend, SendMode};
use crate::rt::Owner;
use crate::{json, Error, ShutdownSignal};

thread_local! {
    /// Set on forkless worker threads, whose runtimes have tokio's timer.
    static TOKIO_TIMER: Cell<bool> = const { Cell::new(false) };
}

/// Marks this thread as one whose tokio runtime has a timer (a forkless
/// worker's), so that request timeouts use it (see
/// [`rt::mark_tokio_timer_thread`](crate::rt::mark_tokio_timer_thread)).
pub(crate) fn mark_tokio_timer_thread() {
    TOKIO_TIMER.with(|t| t.set(true));
}

/// The cluster's message bus.
///
/// Every slot has an inbox: a bounded queue that outlives the slot's
/// workers, so what is sent while a slot restarts reaches its next
/// generation. A worker reads its own with
/// [`Worker::inbox`](crate::Worker::inbox). Messages are [`Bytes`]; the
/// `*_as` methods send any serde type as JSON.
///
/// - [`send`](Bus::send) to one slot, waiting while its inbox is full;
///   [`try_send`](Bus::try_send) fails instead.
/// - [`broadcast`](Bus::broadcast) to every live slot, once each.
/// - [`publish`](Bus::publish) on a topic, to every current
///   [`subscribe`](Bus::subscribe)r.
/// - [`request`](Bus::request) a slot and wait for its
///   [`reply`](Envelope::reply).
/// - With the Redis backend (`Builder::bus_backend`), reach the slots of
///   other clusters, on other hosts, by their host's name:
///   [`send_to`](Bus::send_to) and [`request_to`](Bus::request_to); topics
///   are then shared by every host.
///
/// Messages from one sender to one receiver arrive in the order sent. Get a
/// bus from a worker with [`Worker::bus`](crate::Worker::bus) (its messages
/// name the worker's slot as sender), or with `Cluster::bus` from outside
/// the workers. Once the cluster has stopped, every call fails with
/// [`Error::is_stopped`].
///
/// # Examples
///
/// ```no_run
/// # async fn body(worker: forkless_worker::Worker) -> Result<(), forkless_worker::Error> {
/// let bus = worker.bus();
/// if worker.slot() == 0 {
///     // Ask every other worker to drop a cached entry.
///     bus.broadcast("invalidate user:42").await?;
/// }
/// let mut inbox = worker.inbox();
/// while let Some(envelope) = inbox.recv().await {
///     println!("from {:?}: {:?}", envelope.from(), envelope.message());
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Bus {
    backend: Arc<dyn BusBackend>,
    owner: Option<Owner>,
    /// The inboxes as this handle was made: a send reads this handle's own
    /// copy, not a shared counter.
    mailboxes: Arc<Vec<Arc<Mailbox>>>,
}

impl Bus {
    /// Creates a handle on `backend`, sending as `owner`'s slot (see
    /// [`rt::bus_handle`](crate::rt::bus_handle)).
    pub(crate) fn new(backend: Arc<dyn BusBackend>, owner: Option<Owner>) -> Bus {
        let mailboxes = backend.mailboxes();
        Bus {
            backend,
            owner,
            mailboxes,
        }
    }

    /// This host's name: with the Redis backend, the name other hosts
    /// address this cluster's slots by (see
    /// [`send_to`](Bus::send_to)); with the in-process one, the cluster's
    /// name.
    pub fn host(&self) -> &str {
        self.backend.host()
    }

    /// The number of slots: messages go to slots `0..size()`.
    pub fn size(&self) -> usize {
        self.backend.mailboxes().len()
    }

    /// Sends `message` to `slot`'s inbox, waiting while it is full.
    ///
    /// # Errors
    ///
    /// [`Error::is_no_such_slot`] at once if the cluster has no such slot;
    /// [`Error::is_stopped`] if the slot has stopped for good or the cluster
    /// has stopped.
    pub async fn send(&self, slot: usize, message: impl Into<Bytes>) -> Result<(), Error> {
        let mailbox = self.mailbox(slot)?;
        mailbox
            .tx
            .send(self.envelope(message.into(), None, None))
            .await
            .map_err(|_| self.gone(slot))?;
        mailbox.sent.fetch_add(1, Relaxed);
        Ok(())
    }

    /// Sends `message` encoded as JSON; see [`send`](Bus::send).
    pub async fn send_as<T: Serialize + ?Sized>(
        &self,
        slot: usize,
        message: &T,
    ) -> Result<(), Error> {
        self.send(slot, encode(message)?).await
    }

    /// Sends `message` to `slot` if its inbox has room.
    ///
    /// # Errors
    ///
    /// [`Error::is_full`] if it has none; otherwise as [`send`](Bus::send).
    pub fn try_send(&self, slot: usize, message: impl Into<Bytes>) -> Result<(), Error> {
        let mailbox = self.mailbox(slot)?;
        match mailbox
            .tx
            .try_send(self.envelope(message.into(), None, None))
        {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => Err(Error::full(format!(
                "the inbox of slot {slot} is full ({} messages)",
                mailbox.tx.max_capacity()
            ))),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(self.gone(slot)),
        }
    }

    /// Sends `message` to `slot` of `host`: another cluster sharing this
    /// bus through Redis (see `Builder::bus_backend`), or this one (`host`
    /// equal to [`host`](Bus::host) is the same as [`send`](Bus::send)).
    /// Waits while the receiving host's inbox is full.
    ///
    /// # Errors
    ///
    /// [`Error::is_no_such_slot`] if no host of that name is up (or the
    /// bus is in-process) or it has no such slot;
    /// [`Error::is_unavailable`] if Redis cannot be reached; otherwise as
    /// [`send`](Bus::send).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn f(bus: forkless_worker::Bus) -> Result<(), forkless_worker::Error> {
    /// bus.send_to("web-2", 0, "refresh the price list").await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn send_to(
        &self,
        host: &str,
        slot: usize,
        message: impl Into<Bytes>,
    ) -> Result<(), Error> {
        if host == self.host() {
            return self.send(slot, message).await;
        }
        self.remote(host, slot, message.into(), SendMode::Wait)
            .await
            .map(drop)
    }

    /// Sends `message` to `slot` of `host` as a request and waits for the
    /// reply, at most the cluster's request timeout. See
    /// [`send_to`](Bus::send_to) and [`request`](Bus::request).
    pub async fn request_to(
        &self,
        host: &str,
        slot: usize,
        message: impl Into<Bytes>,
    ) -> Result<Bytes, Error> {
        if host == self.host() {
            return self.request(slot, message).await;
        }
        let timeout = self.backend.request_timeout();
        let reply = self
            .remote(host, slot, message.into(), SendMode::Request(timeout))
            .await?;
        reply.ok_or_else(|| Error::no_reply(format!("no reply from slot {slot} of host {host:?}")))
    }

    async fn remote(
        &self,
        host: &str,
        slot: usize,
        message: Bytes,
        mode: SendMode,
    ) -> Result<Option<Bytes>, Error> {
        self.check_open()?;
        let pending = self.backend.send_remote(RemoteSend {
            from: self.owner.map(|o| o.slot),
            host: host.to_owned(),
            slot,
            message,
            mode,
        });
        settle(pending).await
    }

    /// Sends `message` to every live slot (this worker's own included), once
    /// each, waiting while an inbox is full. Returns how many slots it
    /// reached: slots that stopped for good are skipped.
    pub async fn broadcast(&self, message: impl Into<Bytes>) -> Result<usize, Error> {
        self.check_open()?;
        let reached = self
            .backend
            .broadcast(self.owner.map(|o| o.slot), message.into())
            .await;
        self.check_open()?;
        Ok(reached)
    }

    /// Broadcasts `message` encoded as JSON; see [`broadcast`](Bus::broadcast).
    pub async fn broadcast_as<T: Serialize + ?Sized>(&self, message: &T) -> Result<usize, Error> {
        self.broadcast(encode(message)?).await
    }

    /// Publishes `message` on `topic` to each of its subscribers, waiting
    /// while a subscriber's queue is full. Returns how many subscribers it
    /// reached (0 if the topic has none: nothing is kept for later ones).
    ///
    /// With the Redis backend, the topic is shared by every host on the
    /// same Redis, and the count is of the hosts that had subscribers to it
    /// (each delivers to its own).
    pub async fn publish(&self, topic: &str, message: impl Into<Bytes>) -> Result<usize, Error> {
        self.check_open()?;
        let message = message.into();
        if let Some(pending) =
            self.backend
                .publish_shared(self.owner.map(|o| o.slot), topic, &message)
        {
            return settle(pending).await;
        }
        let topic_name: Arc<str> = Arc::from(topic);
        let mut reached = 0;
        for subscriber in self.backend.subscribers(topic).iter() {
            let envelope = self.envelope(message.clone(), Some(topic_name.clone()), None);
            if subscriber.send(envelope).await.is_ok() {
                reached += 1;
            }
        }
        self.backend.published(reached);
        Ok(reached)
    }

    /// Publishes `message` encoded as JSON; see [`publish`](Bus::publish).
    pub async fn publish_as<T: Serialize + ?Sized>(
        &self,
        topic: &str,
        message: &T,
    ) -> Result<usize, Error> {
        self.publish(topic, encode(message)?).await
    }

    /// Subscribes to `topic`: the returned [`Subscription`] receives what is
    /// published on it from now on, until it is dropped.
    pub fn subscribe(&self, topic: &str) -> Result<Subscription, Error> {
        let subscribed = self.backend.subscribe(self.owner, topic)?;
        Ok(Subscription {
            topic: topic.into(),
            id: subscribed.id,
            rx: subscribed.rx,
            confirmed: subscribed.confirmed,
            backend: self.backend.clone(),
        })
    }

    /// Sends `message` to `slot` as a request and waits for the reply, at
    /// most the cluster's request timeout (`Builder::request_timeout`).
    ///
    /// # Errors
    ///
    /// [`Error::is_no_reply`] if the receiver dropped the request without
    /// replying (or exited first); [`Error::is_timeout`] if no reply came in
    /// time; otherwise as [`send`](Bus::send).
    pub async fn request(&self, slot: usize, message: impl Into<Bytes>) -> Result<Bytes, Error> {
        let timeout = self.backend.request_timeout();
        self.request_timeout(slot, message, timeout).await
    }

    /// [`request`](Bus::request) with its own timeout.
    pub async fn request_timeout(
        &self,
        slot: usize,
        message: impl Into<Bytes>,
        timeout: Duration,
    ) -> Result<Bytes, Error> {
        let mailbox = self.mailbox(slot)?;
        let (reply_tx, reply_rx) = oneshot::channel();
        let envelope = self.envelope(message.into(), None, Some(reply_tx));
        let exchange = async {
            mailbox
                .tx
                .send(envelope)
                .await
                .map_err(|_| self.gone(slot))?;
            mailbox.sent.fetch_add(1, Relaxed);
            reply_rx.await.map_err(|_| {
                Error::no_reply(format!(
                    "slot {slot} dropped the request without replying (or exited first)"
                ))
            })
        };
        let late = || Error::timeout(format!("no reply from slot {slot} within {timeout:?}"));
        if TOKIO_TIMER.with(Cell::get) {
            tokio::time::timeout(timeout, exchange)
                .await
                .unwrap_or_else(|_| Err(late()))
        } else {
            let mut alarm = self.backend.alarm(timeout);
            tokio::select! {
                biased;
                result = exchange => result,
                _ = &mut alarm.rx => Err(late()),
            }
        }
    }

    /// Sends `request` encoded as JSON and decodes the JSON reply as `R`.
    pub async fn request_as<T: Serialize + ?Sized, R: DeserializeOwned>(
        &self,
        slot: usize,
        request: &T,
    ) -> Result<R, Error> {
        let reply = self.request(slot, encode(request)?).await?;
        decode(&reply)
    }

    fn envelope(
        &self,
        message: Bytes,
        topic: Option<Arc<str>>,
        reply: Option<oneshot::Sender<Bytes>>,
    ) -> Envelope {
        Envelope {
            from: self.owner.map(|o| o.slot),
            host: None,
            topic,
            message,
            reply,
        }
    }

    fn mailbox(&self, slot: usize) -> Result<Cow<'_, Arc<Mailbox>>, Error> {
        self.check_open()?;
        if let Some(mailbox) = self.mailboxes.get(slot) {
            if !mailbox.tx.is_closed() {
                return Ok(Cow::Borrowed(mailbox));
            }
        }
        // The cluster may have been resized since this handle was made.
        let mailboxes = self.backend.mailboxes();
        match mailboxes.get(slot) {
            Some(mailbox) => Ok(Cow::Owned(mailbox.clone())),
            None => Err(Error::no_such_slot(slot, mailboxes.len())),
        }
    }

    fn check_open(&self) -> Result<(), Error> {
        if self.backend.is_closed() {
            Err(Error::stopped("bus"))
        } else {
            Ok(())
        }
    }

    fn gone(&self, slot: usize) -> Error {
        if self.backend.is_closed() {
            Error::stopped("bus")
        } else {
            Error::stopped(&format!(
                "send to slot {slot}: the slot has stopped for good (it gave up, or its \
                 restart policy ended it), and its inbox is closed"
            ))
        }
    }
}

impl fmt::Debug for Bus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bus")
            .field("from", &self.owner.map(|o| o.slot))
            .finish_non_exhaustive()
    }
}

/// A message as it arrives: what was sent, who sent it, and for a request,
/// the way to reply.
pub struct Envelope {
    from: Option<usize>,
    host: Option<Arc<str>>,
    topic: Option<Arc<str>>,
    message: Bytes,
    reply: Option<oneshot::Sender<Bytes>>,
}

impl Envelope {
    /// An envelope for a message that came through a shared bus, from
    /// another host (`host`) or this one (`None`) (see
    /// [`rt::envelope`](crate::rt::envelope)).
    pub(crate) fn from_host(
        host: Option<Arc<str>>,
        from: Option<usize>,
        topic: Option<Arc<str>>,
        message: Bytes,
        reply: Option<oneshot::Sender<Bytes>>,
    ) -> Envelope {
        Envelope {
            from,
            host,
            topic,
            message,
            reply,
        }
    }

    /// The sender's slot, or `None` if it was sent from outside the workers
    /// (through `Cluster::bus`). With [`host`](Envelope::host), the slot
    /// is on that host.
    pub fn from(&self) -> Option<usize> {
        self.from
    }

    /// The host it came from, if it came from another host through the
    /// Redis backend (`None`: from this cluster). Reply to it with
    /// [`Bus::send_to`]`(host, from, ..)`, or [`reply`](Envelope::reply)
    /// to a request.
    pub fn host(&self) -> Option<&str> {
        self.host.as_deref()
    }

    /// The topic it was published on, for messages from a [`Subscription`].
    pub fn topic(&self) -> Option<&str> {
        self.topic.as_deref()
    }

    /// The message.
    pub fn message(&self) -> &Bytes {
        &self.message
    }

    /// The message, without the envelope. A request dropped this way gets
    /// no reply (its sender sees [`Error::is_no_reply`]).
    pub fn into_message(self) -> Bytes {
        self.message
    }

    /// The message decoded from JSON as a `T`.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, Error> {
        decode(&self.message)
    }

    /// Returns true if the sender waits for a [`reply`](Envelope::reply).
    pub fn is_request(&self) -> bool {
        self.reply.is_some()
    }

    /// Answers a request. Returns false if this is not a request, or its
    /// sender stopped waiting (timed out).
    pub fn reply(mut self, message: impl Into<Bytes>) -> bool {
        match self.reply.take() {
            Some(tx) => tx.send(message.into()).is_ok(),
            None => false,
        }
    }

    /// Answers a request with `message` encoded as JSON.
    pub fn reply_as<T: Serialize + ?Sized>(self, message: &T) -> Result<bool, Error> {
        let bytes = encode(message)?;
        Ok(self.reply(bytes))
    }
}

impl fmt::Debug for Envelope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Envelope")
            .field("from", &self.from)
            .field("host", &self.host)
            .field("topic", &self.topic)
            .field("message", &self.message)
            .field("request", &self.is_request())
            .finish()
    }
}

/// A worker's inbox, from [`Worker::inbox`](crate::Worker::inbox): the
/// messages sent to its slot, in order per sender.
///
/// It ends (yields `None`) once the worker is asked to stop: messages still
/// queued then stay in the slot's inbox for the next generation. It also
/// ends if a newer `Inbox` of the slot was taken by this worker, or once a
/// newer generation serves the slot, since one slot has one reader. A
/// generation that does not serve yet (a rolling restart's candidate before
/// it is ready) waits for its turn.
pub struct Inbox {
    mailbox: Arc<Mailbox>,
    generation: u64,
    claim: u64,
    stop: ShutdownSignal,
    ended: bool,
}

impl Inbox {
    pub(crate) fn new(mailbox: Arc<Mailbox>, generation: u64, stop: ShutdownSignal) -> Inbox {
        let claim = mailbox.claim(generation);
        Inbox {
            mailbox,
            generation,
            claim,
            stop,
            ended: false,
        }
    }

    /// The next message, or `None` once the inbox has ended.
    pub async fn recv(&mut self) -> Option<Envelope> {
        poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// Polls for the next message; see [`recv`](Inbox::recv).
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Envelope>> {
        if self.ended || Pin::new(&mut self.stop).poll(cx).is_ready() {
            self.ended = true;
            return Poll::Ready(None);
        }
        let next = self.mailbox.poll_recv(self.generation, self.claim, cx);
        if let Poll::Ready(None) = next {
            self.ended = true;
        }
        next
    }

    /// How many messages wait.
    pub fn len(&self) -> usize {
        self.mailbox.len()
    }

    /// Returns true if no message waits.
    pub fn is_empty(&self) -> bool {
        self.mailbox.is_empty()
    }
}

impl futures_core::Stream for Inbox {
    type Item = Envelope;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Envelope>> {
        self.get_mut().poll_recv(cx)
    }
}

impl fmt::Debug for Inbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Inbox")
            .field("waiting", &self.len())
            .field("ended", &self.ended)
            .finish()
    }
}

/// Messages published on a topic, from [`Bus::subscribe`]. Dropping it
/// unsubscribes. It ends (yields `None`) when the cluster stops.
pub struct Subscription {
    topic: Box<str>,
    id: u64,
    rx: mpsc::Receiver<Envelope>,
    confirmed: Option<Pending<()>>,
    backend: Arc<dyn BusBackend>,
}

impl Subscription {
    /// The topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The next message, or `None` once the cluster has stopped.
    pub async fn recv(&mut self) -> Option<Envelope> {
        self.rx.recv().await
    }

    /// Waits until the subscription is in effect on every host: with the
    /// Redis backend, `subscribe` returns before Redis has acknowledged it,
    /// and what other hosts publish before then is not received. At once
    /// with the in-process backend.
    ///
    /// # Errors
    ///
    /// [`Error::is_unavailable`] if Redis cannot be reached (the bus keeps
    /// trying, and the subscription takes effect once it can).
    pub async fn confirmed(&mut self) -> Result<(), Error> {
        match self.confirmed.take() {
            None => Ok(()),
            Some(pending) => settle(pending).await,
        }
    }

    /// Polls for the next message; see [`recv`](Subscription::recv).
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Envelope>> {
        self.rx.poll_recv(cx)
    }
}

impl futures_core::Stream for Subscription {
    type Item = Envelope;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Envelope>> {
        self.get_mut().rx.poll_recv(cx)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.backend.unsubscribe(&self.topic, self.id);
    }
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

/// Waits for an answer the backend sends later.
async fn settle<T>(pending: Pending<T>) -> Result<T, Error> {
    pending.await.map_err(|_| Error::stopped("bus"))?
}

fn encode<T: Serialize + ?Sized>(message: &T) -> Result<Bytes, Error> {
    json::encode(message, || "a bus message".to_owned())
}

fn decode<T: DeserializeOwned>(message: &Bytes) -> Result<T, Error> {
    json::decode(message, || "a bus message".to_owned())
}
