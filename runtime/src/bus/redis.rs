//! The bus across hosts, on Redis.
//!
//! Slots of one cluster still talk in-process (the [`Router`]); Redis
//! carries what crosses hosts:
//!
//! - Each host announces itself with a key that expires unless renewed
//!   (`{prefix}:b:host:{name}`, holding its number of slots), and reads a
//!   list of its own (`{prefix}:b:in:{name}`) into its slots' inboxes
//!   in batches (through a list of each batch's own, so that a read whose
//!   reply is lost loses no message). A
//!   send to another host checks that it is up and has the slot, and pushes
//!   onto its list, in one script. Messages wait in the list while the host
//!   is away (a restart with the same name finds them).
//! - A request carries an id and the requesting process's instance (see
//!   below); the receiving host pushes the reply (or "no reply") onto that
//!   instance's own list of replies (`{prefix}:b:re:{name}:{instance}`),
//!   which only that process reads.
//! - Topics are Redis pub/sub channels (`{prefix}:b:t:{topic}`), subscribed
//!   while the host has a subscriber.
//!
//! A frame is a JSON header line, then the message's bytes. The reading of
//! a host's list is in [`read`].
//!
//! **Two processes of one host.** During an upgrade's overlap the old and
//! the new process are the same host: they announce the same name and both
//! read the host's list. Each process is an *instance* of its host, named
//! `{pid}-{nanos}` at start, so that:
//!
//! - A reply goes to the requesting instance's own list, never to the
//!   host's: a reply cannot be taken by the other process, nor answer a
//!   request of the same number there, and it reaches its requester
//!   whichever process of the requester's host reads the host list. (Each
//!   instance also numbers its requests from a random start, so that a reply
//!   from an older build, which knows no instances and answers on the host
//!   list, meets a request of another instance with the same number only by
//!   a one in 2^62 chance.) The replies' list has a reader of its own, with
//!   the same batches as the host list's, so no reply is lost either.
//! - Once an upgrade switched ([`BusEngine::switched`]), the old process
//!   stops reading the host's list (what its reader took and had not
//!   delivered goes back, as at a stop): what other hosts send goes to the
//!   new process only, while the old one's workers drain. Its replies'
//!   reader goes on, so its own requests still get their answers.
//! - The host's presence key belongs to the host, not to an instance: a
//!   process that handed over to a new one leaves it when it stops (the new
//!   process renews it); one that stops for good deletes it.
//! - An instance says it is alive with a key of its own
//!   (`{prefix}:b:live:{name}:{instance}`, renewed with the presence) and is
//!   a member of the host's set of readers (`{prefix}:b:readers:{name}`).
//!   A process that stops gracefully puts the frames it took off the host
//!   list and had not delivered back at the head of that list, in order,
//!   for the other process (or the next start) to read first. What a
//!   process that died held is taken back by the next process of the same
//!   host that sweeps (at its start, then with each renewal of its
//!   presence): for each member of the readers whose alive key has expired,
//!   in one script that checks the key, so a live process's batch (even
//!   the other process's, during an overlap) is never taken. The frames of a
//!   batch that a dead process had already put in its inboxes come back
//!   with the rest: across a crash a message is delivered at least once. A
//!   process cut off from Redis for longer than its presence lasts counts as
//!   dead.
//!
//! Across the two processes there is no order: what one took is delivered
//! by that one (or, put back, by the other), while the other reads on.

mod instance;
mod read;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use bytes::Bytes;
use forkless_worker::rt::bus::{
    Alarm, Broadcast, BusBackend, Mailbox, Pending, RemoteSend, SendMode, Subscribed,
};
use forkless_worker::rt::Errors as _;
use forkless_worker::rt::Owner;
use forkless_worker::{Envelope, Error};
use redis::Script;
use serde::{Deserialize, Serialize};
use tokio::runtime::Handle;
use tokio::sync::{mpsc, oneshot};

use crate::bus::router::Router;
use crate::bus::BusEngine;
use crate::config::RedisConfig;
use crate::redis::{follow, Follow, Link, Via};

/// How long a host's presence lasts unless renewed, and how often it is.
const PRESENCE: Duration = Duration::from_secs(6);
const RENEW_PRESENCE: Duration = Duration::from_secs(2);
/// How long one blocking read of the host's list waits.
pub(super) const READ_WAIT: Duration = Duration::from_secs(1);
/// How long messages wait in a host's list for a host that is away (one
/// that never comes back leaves nothing behind for longer).
pub(super) const KEEP_UNREAD: Duration = Duration::from_secs(3600);

static SEND: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("scripts/bus_send.lua")));

