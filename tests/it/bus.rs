//! The in-process bus: inboxes, backpressure, restarts, broadcast, topics
//! and their subscriber counts, request/reply, answers without a wait, and
//! what happens once the cluster stops. What both bus backends promise
//! (order and sender of messages between workers, ...) is checked once per
//! backend in `bus_conformance`.

use std::sync::mpsc;
use std::time::Duration;

use crate::common::{done, now, recv, stop, wait_until, Op};
use forkless::{Bytes, Cluster, Envelope, Restart, Worker};
use tokio::sync::oneshot;

/// Reports every message a slot's inbox delivers as
/// `(slot, generation, from, message)`.
type Seen = (usize, u64, Option<usize>, Bytes);

/// Workers that read their inbox and report each message.
fn readers(workers: usize, builder: forkless::Builder) -> (Cluster, mpsc::Receiver<Seen>) {
    let (tx, rx) = mpsc::channel();
    let cluster = builder
        .workers(workers)
        .start(move |worker: Worker| {
            let tx = tx.clone();
            async move {
                let mut inbox = worker.inbox();
                while let Some(envelope) = inbox.recv().await {
                    tx.send((
                        worker.slot(),
                        worker.generation(),
                        envelope.from(),
                        envelope.message().clone(),
                    ))
                    .expect("test alive");
                }
            }
        })
        .expect("start");
    (cluster, rx)
}

#[test]
fn a_full_inbox_makes_send_wait_and_try_send_fail() {
    let (go_tx, go_rx) = mpsc::channel::<oneshot::Sender<()>>();
    let (tx, rx) = mpsc::channel();
    let cluster = Cluster::builder()
        .workers(1)
        .inbox_capacity(4)
        .start(move |worker: Worker| {
            let (go_tx, tx) = (go_tx.clone(), tx.clone());
            async move {
                let (go, wait_go) = oneshot::channel();
                go_tx.send(go).expect("test alive");
                // Read nothing until told to.
                wait_go.await.ok();
                let mut inbox = worker.inbox();
                while let Some(e) = inbox.recv().await {
                    tx.send(e.into_message()).expect("test alive");
                }
            }
        })
        .expect("start");
    let go = recv(&go_rx, "the worker");
    let bus = cluster.bus();
    for i in 0..4 {
        bus.try_send(0, format!("{i}")).unwrap();
    }
    let e = bus.try_send(0, "one too many").unwrap_err();
    assert!(e.is_full(), "{e:?}");
    assert!(e.to_string().contains("4 messages"), "{e}");
    let waiting = Op::new(bus.send(0, "4")).pending("send to a full inbox");
    go.send(()).expect("worker alive");
    waiting.wait("the send, once the worker reads").unwrap();
    for i in 0..5 {
        assert_eq!(recv(&rx, "a message"), i.to_string());
    }
    stop(cluster);
}

#[test]
fn messages_sent_to_a_slot_between_generations_reach_the_next_one() {
    let (go_tx, go_rx) = mpsc::channel::<oneshot::Sender<()>>();
    let (tx, rx) = mpsc::channel();
    let cluster = Cluster::builder()
        .workers(1)
        .throttle_delay(Duration::ZERO)
        .start(move |worker: Worker| {
            let (go_tx, tx) = (go_tx.clone(), tx.clone());
            async move {
                if worker.generation() == 0 {
                    // Never reads; panics when told to.
                    let (go, wait_go) = oneshot::channel();
                    go_tx.send(go).expect("test alive");
                    wait_go.await.ok();
                    panic!("generation 0 crashes with messages queued");
                }
                let mut inbox = worker.inbox();
                while let Some(e) = inbox.recv().await {
                    tx.send((worker.generation(), e.into_message()))
                        .expect("test alive");
                }
            }
        })
        .expect("start");
    let go = recv(&go_rx, "generation 0");
    let bus = cluster.bus();
    for i in 0..10 {
        now(bus.send(0, format!("{i}"))).unwrap();
    }
    go.send(()).expect("generation 0 alive");
    for i in 0..10 {
        assert_eq!(
            recv(&rx, "a queued message"),
            (1, Bytes::from(i.to_string()))
        );
    }
    stop(cluster);
}

