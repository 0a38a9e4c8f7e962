//! Upgrades: a new process of the program takes over from this one, the
//! way nginx's binary upgrade does, gated like a rolling restart.
//!
//! # The mechanism, and why
//!
//! The old process starts the new one itself (the program's path as it was
//! started, or [`Builder::upgrade_command`](crate::Builder::upgrade_command))
//! and the new one *inherits* duplicates of every listening socket the
//! master holds (every slot's, retired slots' included, and those systemd
//! passed) and of the control socket, as numbered file descriptors that
//! `FORKLESS_UPGRADE` describes; the `command-fds` crate maps them into the
//! child. A duplicate is the same socket: the kernel's accept queue is one
//! queue that both processes accept from while they overlap, so no queued
//! connection is reset or refused, whichever process takes it. Starting the
//! child ourselves (rather than passing sockets over a Unix socket to a
//! process someone else started, as Pingora and HAProxy `-x` do) keeps the
//! new process's arguments, environment and working directory the old one's,
//! needs no listening rendezvous socket, and under systemd the old process
//! can name the new one the service's main process (`MAINPID=`) before it
//! exits.
//!
//! # The switch
//!
//! 1. The old process spawns the new one with the sockets and one end of a
//!    socket pair (the *channel*); `UpgradeStarted`, and `RELOADING=1`.
//! 2. The new process's registry serves `listen` from the inherited sockets;
//!    its store is *held*: its operations wait.
//! 3. Once every first worker of the new process is ready, it writes
//!    `ready` on the channel. The old process answers the caller of
//!    `upgrade`, emits `Upgraded`, tells systemd `MAINPID=` and `READY=1`,
//!    and stops gracefully: its workers finish their connections within
//!    `shutdown_timeout`, as in any stop.
//! 4. Once its last worker has exited (nothing mutates its store any more),
//!    the old process writes its store's snapshot on the channel and exits;
//!    the new process imports it and releases the hold: the operations that
//!    waited run against the moved data.
//!
//! If the new process exits, or is not ready within `ready_timeout`, it is
//! stopped (`SIGTERM`, then `SIGKILL` after `terminate_timeout`), the old
//! one serves on, and `upgrade` fails with the reason (`UpgradeFailed`).

use std::io::{BufRead, BufReader, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::process::{Child, Command};
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use command_fds::{CommandFdExt, FdMapping};
use forkless_worker::rt::Errors as _;
use forkless_worker::Error;

use super::cluster::Cluster;
use super::handover::{receive_store, HandedFd, Manifest, ENV, FIRST_FD};
use super::shared::{Msg, Shared};
use super::systemd::Systemd;
use crate::observe::events::Event;
use crate::time::deadline::from_now;

/// The new process side: once every first worker is ready, tell the old
/// process, then wait on a thread of its own for the store it hands over.
pub(crate) fn child_ready(shared: &Arc<Shared>) {
    let channel = shared
        .upgrade_channel
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take();
    let Some(mut channel) = channel else {
        return;
    };
    let line = format!("ready {}\n", std::process::id());
    if let Err(e) = channel.write_all(line.as_bytes()) {
        tracing::error!(error = %e, "cannot tell the old process that this one is ready; its store stays there");
        shared.store.release_hold();
        return;
    }
    let shared = shared.clone();
    let spawned = std::thread::Builder::new()
        .name("forkless-upgrade".to_owned())
        .spawn(move || take_store(&shared, channel));
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot spawn the thread that takes the store over");
    }
}

/// Reads the store the old process hands over (once its workers are gone),
/// imports it, and lets the operations that waited run. If the old process
/// ends without handing it (it crashed), the store starts empty.
fn take_store(shared: &Shared, channel: UnixStream) {
    let result =
        receive_store(channel, shared.upgrade.handover_timeout).and_then(
            |snapshot| match snapshot {
                Some(snapshot) => shared.store.import(snapshot).map_err(|e| e.to_string()),
                None => Ok(()),
            },
        );
    match result {
        Ok(()) => tracing::info!("the store was handed over; its waiting operations run"),
        Err(e) => {
            tracing::error!(error = %e, "the old process did not hand the store over; it starts empty")
        }
    }
    shared.store.release_hold();
}

