//! Moving the store to another process in an upgrade: [`Engine::export`]
//! copies it into a [`Snapshot`] and closes it, [`Engine::import`] loads a
//! snapshot into an empty engine. What moves is described in
//! [`snapshot`](crate::store::snapshot); sending it, and the order of the
//! steps, are the supervisor's.
//!
//! The export is consistent without stopping the world: it closes the
//! engine first, then copies each collection under all its shard locks.
//! Every operation and release checks for the close under its shard's
//! lock, and `configure` under all of them: one that got in before the
//! close finished before the copy took its shard (the copy has it), and one
//! after is refused with a "stopped" error (nothing was acknowledged). So
//! every write the engine acknowledged is in the snapshot, and none is
//! acknowledged after it.

use std::collections::hash_map::Entry as Slot;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, MutexGuard};
use std::time::Instant;

use forkless_worker::rt::Errors as _;
use forkless_worker::{CollectionOptions, Error};

use crate::store::checks::{named, shorten};
use crate::store::snapshot::{CollectionSnapshot, KeySnapshot, Snapshot};

use super::locks::deliver;
use super::{lock, Coll, Engine, Entry, Limits, Panic, ShardData};

impl Engine {
    /// Closes the engine and returns what it holds: every collection with
    /// its options, and every key that holds a value and has not expired,
    /// with its value and the time it has left.
    ///
    /// From then on every operation fails with a "stopped" error, so that
    /// nothing is acknowledged that the snapshot does not have; a release
    /// fails with a lock-lost error. Operations waiting behind a lock, or
    /// in a hold, fail with "stopped". A lock still held (by a handle
    /// outside the workers: the workers' locks were taken back as they
    /// exited) is taken back without committing anything, as when its
    /// lease runs out; the key keeps the value it had and starts its
    /// expiry again, as at a release.
    ///
    /// The data stays in the engine until [`close`](Engine::close), so a
    /// second export returns the same snapshot (its remaining times
    /// shorter); after `close` it returns an empty one.
    pub(crate) fn export(&self) -> Snapshot {
        self.core.exported.store(true, Ordering::SeqCst);
        self.core.closed.store(true, Ordering::SeqCst);
        let mut panicked = None;
        self.core.hold.close(&mut panicked);
        let now = Instant::now();
        let mut colls = self.collections();
        colls.sort_by(|a, b| a.name.cmp(&b.name));
        let collections = colls.iter().map(|c| c.export(now, &mut panicked)).collect();
        if panicked.is_some() {
            // Not raised: the snapshot must reach the supervisor.
            tracing::error!(
                "a waker panicked as the store's export answered an operation that waited; \
                 the export went on"
            );
        }
        Snapshot { collections }
    }

    /// Loads `snapshot` into this engine, which must hold no key: each
    /// collection gets the snapshot's options (replacing any it has), its
    /// keys and values, and its keys their remaining time. All or nothing:
    /// on an error nothing is loaded.
    ///
    /// Made for an engine in a hold ([`Engine::hold`]): operations wait
    /// until [`release_hold`](Engine::release_hold), then run against the
    /// imported data. On an engine that is not held, it is still atomic
    /// per key: an operation sees a collection before the import or after.
    ///
    /// # Errors
    ///
    /// [`Error::is_invalid_value`] for a snapshot that fails its
    /// [`check`](Snapshot::check) or repeats a key; [`Error::is_config`]
    /// if the engine holds a key (an import does not merge);
    /// [`Error::is_stopped`] once the engine is closed.
    pub(crate) fn import(&self, snapshot: Snapshot) -> Result<(), Error> {
        if self.core.is_closed() {
            return Err(Error::stopped("store"));
        }
        snapshot.check()?;
        for c in &snapshot.collections {
            named(&self.collections, &c.name, || {
                Coll::new(&c.name, self.core.clone())
            });
        }
        // Every collection, every shard, locked in one order (by name):
        // the engine is empty, and stays so until the import is whole.
        let mut colls = self.collections();
        colls.sort_by(|a, b| a.name.cmp(&b.name));
        let mut shards: Vec<Vec<MutexGuard<'_, ShardData>>> =
            colls.iter().map(|c| c.lock_all()).collect();
        if self.core.is_closed() {
            return Err(Error::stopped("store"));
        }
        for (coll, shards) in colls.iter().zip(&shards) {
            if shards.iter().any(|d| !d.map.is_empty()) {
                return Err(Error::config(format!(
                    "store import: collection {:?} already holds keys; a snapshot loads only \
                     into an empty store",
                    shorten(&coll.name)
                )));
            }
        }
        let index: HashMap<&str, usize> = colls
            .iter()
            .enumerate()
            .map(|(i, c)| (c.name.as_str(), i))
            .collect();
        let now = Instant::now();
        let mut loaded: Vec<(usize, CollectionOptions)> = Vec::new();
        for c in snapshot.collections {
            let Some(&i) = index.get(c.name.as_str()) else {
                // Made above, and only `close` drops collections.
                return Err(Error::stopped("store"));
            };
            loaded.push((i, lock(&colls[i].options).clone()));
            if let Err(e) = colls[i].load(&mut shards[i], c, now) {
                for (i, options) in loaded {
                    colls[i].unload(&mut shards[i], &options);
                }
                return Err(e);
            }
        }
        drop(shards);
        for (i, _) in loaded {
            let coll: &Arc<Coll> = &colls[i];
            coll.start_sweeping(lock(&coll.options).expire_keys);
        }
        Ok(())
    }
}

