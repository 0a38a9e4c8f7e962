//! The JSON documents of the control protocol.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The answer to `GET /status`: a snapshot of the cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// The cluster's name.
    pub name: String,
    /// How many slots the cluster has (it does not change during a rolling
    /// restart).
    pub size: usize,
    /// Whether a rolling restart is under way.
    pub rolling: bool,
    /// Whether the cluster is stopping or has stopped.
    pub stopping: bool,
    /// The process the cluster runs in (0 from a server that predates it).
    #[serde(default)]
    pub pid: u32,
    /// Seconds since the cluster started (0 from a server that predates
    /// it).
    #[serde(default)]
    pub uptime_secs: f64,
    /// One entry per slot, `0..size`.
    pub workers: Vec<WorkerStatus>,
    /// The store's and the bus's remote backends (Redis), if they have one;
    /// empty with the in-process backends.
    #[serde(default)]
    pub backends: Vec<BackendStatus>,
}

/// One slot in a [`Status`]: its serving (or last) generation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerStatus {
    /// The slot.
    pub slot: usize,
    /// Its serving (or last) generation.
    pub generation: u64,
    /// The core it is pinned to.
    pub core: Option<usize>,
    /// What it is doing.
    pub state: WorkerState,
    /// How long this generation has run, in seconds; `None` before it
    /// started.
    pub uptime_secs: Option<f64>,
    /// How many times the slot was started again after an exit.
    pub restarts: u64,
    /// How the slot's last generation to end ended, as text.
    pub last_exit: Option<String>,
    /// How many times the slot was recycled.
    #[serde(default)]
    pub recycles: u64,
    /// Why it was recycled last, as text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_recycle: Option<String>,
    /// Connections this generation has accepted since it started: a
    /// cumulative count, not the connections open now.
    pub accepted: u64,
    /// Tasks alive in its runtime (tasks started with `tokio::spawn`).
    pub alive_tasks: u64,
    /// Share of time its runtime was busy over the last heartbeat period,
    /// from 0 to 1.
    pub busy_ratio: f64,
    /// How late its last heartbeat ran (the event loop's lag), in
    /// milliseconds.
    pub loop_lag_ms: f64,
    /// The bytes its generation's thread holds, when the program counts
    /// them (`forkless::alloc::Counting` as its global allocator); absent
    /// when unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<u64>,
}

/// What a slot is doing, in a [`WorkerStatus`]. On the wire: `"starting"`,
/// `"ready"`, `"stalled"`, `"restarting"`, `"gave up"`, `"stopped"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum WorkerState {
    /// Started, not yet ready.
    Starting,
    /// Ready and serving.
    Ready,
    /// Its event loop has not turned for `stall_timeout` or more.
    Stalled,
    /// No worker runs; the next starts after a throttling delay.
    Restarting,
    /// The slot gave up after too many quick failures.
    #[serde(rename = "gave up")]
    GaveUp,
    /// The slot ended by its restart policy, or the cluster stopped.
    Stopped,
    /// A state this version of the protocol does not know (from a newer
    /// server). Written as `"unknown"`.
    #[serde(other)]
    Unknown,
}

impl fmt::Display for WorkerState {
    /// As on the wire: `gave up`, `ready`, ...
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            WorkerState::Starting => "starting",
            WorkerState::Ready => "ready",
            WorkerState::Stalled => "stalled",
            WorkerState::Restarting => "restarting",
            WorkerState::GaveUp => "gave up",
            WorkerState::Stopped => "stopped",
            WorkerState::Unknown => "unknown",
        })
    }
}

/// A remote backend of the store or the bus, in a [`Status`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendStatus {
    /// `"store"` or `"bus"`.
    pub name: String,
    /// What it runs on: `"redis"`.
    pub kind: String,
    /// Whether its last command was answered.
    pub reachable: bool,
    /// Commands that failed because it could not be reached or did not
    /// answer in time.
    pub failures: u64,
}