#[test]
fn a_stream_of_messages_survives_receiver_crashes_with_nothing_lost_or_duplicated() {
    const N: usize = 3000;
    const CRASH_EVERY: usize = 700;
    let (tx, rx) = mpsc::channel();
    let cluster = Cluster::builder()
        .workers(2)
        .inbox_capacity(64)
        .throttle_delay(Duration::ZERO)
        .start(move |worker: Worker| {
            let tx = tx.clone();
            async move {
                if worker.slot() == 0 {
                    if worker.generation() == 0 {
                        let bus = worker.bus();
                        for i in 0..N {
                            bus.send(1, i.to_string()).await?;
                        }
                    }
                } else {
                    let mut inbox = worker.inbox();
                    let mut handled = 0;
                    while let Some(envelope) = inbox.recv().await {
                        let i: usize = std::str::from_utf8(envelope.message())
                            .expect("utf8")
                            .parse()
                            .expect("a number");
                        tx.send((worker.generation(), i)).expect("test alive");
                        handled += 1;
                        if i % CRASH_EVERY == CRASH_EVERY - 1 && handled > 0 {
                            panic!("receiver crashes after message {i}");
                        }
                    }
                }
                worker.shutdown_signal().await;
                Ok::<_, forkless::Error>(())
            }
        })
        .expect("start");
    let mut generations = Vec::new();
    for i in 0..N {
        let (generation, got) = recv(&rx, "the next message");
        assert_eq!(got, i, "nothing lost, nothing duplicated, in order");
        generations.push(generation);
    }
    let last = *generations.last().expect("messages");
    assert_eq!(
        last as usize,
        (N - 1) / CRASH_EVERY,
        "one generation per crash"
    );
    stop(cluster);
}

#[test]
fn broadcast_reaches_each_live_slot_exactly_once() {
    let (cluster, rx) = readers(3, Cluster::builder());
    assert_eq!(now(cluster.bus().broadcast("all")).unwrap(), 3);
    let mut slots: Vec<usize> = (0..3).map(|_| recv(&rx, "a broadcast").0).collect();
    slots.sort_unstable();
    assert_eq!(slots, [0, 1, 2]);
    assert!(
        rx.recv_timeout(Duration::from_millis(100)).is_err(),
        "only once each"
    );
    stop(cluster);

    // A slot that stopped for good is not live: skipped, and sending to it
    // is an error.
    let (done_tx, done_rx) = mpsc::channel();
    let (tx, rx) = mpsc::channel();
    let cluster = Cluster::builder()
        .workers(2)
        .restart(Restart::Never)
        .start(move |worker: Worker| {
            let (done_tx, tx) = (done_tx.clone(), tx.clone());
            async move {
                if worker.slot() == 1 {
                    return;
                }
                done_tx.send(()).expect("test alive");
                let mut inbox = worker.inbox();
                while let Some(e) = inbox.recv().await {
                    tx.send((e.from(), e.into_message())).expect("test alive");
                }
            }
        })
        .expect("start");
    recv(&done_rx, "slot 0");
    let bus = cluster.bus();
    // Slot 1 returns at once; wait until its inbox is closed.
    wait_until("slot 1's inbox to close", || {
        bus.try_send(1, "probe")
            .map_or_else(|e| e.is_stopped(), |()| false)
    });
    assert_eq!(now(bus.broadcast("live ones")).unwrap(), 1);
    assert_eq!(recv(&rx, "the broadcast"), (None, Bytes::from("live ones")));
    let e = now(bus.send(1, "x")).unwrap_err();
    assert!(
        e.is_stopped() && e.to_string().contains("stopped for good"),
        "{e}"
    );
    stop(cluster);
}

#[test]
fn sending_to_a_slot_that_does_not_exist_is_an_error_at_once() {
    let (cluster, _rx) = readers(2, Cluster::builder());
    let bus = cluster.bus();
    assert_eq!(bus.size(), 2);
    let e = now(bus.send(2, "x")).unwrap_err();
    assert!(e.is_no_such_slot(), "{e:?}");
    assert!(e.to_string().contains("0..2"), "{e}");
    assert!(bus.try_send(7, "x").unwrap_err().is_no_such_slot());
    assert!(now(bus.request(2, "x")).unwrap_err().is_no_such_slot());
    stop(cluster);
}

/// A worker that answers requests: "echo:<msg>"; a message "drop" is
/// dropped without a reply, "hold" is kept unanswered, "crash" panics with
/// the request in hand.
fn responder() -> Cluster {
    Cluster::builder()
        .workers(2)
        .throttle_delay(Duration::ZERO)
        .start(|worker: Worker| async move {
            let mut inbox = worker.inbox();
            let mut held: Vec<Envelope> = Vec::new();
            while let Some(envelope) = inbox.recv().await {
                match envelope.message().as_ref() {
                    b"drop" => drop(envelope),
                    b"hold" => held.push(envelope),
                    b"crash" => panic!("the receiver crashes before replying"),
                    b"ask 0" => {
                        let answer = worker.bus().request(0, "from a worker").await;
                        envelope.reply(answer.unwrap_or_else(|e| e.to_string().into()));
                    }
                    m => {
                        let reply = [b"echo:".as_slice(), m].concat();
                        envelope.reply(reply);
                    }
                }
            }
        })
        .expect("start")
}

