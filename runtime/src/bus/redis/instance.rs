//! This process as an instance of its host (see the module doc of
//! [`super`]): its keys, its alive key and membership in the host's
//! readers, the sweep that takes back what dead instances of the host held,
//! and its leaving.

use std::sync::{Arc, LazyLock};

use redis::Script;
use tokio::sync::oneshot;

use super::read::Source;
use super::{RedisBus, KEEP_UNREAD, PRESENCE};

static RECOVER: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../scripts/bus_recover.lua")));

/// A new instance's name (`{pid}-{nanos}`: no `:`, unique across restarts
/// of the host) and the number of its first request: random, below 2^62.
pub(super) fn new_instance() -> (String, u64) {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let pid = std::process::id();
    // SplitMix64 of the name: the first id says nothing about the clock.
    let mut z = (nanos as u64) ^ (u64::from(pid) << 32);
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (format!("{pid}-{nanos}"), (z >> 2).max(1))
}

impl RedisBus {
    /// The list of replies to `instance` of `host`.
    pub(super) fn reply_key(&self, host: &str, instance: &str) -> String {
        format!("{}:b:re:{host}:{instance}", self.prefix)
    }

    fn alive_key(&self, instance: &str) -> String {
        format!("{}:b:live:{}:{instance}", self.prefix, self.host)
    }

    fn readers_key(&self) -> String {
        format!("{}:b:readers:{}", self.prefix, self.host)
    }

    /// The two lists an instance's reader of `source` moves its batches
    /// onto, in turn.
    pub(super) fn batch_lists(&self, source: Source, instance: &str) -> [String; 2] {
        let what = match source {
            Source::Host => "taken",
            Source::Replies => "taken-re",
        };
        [0, 1].map(|n| format!("{}:b:{what}:{}:{instance}:{n}", self.prefix, self.host))
    }

    /// Says this instance is alive, and a reader of its host's list. (The
    /// alive key first: a sweep that finds the instance among the readers
    /// finds it alive.)
    pub(super) async fn renew(&self) {
        let mut pipe = redis::pipe();
        pipe.cmd("SET")
            .arg(self.alive_key(&self.instance))
            .arg(1)
            .arg("PX")
            .arg(PRESENCE.as_millis() as u64)
            .ignore()
            .cmd("SADD")
            .arg(self.readers_key())
            .arg(&*self.instance)
            .ignore()
            .cmd("PEXPIRE")
            .arg(self.readers_key())
            .arg(KEEP_UNREAD.as_millis() as u64)
            .ignore();
        let _ = self.link.pipeline(&pipe).await;
    }

    /// Takes back what the instances of this host that are not alive any
    /// more held: the frames on their batches' lists go back at the head of
    /// the host's list, in order.
    pub(super) async fn sweep(&self) {
        let mut cmd = redis::cmd("SMEMBERS");
        cmd.arg(self.readers_key());
        let Ok(members) = self
            .link
            .command::<Vec<String>>("find this host's readers", &cmd)
            .await
        else {
            return;
        };
        for member in members.iter().filter(|m| **m != *self.instance) {
            let mut call = RECOVER.prepare_invoke();
            call.key(self.alive_key(member));
            for key in self.batch_lists(Source::Host, member) {
                call.key(key);
            }
            for key in self.batch_lists(Source::Replies, member) {
                call.key(key);
            }
            call.key(self.reply_key(&self.host, member))
                .key(self.inbox_key(&self.host))
                .key(self.readers_key())
                .arg(member)
                .arg(KEEP_UNREAD.as_millis() as u64);
            let what = "take back what a stopped process of this host held";
            if let Ok(n @ 1..) = self.link.script::<i64>(what, &call).await {
                tracing::info!(
                    host = %self.host, instance = %member, frames = n,
                    "took back messages that a stopped process of this host had not delivered"
                );
            }
        }
    }

    /// The end of this instance, once the bus closed: waits for the readers
    /// to give back what they hold, then deletes its keys (and leaves the
    /// readers if they did; otherwise the next sweep takes back the rest)
    /// and, unless it `handed_over` to a new process of the host, the
    /// host's presence.
    pub(super) async fn leave(
        self: Arc<Self>,
        readers: Vec<oneshot::Receiver<bool>>,
        handed_over: bool,
    ) {
        let mut clean = true;
        let wait = super::READ_WAIT + self.link.config.timeout;
        for reader in readers {
            clean &= matches!(tokio::time::timeout(wait, reader).await, Ok(Ok(true)));
        }
        let mut pipe = redis::pipe();
        pipe.cmd("DEL")
            .arg(self.alive_key(&self.instance))
            .arg(self.reply_key(&self.host, &self.instance))
            .ignore();
        if clean {
            pipe.cmd("SREM")
                .arg(self.readers_key())
                .arg(&*self.instance)
                .ignore();
        }
        if !handed_over {
            pipe.cmd("DEL").arg(self.presence_key(&self.host)).ignore();
        }
        if let Err(e) = self.link.pipeline(&pipe).await {
            tracing::warn!(host = %self.host, "cannot leave the bus cleanly: {e}");
        }
    }
}