impl Cluster {
    /// Deploys a new build without losing a connection: starts the program
    /// anew beside this process (the file at the path it was started from,
    /// re-read, with the same arguments and environment, or
    /// [`Builder::upgrade_command`](crate::Builder::upgrade_command)), hands
    /// it every listening socket and the control socket, and once every
    /// first worker of the new process is ready, stops this cluster
    /// gracefully and hands the new process the in-process store. Returns
    /// the new process's id once it serves; this cluster then stops by
    /// itself (`join` returns its report).
    ///
    /// Under [`Builder::run`](crate::Builder::run), `SIGUSR2` does the same;
    /// `forkless-ctl upgrade` and `POST /upgrade` on the control socket too.
    ///
    /// Blocks for at most `ready_timeout` (plus `terminate_timeout` when the
    /// new process has to be stopped).
    ///
    /// # Errors
    ///
    /// [`Error::is_busy`] if an upgrade is under way;
    /// [`Error::is_stopped`] if the cluster is stopping;
    /// [`Error::is_upgrade_failed`] if the new process could not be started,
    /// exited, or was not ready within `ready_timeout`: it was stopped, and
    /// this cluster serves on.
    pub fn upgrade(&self) -> Result<u32, Error> {
        let shared = &self.shared;
        if shared.stopping.load(Ordering::Acquire) {
            return Err(Error::stopped("upgrade"));
        }
        if shared.upgrading.swap(true, Ordering::AcqRel) {
            return Err(Error::busy(
                "an upgrade is under way; try again once it is over",
            ));
        }
        let result = switch(shared);
        if result.is_err() {
            shared.upgrading.store(false, Ordering::Release);
        }
        result
    }
}

/// What the upgrade waits for.
enum Heard {
    Ready,
    Exited(String),
    Silent,
}

fn switch(shared: &Arc<Shared>) -> Result<u32, Error> {
    let config = &shared.upgrade;
    let systemd = Systemd::new(config.notify_systemd);
    let (ours, theirs) = UnixStream::pair()
        .map_err(|e| Error::upgrade_failed(format!("cannot make the upgrade's channel: {e}")))?;
    let mut child = spawn(shared, theirs).map_err(|e| {
        let reason = format!("cannot start {}: {e}", config.program.display());
        failed(shared, &systemd, reason)
    })?;
    let pid = child.id();
    tracing::info!(pid, program = %config.program.display(), "upgrade: the new process started");
    shared.events.emit(Event::UpgradeStarted { pid });
    systemd.reloading();

    let heard = listen(&ours, &mut child, config.ready_timeout);
    match heard {
        Heard::Ready => {
            tracing::info!(
                pid,
                "upgrade: the new process serves; this one stops and hands it the store"
            );
            shared.events.emit(Event::Upgraded { pid });
            systemd.main_pid(pid);
            *shared
                .handover
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = Some(ours);
            shared.handed_over.store(true, Ordering::Release);
            // The child is the service now: reap it if it ends while this
            // process still runs (embedded), so it leaves no zombie.
            let _ = std::thread::Builder::new()
                .name("forkless-upgrade".to_owned())
                .spawn(move || drop(child.wait()));
            let _ = shared.tx.send(Msg::Shutdown);
            Ok(pid)
        }
        Heard::Exited(how) => {
            let reason = format!("the new process (pid {pid}) {how} before it was ready");
            stop_child(&mut child, config.terminate_timeout);
            Err(failed(shared, &systemd, reason))
        }
        Heard::Silent => {
            let reason = format!(
                "the new process (pid {pid}) was not ready within ready_timeout ({:?})",
                config.ready_timeout
            );
            stop_child(&mut child, config.terminate_timeout);
            Err(failed(shared, &systemd, reason))
        }
    }
}

