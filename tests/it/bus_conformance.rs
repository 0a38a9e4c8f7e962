//! The bus's conformance suite: each test runs with the in-process bus
//! (`in_process::`) and the Redis bus (`redis::`), and checks what both
//! promise. What only the Redis bus does (hosts reaching each other) is in
//! `redis_backend.rs`; the in-process bus's own promises (answers without a
//! wait, publish counting subscribers) are in `bus.rs`. The Redis half needs
//! the `redis` feature (`cargo test --all-features`, as `.ci/run` does).
#![allow(clippy::unwrap_used)] // the suite's tests are plain functions that `conformance_suite!` wraps

use std::sync::mpsc;
use std::time::Duration;

use crate::common::{done, recv, stop, wait_until, Kind, Op};
use forkless::{Builder, Bytes, Cluster, Worker};

fn builder(kind: Kind) -> Builder {
    Cluster::builder().bus_backend(kind.backend())
}

conformance_suite!(
    messages_between_workers_arrive_in_order_and_name_their_sender,
    requests_get_replies_and_dropped_ones_say_so,
    topics_reach_every_subscriber_once_until_it_unsubscribes,
    this_hosts_name_reaches_its_slots_and_unknown_hosts_are_errors,
    a_subscription_leaked_by_a_worker_that_exits_is_ended_for_it,
    after_the_cluster_stops_every_bus_call_fails_and_nothing_hangs,
);

fn messages_between_workers_arrive_in_order_and_name_their_sender(kind: Kind) {
    const N: usize = 500;
    let (tx, rx) = mpsc::channel();
    let cluster = builder(kind)
        .workers(2)
        .inbox_capacity(16)
        .start(move |worker: Worker| {
            let tx = tx.clone();
            async move {
                if worker.slot() == 0 {
                    for i in 0..N {
                        worker.bus().send(1, i.to_string()).await?;
                    }
                    worker.shutdown_signal().await;
                } else {
                    let mut inbox = worker.inbox();
                    while let Some(e) = inbox.recv().await {
                        tx.send((e.from(), e.host().map(str::to_owned), e.into_message()))
                            .unwrap();
                    }
                }
                Ok::<_, forkless::Error>(())
            }
        })
        .unwrap();
    for i in 0..N {
        let (from, host, message) = recv(&rx, "a message");
        assert_eq!((from, host), (Some(0), None));
        assert_eq!(message, Bytes::from(i.to_string()));
    }
    stop(cluster);
}

fn requests_get_replies_and_dropped_ones_say_so(kind: Kind) {
    let cluster = builder(kind)
        .workers(2)
        .start(|worker: Worker| async move {
            let mut inbox = worker.inbox();
            while let Some(e) = inbox.recv().await {
                if e.message() == "drop" {
                    continue;
                }
                let answer = format!("{} got {:?}", worker.slot(), e.message());
                e.reply(answer);
            }
            Ok::<_, forkless::Error>(())
        })
        .unwrap();
    let bus = cluster.bus();
    assert_eq!(
        done(bus.request(1, "hi")).unwrap(),
        Bytes::from("1 got b\"hi\"")
    );
    let e = done(bus.request(0, "drop")).unwrap_err();
    assert!(e.is_no_reply(), "{e:?}");
    let e = done(bus.request(5, "x")).unwrap_err();
    assert!(e.is_no_such_slot(), "{e:?}");
    stop(cluster);
}

fn topics_reach_every_subscriber_once_until_it_unsubscribes(kind: Kind) {
    let (ready_tx, ready_rx) = mpsc::channel();
    let (tx, rx) = mpsc::channel();
    let cluster = builder(kind)
        .workers(2)
        .start(move |worker: Worker| {
            let (ready_tx, tx) = (ready_tx.clone(), tx.clone());
            async move {
                let mut sub = worker.bus().subscribe("news")?;
                sub.confirmed().await?;
                ready_tx.send(()).unwrap();
                let stop = worker.shutdown_signal();
                tokio::pin!(stop);
                loop {
                    tokio::select! {
                        _ = &mut stop => break,
                        m = sub.recv() => match m {
                            Some(e) => tx
                                .send((worker.slot(), e.topic().map(str::to_owned), e.into_message()))
                                .unwrap(),
                            None => break,
                        },
                    }
                }
                Ok::<_, forkless::Error>(())
            }
        })
        .unwrap();
    recv(&ready_rx, "subscriber 0");
    recv(&ready_rx, "subscriber 1");
    let bus = cluster.bus();
    let mut mine = bus.subscribe("news").unwrap();
    done(mine.confirmed()).unwrap();
    assert!(done(bus.publish("news", "first")).unwrap() >= 1);
    assert!(done(bus.publish("news", "second")).unwrap() >= 1);
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
    let first = done(mine.recv()).unwrap();
    assert_eq!((first.from(), first.host()), (None, None));
    assert_eq!(first.message(), "first");
    assert_eq!(done(mine.recv()).unwrap().message(), "second");
    drop(mine);
    done(bus.publish("news", "third")).unwrap();
    let mut third: Vec<usize> = (0..2).map(|_| recv(&rx, "third").0).collect();
    third.sort();
    assert_eq!(
        third,
        [0, 1],
        "each worker once more; the dropped one got nothing"
    );
    assert!(rx.try_recv().is_err(), "nothing twice");
    stop(cluster);
}

