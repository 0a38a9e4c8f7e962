//! The store against a model: a map plus a FIFO queue per locked key,
//! driven by random operations from several clients whose operations
//! interleave (each may be waiting behind another's lock). Each client uses
//! the store handle of a different worker of one cluster (the handle is
//! `Send`), so the operations come from several workers; the test thread
//! drives them all, which makes every interleaving it picks exact.
//!
//! Every step starts or ends one client's operation and then polls every
//! waiting one: the model says, for each, whether it must have finished and
//! with what answer, or must still wait.

use std::collections::{HashMap, VecDeque};
use std::sync::OnceLock;
use std::task::Poll;

use crate::common::{self, Op};
use forkless::{Bytes, Cluster, Collection, Error, KeyLock, Store};
use proptest::prelude::*;

const CLIENTS: usize = 3;
const KEYS: [&str; 3] = ["a", "b", "c"];
const VALUES: [&str; 3] = ["1", "22", "x"];

#[derive(Debug, Clone)]
enum Action {
    Get(usize),
    Set(usize, usize),
    Del(usize),
    Incr(usize, i64),
    Cas(usize, Option<usize>, Option<usize>),
    Acquire(usize),
    TryAcquire(usize),
    LockSet(usize),
    LockDel,
    Release,
    DropLock,
    Cancel,
}

fn action() -> impl Strategy<Value = Action> {
    let k = 0..KEYS.len();
    let v = 0..VALUES.len();
    prop_oneof![
        1 => k.clone().prop_map(Action::Get),
        1 => (k.clone(), v.clone()).prop_map(|(k, v)| Action::Set(k, v)),
        1 => k.clone().prop_map(Action::Del),
        1 => (k.clone(), -2i64..3).prop_map(|(k, n)| Action::Incr(k, n)),
        1 => (
            k.clone(),
            proptest::option::of(v.clone()),
            proptest::option::of(v.clone())
        )
            .prop_map(|(k, e, n)| Action::Cas(k, e, n)),
        3 => k.clone().prop_map(Action::Acquire),
        1 => k.prop_map(Action::TryAcquire),
        2 => v.prop_map(Action::LockSet),
        1 => Just(Action::LockDel),
        3 => Just(Action::Release),
        1 => Just(Action::DropLock),
        1 => Just(Action::Cancel),
    ]
}

/// What an operation answered, for comparison with the model.
#[derive(Debug, PartialEq)]
enum Answer {
    Value(Option<Bytes>),
    Done,
    Removed(bool),
    Int(i64),
    Swapped(bool),
    /// A lock, and the value it saw.
    Lock(Option<Bytes>),
    NoLock,
    /// An error that says the value is not an integer.
    NotInt,
}

/// An operation of the model, kept in a key's queue.
#[derive(Debug, Clone)]
enum ModelOp {
    Get,
    Set(Bytes),
    Del,
    Incr(i64),
    Cas(Option<Bytes>, Option<Bytes>),
    Acquire,
}

#[derive(Default)]
struct Model {
    values: HashMap<usize, Bytes>,
    holder: HashMap<usize, usize>,
    queues: HashMap<usize, VecDeque<(usize, ModelOp)>>,
    /// Answers the model gave that the store's futures must now show.
    answered: HashMap<usize, Answer>,
}

impl Model {
    fn apply(&mut self, client: usize, key: usize, op: ModelOp) -> Answer {
        let value = self.values.get(&key).cloned();
        match op {
            ModelOp::Get => Answer::Value(value),
            ModelOp::Set(v) => {
                self.values.insert(key, v);
                Answer::Done
            }
            ModelOp::Del => Answer::Removed(self.values.remove(&key).is_some()),
            ModelOp::Incr(by) => {
                let current = match &value {
                    None => Some(0),
                    Some(v) => std::str::from_utf8(v)
                        .ok()
                        .and_then(|s| s.parse::<i64>().ok()),
                };
                match current {
                    None => Answer::NotInt,
                    Some(n) => {
                        self.values.insert(key, Bytes::from((n + by).to_string()));
                        Answer::Int(n + by)
                    }
                }
            }
            ModelOp::Cas(expected, new) => {
                if value == expected {
                    match new {
                        Some(v) => self.values.insert(key, v),
                        None => self.values.remove(&key),
                    };
                    Answer::Swapped(true)
                } else {
                    Answer::Swapped(false)
                }
            }
            ModelOp::Acquire => {
                self.holder.insert(key, client);
                Answer::Lock(value)
            }
        }
    }