/// What a frame is.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq, Clone, Copy)]
enum Kind {
    /// A message for a slot.
    #[serde(rename = "m")]
    Message,
    /// A request for a slot, to answer with `Reply` or `NoReply`.
    #[serde(rename = "q")]
    Request,
    #[serde(rename = "r")]
    Reply,
    #[serde(rename = "n")]
    NoReply,
    /// A message on a topic.
    #[serde(rename = "t")]
    Topic,
}

#[derive(Debug, Serialize, Deserialize)]
struct Header {
    k: Kind,
    /// The sending host.
    h: String,
    /// The sending slot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    f: Option<usize>,
    /// The receiving slot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    s: Option<usize>,
    /// The request's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    i: Option<u64>,
    /// On a request: the requesting instance, whose list the reply goes to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    o: Option<String>,
}

fn frame(header: &Header, message: &[u8]) -> Vec<u8> {
    let mut out = serde_json::to_vec(header).unwrap_or_default();
    out.push(b'\n');
    out.extend_from_slice(message);
    out
}

fn unframe(raw: &[u8]) -> Option<(Header, Bytes)> {
    let split = raw.iter().position(|&b| b == b'\n')?;
    let header = serde_json::from_slice(&raw[..split]).ok()?;
    Some((header, Bytes::copy_from_slice(&raw[split + 1..])))
}

/// The bus of one cluster, on Redis.
pub(crate) struct RedisBus {
    me: Weak<RedisBus>,
    router: Arc<Router>,
    link: Arc<Link>,
    host: Arc<str>,
    /// This process, among those of its host (`{pid}-{nanos}`).
    instance: Arc<str>,
    prefix: String,
    /// The topics this host is subscribed to on Redis.
    subscribed: Mutex<HashSet<String>>,
    /// Tells the pub/sub task what to (un)subscribe.
    subscriptions: mpsc::UnboundedSender<Follow>,
    /// Requests sent to other hosts, waiting for their replies.
    pending: Mutex<HashMap<u64, ReplyTo>>,
    next_id: AtomicU64,
    capacity: usize,
    /// Each reader's end: `true` once it gave back what it held.
    readers: Mutex<Vec<oneshot::Receiver<bool>>>,
    /// An upgrade switched to a new process: the host's list is its now.
    switched: AtomicBool,
}