impl Coll {
    /// Copies the collection, and takes back its locks; waiters behind
    /// them are answered "stopped" once its shards are let go, a waker's
    /// panic left in `panicked`.
    fn export(&self, now: Instant, panicked: &mut Option<Panic>) -> CollectionSnapshot {
        let mut shards = self.lock_all();
        let options = lock(&self.options).clone();
        let mut keys = Vec::new();
        let mut waiters = Vec::new();
        for data in &mut shards {
            let ShardData {
                map, limits, locks, ..
            } = &mut **data;
            map.retain(|key, e| {
                if let Some(locked) = e.lock.take() {
                    *locks -= 1;
                    self.core.cancel(locked.lease);
                    waiters.extend(locked.queue);
                    e.touched = now;
                    tracing::warn!(
                        collection = %self.name,
                        key = %shorten(key),
                        "the store was exported while a handle outside the workers held this \
                         lock: released, nothing committed; its holder's release fails with \
                         lock-lost"
                    );
                }
                e.value.is_some()
            });
            for (key, e) in map.iter() {
                let Some(value) = &e.value else {
                    continue;
                };
                let expires_in = match limits.expire {
                    None => None,
                    Some(ttl) => match ttl.checked_sub(now.saturating_duration_since(e.touched)) {
                        Some(left) if !left.is_zero() => Some(left),
                        // Expired: nobody read it since, nor swept it yet.
                        _ => continue,
                    },
                };
                keys.push(KeySnapshot {
                    key: key.to_string(),
                    value: value.clone(),
                    expires_in,
                });
            }
        }
        drop(shards);
        for q in waiters {
            self.core.cancel(q.timeout);
            deliver(q.answer, Err(self.stopped()), panicked);
        }
        CollectionSnapshot {
            name: self.name.clone(),
            options,
            keys,
        }
    }

    /// Loads `c` into the collection, whose `shards` are empty and locked.
    /// A repeated key is an error, and leaves the keys loaded so far for
    /// [`unload`](Coll::unload).
    fn load(
        &self,
        shards: &mut [MutexGuard<'_, ShardData>],
        c: CollectionSnapshot,
        now: Instant,
    ) -> Result<(), Error> {
        let limits = Limits::from(&c.options);
        *lock(&self.options) = c.options;
        for data in shards.iter_mut() {
            data.limits = limits;
        }
        let (mut keys, mut bytes) = (0, 0);
        for k in c.keys {
            // The key last touched so long ago that it has its remaining
            // time left. `Instant` cannot go before the machine's boot:
            // a key older than that (not from a process of this machine)
            // starts its full expiry.
            let touched = match (limits.expire, k.expires_in) {
                (Some(ttl), Some(left)) => now.checked_sub(ttl.saturating_sub(left)),
                _ => None,
            };
            let size = k.key.len() + k.value.len();
            let data = &mut shards[self.shard_index(&k.key)];
            match data.map.entry(k.key.into_boxed_str()) {
                Slot::Occupied(o) => {
                    return Err(Error::invalid_value(format!(
                        "store snapshot: key {:?} appears twice in collection {:?}",
                        shorten(o.key()),
                        shorten(&self.name)
                    )))
                }
                Slot::Vacant(v) => {
                    v.insert(Entry {
                        value: Some(k.value),
                        touched: touched.unwrap_or(now),
                        lock: None,
                    });
                }
            }
            keys += 1;
            bytes += size;
        }
        // Counted as `configure` counts a limit turned on: what is there,
        // even past the limit (lowered after the keys were written).
        let counted = limits.counted();
        let usage = &self.usage;
        usage
            .keys
            .store(if counted { keys } else { 0 }, Ordering::Relaxed);
        usage
            .bytes
            .store(if counted { bytes } else { 0 }, Ordering::Relaxed);
        Ok(())
    }

    /// Undoes a [`load`](Coll::load): no key, and the `options` it had.
    fn unload(&self, shards: &mut [MutexGuard<'_, ShardData>], options: &CollectionOptions) {
        let limits = Limits::from(options);
        for data in shards.iter_mut() {
            data.map.clear();
            data.limits = limits;
        }
        *lock(&self.options) = options.clone();
        self.usage.keys.store(0, Ordering::Relaxed);
        self.usage.bytes.store(0, Ordering::Relaxed);
    }
}