#[test]
fn requests_get_replies_from_workers() {
    let cluster = responder();
    let bus = cluster.bus();
    assert_eq!(done(bus.request(0, "hi")).unwrap(), "echo:hi");
    // Worker 1 asks worker 0 in turn.
    assert_eq!(done(bus.request(1, "ask 0")).unwrap(), "echo:from a worker");
    stop(cluster);
}

#[test]
fn a_request_dropped_or_whose_receiver_dies_is_an_error_not_a_hang() {
    let cluster = responder();
    let bus = cluster.bus();
    let e = done(bus.request(0, "drop")).unwrap_err();
    assert!(e.is_no_reply(), "{e:?}");
    let e = done(bus.request(0, "crash")).unwrap_err();
    assert!(e.is_no_reply(), "{e:?}");
    assert!(e.to_string().contains("slot 0"), "{e}");
    // The slot came back and answers.
    assert_eq!(done(bus.request(0, "again")).unwrap(), "echo:again");
    stop(cluster);
}

#[test]
fn a_request_without_a_reply_in_time_times_out() {
    let cluster = responder();
    let bus = cluster.bus();
    // From outside the workers: the cluster's timer thread keeps the time.
    let e = done(bus.request_timeout(0, "hold", Duration::from_millis(50))).unwrap_err();
    assert!(e.is_timeout(), "{e:?}");
    assert!(e.to_string().contains("slot 0"), "{e}");
    stop(cluster);

    // From a worker: its runtime's timer.
    let (tx, rx) = mpsc::channel();
    let cluster = Cluster::builder()
        .workers(2)
        .request_timeout(Duration::from_millis(50))
        .start(move |worker: Worker| {
            let tx = tx.clone();
            async move {
                let mut inbox = worker.inbox();
                if worker.slot() == 1 {
                    let answer = worker.bus().request(0, "never answered").await;
                    tx.send(answer.map_err(|e| e.is_timeout()))
                        .expect("test alive");
                }
                let mut held = Vec::new();
                while let Some(e) = inbox.recv().await {
                    held.push(e);
                }
            }
        })
        .expect("start");
    assert_eq!(recv(&rx, "the worker's request"), Err(true));
    stop(cluster);
}

#[test]
fn topics_reach_every_subscriber_once_until_it_unsubscribes() {
    let (ready_tx, ready_rx) = mpsc::channel();
    let (tx, rx) = mpsc::channel();
    let cluster = Cluster::builder()
        .workers(2)
        .start(move |worker: Worker| {
            let (ready_tx, tx) = (ready_tx.clone(), tx.clone());
            async move {
                let mut sub = worker.bus().subscribe("news")?;
                ready_tx.send(()).expect("test alive");
                let stop = worker.shutdown_signal();
                tokio::pin!(stop);
                loop {
                    tokio::select! {
                        _ = &mut stop => break,
                        m = sub.recv() => match m {
                            Some(e) => tx
                                .send((worker.slot(), e.topic().map(str::to_owned), e.into_message()))
                                .expect("test alive"),
                            None => break,
                        },
                    }
                }
                Ok::<_, forkless::Error>(())
            }
        })
        .expect("start");
    recv(&ready_rx, "subscriber 0");
    recv(&ready_rx, "subscriber 1");
    let bus = cluster.bus();
    let mut mine = bus.subscribe("news").unwrap();
    assert_eq!(now(bus.publish("news", "first")).unwrap(), 3);
    assert_eq!(now(bus.publish("other", "nobody")).unwrap(), 0);
    assert_eq!(now(bus.publish("news", "second")).unwrap(), 3);
    let mut got: Vec<(usize, Option<String>, Bytes)> =
        (0..4).map(|_| recv(&rx, "a published message")).collect();
    got.sort();
    let news = Some("news".to_owned());
    assert_eq!(
        got,
        [
            (0, news.clone(), Bytes::from("first")),
            (0, news.clone(), Bytes::from("second")),
            (1, news.clone(), Bytes::from("first")),
            (1, news.clone(), Bytes::from("second")),
        ]
    );
    let first = now(mine.recv()).expect("first");
    assert_eq!(
        (first.from(), first.message().as_ref()),
        (None, b"first".as_slice())
    );
    assert_eq!(now(mine.recv()).expect("second").message(), "second");
    drop(mine);
    assert_eq!(
        now(bus.publish("news", "third")).unwrap(),
        2,
        "unsubscribed on drop"
    );
    stop(cluster);
}