/// Where the reply to a request goes.
type ReplyTo = oneshot::Sender<Result<Option<Bytes>, Error>>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing under these mutexes can panic halfway.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl RedisBus {
    pub(crate) fn start(config: &RedisConfig, router: Arc<Router>) -> Result<Arc<RedisBus>, Error> {
        let link = Link::start(config, "bus")?;
        let (tx, rx) = mpsc::unbounded_channel();
        let capacity = router.capacity();
        let (instance, first_id) = instance::new_instance();
        let (host_read, host_end) = oneshot::channel();
        let (replies_read, replies_end) = oneshot::channel();
        let bus = Arc::new_cyclic(|me| RedisBus {
            me: me.clone(),
            router,
            link: link.clone(),
            host: config.host_name().into(),
            instance: instance.into(),
            prefix: config.prefix.clone(),
            subscribed: Mutex::new(HashSet::new()),
            subscriptions: tx,
            pending: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(first_id),
            capacity,
            readers: Mutex::new(vec![host_end, replies_end]),
            switched: AtomicBool::new(false),
        });
        link.spawn(bus.clone().announce());
        link.spawn(bus.clone().read_inbox(read::Source::Host, host_read));
        link.spawn(bus.clone().read_inbox(read::Source::Replies, replies_read));
        link.spawn(bus.clone().follow_topics(rx));
        Ok(bus)
    }

    fn presence_key(&self, host: &str) -> String {
        format!("{}:b:host:{host}", self.prefix)
    }

    pub(super) fn inbox_key(&self, host: &str) -> String {
        format!("{}:b:in:{host}", self.prefix)
    }

    fn channel(&self, topic: &str) -> String {
        format!("{}:b:t:{topic}", self.prefix)
    }

    /// The longest list of messages waiting for a host.
    fn list_limit(&self, slots: usize) -> usize {
        self.capacity.saturating_mul(slots.max(1))
    }

    /// Keeps this host's presence key and this instance's alive, and takes
    /// back what processes of this host that died left undelivered.
    async fn announce(self: Arc<Self>) {
        let key = self.presence_key(&self.host);
        let mut warned = false;
        loop {
            if self.router.is_closed() {
                return;
            }
            let mut cmd = redis::cmd("SET");
            cmd.arg(&key)
                .arg(self.router.mailboxes().len())
                .arg("PX")
                .arg(PRESENCE.as_millis() as u64);
            match self.link.command::<()>("announce this host", &cmd).await {
                Ok(()) => {
                    self.renew().await;
                    self.sweep().await;
                    if warned {
                        tracing::info!(host = %self.host, "the bus reaches Redis again");
                    }
                    warned = false;
                }
                Err(e) if !warned => {
                    warned = true;
                    tracing::warn!(host = %self.host, "the bus cannot reach Redis: {e}");
                }
                Err(_) => {}
            }
            tokio::time::sleep(RENEW_PRESENCE).await;
        }
    }

    /// Delivers one frame from the host's list, or from this instance's
    /// replies. `false`: not delivered because the bus closed meanwhile (the
    /// frame is to be given back).
    pub(super) async fn deliver(&self, raw: &[u8]) -> bool {
        let Some((header, message)) = unframe(raw) else {
            tracing::warn!(host = %self.host, "dropped a bus frame this version cannot read");
            return true;
        };
        match header.k {
            Kind::Reply | Kind::NoReply => {
                let mine = header.o.as_deref().is_none_or(|o| o == &*self.instance);
                let waiting = header
                    .i
                    .filter(|_| mine)
                    .and_then(|id| lock(&self.pending).remove(&id));
                if let Some(tx) = waiting {
                    let _ = tx.send(if header.k == Kind::Reply {
                        Ok(Some(message))
                    } else {
                        Err(Error::no_reply(format!(
                            "host {:?} dropped the request without replying (or its slot \
                             exited, or is gone)",
                            header.h
                        )))
                    });
                }
            }
            Kind::Message | Kind::Request => {
                let slot = header.s.unwrap_or(usize::MAX);
                let mailbox: Option<Arc<Mailbox>> = self.router.mailboxes().get(slot).cloned();
                let (reply_tx, reply_rx) = oneshot::channel();
                let request = header.k == Kind::Request;
                let envelope = forkless_worker::rt::envelope(
                    Some(header.h.as_str().into()),
                    header.f,
                    None,
                    message,
                    request.then_some(reply_tx),
                );
                let delivered = match mailbox {
                    Some(mailbox) => {
                        let sent = mailbox.tx.send(envelope).await.is_ok();
                        if sent {
                            mailbox.sent.fetch_add(1, Ordering::Relaxed);
                        }
                        sent
                    }
                    None => false,
                };
                if !delivered && self.router.is_closed() {
                    // Its inbox closed with the bus: the reader gives the
                    // frame back (a request's sender gets no answer from
                    // this process).
                    return false;
                }
                if !delivered {
                    tracing::warn!(
                        host = %self.host, slot, from = %header.h,
                        "dropped a message from another host: this slot is gone"
                    );
                }
                if request {
                    // Answer once the receiver replies or drops the request.
                    let (to, id, link) = (header.h, header.i, self.link.clone());
                    // To the requesting instance's replies; to its host's
                    // list if it is of an older build that names none.
                    let inbox = match &header.o {
                        Some(instance) => self.reply_key(&to, instance),
                        None => self.inbox_key(&to),
                    };
                    let me = self.host.to_string();
                    link.clone().spawn(async move {
                        let (k, reply) = match reply_rx.await {
                            Ok(reply) => (Kind::Reply, reply),
                            Err(_) => (Kind::NoReply, Bytes::new()),
                        };
                        let header = Header {
                            k,
                            h: me,
                            f: None,
                            s: None,
                            i: id,
                            o: None,
                        };
                        let mut cmd = redis::pipe();
                        cmd.cmd("RPUSH")
                            .arg(&inbox)
                            .arg(frame(&header, &reply))
                            .ignore()
                            .cmd("PEXPIRE")
                            .arg(&inbox)
                            .arg(KEEP_UNREAD.as_millis() as u64)
                            .ignore();
                        if let Err(e) = link.pipeline(&cmd).await {
                            tracing::warn!(to = %to, "cannot send a reply: {e}");
                        }
                    });
                }
            }
            Kind::Topic => {}
        }
        true
    }

    /// Keeps the pub/sub connection and its subscriptions, and delivers what
    /// is published on them to this host's subscribers.
    async fn follow_topics(self: Arc<Self>, changes: mpsc::UnboundedReceiver<Follow>) {
        let link = self.link.clone();
        let prefix = self.channel("");
        let channels = || {
            lock(&self.subscribed)
                .iter()
                .map(|t| self.channel(t))
                .collect()
        };
        follow(&link, "bus", channels, changes, |channel, payload| {
            let this = self.clone();
            let topic = channel.strip_prefix(&prefix).map(str::to_owned);
            async move {
                if let Some(topic) = topic {
                    let delivery = this.publish_here(&topic, &payload);
                    this.link
                        .caught("delivering a topic's message", delivery)
                        .await;
                }
            }
        })
        .await;
    }

    /// Delivers a frame published on `topic` to this host's subscribers.
    async fn publish_here(&self, topic: &str, raw: &[u8]) {
        let Some((header, message)) = unframe(raw) else {
            return;
        };
        let from_host = (header.h != *self.host).then(|| Arc::<str>::from(header.h.as_str()));
        let topic_name: Arc<str> = Arc::from(topic);
        let mut reached = 0;
        for subscriber in self.router.subscribers(topic).iter() {
            let envelope = forkless_worker::rt::envelope(
                from_host.clone(),
                header.f,
                Some(topic_name.clone()),
                message.clone(),
                None,
            );
            if subscriber.send(envelope).await.is_ok() {
                reached += 1;
            }
        }
        self.router.published(reached);
    }

    /// Subscribes on Redis to the topics this host has subscribers for, and
    /// unsubscribes from the others.
    fn sync_topics(&self, topics: impl IntoIterator<Item = String>) {
        let mut subscribed = lock(&self.subscribed);
        for topic in topics {
            let wanted = !self.router.subscribers(&topic).is_empty();
            if wanted && subscribed.insert(topic.clone()) {
                let _ = self
                    .subscriptions
                    .send(Follow::Subscribe(self.channel(&topic)));
            } else if !wanted && subscribed.remove(&topic) {
                let _ = self
                    .subscriptions
                    .send(Follow::Unsubscribe(self.channel(&topic)));
            }
        }
    }

    async fn send_now(
        self: Arc<Self>,
        via: &Via,
        send: RemoteSend,
        id: Option<u64>,
    ) -> Result<(), Error> {
        let header = Header {
            k: if id.is_some() {
                Kind::Request
            } else {
                Kind::Message
            },
            h: self.host.to_string(),
            f: send.from,
            s: Some(send.slot),
            i: id,
            o: id.map(|_| self.instance.to_string()),
        };
        let raw = frame(&header, &send.message);
        let mut pause = Duration::from_millis(1);
        loop {
            if self.router.is_closed() {
                return Err(Error::stopped("bus"));
            }
            let mut call = SEND.prepare_invoke();
            call.key(self.presence_key(&send.host))
                .key(self.inbox_key(&send.host))
                .arg(send.slot)
                .arg(self.list_limit(self.router.mailboxes().len()))
                .arg(&raw[..])
                .arg(KEEP_UNREAD.as_millis() as u64);
            let (code, slots): (i64, usize) = self
                .link
                .script_via(via, "send to another host", &call)
                .await?;
            match code {
                0 => return Ok(()),
                1 => {
                    return Err(Error::no_such_address(format!(
                        "no host {:?} is on the bus (it is not running, or cannot reach Redis)",
                        send.host
                    )))
                }
                2 => {
                    return Err(Error::no_such_address(format!(
                        "host {:?} has no slot {}: it has slots 0..{slots}",
                        send.host, send.slot
                    )))
                }
                _ if send.mode == SendMode::Try => {
                    return Err(Error::full(format!(
                        "the inbox of host {:?} is full",
                        send.host
                    )))
                }
                _ => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(50));
                }
            }
        }
    }

    async fn exchange(self: Arc<Self>, via: Via, send: RemoteSend) -> Result<Option<Bytes>, Error> {
        let SendMode::Request(timeout) = send.mode else {
            return self.send_now(&via, send, None).await.map(|()| None);
        };
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        lock(&self.pending).insert(id, tx);
        // Forgets the request however this ends: on a worker's runtime,
        // this future is dropped with the worker.
        let _forget = Forget(&self.pending, id);
        let (host, slot) = (send.host.clone(), send.slot);
        let this = self.clone();
        tokio::time::timeout(timeout, async move {
            this.send_now(&via, send, Some(id)).await?;
            rx.await.map_err(|_| Error::stopped("bus"))?
        })
        .await
        .unwrap_or_else(|_| {
            Err(Error::timeout(format!(
                "no reply from slot {slot} of host {host:?} within {timeout:?}"
            )))
        })
    }
}

