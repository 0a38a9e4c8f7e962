//! `FORKLESS_*` environment variables: operators' overrides of the builder's
//! values, read once when the cluster starts. A bad value is a start-up error
//! that names the variable and the value; nothing starts half-configured.

use std::time::Duration;

use forkless_worker::rt::Errors as _;
use forkless_worker::Error;

use crate::config::builder::Builder;
use crate::config::policies::Restart;
use crate::config::policies::TaskPanic;

/// Every variable, with what it sets, for the docs and for spotting typos.
pub(crate) const VARIABLES: &[&str] = &[
    "FORKLESS_WORKERS",
    "FORKLESS_PIN_CORES",
    "FORKLESS_INCOMING_CPU",
    "FORKLESS_BACKLOG",
    "FORKLESS_SHUTDOWN_TIMEOUT",
    "FORKLESS_TERMINATE_TIMEOUT",
    "FORKLESS_THROTTLE_DELAY",
    "FORKLESS_MAX_BACKOFF",
    "FORKLESS_MAX_RESTARTS",
    "FORKLESS_RESTART",
    "FORKLESS_NAME",
    "FORKLESS_INBOX_CAPACITY",
    "FORKLESS_REQUEST_TIMEOUT",
    "FORKLESS_READY_TIMEOUT",
    "FORKLESS_STALL_TIMEOUT",
    "FORKLESS_TASK_PANIC",
    "FORKLESS_NOTIFY_SYSTEMD",
    "FORKLESS_RECYCLE_MAX_CONNECTIONS",
    "FORKLESS_RECYCLE_MAX_AGE",
    "FORKLESS_RECYCLE_JITTER",
    "FORKLESS_RECYCLE_MAX_MEMORY",
];

/// Set by the runtime itself, for the process an upgrade starts (what it
/// inherits); not an operator's setting.
pub(crate) const UPGRADE: &str = "FORKLESS_UPGRADE";

fn bad(name: &str, value: &str, expected: &str) -> Error {
    Error::config(format!("{name}={value:?}: {expected}"))
}

fn number<T: std::str::FromStr>(name: &str, value: &str, expected: &str) -> Result<T, Error> {
    value.trim().parse().map_err(|_| bad(name, value, expected))
}

fn duration(name: &str, value: &str) -> Result<Duration, Error> {
    let d = humantime::parse_duration(value.trim()).map_err(|e| {
        bad(
            name,
            value,
            &format!("not a duration ({e}); write it like \"500ms\", \"5s\" or \"1m 30s\""),
        )
    })?;
    let max = crate::time::deadline::MAX_OPTION;
    if d > max {
        return Err(bad(
            name,
            value,
            &format!(
                "longer than the most a duration may be ({} days)",
                max.as_secs() / 86_400
            ),
        ));
    }
    Ok(d)
}

fn boolean(name: &str, value: &str) -> Result<bool, Error> {
    match value.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err(bad(
            name,
            value,
            "not a boolean (true/false, 1/0, yes/no, on/off)",
        )),
    }
}

