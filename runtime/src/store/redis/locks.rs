//! The locks of the store on Redis: taking one (a lock key holding this
//! host's token, with a lease), keeping a lock without a lease of its own
//! alive while it is held, and releasing one, which commits its change and
//! publishes the release to the hosts that wait.

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use forkless_worker::rt::store::{Change, Grant, Outcome};
use forkless_worker::rt::Owner;
use forkless_worker::Error;

use crate::store::checks::{lock_lost, shorten};

use super::scripts::{
    answer_of, bytes_of, millis, ACQUIRE, HOLD_MARGIN_MS, LOCKED, RELEASE, RENEW, VALUE,
};
use super::{lock, Answer, Attempt, Held, RColl};

impl RColl {
    /// One try at the lock.
    pub(super) async fn acquire(
        &self,
        owner: Option<Owner>,
        key: &str,
        lease: Option<Duration>,
        answer: &Answer,
    ) -> Result<Attempt, Error> {
        if !self.core.exits.alive(owner) {
            return Err(self.stopped());
        }
        let fixed = lease.or(lock(&self.options).max_hold);
        let ms = millis(fixed.unwrap_or(self.link().config.lock_lease));
        let token = self.core.next_token.fetch_add(1, Ordering::Relaxed);
        let text = self.core.token_text(token);
        let mut call = ACQUIRE.prepare_invoke();
        call.key(self.value_key(key))
            .key(self.lock_key(key))
            .arg(&text)
            .arg(ms)
            .arg(ms.saturating_add(HOLD_MARGIN_MS));
        let (code, value) = answer_of(self.link().script("acquire", &call).await?)?;
        if code == LOCKED {
            return Ok(Attempt::Locked);
        }
        let value = if code == VALUE {
            Some(bytes_of(value)?)
        } else {
            None
        };
        let renew = fixed
            .is_none()
            .then(|| self.renew(key.into(), text, ms).abort_handle());
        lock(&self.core.held).insert(
            token,
            Held {
                coll: self.arc(),
                key: key.into(),
                owner,
                renew,
            },
        );
        // The owner may have exited while the script ran: its clean-up
        // looked at the held locks before this one was among them. So may
        // the store have closed (its clean-up released the held locks,
        // which can be what let this one through).
        if !self.core.exits.alive(owner) || answer.is_closed() || self.link().is_closed() {
            self.core.forget(token);
            let _ = self.release_now(key, token, Change::Keep).await;
            return Err(self.stopped());
        }
        Ok(Attempt::Done(Outcome::Granted(Grant { token, value })))
    }

    /// Keeps a lock without a lease of its own alive while it is held.
    fn renew(&self, key: Box<str>, token: String, ms: u64) -> tokio::task::JoinHandle<()> {
        let coll = self.arc();
        let every = Duration::from_millis(ms / 3);
        self.link().spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let mut call = RENEW.prepare_invoke();
                call.key(coll.value_key(&key))
                    .key(coll.lock_key(&key))
                    .arg(&token)
                    .arg(ms)
                    .arg(ms.saturating_add(HOLD_MARGIN_MS));
                match coll.link().script::<i64>("renew a lock", &call).await {
                    Ok(1) => {}
                    Ok(_) => {
                        tracing::warn!(
                            collection = %coll.name,
                            key = %shorten(&key),
                            "a lock was lost: its lease ran out before it could be renewed"
                        );
                        return;
                    }
                    Err(e) => tracing::warn!(
                        collection = %coll.name,
                        key = %shorten(&key),
                        "cannot renew a lock's lease: {e}"
                    ),
                }
            }
        })
    }

    /// Releases the lock on `key` held with `token`, committing `change`.
    pub(super) async fn release_now(
        &self,
        key: &str,
        token: u64,
        change: Change,
    ) -> Result<Outcome, Error> {
        let (kind, value) = match change {
            Change::Keep => ("k", Bytes::new()),
            Change::Set(v) => ("s", v),
            Change::Del => ("d", Bytes::new()),
        };
        let mut call = RELEASE.prepare_invoke();
        call.key(self.value_key(key))
            .key(self.lock_key(key))
            .arg(self.core.token_text(token))
            .arg(kind)
            .arg(value.as_ref())
            .arg(self.ttl());
        let (code, _) = answer_of(self.link().script("release", &call).await?)?;
        self.core.released.send_modify(|n| *n = n.wrapping_add(1));
        if code == LOCKED {
            return Err(lock_lost(&self.name, key));
        }
        Ok(Outcome::Done)
    }
}
