//! How a host reads its list on Redis into its slots' inboxes, in batches,
//! so that a read whose answer is lost loses no message.

use std::sync::Arc;
use std::time::Duration;

use forkless_worker::rt::bus::BusBackend as _;

use crate::redis::MAX_RETRY;

use super::{RedisBus, KEEP_UNREAD, READ_WAIT};

/// Moves what else waits in a host's list onto a batch's list (`EVAL`:
/// it runs in a pipeline, where a `NOSCRIPT` could not be retried; Redis
/// keeps its compiled form).
const TAKE: &str = include_str!("../scripts/bus_take.lua");
/// The most frames, and bytes, one read takes (at least one frame).
const BATCH: usize = 64;
const BATCH_BYTES: usize = 1 << 20;

impl RedisBus {
    /// Moves what other hosts sent to this one into its slots' inboxes.
    ///
    /// A frame is never popped outright: a pop whose reply is lost (a
    /// response timeout on a starved thread, a broken connection) would lose
    /// the message. Each batch moves frames onto a list of this reader's own
    /// for that batch (`{prefix}:b:taken:{host}:{id}:{batch}`): `BLMOVE`
    /// waits for the first, and `bus_take.lua`, run at once after it in the
    /// same round trip, moves what else is waiting (up to [`BATCH`] frames,
    /// [`BATCH_BYTES`], and no more than the slots' inboxes have room for:
    /// see [`room`](RedisBus::room)). Once the batch is delivered its list is deleted,
    /// in the round trip that takes the next batch; a delete is idempotent,
    /// so one whose answer is lost is sent again. After a failure the
    /// batch's list holds frames taken but not delivered (all of them: the
    /// list of the last batch delivered is another one), which are read
    /// back with `LRANGE`: nothing is lost and nothing is delivered twice
    /// while the process lives. (The failed read is over on Redis by then:
    /// its wait is shorter than the connection's response timeout.)
    pub(super) async fn read_inbox(self: Arc<Self>) {
        let key = self.inbox_key(&self.host);
        let base = format!(
            "{}:b:taken:{}:{}-{}",
            self.prefix,
            self.host,
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        );
        let mut batch: u64 = 0;
        // The list of a batch that is delivered; its deletion is not
        // confirmed.
        let mut finished: Option<String> = None;
        // A failure happened: this batch's list may hold undelivered frames.
        let mut suspect = false;
        let mut pause = Duration::from_millis(50);
        while !self.router.is_closed() {
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
            while !self.router.is_closed() {
                let taken = format!("{base}:{batch}");
                let mut pipe = redis::pipe();
                if let Some(done) = &finished {
                    pipe.cmd("DEL").arg(done).ignore();
                }
                let frames = if suspect {
                    pipe.cmd("LRANGE").arg(&taken).arg(0).arg(-1);
                    match pipe.query_async::<(Vec<Vec<u8>>,)>(&mut conn).await {
                        Ok((frames,)) => frames,
                        Err(_) => {
                            failed = true;
                            break;
                        }
                    }
                } else {
                    // The expiry bounds what a process that dies between
                    // the move and the delivery leaves behind.
                    pipe.cmd("BLMOVE")
                        .arg(&key)
                        .arg(&taken)
                        .arg("LEFT")
                        .arg("RIGHT")
                        .arg(READ_WAIT.as_secs_f64())
                        .cmd("EVAL")
                        .arg(TAKE)
                        .arg(2)
                        .arg(&key)
                        .arg(&taken)
                        .arg(self.room() - 1)
                        .arg(BATCH_BYTES)
                        .cmd("PEXPIRE")
                        .arg(&taken)
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
                finished = None;
                suspect = false;
                if frames.is_empty() {
                    // Nothing was taken: the next batch uses the same list.
                    continue;
                }
                for raw in &frames {
                    self.link
                        .caught("delivering a message from another host", self.deliver(raw))
                        .await;
                }
                finished = Some(taken);
                batch = batch.wrapping_add(1);
            }
            if failed {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(MAX_RETRY);
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