/// Applies the variables that `lookup` finds to `builder`.
pub(crate) fn apply(
    mut builder: Builder,
    lookup: impl Fn(&str) -> Option<Result<String, String>>,
) -> Result<Builder, Error> {
    for &name in VARIABLES {
        let value = match lookup(name) {
            None => continue,
            Some(Ok(value)) => value,
            Some(Err(raw)) => return Err(bad(name, &raw, "not valid UTF-8")),
        };
        let v = value.as_str();
        match name {
            "FORKLESS_WORKERS" => {
                let expected = "not a number of workers (an integer from 1 to 4096)";
                let n: usize = number(name, v, expected)?;
                if n == 0 || n > crate::config::MAX_WORKERS {
                    return Err(bad(name, v, expected));
                }
                builder.workers = Some(n);
            }
            "FORKLESS_PIN_CORES" => builder.pin_cores = boolean(name, v)?,
            "FORKLESS_INCOMING_CPU" => builder.incoming_cpu = boolean(name, v)?,
            "FORKLESS_BACKLOG" => builder.backlog = number(name, v, "not a backlog (an integer)")?,
            "FORKLESS_SHUTDOWN_TIMEOUT" => builder.shutdown_timeout = duration(name, v)?,
            "FORKLESS_TERMINATE_TIMEOUT" => builder.terminate_timeout = duration(name, v)?,
            "FORKLESS_THROTTLE_DELAY" => builder.throttle_delay = duration(name, v)?,
            "FORKLESS_MAX_BACKOFF" => builder.max_backoff = duration(name, v)?,
            "FORKLESS_MAX_RESTARTS" => {
                builder.max_restarts = number(name, v, "not a number of restarts (an integer)")?
            }
            "FORKLESS_RESTART" => {
                builder.restart = v.parse().map_err(|_| {
                    bad(
                        name,
                        v,
                        &format!("not a restart policy ({})", Restart::ACCEPTED),
                    )
                })?
            }
            "FORKLESS_NAME" => builder.name = value.clone(),
            "FORKLESS_INBOX_CAPACITY" => {
                let expected = "not an inbox capacity (an integer, at least 1)";
                let n: usize = number(name, v, expected)?;
                if n == 0 {
                    return Err(bad(name, v, expected));
                }
                builder.inbox_capacity = n;
            }
            "FORKLESS_REQUEST_TIMEOUT" => builder.request_timeout = duration(name, v)?,
            "FORKLESS_READY_TIMEOUT" => builder.ready_timeout = duration(name, v)?,
            "FORKLESS_STALL_TIMEOUT" => builder.stall_timeout = duration(name, v)?,
            "FORKLESS_TASK_PANIC" => {
                builder.task_panic = v.parse().map_err(|_| {
                    bad(
                        name,
                        v,
                        &format!("not a task panic policy ({})", TaskPanic::ACCEPTED),
                    )
                })?
            }
            "FORKLESS_NOTIFY_SYSTEMD" => builder.notify_systemd = boolean(name, v)?,
            "FORKLESS_RECYCLE_MAX_CONNECTIONS" => {
                let expected = "not a number of connections (an integer, at least 1)";
                let n: u64 = number(name, v, expected)?;
                if n == 0 {
                    return Err(bad(name, v, expected));
                }
                builder.recycle.max_connections = Some(n);
            }
            "FORKLESS_RECYCLE_MAX_AGE" => {
                let age = duration(name, v)?;
                if age < Duration::from_secs(1) {
                    return Err(bad(name, v, "shorter than the least max_age (1s)"));
                }
                builder.recycle.max_age = Some(age);
            }
            "FORKLESS_RECYCLE_JITTER" => {
                let expected = "not a jitter (a fraction from 0 to 1, like 0.1)";
                let f: f64 = number(name, v, expected)?;
                if !(0.0..=1.0).contains(&f) {
                    return Err(bad(name, v, expected));
                }
                builder.recycle.jitter = f;
            }
            "FORKLESS_RECYCLE_MAX_MEMORY" => {
                let bytes = crate::config::recycle::parse_bytes(v).ok_or_else(|| {
                    bad(
                        name,
                        v,
                        "not a size (bytes, or with a binary suffix: 512MiB, 1.5G, 64k)",
                    )
                })?;
                builder.recycle.max_memory = Some(bytes);
            }
            _ => {}
        }
        tracing::info!(
            variable = name,
            value = v,
            "configured from the environment"
        );
    }
    Ok(builder)
}