/// Removes a request from those waiting for a reply when dropped.
struct Forget<'a>(&'a Mutex<HashMap<u64, ReplyTo>>, u64);

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        lock(self.0).remove(&self.1);
    }
}

impl BusEngine for RedisBus {
    fn health(&self) -> Option<crate::observe::Health> {
        Some(self.link.health())
    }

    fn close_slot(&self, slot: usize) {
        self.router.close_slot(slot);
    }

    fn serve(&self, slot: usize, generation: u64) {
        self.router.serve(slot, generation);
    }

    fn resize(&self, size: usize) {
        self.router.resize(size);
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.presence_key(&self.host))
            .arg(size)
            .arg("PX")
            .arg(PRESENCE.as_millis() as u64);
        let link = self.link.clone();
        self.link.spawn(async move {
            let _ = link.command::<()>("announce this host", &cmd).await;
        });
    }

    fn messages(&self) -> u64 {
        self.router.messages()
    }

    fn owner_exited(&self, owner: Owner) {
        self.router.owner_exited(owner);
        let topics: Vec<String> = lock(&self.subscribed).iter().cloned().collect();
        self.sync_topics(topics);
    }

    fn switched(&self) {
        self.switched.store(true, Ordering::Release);
    }

    fn close(&self, handed_over: bool) {
        self.router.close();
        for (_, waiting) in lock(&self.pending).drain() {
            let _ = waiting.send(Err(Error::stopped("bus")));
        }
        let readers = std::mem::take(&mut *lock(&self.readers));
        // The readers finish their read (at most `READ_WAIT`) and give back
        // what they hold; then this instance leaves.
        let limit = READ_WAIT + self.link.config.timeout * 2;
        match self.me.upgrade() {
            Some(me) => self.link.close(limit, me.leave(readers, handed_over)),
            None => self.link.close(limit, async {}),
        }
    }
}

