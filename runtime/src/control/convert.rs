//! The cluster's status and events as the control protocol writes them:
//! the conversions from the runtime's types to those of
//! [`forkless_control`], which `forkless-ctl` reads with. The tests check
//! that the typed documents are the same JSON as the server used to build
//! by hand (`json!`), and read back.

use std::time::Duration;

use crate::observe::events::{Event, Status, WorkerState};
use forkless_control as wire;

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn wire_state(state: WorkerState) -> wire::WorkerState {
    match state {
        WorkerState::Starting => wire::WorkerState::Starting,
        WorkerState::Ready => wire::WorkerState::Ready,
        WorkerState::Stalled => wire::WorkerState::Stalled,
        WorkerState::Restarting => wire::WorkerState::Restarting,
        WorkerState::GaveUp => wire::WorkerState::GaveUp,
        WorkerState::Stopped => wire::WorkerState::Stopped,
    }
}

/// The cluster's status as the protocol writes it.
pub(super) fn wire_status(status: &Status) -> wire::Status {
    wire::Status {
        name: status.name.clone(),
        size: status.size,
        rolling: status.rolling,
        stopping: status.stopping,
        pid: status.pid,
        uptime_secs: status.uptime.as_secs_f64(),
        workers: status
            .workers
            .iter()
            .map(|w| wire::WorkerStatus {
                slot: w.slot,
                generation: w.generation,
                core: w.core,
                state: wire_state(w.state),
                uptime_secs: w
                    .started_at
                    .and_then(|t| t.elapsed().ok())
                    .map(|d| d.as_secs_f64()),
                restarts: w.restarts,
                last_exit: w.last_exit.as_ref().map(ToString::to_string),
                recycles: w.recycles,
                last_recycle: w.last_recycle.as_ref().map(ToString::to_string),
                accepted: w.accepted,
                alive_tasks: w.alive_tasks,
                busy_ratio: w.busy_ratio,
                loop_lag_ms: millis(w.loop_lag),
                memory: w.memory,
            })
            .collect(),
        backends: status
            .backends
            .iter()
            .map(|b| wire::BackendStatus {
                name: b.name.to_owned(),
                kind: b.kind.to_owned(),
                reachable: b.reachable,
                failures: b.failures,
            })
            .collect(),
    }
}

