//! How a host reads its list on Redis into its slots' inboxes (and an
//! instance its list of replies), in batches, so that a read whose answer is
//! lost loses no message, and a process that stops gives back what it took.

use std::sync::atomic::Ordering;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use forkless_worker::rt::bus::BusBackend as _;
use redis::Script;
use tokio::sync::oneshot;

use crate::redis::MAX_RETRY;

use super::{RedisBus, KEEP_UNREAD, READ_WAIT};

/// Moves what else waits in a host's list onto a batch's list (`EVAL`:
/// it runs in a pipeline, where a `NOSCRIPT` could not be retried; Redis
/// keeps its compiled form).
const TAKE: &str = include_str!("../scripts/bus_take.lua");
/// Puts a stopping reader's undelivered frames back on the host's list.
static RETURN: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../scripts/bus_return.lua")));
/// The most frames, and bytes, one read takes (at least one frame).
const BATCH: usize = 64;
const BATCH_BYTES: usize = 1 << 20;

/// Which list a reader reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Source {
    /// The host's list, which every process of the host reads: messages
    /// and requests from other hosts (and replies from older builds).
    Host,
    /// This instance's list of replies, which only it reads.
    Replies,
}

impl RedisBus {
    /// Moves what other hosts sent to this one into its slots' inboxes
    /// (`Source::Host`), or the replies to this instance's requests to their
    /// requesters (`Source::Replies`), until the bus closes; then tells
    /// `end` whether it gave back everything it held.
    ///
    /// A frame is never popped outright: a pop whose reply is lost (a
    /// response timeout on a starved thread, a broken connection) would lose
    /// the message. Each batch moves frames onto a list of this instance's
    /// own for that batch (two lists, used in turn:
    /// [`batch_lists`](RedisBus::batch_lists)): `BLMOVE` waits for the
    /// first, and `bus_take.lua`, run at once after it in the same round
    /// trip, moves what else is waiting (up to [`BATCH`] frames,
    /// [`BATCH_BYTES`], and no more than the slots' inboxes have room for:
    /// see [`room`](RedisBus::room)). Once the batch is delivered its list is
    /// deleted, in the round trip that takes the next batch (onto the other
    /// list); a delete is idempotent, so one whose answer is lost is sent
    /// again. After a failure the batch's list holds frames taken but not
    /// delivered (all of them: the list of the last batch delivered is the
    /// other one), which are read back with `LRANGE`: nothing is lost and
    /// nothing is delivered twice while the process lives. (The failed read
    /// is over on Redis by then: its wait is shorter than the connection's
    /// response timeout.)
    ///
    /// When the bus closes, the reader finishes its read (at most
    /// [`READ_WAIT`]) and puts the frames of its batch that it had not
    /// delivered back at the head of the host's list, in order
    /// (`bus_return.lua`), for the other process of the host, or the next
    /// one, to read first. A reader of replies drops its own: the requests
    /// they answer failed as the bus closed.
    pub(super) async fn read_inbox(self: Arc<Self>, source: Source, end: oneshot::Sender<bool>) {
        let key = match source {
            Source::Host => self.inbox_key(&self.host),
            Source::Replies => self.reply_key(&self.host, &self.instance),
        };
        let lists = self.batch_lists(source, &self.instance);
        if source == Source::Host {
            // What dead processes of this host held comes first.
            self.sweep().await;
        }
        // Which of the two lists the batch in hand is on.
        let mut batch = 0;
        // The other list holds a delivered batch; its deletion is not
        // confirmed.
        let mut finished = false;
        // A failure happened: this batch's list may hold undelivered frames.
        let mut suspect = false;
        // How many frames at the head of this batch's list were delivered.
        let mut delivered = 0;
        let mut pause = Duration::from_millis(50);
        'connect: while self.takes(source) {
            let config = redis::AsyncConnectionConfig::new()
                .set_connection_timeout(self.link.config.connect_timeout)
                .set_response_timeout(READ_WAIT + self.link.config.timeout);
            let mut conn = match self
                .link
                .client()
                .get_multiplexed_async_connection_with_config(&config)
                .await
            {
                Ok(conn) => conn,
                Err(_) => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(MAX_RETRY);
                    continue;
                }
            };
            // Redis may take connections and refuse commands (loading,
            // read-only, out of memory): a failed query waits before the
            // next connection, as a failed connect does.
            let mut failed = false;
            while self.takes(source) {
                let taken = &lists[batch];
                let mut pipe = redis::pipe();
                if finished {
                    pipe.cmd("DEL").arg(&lists[1 - batch]).ignore();
                }
                let frames = if suspect {
                    pipe.cmd("LRANGE").arg(taken).arg(0).arg(-1);
                    match pipe.query_async::<(Vec<Vec<u8>>,)>(&mut conn).await {
                        Ok((frames,)) => frames,
                        Err(_) => {
                            failed = true;
                            break;
                        }
                    }
                } else {
                    let room = match source {
                        Source::Host => self.room(),
                        Source::Replies => BATCH,
                    };
                    // The expiry bounds what a process that dies between
                    // the move and the delivery leaves behind.
                    pipe.cmd("BLMOVE")
                        .arg(&key)
                        .arg(taken)
                        .arg("LEFT")
                        .arg("RIGHT")
                        .arg(READ_WAIT.as_secs_f64())
                        .cmd("EVAL")
                        .arg(TAKE)
                        .arg(2)
                        .arg(&key)
                        .arg(taken)
                        .arg(room - 1)
                        .arg(BATCH_BYTES)
                        .cmd("PEXPIRE")
                        .arg(taken)
                        .arg(KEEP_UNREAD.as_millis() as u64)
                        .ignore();
                    match pipe
                        .query_async::<(Option<Vec<u8>>, Vec<Vec<u8>>)>(&mut conn)
                        .await
                    {
                        Ok((first, more)) => first.into_iter().chain(more).collect(),
                        Err(_) => {
                            suspect = true;
                            failed = true;
                            break;
                        }
                    }
                };
                pause = Duration::from_millis(50);
                finished = false;
                suspect = false;
                if frames.is_empty() {
                    // Nothing was taken: the next batch uses the same list.
                    continue;
                }
                for raw in &frames {
                    if source == Source::Host && !self.takes(source) {
                        break 'connect;
                    }
                    let delivery = self.deliver(raw);
                    let what = "delivering a message from another host";
                    // A panic (in a waker) came after the delivery.
                    if self.link.caught(what, delivery).await == Some(false) {
                        break 'connect;
                    }
                    delivered += 1;
                }
                finished = true;
                batch = 1 - batch;
                delivered = 0;
            }
            if failed {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(MAX_RETRY);
            }
        }
        let _ = end.send(self.give_back(source, &lists, batch, delivered).await);
    }

    /// Whether the reader of `source` goes on: not once the bus closes, and
    /// for the host's list not once an upgrade switched to a new process
    /// (which reads it from then on).
    fn takes(&self, source: Source) -> bool {
        let handed = source == Source::Host && self.switched.load(Ordering::Acquire);
        !(self.router.is_closed() || handed)
    }

    /// A stopping reader's last step: the undelivered frames of the batch
    /// in hand (on `lists[batch]`, after the first `delivered`) go back to
    /// the head of the host's list, and both lists go. Whether it worked.
    async fn give_back(
        &self,
        source: Source,
        lists: &[String; 2],
        batch: usize,
        delivered: usize,
    ) -> bool {
        if source == Source::Replies {
            let mut cmd = redis::cmd("DEL");
            cmd.arg(&lists[0]).arg(&lists[1]);
            return self
                .link
                .command::<()>("drop the replies", &cmd)
                .await
                .is_ok();
        }
        let mut call = RETURN.prepare_invoke();
        call.key(&lists[batch])
            .key(&lists[1 - batch])
            .key(self.inbox_key(&self.host))
            .arg(delivered)
            .arg(KEEP_UNREAD.as_millis() as u64);
        let what = "give back the messages this process did not deliver";
        match self.link.script::<usize>(what, &call).await {
            Ok(n) => {
                if n > 0 {
                    tracing::info!(
                        host = %self.host, frames = n,
                        "gave back messages this process took and did not deliver"
                    );
                }
                true
            }
            Err(e) => {
                tracing::warn!(host = %self.host, "{what}: {e}");
                false
            }
        }
    }

    /// How many frames the next read takes at most: [`BATCH`], or fewer if
    /// an inbox has less room (but at least one). What a host took off its
    /// list is on a list of this process's own until delivered, and a
    /// process that stops leaves it there: so it takes no more than its
    /// inboxes can hold at once, as a reader of one frame at a time would.
    fn room(&self) -> usize {
        let free = self
            .router
            .mailboxes()
            .iter()
            .map(|m| m.tx.capacity())
            .min();
        free.unwrap_or(BATCH).clamp(1, BATCH)
    }
}