/// Reports a failed upgrade: this process serves on.
fn failed(shared: &Shared, systemd: &Systemd, reason: String) -> Error {
    tracing::error!(%reason, "upgrade failed; this process serves on");
    shared.events.emit(Event::UpgradeFailed {
        reason: reason.clone(),
    });
    systemd.ready("upgrade failed; serving on");
    Error::upgrade_failed(format!("upgrade failed: {reason}"))
}

/// Starts the new process with the sockets mapped from descriptor 3 on.
fn spawn(shared: &Shared, channel: UnixStream) -> std::io::Result<Child> {
    let config = &shared.upgrade;
    let handed = shared.registry().hand_over()?;
    let control = shared
        .control_fd
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .as_ref()
        .map(|fd| fd.try_clone())
        .transpose()?;
    let mut next = FIRST_FD;
    let mut mappings = Vec::new();
    let mut map = |fd: OwnedFd| {
        let child_fd = next;
        next += 1;
        mappings.push(FdMapping {
            parent_fd: fd,
            child_fd,
        });
        child_fd
    };
    let channel = map(OwnedFd::from(channel));
    let control = control.map(&mut map);
    let sockets = handed
        .into_iter()
        .map(|h| HandedFd {
            requested: h.requested,
            bound: h.bound,
            slot: h.slot,
            fd: map(OwnedFd::from(h.socket)),
        })
        .collect();
    let manifest = Manifest {
        parent: std::process::id(),
        channel,
        control,
        sockets,
    };
    let manifest = serde_json::to_string(&manifest).map_err(std::io::Error::other)?;
    let mut command = Command::new(&config.program);
    command
        .args(&config.args)
        .env(ENV, manifest)
        // Socket activation's descriptors are in the manifest now, under
        // other numbers; systemd's watchdog is the new process's once it
        // is the main one.
        .env_remove("LISTEN_FDS")
        .env_remove("LISTEN_PID")
        .env_remove("LISTEN_FDNAMES")
        .env_remove("WATCHDOG_PID")
        .fd_mappings(mappings)
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    command.spawn()
}

/// Waits for the new process's `ready`, its exit, or `timeout`.
fn listen(channel: &UnixStream, child: &mut Child, timeout: Duration) -> Heard {
    let deadline = from_now(timeout);
    let mut reader = match channel.try_clone() {
        Ok(c) => BufReader::new(c),
        Err(e) => return Heard::Exited(format!("could not be listened to ({e})")),
    };
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Heard::Silent;
        }
        // Wake up now and then to see whether it exited: its end of the
        // channel may live on in a process it started.
        let wait = left.min(Duration::from_millis(100));
        if reader.get_ref().set_read_timeout(Some(wait)).is_err() {
            return Heard::Exited("could not be listened to".to_owned());
        }
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) => {
                // The channel closes as the process exits, a moment before
                // it can be reaped: give it that moment, to say how.
                let gone = from_now(Duration::from_secs(1));
                while std::time::Instant::now() < gone {
                    if let Some(how) = exit_of(child) {
                        return Heard::Exited(how);
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                return Heard::Exited("closed its channel".to_owned());
            }
            Ok(_) if line.starts_with("ready") => return Heard::Ready,
            Ok(_) => return Heard::Exited(format!("said {:?} instead of ready", line.trim_end())),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                if let Some(how) = exit_of(child) {
                    return Heard::Exited(how);
                }
            }
            Err(e) => return Heard::Exited(format!("broke its channel ({e})")),
        }
    }
}

/// How the child ended, if it has.
fn exit_of(child: &mut Child) -> Option<String> {
    match child.try_wait() {
        Ok(Some(status)) => Some(format!("exited ({status})")),
        Ok(None) => None,
        Err(e) => Some(format!("cannot be waited for ({e})")),
    }
}

/// `SIGTERM` (its cluster stops gracefully), then `SIGKILL` after `grace`.
fn stop_child(child: &mut Child, grace: Duration) {
    if let Some(pid) = rustix::process::Pid::from_raw(child.id() as i32) {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    }
    let deadline = from_now(grace);
    while std::time::Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}