impl BusBackend for RedisBus {
    fn host(&self) -> &str {
        &self.host
    }

    fn send_remote(&self, send: RemoteSend) -> Pending<Option<Bytes>> {
        let (tx, rx) = oneshot::channel();
        if self.link.is_closed() {
            let _ = tx.send(Err(Error::stopped("bus")));
            return rx;
        }
        let Some(me) = self.me.upgrade() else {
            let _ = tx.send(Err(Error::stopped("bus")));
            return rx;
        };
        // From a worker, on its own connection and runtime: no trip to the
        // link's thread and back.
        if let (Some(via), Ok(here)) = (self.link.local(), Handle::try_current()) {
            here.spawn(async move {
                let _ = tx.send(me.exchange(via, send).await);
            });
            return rx;
        }
        self.link.spawn(async move {
            let _ = tx.send(me.exchange(Via::Link, send).await);
        });
        rx
    }

    fn publish_shared(
        &self,
        from: Option<usize>,
        topic: &str,
        message: &[u8],
    ) -> Option<Pending<usize>> {
        let (tx, rx) = oneshot::channel();
        let header = Header {
            k: Kind::Topic,
            h: self.host.to_string(),
            f: from,
            s: None,
            i: None,
            o: None,
        };
        let mut cmd = redis::cmd("PUBLISH");
        cmd.arg(self.channel(topic)).arg(frame(&header, message));
        let link = self.link.clone();
        if link.is_closed() {
            let _ = tx.send(Err(Error::stopped("bus")));
        } else {
            self.link.spawn(async move {
                let _ = tx.send(link.command::<usize>("publish", &cmd).await);
            });
        }
        Some(rx)
    }

    fn mailboxes(&self) -> Arc<Vec<Arc<Mailbox>>> {
        self.router.mailboxes()
    }

    /// A broadcast reaches this cluster's slots only, as in-process: the
    /// router fans it out.
    fn broadcast(&self, from: Option<usize>, message: Bytes) -> Broadcast {
        self.router.broadcast(from, message)
    }

    fn subscribe(&self, owner: Option<Owner>, topic: &str) -> Result<Subscribed, Error> {
        let mut subscribed = self.router.subscribe(owner, topic)?;
        self.sync_topics([topic.to_owned()]);
        let (tx, rx) = oneshot::channel();
        let _ = self.subscriptions.send(Follow::Confirm(tx));
        subscribed.confirmed = Some(rx);
        Ok(subscribed)
    }

    fn unsubscribe(&self, topic: &str, id: u64) {
        self.router.unsubscribe(topic, id);
        self.sync_topics([topic.to_owned()]);
    }

    fn subscribers(&self, topic: &str) -> Arc<[mpsc::Sender<Envelope>]> {
        self.router.subscribers(topic)
    }

    fn is_closed(&self) -> bool {
        self.router.is_closed()
    }

    fn alarm(&self, after: Duration) -> Alarm {
        self.router.alarm(after)
    }

    fn request_timeout(&self) -> Duration {
        self.router.request_timeout()
    }

    fn published(&self, delivered: usize) {
        self.router.published(delivered);
    }
}