    /// Starts `op`: answers at once, or queues it behind the lock.
    fn start(&mut self, client: usize, key: usize, op: ModelOp) -> Option<Answer> {
        if self.holder.contains_key(&key) {
            self.queues.entry(key).or_default().push_back((client, op));
            None
        } else {
            Some(self.apply(client, key, op))
        }
    }

    /// Releases `key`'s lock, committing `change`, and runs its queue.
    fn release(&mut self, key: usize, change: Option<Option<Bytes>>) {
        match change {
            Some(Some(v)) => {
                self.values.insert(key, v);
            }
            Some(None) => {
                self.values.remove(&key);
            }
            None => {}
        }
        self.holder.remove(&key);
        while let Some((client, op)) = self.queues.get_mut(&key).and_then(|q| q.pop_front()) {
            let answer = self.apply(client, key, op);
            self.answered.insert(client, answer);
            if self.holder.contains_key(&key) {
                break;
            }
        }
    }

    fn cancel(&mut self, client: usize) {
        for queue in self.queues.values_mut() {
            queue.retain(|(c, _)| *c != client);
        }
    }
}

#[derive(Default)]
struct Client {
    waiting: Option<(usize, Op<'static, Result<Reply, Error>>)>,
    lock: Option<(usize, KeyLock)>,
}

/// What a store future finished with.
enum Reply {
    Answer(Answer),
    Lock(KeyLock),
}

/// The store handles of a cluster's workers, one per client. The cluster
/// lives as long as the test binary.
fn stores() -> &'static [Store] {
    static STORES: OnceLock<(Cluster, Vec<Store>)> = OnceLock::new();
    let (_, stores) = STORES.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        let cluster = Cluster::builder()
            .workers(CLIENTS)
            .pin_cores(false)
            .start(move |worker: forkless::Worker| {
                tx.send((worker.slot(), worker.store()))
                    .expect("test alive");
                async move { worker.shutdown_signal().await }
            })
            .expect("start");
        let mut stores: Vec<(usize, Store)> = (0..CLIENTS)
            .map(|_| common::recv(&rx, "a worker's store"))
            .collect();
        stores.sort_by_key(|(slot, _)| *slot);
        (cluster, stores.into_iter().map(|(_, s)| s).collect())
    });
    stores
}

fn start(c: &Collection, key: usize, op: &ModelOp) -> Op<'static, Result<Reply, Error>> {
    let c = c.clone();
    let k = KEYS[key];
    let op = op.clone();
    Op::new(async move {
        let answer = match op {
            ModelOp::Get => Answer::Value(c.get(k).await?),
            ModelOp::Set(v) => c.set(k, v).await.map(|()| Answer::Done)?,
            ModelOp::Del => Answer::Removed(c.del(k).await?),
            ModelOp::Incr(by) => match c.incr(k, by).await {
                Ok(n) => Answer::Int(n),
                Err(e) if e.is_invalid_value() => Answer::NotInt,
                Err(e) => return Err(e),
            },
            ModelOp::Cas(expected, new) => {
                Answer::Swapped(c.compare_and_swap(k, expected.as_deref(), new).await?)
            }
            ModelOp::Acquire => return c.acquire(k).await.map(Reply::Lock),
        };
        Ok(Reply::Answer(answer))
    })
}

fn value(i: usize) -> Bytes {
    Bytes::from(VALUES[i])
}