/// An event as the protocol writes it.
pub(super) fn wire_event(event: &Event) -> wire::Event {
    match event.clone() {
        Event::WorkerStarted {
            slot,
            generation,
            core,
        } => wire::Event::WorkerStarted {
            slot,
            generation,
            core,
        },
        Event::WorkerReady {
            slot,
            generation,
            after,
        } => wire::Event::WorkerReady {
            slot,
            generation,
            after_ms: millis(after),
        },
        Event::WorkerExited {
            slot,
            generation,
            exit,
            ran_for,
        } => wire::Event::WorkerExited {
            slot,
            generation,
            exit: exit.to_string(),
            ran_for_ms: millis(ran_for),
        },
        Event::Restarting { slot, delay } => wire::Event::Restarting {
            slot,
            delay_ms: millis(delay),
        },
        Event::GaveUp { slot, failures } => wire::Event::GaveUp { slot, failures },
        Event::Stalled {
            slot,
            generation,
            silent_for,
        } => wire::Event::Stalled {
            slot,
            generation,
            silent_for_ms: millis(silent_for),
        },
        Event::Recovered { slot, generation } => wire::Event::Recovered { slot, generation },
        Event::TaskPanicked {
            slot,
            generation,
            message,
            location,
        } => wire::Event::TaskPanicked {
            slot,
            generation,
            message,
            location,
        },
        Event::Resized { from, to } => wire::Event::Resized { from, to },
        Event::RollStarted { slots } => wire::Event::RollStarted { slots },
        Event::RollFailed {
            slot,
            generation,
            reason,
        } => wire::Event::RollFailed {
            slot,
            generation,
            reason,
        },
        Event::RollFinished {
            restarted,
            completed,
        } => wire::Event::RollFinished {
            restarted,
            completed,
        },
        Event::Recycled { slot, reason } => wire::Event::Recycled {
            slot,
            kind: reason.name().to_owned(),
            reason: reason.to_string(),
        },
        Event::RecycleFailed {
            slot,
            generation,
            reason,
        } => wire::Event::RecycleFailed {
            slot,
            generation,
            reason,
        },
        Event::UpgradeStarted { pid } => wire::Event::UpgradeStarted { pid },
        Event::Upgraded { pid } => wire::Event::Upgraded { pid },
        Event::UpgradeFailed { reason } => wire::Event::UpgradeFailed { reason },
        Event::StoreHandoverFailed { reason } => wire::Event::StoreHandoverFailed { reason },
        Event::Stopping { terminate } => wire::Event::Stopping { terminate },
        Event::Stopped => wire::Event::Stopped,
        Event::Lagged { missed } => wire::Event::Lagged { missed },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The JSON the server wrote by hand (`json!` per event) before the
    /// typed protocol: the reference the typed answers must equal.
    mod legacy {
        use crate::observe::events::{Event, Status};
        use serde_json::{json, Value};
        use std::time::Duration;

        fn exit_json(exit: &crate::Exit) -> Value {
            Value::String(exit.to_string())
        }

        pub(super) fn status_json(status: &Status) -> Value {
            json!({
                "name": status.name,
                "size": status.size,
                "rolling": status.rolling,
                "stopping": status.stopping,
                "pid": status.pid,
                "uptime_secs": status.uptime.as_secs_f64(),
                "workers": status.workers.iter().map(|w| { let mut v = json!({
                    "slot": w.slot,
                    "generation": w.generation,
                    "core": w.core,
                    "state": w.state.to_string(),
                    "uptime_secs": w.started_at.and_then(|t| t.elapsed().ok()).map(|d| d.as_secs_f64()),
                    "restarts": w.restarts,
                    "last_exit": w.last_exit.as_ref().map(exit_json),
                    "accepted": w.accepted,
                    "alive_tasks": w.alive_tasks,
                    "busy_ratio": w.busy_ratio,
                    "loop_lag_ms": w.loop_lag.as_secs_f64() * 1000.0,
                    "recycles": w.recycles,
                });
                if let Some(reason) = &w.last_recycle {
                    v["last_recycle"] = json!(reason.to_string());
                }
                v }).collect::<Vec<_>>(),
                "backends": status.backends.iter().map(|b| json!({
                    "name": b.name,
                    "kind": b.kind,
                    "reachable": b.reachable,
                    "failures": b.failures,
                })).collect::<Vec<_>>(),
            })
        }

        pub(super) fn event_json(event: &Event) -> Value {
            let ms = |d: &Duration| d.as_secs_f64() * 1000.0;
            match event {
                Event::WorkerStarted {
                    slot,
                    generation,
                    core,
                } => {
                    json!({"event": "worker_started", "slot": slot, "generation": generation, "core": core})
                }
                Event::WorkerReady {
                    slot,
                    generation,
                    after,
                } => {
                    json!({"event": "worker_ready", "slot": slot, "generation": generation, "after_ms": ms(after)})
                }
                Event::WorkerExited {
                    slot,
                    generation,
                    exit,
                    ran_for,
                } => {
                    json!({"event": "worker_exited", "slot": slot, "generation": generation, "exit": exit_json(exit), "ran_for_ms": ms(ran_for)})
                }
                Event::Restarting { slot, delay } => {
                    json!({"event": "restarting", "slot": slot, "delay_ms": ms(delay)})
                }
                Event::GaveUp { slot, failures } => {
                    json!({"event": "gave_up", "slot": slot, "failures": failures})
                }
                Event::Stalled {
                    slot,
                    generation,
                    silent_for,
                } => {
                    json!({"event": "stalled", "slot": slot, "generation": generation, "silent_for_ms": ms(silent_for)})
                }
                Event::Recovered { slot, generation } => {
                    json!({"event": "recovered", "slot": slot, "generation": generation})
                }
                Event::TaskPanicked {
                    slot,
                    generation,
                    message,
                    location,
                } => {
                    json!({"event": "task_panicked", "slot": slot, "generation": generation, "message": message, "location": location})
                }
                Event::Resized { from, to } => json!({"event": "resized", "from": from, "to": to}),
                Event::RollStarted { slots } => json!({"event": "roll_started", "slots": slots}),
                Event::RollFailed {
                    slot,
                    generation,
                    reason,
                } => {
                    json!({"event": "roll_failed", "slot": slot, "generation": generation, "reason": reason})
                }
                Event::RollFinished {
                    restarted,
                    completed,
                } => {
                    json!({"event": "roll_finished", "restarted": restarted, "completed": completed})
                }
                Event::Recycled { slot, reason } => {
                    json!({"event": "recycled", "slot": slot, "kind": reason.name(), "reason": reason.to_string()})
                }
                Event::RecycleFailed {
                    slot,
                    generation,
                    reason,
                } => {
                    json!({"event": "recycle_failed", "slot": slot, "generation": generation, "reason": reason})
                }
                Event::UpgradeStarted { pid } => json!({"event": "upgrade_started", "pid": pid}),
                Event::Upgraded { pid } => json!({"event": "upgraded", "pid": pid}),
                Event::UpgradeFailed { reason } => {
                    json!({"event": "upgrade_failed", "reason": reason})
                }
                Event::StoreHandoverFailed { reason } => {
                    json!({"event": "store_handover_failed", "reason": reason})
                }
                Event::Stopping { terminate } => {
                    json!({"event": "stopping", "terminate": terminate})
                }
                Event::Stopped => json!({"event": "stopped"}),
                Event::Lagged { missed } => json!({"event": "lagged", "missed": missed}),
            }
        }
    }

    /// One of each runtime event: the `match` has no wildcard, so a new
    /// variant does not compile until it is listed here.
    fn every_event() -> Vec<Event> {
        let all = vec![
            Event::WorkerStarted {
                slot: 0,
                generation: 1,
                core: Some(3),
            },
            Event::WorkerStarted {
                slot: 1,
                generation: 0,
                core: None,
            },
            Event::WorkerReady {
                slot: 0,
                generation: 1,
                after: Duration::from_micros(1500),
            },
            Event::WorkerExited {
                slot: 0,
                generation: 1,
                exit: crate::Exit::Panicked {
                    message: "boom".to_owned(),
                    location: Some("src/main.rs:1:2".to_owned()),
                },
                ran_for: Duration::from_millis(250),
            },
            Event::WorkerExited {
                slot: 0,
                generation: 2,
                exit: crate::Exit::Normal,
                ran_for: Duration::ZERO,
            },
            Event::Restarting {
                slot: 1,
                delay: Duration::from_millis(100),
            },
            Event::GaveUp {
                slot: 1,
                failures: 5,
            },
            Event::Stalled {
                slot: 0,
                generation: 1,
                silent_for: Duration::from_secs(3),
            },
            Event::Recovered {
                slot: 0,
                generation: 1,
            },
            Event::TaskPanicked {
                slot: 0,
                generation: 1,
                message: "oops".to_owned(),
                location: None,
            },
            Event::Resized { from: 2, to: 3 },
            Event::RollStarted { slots: 3 },
            Event::RollFailed {
                slot: 2,
                generation: 4,
                reason: "not ready in time".to_owned(),
            },
            Event::RollFinished {
                restarted: 3,
                completed: true,
            },
            Event::Recycled {
                slot: 1,
                reason: crate::RecycleReason::MaxConnections {
                    limit: 100,
                    accepted: 101,
                },
            },
            Event::Recycled {
                slot: 0,
                reason: crate::RecycleReason::MaxAge {
                    limit: Duration::from_secs(3600),
                    age: Duration::from_secs(3601),
                },
            },
            Event::Recycled {
                slot: 0,
                reason: crate::RecycleReason::Requested,
            },
            Event::RecycleFailed {
                slot: 1,
                generation: 9,
                reason: "not ready in time".to_owned(),
            },
            Event::UpgradeStarted { pid: 4242 },
            Event::Upgraded { pid: 4242 },
            Event::UpgradeFailed {
                reason: "it exited before it was ready".to_owned(),
            },
            Event::StoreHandoverFailed {
                reason: "the channel closed".to_owned(),
            },
            Event::Stopping { terminate: true },
            Event::Stopped,
            Event::Lagged { missed: 7 },
        ];
        for event in &all {
            match event {
                Event::WorkerStarted { .. }
                | Event::WorkerReady { .. }
                | Event::WorkerExited { .. }
                | Event::Restarting { .. }
                | Event::GaveUp { .. }
                | Event::Stalled { .. }
                | Event::Recovered { .. }
                | Event::TaskPanicked { .. }
                | Event::Resized { .. }
                | Event::RollStarted { .. }
                | Event::RollFailed { .. }
                | Event::RollFinished { .. }
                | Event::Recycled { .. }
                | Event::RecycleFailed { .. }
                | Event::UpgradeStarted { .. }
                | Event::Upgraded { .. }
                | Event::UpgradeFailed { .. }
                | Event::StoreHandoverFailed { .. }
                | Event::Stopping { .. }
                | Event::Stopped
                | Event::Lagged { .. } => {}
            }
        }
        all
    }

    /// The typed events are written exactly as the hand-built JSON was, and
    /// read back into the same typed event.
    #[test]
    fn every_event_is_written_as_before_and_reads_back() {
        for event in every_event() {
            let typed = wire_event(&event);
            let line = serde_json::to_string(&typed).expect("JSON");
            let value: serde_json::Value = serde_json::from_str(&line).expect("JSON");
            assert_eq!(value, legacy::event_json(&event), "{event:?}");
            let back: wire::Event = serde_json::from_str(&line).expect("typed");
            assert_eq!(back, typed, "{line}");
        }
    }

    #[test]
    fn the_status_is_written_as_before() {
        use crate::observe::events::{BackendStatus, WorkerStatus};
        let status = Status {
            name: "api".to_owned(),
            size: 2,
            rolling: true,
            stopping: false,
            pid: 4242,
            uptime: Duration::from_millis(1500),
            workers: vec![
                WorkerStatus {
                    slot: 0,
                    generation: 3,
                    core: Some(1),
                    state: WorkerState::GaveUp,
                    started_at: None,
                    restarts: 3,
                    last_exit: Some(crate::Exit::Failed("no".to_owned())),
                    recycles: 2,
                    last_recycle: Some(crate::RecycleReason::Requested),
                    accepted: 10,
                    alive_tasks: 2,
                    busy_ratio: 0.25,
                    loop_lag: Duration::from_micros(500),
                    memory: None,
                },
                WorkerStatus {
                    slot: 1,
                    generation: 0,
                    core: None,
                    state: WorkerState::Starting,
                    started_at: None,
                    restarts: 0,
                    last_exit: None,
                    recycles: 0,
                    last_recycle: None,
                    accepted: 0,
                    alive_tasks: 0,
                    busy_ratio: 0.0,
                    loop_lag: Duration::ZERO,
                    memory: None,
                },
            ],
            backends: vec![BackendStatus {
                name: "store",
                kind: "redis",
                reachable: false,
                failures: 7,
            }],
        };
        let typed = serde_json::to_value(wire_status(&status)).expect("JSON");
        assert_eq!(typed, legacy::status_json(&status));
        // A counted memory is one more field, which a peer that predates
        // it ignores; one without it reads as unknown.
        let mut counted = status.clone();
        counted.workers[0].memory = Some(12 << 20);
        let typed = serde_json::to_value(wire_status(&counted)).expect("JSON");
        assert_eq!(typed["workers"][0]["memory"], 12 << 20);
        assert!(typed["workers"][1].get("memory").is_none(), "{typed}");
        let mut old = typed.clone();
        old["workers"][0]
            .as_object_mut()
            .expect("a worker")
            .remove("memory");
        let old: wire::Status = serde_json::from_value(old).expect("typed");
        assert_eq!(old.workers[0].memory, None);
        let back: wire::Status = serde_json::from_value(typed).expect("typed");
        assert_eq!(back.workers[0].memory, Some(12 << 20));
        for state in [
            WorkerState::Starting,
            WorkerState::Ready,
            WorkerState::Stalled,
            WorkerState::Restarting,
            WorkerState::GaveUp,
            WorkerState::Stopped,
        ] {
            assert_eq!(wire_state(state).to_string(), state.to_string());
        }
    }
}