#[test]
fn a_subscription_leaked_by_a_worker_that_exits_is_ended_for_it() {
    let (tx, rx) = mpsc::channel();
    let cluster = Cluster::builder()
        .workers(1)
        .throttle_delay(Duration::ZERO)
        .start(move |worker: Worker| {
            let tx = tx.clone();
            async move {
                if worker.generation() == 0 {
                    let sub = worker.bus().subscribe("leaky")?;
                    #[allow(clippy::mem_forget)]
                    std::mem::forget(sub);
                    tx.send(()).expect("test alive");
                    panic!("exits with a leaked subscription");
                }
                tx.send(()).expect("test alive");
                worker.shutdown_signal().await;
                Ok::<_, forkless::Error>(())
            }
        })
        .expect("start");
    recv(&rx, "generation 0 subscribed");
    recv(&rx, "generation 1 running");
    assert_eq!(now(cluster.bus().publish("leaky", "anyone?")).unwrap(), 0);
    stop(cluster);
}

#[test]
fn typed_messages_round_trip_as_json() {
    #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
    struct Job {
        id: u32,
        name: String,
    }
    let cluster = Cluster::builder()
        .workers(1)
        .start(|worker: Worker| async move {
            let mut inbox = worker.inbox();
            while let Some(e) = inbox.recv().await {
                let job: Job = e.json()?;
                e.reply_as(&(job.id * 2))?;
            }
            Ok::<_, forkless::Error>(())
        })
        .expect("start");
    let bus = cluster.bus();
    let job = Job {
        id: 21,
        name: "double".into(),
    };
    let doubled: u32 = done(bus.request_as(0, &job)).unwrap();
    assert_eq!(doubled, 42);
    let e = done(bus.request_as::<_, String>(0, &job)).unwrap_err();
    assert!(
        e.is_invalid_value(),
        "the reply is a number, not a string: {e:?}"
    );
    stop(cluster);
}

#[test]
fn after_the_cluster_stops_every_bus_call_fails_and_nothing_hangs() {
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let cluster = Cluster::builder()
        .workers(1)
        .inbox_capacity(1)
        .start(move |worker: Worker| {
            let go_tx = go_tx.clone();
            async move {
                // Holds its inbox but never reads it.
                let _inbox = worker.inbox();
                go_tx.send(()).expect("test alive");
                worker.shutdown_signal().await;
            }
        })
        .expect("start");
    recv(&go_rx, "the worker");
    let bus = cluster.bus();
    let mut sub = bus.subscribe("t").unwrap();
    now(bus.send(0, "fills the inbox")).unwrap();
    let mut blocked = Op::new(bus.send(0, "waits for room")).pending("send to a full inbox");
    let mut request = Op::new(bus.request(0, "never read")).pending("request");
    stop(cluster);

    match blocked.poll() {
        std::task::Poll::Ready(Err(e)) => assert!(e.is_stopped(), "{e:?}"),
        other => panic!("a blocked send after stop: {other:?}"),
    }
    match request.poll() {
        std::task::Poll::Ready(Err(e)) => assert!(e.is_stopped() || e.is_no_reply(), "{e:?}"),
        other => panic!("a pending request after stop: {other:?}"),
    }
    assert!(now(sub.recv()).is_none(), "subscriptions end");
    assert!(now(bus.send(0, "x")).unwrap_err().is_stopped());
    assert!(bus.try_send(0, "x").unwrap_err().is_stopped());
    assert!(now(bus.broadcast("x")).unwrap_err().is_stopped());
    assert!(now(bus.publish("t", "x")).unwrap_err().is_stopped());
    assert!(bus.subscribe("t").unwrap_err().is_stopped());
    assert!(now(bus.request(0, "x")).unwrap_err().is_stopped());
}

#[test]
fn bad_bus_settings_are_refused_at_start() {
    let e = Cluster::builder()
        .inbox_capacity(0)
        .start(|_w: Worker| async {})
        .unwrap_err();
    assert!(
        e.is_config() && e.to_string().contains("inbox_capacity"),
        "{e}"
    );
    let e = Cluster::builder()
        .request_timeout(Duration::ZERO)
        .start(|_w: Worker| async {})
        .unwrap_err();
    assert!(
        e.is_config() && e.to_string().contains("request_timeout"),
        "{e}"
    );
}

#[test]
fn the_newest_inbox_of_a_slot_is_its_only_reader() {
    let (tx, rx) = mpsc::channel();
    let cluster = Cluster::builder()
        .workers(1)
        .start(move |worker: Worker| {
            let tx = tx.clone();
            async move {
                let mut first = worker.inbox();
                let mut second = worker.inbox();
                tx.send(first.recv().await.is_none()).expect("test alive");
                let e = second.recv().await.expect("a message");
                tx.send(e.message() == "hello").expect("test alive");
                worker.shutdown_signal().await;
            }
        })
        .expect("start");
    assert!(recv(&rx, "the first inbox ended"));
    now(cluster.bus().send(0, "hello")).unwrap();
    assert!(recv(&rx, "the second inbox got it"));
    stop(cluster);
}