fn run(actions: Vec<(usize, Action)>, name: &str) -> Result<(), TestCaseError> {
    let colls: Vec<Collection> = stores().iter().map(|s| s.collection(name)).collect();
    let mut model = Model::default();
    let mut clients: Vec<Client> = (0..CLIENTS).map(|_| Client::default()).collect();

    for (step, (i, action)) in actions.into_iter().enumerate() {
        let client = &mut clients[i];
        let plain = |key: usize, op: ModelOp| Some((key, op));
        let started = match (&action, client.waiting.is_some(), client.lock.is_some()) {
            (_, true, _) if !matches!(action, Action::Cancel) => continue,
            (Action::Cancel, true, _) => {
                client.waiting = None;
                model.cancel(i);
                None
            }
            (Action::Cancel, false, _) => continue,
            (Action::LockSet(v), _, true) => {
                let (_, lock) = client.lock.as_mut().expect("lock");
                lock.set(value(*v));
                None
            }
            (Action::LockDel, _, true) => {
                client.lock.as_mut().expect("lock").1.del();
                None
            }
            (Action::Release, _, true) => {
                let (key, lock) = client.lock.take().expect("lock");
                let change = lock.get();
                common::now(lock.release()).map_err(|e| TestCaseError::fail(e.to_string()))?;
                model.release(key, Some(change));
                None
            }
            (Action::DropLock, _, true) => {
                let (key, lock) = client.lock.take().expect("lock");
                drop(lock);
                model.release(key, None);
                None
            }
            (_, _, true) => continue,
            (
                Action::LockSet(_) | Action::LockDel | Action::Release | Action::DropLock,
                _,
                false,
            ) => continue,
            (Action::Get(k), ..) => plain(*k, ModelOp::Get),
            (Action::Set(k, v), ..) => plain(*k, ModelOp::Set(value(*v))),
            (Action::Del(k), ..) => plain(*k, ModelOp::Del),
            (Action::Incr(k, n), ..) => plain(*k, ModelOp::Incr(*n)),
            (Action::Cas(k, e, n), ..) => plain(*k, ModelOp::Cas(e.map(value), n.map(value))),
            (Action::Acquire(k), ..) => plain(*k, ModelOp::Acquire),
            (Action::TryAcquire(k), ..) => {
                let expect = if model.holder.contains_key(k) {
                    Answer::NoLock
                } else {
                    model.apply(i, *k, ModelOp::Acquire)
                };
                let got = common::now(colls[i].try_acquire(KEYS[*k]))
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                let got = match got {
                    Some(lock) => {
                        let seen = lock.get();
                        client.lock = Some((*k, lock));
                        Answer::Lock(seen)
                    }
                    None => Answer::NoLock,
                };
                prop_assert_eq!(got, expect, "step {}: client {} try_acquire", step, i);
                None
            }
        };
        if let Some((key, op)) = started {
            let future = start(&colls[i], key, &op);
            if let Some(answer) = model.start(i, key, op) {
                model.answered.insert(i, answer);
            }
            clients[i].waiting = Some((key, future));
        }

        // Every waiting operation: finished exactly when the model says so.
        for (j, client) in clients.iter_mut().enumerate() {
            let Some((key, future)) = client.waiting.as_mut() else {
                continue;
            };
            let key = *key;
            let expected = model.answered.remove(&j);
            match (future.poll(), expected) {
                (Poll::Pending, None) => {}
                (Poll::Pending, Some(e)) => {
                    return Err(TestCaseError::fail(format!(
                        "step {step}: client {j} still waits; the model answered {e:?}"
                    )))
                }
                (Poll::Ready(got), expected) => {
                    client.waiting = None;
                    let got = got.map_err(|e| TestCaseError::fail(format!("client {j}: {e}")))?;
                    let got = match got {
                        Reply::Answer(a) => a,
                        Reply::Lock(lock) => {
                            let seen = lock.get();
                            client.lock = Some((key, lock));
                            Answer::Lock(seen)
                        }
                    };
                    prop_assert_eq!(Some(got), expected, "step {}: client {}", step, j);
                }
            }
        }
    }

    // The end: cancel the waits, drop the locks, and compare every value.
    for (i, client) in clients.iter_mut().enumerate() {
        if client.waiting.take().is_some() {
            model.cancel(i);
        }
    }
    for client in &mut clients {
        if let Some((key, lock)) = client.lock.take() {
            drop(lock);
            model.release(key, None);
        }
    }
    for (k, key) in KEYS.iter().enumerate() {
        let got = common::now(colls[0].get(key)).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(got, model.values.get(&k).cloned(), "final value of {}", key);
    }
    let len = common::now(colls[0].len()).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(len, model.values.len());
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn the_store_behaves_like_the_model(
        actions in proptest::collection::vec((0..CLIENTS, action()), 1..80)
    ) {
        static CASE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = CASE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        run(actions, &format!("model-{n}"))?;
    }
}