/// One line of `GET /events`: something the supervisor did or saw. On the
/// wire, an object whose `"event"` field names the variant in snake case
/// (`{"event": "worker_started", "slot": 0, ...}`); durations are
/// milliseconds, as floats.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Event {
    /// A generation of a slot was started.
    WorkerStarted {
        /// The slot.
        slot: usize,
        /// The new generation.
        generation: u64,
        /// The core it is pinned to.
        core: Option<usize>,
    },
    /// A generation became ready.
    WorkerReady {
        /// The slot.
        slot: usize,
        /// The generation.
        generation: u64,
        /// How long after its start, in milliseconds.
        after_ms: f64,
    },
    /// A generation ended.
    WorkerExited {
        /// The slot.
        slot: usize,
        /// The generation.
        generation: u64,
        /// How, as text.
        exit: String,
        /// How long it ran, in milliseconds.
        ran_for_ms: f64,
    },
    /// A slot will start its next generation after a delay.
    Restarting {
        /// The slot.
        slot: usize,
        /// The wait before the start, in milliseconds (zero: at once).
        delay_ms: f64,
    },
    /// A slot stopped restarting after too many quick failures.
    GaveUp {
        /// The slot.
        slot: usize,
        /// Quick failures in a row.
        failures: u32,
    },
    /// A worker's event loop has not turned for `stall_timeout` or more.
    Stalled {
        /// The slot.
        slot: usize,
        /// The generation.
        generation: u64,
        /// How long since its last heartbeat, in milliseconds.
        silent_for_ms: f64,
    },
    /// A stalled worker's loop turns again.
    Recovered {
        /// The slot.
        slot: usize,
        /// The generation.
        generation: u64,
    },
    /// A task spawned by a worker panicked (the body itself did not).
    TaskPanicked {
        /// The slot.
        slot: usize,
        /// The generation.
        generation: u64,
        /// The panic's message.
        message: String,
        /// Where it panicked, when known.
        location: Option<String>,
    },
    /// The number of slots changed.
    Resized {
        /// The size before.
        from: usize,
        /// The size now.
        to: usize,
    },
    /// A rolling restart began.
    RollStarted {
        /// How many slots it will restart.
        slots: usize,
    },
    /// A new generation did not take over during a rolling restart.
    RollFailed {
        /// The slot.
        slot: usize,
        /// The new generation that failed.
        generation: u64,
        /// Why.
        reason: String,
    },
    /// A rolling restart ended.
    RollFinished {
        /// How many slots got a new generation.
        restarted: usize,
        /// False if it stopped at a failure.
        completed: bool,
    },
    /// A worker was recycled: its slot's next generation serves, and the
    /// old one was asked to stop.
    Recycled {
        /// The slot.
        slot: usize,
        /// Which limit: `"max_connections"`, `"max_age"` or `"requested"`.
        kind: String,
        /// Why, as text (the limit and the figure that reached it).
        reason: String,
    },
    /// A recycle's new generation did not take over; the old one serves
    /// on.
    RecycleFailed {
        /// The slot.
        slot: usize,
        /// The new generation that failed.
        generation: u64,
        /// Why.
        reason: String,
    },
    /// An upgrade began: a new process of the program starts beside this
    /// one.
    UpgradeStarted {
        /// The new process's id.
        pid: u32,
    },
    /// The new process's workers are ready: it serves, and this process
    /// stops gracefully and hands it the store.
    Upgraded {
        /// The new process's id.
        pid: u32,
    },
    /// The new process did not take over; this one serves on.
    UpgradeFailed {
        /// Why: its exit, that it was not ready in time, or that it could
        /// not be started.
        reason: String,
    },
    /// In an upgrade's new process: the old process's in-process store was
    /// not taken over; this one's started empty.
    StoreHandoverFailed {
        /// Why: the old process ended without handing it, or it could not
        /// be loaded.
        reason: String,
    },
    /// The cluster began to stop.
    Stopping {
        /// True when workers are terminated rather than asked to stop.
        terminate: bool,
    },
    /// Every worker has ended. The last event.
    Stopped,
    /// The stream fell behind and lost `missed` events.
    Lagged {
        /// How many.
        missed: u64,
    },
}