fn this_hosts_name_reaches_its_slots_and_unknown_hosts_are_errors(kind: Kind) {
    let (tx, rx) = mpsc::channel();
    let cluster = builder(kind)
        .workers(1)
        .start(move |worker: Worker| {
            let tx = tx.clone();
            async move {
                let mut inbox = worker.inbox();
                while let Some(e) = inbox.recv().await {
                    tx.send(e.into_message()).unwrap();
                }
                Ok::<_, forkless::Error>(())
            }
        })
        .unwrap();
    let bus = cluster.bus();
    let me = bus.host().to_owned();
    assert!(!me.is_empty());
    done(bus.send_to(&me, 0, "by name")).unwrap();
    assert_eq!(recv(&rx, "the message"), Bytes::from("by name"));
    let e = done(bus.send_to("no such host", 0, "x")).unwrap_err();
    assert!(e.is_no_such_slot(), "{e:?}");
    assert!(e.to_string().contains("no such host"), "{e}");
    let e = done(bus.request_to("no such host", 0, "x")).unwrap_err();
    assert!(e.is_no_such_slot(), "{e:?}");
    stop(cluster);
}

fn a_subscription_leaked_by_a_worker_that_exits_is_ended_for_it(kind: Kind) {
    let (tx, rx) = mpsc::channel();
    let cluster = builder(kind)
        .workers(1)
        .throttle_delay(Duration::ZERO)
        .start(move |worker: Worker| {
            let tx = tx.clone();
            async move {
                if worker.generation() == 0 {
                    let mut sub = worker.bus().subscribe("leaky")?;
                    sub.confirmed().await?;
                    Box::leak(Box::new(sub));
                    tx.send(()).unwrap();
                    panic!("exits with a leaked subscription");
                }
                tx.send(()).unwrap();
                worker.shutdown_signal().await;
                Ok::<_, forkless::Error>(())
            }
        })
        .unwrap();
    recv(&rx, "generation 0 subscribed");
    recv(&rx, "generation 1 running");
    // Nobody receives it any more (on Redis, once the host has left the
    // topic, which follows the exit by a round trip).
    wait_until("the leaked subscription to end", || {
        done(cluster.bus().publish("leaky", "anyone?")).unwrap() == 0
    });
    stop(cluster);
}

fn after_the_cluster_stops_every_bus_call_fails_and_nothing_hangs(kind: Kind) {
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let cluster = builder(kind)
        .workers(1)
        .inbox_capacity(1)
        .start(move |worker: Worker| {
            let go_tx = go_tx.clone();
            async move {
                // Holds its inbox but never reads it.
                let _inbox = worker.inbox();
                go_tx.send(()).unwrap();
                worker.shutdown_signal().await;
            }
        })
        .unwrap();
    recv(&go_rx, "the worker");
    let bus = cluster.bus();
    let mut sub = bus.subscribe("t").unwrap();
    done(bus.send(0, "fills the inbox")).unwrap();
    let mut blocked = Op::new(bus.send(0, "waits for room"));
    assert!(blocked.poll().is_pending());
    stop(cluster);

    match blocked.poll() {
        std::task::Poll::Ready(Err(e)) => assert!(e.is_stopped(), "{e:?}"),
        other => panic!("a blocked send after stop: {other:?}"),
    }
    assert!(done(sub.recv()).is_none(), "subscriptions end");
    assert!(done(bus.send(0, "x")).unwrap_err().is_stopped());
    assert!(done(bus.send_to("elsewhere", 0, "x"))
        .unwrap_err()
        .is_stopped());
    assert!(done(bus.publish("t", "x")).unwrap_err().is_stopped());
    assert!(bus.subscribe("t").unwrap_err().is_stopped());
    assert!(done(bus.request(0, "x")).unwrap_err().is_stopped());
}
