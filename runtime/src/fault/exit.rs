use std::any::Any;
use std::cell::{Cell, RefCell};
use std::fmt;
use std::panic;
use std::sync::{Arc, Once};

use tokio::sync::Notify;

/// How one generation of a worker ended.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Exit {
    /// The body returned `Ok(())` (or `()`).
    Normal,
    /// The body returned an error; its message.
    Failed(String),
    /// The body, or the factory that made it, panicked.
    Panicked {
        /// The panic's message (`"Box<dyn Any>"` when the payload was not a
        /// string).
        message: String,
        /// Where it panicked, `file:line:column`, when the panic hook saw it.
        location: Option<String>,
    },
    /// The body did not return within `shutdown_timeout` of being asked to
    /// stop, and was dropped.
    Terminated,
    /// The thread did not return within `terminate_timeout` of being
    /// terminated (it was blocked outside any `.await`), and was abandoned.
    /// Threads cannot be killed: it goes on until it returns by itself.
    Hung,
}

impl Exit {
    /// Returns true for [`Failed`](Exit::Failed) and
    /// [`Panicked`](Exit::Panicked): the exits that `Restart::OnFailure`
    /// restarts and that count as failures.
    pub fn is_failure(&self) -> bool {
        matches!(self, Exit::Failed(_) | Exit::Panicked { .. })
    }
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Exit::Normal => f.write_str("returned"),
            Exit::Failed(message) => write!(f, "failed: {message}"),
            Exit::Panicked {
                message,
                location: Some(location),
            } => write!(f, "panicked at {location}: {message}"),
            Exit::Panicked {
                message,
                location: None,
            } => write!(f, "panicked: {message}"),
            Exit::Terminated => f.write_str("terminated"),
            Exit::Hung => f.write_str("hung (abandoned)"),
        }
    }
}

thread_local! {
    static CAPTURING: Cell<bool> = const { Cell::new(false) };
    static LAST_LOCATION: RefCell<Option<String>> = const { RefCell::new(None) };
    /// Panics seen on this worker thread since the watcher last looked, and
    /// how to wake it.
    static PANICS: RefCell<Vec<(String, Option<String>)>> = const { RefCell::new(Vec::new()) };
    static PANIC_WATCHER: RefCell<Option<Arc<Notify>>> = const { RefCell::new(None) };
}

/// Installs, once per process, a panic hook that records where panics on
/// worker threads happen, then calls the hook that was there before (which
/// prints the panic, by default).
pub(crate) fn install_panic_hook() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if CAPTURING.with(Cell::get) {
                let location = info
                    .location()
                    .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()));
                LAST_LOCATION.with(|last| *last.borrow_mut() = location.clone());
                // If the panic ends the body, the thread unwinds out of it and
                // nobody reads this; if a task's, tokio catches it and the
                // watcher reports it.
                let _ = PANICS.try_with(|p| {
                    if let Ok(mut p) = p.try_borrow_mut() {
                        p.push((message(info.payload()), location));
                    }
                });
                let _ = PANIC_WATCHER.try_with(|w| {
                    if let Ok(w) = w.try_borrow() {
                        if let Some(w) = w.as_ref() {
                            w.notify_one();
                        }
                    }
                });
            }
            previous(info);
        }));
    });
}

/// Marks the current thread as a worker whose panic locations are recorded,
/// forgetting what an earlier generation on the same thread left.
pub(crate) fn capture_panics_on_this_thread() {
    CAPTURING.with(|c| c.set(true));
    LAST_LOCATION.with(|last| last.borrow_mut().take());
    PANICS.with(|p| p.borrow_mut().clear());
}

/// Wakes `watcher` at each panic on this thread; [`take_panics`] says which.
pub(crate) fn watch_panics_on_this_thread(watcher: Arc<Notify>) {
    PANIC_WATCHER.with(|w| *w.borrow_mut() = Some(watcher));
}

/// The panics seen on this thread since the last call: message and
/// location.
pub(crate) fn take_panics() -> Vec<(String, Option<String>)> {
    PANICS.with(|p| std::mem::take(&mut *p.borrow_mut()))
}

pub(crate) fn message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&'static str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "Box<dyn Any>".to_owned()
    }
}

/// Builds `Exit::Panicked` from a caught payload and the last location the
/// hook recorded on this thread.
pub(crate) fn panicked(payload: &(dyn Any + Send)) -> Exit {
    let location = LAST_LOCATION.with(|last| last.borrow_mut().take());
    Exit::Panicked {
        message: message(payload),
        location,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_the_cause() {
        let exit = Exit::Panicked {
            message: "boom".into(),
            location: Some("src/main.rs:3:5".into()),
        };
        assert_eq!(exit.to_string(), "panicked at src/main.rs:3:5: boom");
        assert_eq!(Exit::Failed("no db".into()).to_string(), "failed: no db");
        assert!(exit.is_failure() && !Exit::Terminated.is_failure());
    }

    #[test]
    fn captures_message_and_location() {
        install_panic_hook();
        let result = std::thread::spawn(|| {
            capture_panics_on_this_thread();
            let caught = panic::catch_unwind(|| panic!("worker {} broke", 7)).expect_err("panics");
            panicked(&*caught)
        })
        .join()
        .expect("thread");
        match result {
            Exit::Panicked { message, location } => {
                assert_eq!(message, "worker 7 broke");
                let location = location.expect("the hook saw it");
                assert!(
                    location.starts_with("runtime/src/fault/exit.rs:"),
                    "{location}"
                );
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}