/// The body of `POST /resize`: `{"workers": 4}`, `{"workers": "+1"}` or
/// `{"workers": "-2"}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResizeRequest {
    /// The new number of workers, or a change of it.
    pub workers: Workers,
}

/// A number of workers, or a change of it: on the wire a number (`4`) or a
/// string (`"+1"`, `"-2"`); as text ([`FromStr`], [`Display`](fmt::Display))
/// `4`, `+1`, `-2`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workers {
    /// Exactly this many.
    Exactly(usize),
    /// This many more.
    More(usize),
    /// This many fewer.
    Fewer(usize),
}

impl Workers {
    /// The size that this asks for, the cluster having `from` workers;
    /// `None` when it would overflow or go below zero.
    ///
    /// ```
    /// use forkless_control::Workers;
    /// assert_eq!(Workers::More(2).apply(3), Some(5));
    /// assert_eq!(Workers::Fewer(5).apply(3), None);
    /// assert_eq!(Workers::Exactly(1).apply(3), Some(1));
    /// ```
    pub fn apply(self, from: usize) -> Option<usize> {
        match self {
            Workers::Exactly(n) => Some(n),
            Workers::More(n) => from.checked_add(n),
            Workers::Fewer(n) => from.checked_sub(n),
        }
    }
}

impl fmt::Display for Workers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Workers::Exactly(n) => write!(f, "{n}"),
            Workers::More(n) => write!(f, "+{n}"),
            Workers::Fewer(n) => write!(f, "-{n}"),
        }
    }
}

/// Why a text is not `N`, `+N` or `-N`.
const EXPECTED: &str = "expected N, +N or -N (a whole number of workers)";

impl FromStr for Workers {
    type Err = String;

    /// `N`, `+N` or `-N`.
    fn from_str(s: &str) -> Result<Workers, String> {
        let (make, digits): (fn(usize) -> Workers, &str) = if let Some(d) = s.strip_prefix('+') {
            (Workers::More, d)
        } else if let Some(d) = s.strip_prefix('-') {
            (Workers::Fewer, d)
        } else {
            (Workers::Exactly, s)
        };
        // `usize::from_str` takes a sign of its own: "++1" must not pass.
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(EXPECTED.to_owned());
        }
        digits
            .parse()
            .map(make)
            .map_err(|e| format!("{EXPECTED}: {e}"))
    }
}

impl Serialize for Workers {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Workers::Exactly(n) => serializer.serialize_u64(*n as u64),
            change => serializer.collect_str(change),
        }
    }
}

impl<'de> Deserialize<'de> for Workers {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Workers, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(u64),
            Text(String),
        }
        match Raw::deserialize(deserializer).map_err(|_| {
            serde::de::Error::custom(r#"expected {"workers": N} or {"workers": "+N"} / "-N""#)
        })? {
            Raw::Number(n) => usize::try_from(n)
                .map(Workers::Exactly)
                .map_err(serde::de::Error::custom),
            Raw::Text(s) if s.starts_with(['+', '-']) => {
                s.parse().map_err(serde::de::Error::custom)
            }
            Raw::Text(_) => Err(serde::de::Error::custom(
                r#"a change of workers is a string "+N" or "-N"; a size is a number"#,
            )),
        }
    }
}

/// The answer to `POST /resize`: `{"from": 2, "to": 3}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResizeAnswer {
    /// The size before.
    pub from: usize,
    /// The size asked for.
    pub to: usize,
}

/// The answer to `POST /restart`: `{"restart": "started"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestartAnswer {
    /// `"started"`.
    pub restart: String,
}

impl RestartAnswer {
    /// `{"restart": "started"}`.
    pub fn started() -> RestartAnswer {
        RestartAnswer {
            restart: "started".to_owned(),
        }
    }
}

/// The body of `POST /recycle`: `{"slot": 1}`, the slot whose worker is to
/// be replaced by a new generation, as a rolling restart replaces one (the
/// new generation is ready before the old one is asked to stop).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecycleRequest {
    /// The slot, `0..size`.
    pub slot: usize,
}

/// The answer to `POST /recycle`: `{"slot": 1}`, the slot being recycled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecycleAnswer {
    /// The slot.
    pub slot: usize,
}