/// Reads the process's environment. Warns about `FORKLESS_*` names that are
/// not ours (a typo would otherwise go unnoticed).
pub(crate) fn from_process(builder: Builder) -> Result<Builder, Error> {
    for (name, _) in std::env::vars_os() {
        let Some(name) = name.to_str() else { continue };
        if name.starts_with("FORKLESS_") && !VARIABLES.contains(&name) && name != UPGRADE {
            tracing::warn!(
                variable = name,
                "unknown FORKLESS_ variable ignored (known: {})",
                VARIABLES.join(", ")
            );
        }
    }
    apply(builder, |name| {
        std::env::var_os(name).map(|v| {
            v.into_string()
                .map_err(|raw| raw.to_string_lossy().into_owned())
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn with(vars: &[(&str, &str)]) -> Result<Builder, Error> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        apply(Builder::new(), move |name| map.get(name).cloned().map(Ok))
    }

    #[test]
    fn good_values_override_the_builder() {
        let b = with(&[
            ("FORKLESS_WORKERS", "3"),
            ("FORKLESS_PIN_CORES", "off"),
            ("FORKLESS_INCOMING_CPU", "on"),
            ("FORKLESS_SHUTDOWN_TIMEOUT", "1m 30s"),
            ("FORKLESS_STALL_TIMEOUT", "250ms"),
            ("FORKLESS_RESTART", "on-failure"),
            ("FORKLESS_TASK_PANIC", "crash-worker"),
            ("FORKLESS_NAME", "api"),
            ("FORKLESS_INBOX_CAPACITY", "64"),
            ("FORKLESS_RECYCLE_MAX_CONNECTIONS", "10000"),
            ("FORKLESS_RECYCLE_MAX_AGE", "6h"),
            ("FORKLESS_RECYCLE_JITTER", "0.25"),
            ("FORKLESS_RECYCLE_MAX_MEMORY", "512MiB"),
        ])
        .expect("valid");
        assert_eq!(b.recycle.max_connections, Some(10_000));
        assert_eq!(b.recycle.max_age, Some(Duration::from_secs(6 * 3600)));
        assert_eq!(b.recycle.jitter, 0.25);
        assert_eq!(b.recycle.max_memory, Some(512 << 20));
        assert_eq!(b.workers, Some(3));
        assert!(!b.pin_cores);
        assert!(b.incoming_cpu);
        assert_eq!(b.shutdown_timeout, Duration::from_secs(90));
        assert_eq!(b.stall_timeout, Duration::from_millis(250));
        assert_eq!(b.restart, Restart::OnFailure);
        assert_eq!(b.task_panic, TaskPanic::CrashWorker);
        assert_eq!(b.name, "api");
        assert_eq!(b.inbox_capacity, 64);
    }

    #[test]
    fn a_bad_value_names_the_variable_and_the_value() {
        for (name, value) in [
            ("FORKLESS_WORKERS", "many"),
            ("FORKLESS_WORKERS", "-1"),
            ("FORKLESS_WORKERS", "0"),
            ("FORKLESS_INBOX_CAPACITY", "0"),
            ("FORKLESS_SHUTDOWN_TIMEOUT", "5 parsecs"),
            ("FORKLESS_PIN_CORES", "maybe"),
            ("FORKLESS_INCOMING_CPU", "2"),
            ("FORKLESS_RESTART", "sometimes"),
            ("FORKLESS_TASK_PANIC", "explode"),
            ("FORKLESS_BACKLOG", "1e3"),
            ("FORKLESS_SHUTDOWN_TIMEOUT", "100years"),
            ("FORKLESS_READY_TIMEOUT", "366days"),
            ("FORKLESS_MAX_BACKOFF", "584942417355years"),
            ("FORKLESS_RECYCLE_MAX_CONNECTIONS", "0"),
            ("FORKLESS_RECYCLE_MAX_CONNECTIONS", "lots"),
            ("FORKLESS_RECYCLE_MAX_CONNECTIONS", "-3"),
            ("FORKLESS_RECYCLE_MAX_AGE", "0s"),
            ("FORKLESS_RECYCLE_MAX_AGE", "500ms"),
            ("FORKLESS_RECYCLE_MAX_AGE", "2 fortnights"),
            ("FORKLESS_RECYCLE_JITTER", "2"),
            ("FORKLESS_RECYCLE_JITTER", "-0.5"),
            ("FORKLESS_RECYCLE_JITTER", "NaN"),
            ("FORKLESS_RECYCLE_JITTER", "a bit"),
            ("FORKLESS_RECYCLE_MAX_MEMORY", "0"),
            ("FORKLESS_RECYCLE_MAX_MEMORY", "lots"),
            ("FORKLESS_RECYCLE_MAX_MEMORY", "5 parsecs"),
        ] {
            let e = with(&[(name, value)]).expect_err(name);
            assert!(e.is_config(), "{e:?}");
            let text = e.to_string();
            assert!(text.contains(name) && text.contains(value), "{text}");
        }
        let e = apply(Builder::new(), |name| {
            (name == "FORKLESS_NAME").then(|| Err("\u{fffd}bad".to_owned()))
        })
        .expect_err("not UTF-8");
        assert!(e.to_string().contains("FORKLESS_NAME") && e.to_string().contains("UTF-8"));
    }

    #[test]
    fn restart_policies_parse_as_the_variable_takes_them() {
        for (text, policy) in [
            ("always", Restart::Always),
            ("ALWAYS", Restart::Always),
            (" always\n", Restart::Always),
            ("on-failure", Restart::OnFailure),
            ("on_failure", Restart::OnFailure),
            ("On-Failure", Restart::OnFailure),
            ("\ton_FAILURE ", Restart::OnFailure),
            ("never", Restart::Never),
            ("Never", Restart::Never),
        ] {
            assert_eq!(text.parse::<Restart>().expect(text), policy, "{text:?}");
            let b = with(&[("FORKLESS_RESTART", text)]).expect(text);
            assert_eq!(b.restart, policy, "{text:?}");
        }
        for text in [
            "",
            " ",
            "sometimes",
            "on failure",
            "onfailure",
            "on--failure",
            "always!",
            "a lways",
            "nevermore",
            "crash-worker",
        ] {
            let e = text.parse::<Restart>().expect_err(text);
            assert!(e.is_config(), "{e:?}");
            let message = e.to_string();
            assert!(
                message.contains(&format!("{text:?}"))
                    && message.contains("always, on-failure, never"),
                "{message}"
            );
            let e = with(&[("FORKLESS_RESTART", text)]).expect_err(text);
            assert!(e.is_config(), "{e:?}");
            let message = e.to_string();
            assert!(
                message.contains("FORKLESS_RESTART")
                    && message.contains("not a restart policy (always, on-failure, never)"),
                "{message}"
            );
        }
    }

    #[test]
    fn task_panic_policies_parse_as_the_variable_takes_them() {
        for (text, policy) in [
            ("isolate", TaskPanic::Isolate),
            ("ISOLATE", TaskPanic::Isolate),
            (" Isolate\t", TaskPanic::Isolate),
            ("crash-worker", TaskPanic::CrashWorker),
            ("crash_worker", TaskPanic::CrashWorker),
            ("Crash-Worker", TaskPanic::CrashWorker),
            ("\nCRASH_WORKER ", TaskPanic::CrashWorker),
        ] {
            assert_eq!(text.parse::<TaskPanic>().expect(text), policy, "{text:?}");
            let b = with(&[("FORKLESS_TASK_PANIC", text)]).expect(text);
            assert_eq!(b.task_panic, policy, "{text:?}");
        }
        for text in [
            "",
            " ",
            "explode",
            "crash worker",
            "crashworker",
            "crash-worker!",
            "isolated",
            "crash",
            "always",
        ] {
            let e = text.parse::<TaskPanic>().expect_err(text);
            assert!(e.is_config(), "{e:?}");
            let message = e.to_string();
            assert!(
                message.contains(&format!("{text:?}")) && message.contains("isolate, crash-worker"),
                "{message}"
            );
            let e = with(&[("FORKLESS_TASK_PANIC", text)]).expect_err(text);
            assert!(e.is_config(), "{e:?}");
            let message = e.to_string();
            assert!(
                message.contains("FORKLESS_TASK_PANIC")
                    && message.contains("not a task panic policy (isolate, crash-worker)"),
                "{message}"
            );
        }
    }
}
