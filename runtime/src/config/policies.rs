//! The failure policies a [`Builder`](super::builder::Builder) takes: when a
//! slot's worker is started again ([`Restart`]), and what a panic in a task
//! that a worker spawned does ([`TaskPanic`]); each parses as its
//! `FORKLESS_*` variable takes it.

use forkless_worker::rt::Errors as _;
use forkless_worker::Error;

/// When a slot's worker is started again after it exits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Restart {
    /// After any exit, like a Node cluster's `exit` handler that forks again.
    /// The default.
    #[default]
    Always,
    /// After a failure ([`Exit::is_failure`](crate::Exit::is_failure)): an
    /// error return or a panic. A body that returns `Ok` ends its slot.
    OnFailure,
    /// Never: each slot runs its body once.
    Never,
}

impl Restart {
    /// The spellings [`Restart::from_str`](std::str::FromStr::from_str)
    /// accepts, as an error message names them.
    pub(crate) const ACCEPTED: &'static str = "always, on-failure, never";
}

/// Parses a restart policy as `FORKLESS_RESTART` takes it: `always`,
/// `on-failure` (or `on_failure`), `never`; case-insensitive, surrounding
/// whitespace ignored.
///
/// # Errors
///
/// Any other text is an [`Error::is_config`] error that names the accepted
/// values.
///
/// # Examples
///
/// ```
/// use forkless_runtime::Restart;
///
/// assert_eq!(" On-Failure ".parse::<Restart>()?, Restart::OnFailure);
/// assert!("sometimes".parse::<Restart>().is_err_and(|e| e.is_config()));
/// # Ok::<(), forkless_worker::Error>(())
/// ```
impl std::str::FromStr for Restart {
    type Err = Error;

    fn from_str(s: &str) -> Result<Restart, Error> {
        match s.trim().to_ascii_lowercase().as_str() {
            "always" => Ok(Restart::Always),
            "on-failure" | "on_failure" => Ok(Restart::OnFailure),
            "never" => Ok(Restart::Never),
            _ => Err(Error::config(format!(
                "{s:?} is not a restart policy ({})",
                Restart::ACCEPTED
            ))),
        }
    }
}

/// What a panic in a task that a worker spawned (`spawn_local`,
/// `tokio::spawn`) does, in [`Builder::task_panic`](crate::Builder::task_panic).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TaskPanic {
    /// The task ends, as tokio does by default (its `JoinHandle` returns the
    /// panic); the worker serves on. Reported as
    /// [`Event::TaskPanicked`](crate::Event::TaskPanicked).
    #[default]
    Isolate,
    /// The whole worker ends as [`Exit::Panicked`](crate::Exit::Panicked)
    /// with the task's panic, and is restarted by the [`Restart`] policy:
    /// for services where a task's panic leaves shared state broken.
    CrashWorker,
}

impl TaskPanic {
    /// The spellings [`TaskPanic::from_str`](std::str::FromStr::from_str)
    /// accepts, as an error message names them.
    pub(crate) const ACCEPTED: &'static str = "isolate, crash-worker";
}

/// Parses a task panic policy as `FORKLESS_TASK_PANIC` takes it: `isolate`,
/// `crash-worker` (or `crash_worker`); case-insensitive, surrounding
/// whitespace ignored.
///
/// # Errors
///
/// Any other text is an [`Error::is_config`] error that names the accepted
/// values.
///
/// # Examples
///
/// ```
/// use forkless_runtime::TaskPanic;
///
/// assert_eq!("CRASH_WORKER".parse::<TaskPanic>()?, TaskPanic::CrashWorker);
/// assert!("explode".parse::<TaskPanic>().is_err_and(|e| e.is_config()));
/// # Ok::<(), forkless_worker::Error>(())
/// ```
impl std::str::FromStr for TaskPanic {
    type Err = Error;

    fn from_str(s: &str) -> Result<TaskPanic, Error> {
        match s.trim().to_ascii_lowercase().as_str() {
            "isolate" => Ok(TaskPanic::Isolate),
            "crash-worker" | "crash_worker" => Ok(TaskPanic::CrashWorker),
            _ => Err(Error::config(format!(
                "{s:?} is not a task panic policy ({})",
                TaskPanic::ACCEPTED
            ))),
        }
    }
}