/// The answer to `POST /upgrade`, once the new process serves:
/// `{"upgraded": true, "pid": 1234}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpgradeAnswer {
    /// Always true: a failed upgrade answers with an error instead.
    pub upgraded: bool,
    /// The new process's id.
    pub pid: u32,
}

/// The answer to `POST /shutdown`: `{"shutdown": "started"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShutdownAnswer {
    /// `"started"`.
    pub shutdown: String,
}

impl ShutdownAnswer {
    /// `{"shutdown": "started"}`.
    pub fn started() -> ShutdownAnswer {
        ShutdownAnswer {
            shutdown: "started".to_owned(),
        }
    }
}

/// The body of every 4xx answer: `{"error": "..."}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What was wrong, in words.
    pub error: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// One of each variant. The `match` has no wildcard: a new variant does
    /// not compile until it is listed here.
    fn every_event() -> Vec<Event> {
        let all = vec![
            Event::WorkerStarted {
                slot: 0,
                generation: 1,
                core: Some(2),
            },
            Event::WorkerReady {
                slot: 0,
                generation: 1,
                after_ms: 1.5,
            },
            Event::WorkerExited {
                slot: 1,
                generation: 2,
                exit: "panicked at src/main.rs:1:2: boom".to_owned(),
                ran_for_ms: 250.0,
            },
            Event::Restarting {
                slot: 1,
                delay_ms: 0.0,
            },
            Event::GaveUp {
                slot: 1,
                failures: 5,
            },
            Event::Stalled {
                slot: 0,
                generation: 1,
                silent_for_ms: 3000.0,
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
                kind: "max_age".to_owned(),
                reason: "max_age: ran 1h of 1h".to_owned(),
            },
            Event::RecycleFailed {
                slot: 1,
                generation: 7,
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
            Event::Stopping { terminate: false },
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

    #[test]
    fn every_event_round_trips_under_its_name() {
        let names = [
            "worker_started",
            "worker_ready",
            "worker_exited",
            "restarting",
            "gave_up",
            "stalled",
            "recovered",
            "task_panicked",
            "resized",
            "roll_started",
            "roll_failed",
            "roll_finished",
            "recycled",
            "recycle_failed",
            "upgrade_started",
            "upgraded",
            "upgrade_failed",
            "store_handover_failed",
            "stopping",
            "stopped",
            "lagged",
        ];
        let events = every_event();
        assert_eq!(events.len(), names.len());
        for (event, name) in events.iter().zip(names) {
            let line = serde_json::to_string(event).expect("serialize");
            assert!(
                line.starts_with(&format!(r#"{{"event":"{name}""#)),
                "{line}"
            );
            let back: Event = serde_json::from_str(&line).expect("deserialize");
            assert_eq!(&back, event, "{line}");
        }
    }

    #[test]
    fn events_have_today_s_fields() {
        assert_eq!(
            serde_json::to_value(Event::Stopped).expect("json"),
            json!({"event": "stopped"})
        );
        assert_eq!(
            serde_json::to_value(Event::WorkerReady {
                slot: 1,
                generation: 2,
                after_ms: 3.5
            })
            .expect("json"),
            json!({"event": "worker_ready", "slot": 1, "generation": 2, "after_ms": 3.5})
        );
        assert_eq!(
            serde_json::to_value(Event::TaskPanicked {
                slot: 0,
                generation: 0,
                message: "m".to_owned(),
                location: None
            })
            .expect("json"),
            json!({"event": "task_panicked", "slot": 0, "generation": 0, "message": "m", "location": null})
        );
        // An event this version does not know is an error, not a panic.
        assert!(serde_json::from_str::<Event>(r#"{"event":"from_the_future"}"#).is_err());
    }

    #[test]
    fn worker_states_are_written_as_before() {
        for (state, text) in [
            (WorkerState::Starting, "starting"),
            (WorkerState::Ready, "ready"),
            (WorkerState::Stalled, "stalled"),
            (WorkerState::Restarting, "restarting"),
            (WorkerState::GaveUp, "gave up"),
            (WorkerState::Stopped, "stopped"),
        ] {
            assert_eq!(serde_json::to_value(state).expect("json"), json!(text));
            assert_eq!(state.to_string(), text);
            let back: WorkerState = serde_json::from_value(json!(text)).expect("state");
            assert_eq!(back, state);
        }
        let newer: WorkerState = serde_json::from_value(json!("draining")).expect("state");
        assert_eq!(newer, WorkerState::Unknown);
    }

    #[test]
    fn a_status_without_backends_parses() {
        let status: Status = serde_json::from_value(json!({
            "name": "api", "size": 1, "rolling": false, "stopping": false,
            "workers": [{"slot": 0, "generation": 3, "core": null, "state": "ready",
                "uptime_secs": 1.5, "restarts": 3, "last_exit": "normal", "accepted": 10,
                "alive_tasks": 1, "busy_ratio": 0.25, "loop_lag_ms": 0.5}]
        }))
        .expect("status");
        assert_eq!(status.workers[0].state, WorkerState::Ready);
        assert_eq!(status.workers[0].accepted, 10);
        assert!(status.backends.is_empty());
        let again: Status =
            serde_json::from_str(&serde_json::to_string(&status).expect("json")).expect("parse");
        assert_eq!(again, status);
    }

    #[test]
    fn resize_bodies_are_a_number_or_a_signed_string() {
        for (body, workers) in [
            (json!({"workers": 4}), Workers::Exactly(4)),
            (json!({"workers": "+1"}), Workers::More(1)),
            (json!({"workers": "-2"}), Workers::Fewer(2)),
        ] {
            let request: ResizeRequest = serde_json::from_value(body.clone()).expect("request");
            assert_eq!(request.workers, workers);
            assert_eq!(serde_json::to_value(request).expect("json"), body);
        }
        for bad in [
            json!({"workers": "4"}),
            json!({"workers": "+"}),
            json!({"workers": "++1"}),
            json!({"workers": "+-1"}),
            json!({"workers": "+x"}),
            json!({"workers": -1}),
            json!({"workers": 1.5}),
            json!({"workers": null}),
            json!({}),
        ] {
            assert!(
                serde_json::from_value::<ResizeRequest>(bad.clone()).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn workers_parse_from_text_as_the_cli_takes_them() {
        assert_eq!("8".parse(), Ok(Workers::Exactly(8)));
        assert_eq!("+2".parse(), Ok(Workers::More(2)));
        assert_eq!("-1".parse(), Ok(Workers::Fewer(1)));
        for bad in ["", "+", "x", "1.5", "+-1", "--1", " 1"] {
            assert!(bad.parse::<Workers>().is_err(), "{bad:?}");
        }
        for w in [Workers::Exactly(3), Workers::More(1), Workers::Fewer(2)] {
            assert_eq!(w.to_string().parse(), Ok(w));
        }
    }

    #[test]
    fn answers_and_errors_are_today_s_json() {
        assert_eq!(
            serde_json::to_string(&ResizeAnswer { from: 1, to: 2 }).expect("json"),
            r#"{"from":1,"to":2}"#
        );
        assert_eq!(
            serde_json::to_string(&RestartAnswer::started()).expect("json"),
            r#"{"restart":"started"}"#
        );
        assert_eq!(
            serde_json::to_string(&ShutdownAnswer::started()).expect("json"),
            r#"{"shutdown":"started"}"#
        );
        assert_eq!(
            serde_json::to_string(&RecycleRequest { slot: 2 }).expect("json"),
            r#"{"slot":2}"#
        );
        assert_eq!(
            serde_json::from_str::<RecycleAnswer>(r#"{"slot":2}"#).expect("answer"),
            RecycleAnswer { slot: 2 }
        );
        for bad in [r#"{"slot":-1}"#, r#"{"slot":"1"}"#, r#"{"slot":1.5}"#, "{}"] {
            assert!(
                serde_json::from_str::<RecycleRequest>(bad).is_err(),
                "{bad}"
            );
        }
        assert_eq!(
            serde_json::to_string(&ErrorBody {
                error: "no".to_owned()
            })
            .expect("json"),
            r#"{"error":"no"}"#
        );
    }
}
