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
//! 3. Once every first worker of the new process is ready, it closes the
//!    inherited sockets that none of its workers listens on (a new build
//!    that dropped an address: once the old process closes its copy too, a
//!    client is refused there rather than queued for nobody), and writes
//!    `ready <pid> snapshots <versions>` on the channel: the store snapshot
//!    format versions it reads. The old process refuses to switch to one
//!    that cannot read its in-process store (the new process is stopped,
//!    the old one serves on, `UpgradeFailed` says why). Otherwise it
//!    answers the caller of `upgrade`, emits `Upgraded`, tells systemd
//!    `MAINPID=` and `READY=1` (and, from then on, never `STOPPING=1`: it
//!    is no longer the service's main process), and stops gracefully: its
//!    workers finish their connections within `shutdown_timeout`, as in
//!    any stop.
//! 4. Once its last worker has exited (nothing mutates its store any more),
//!    the old process writes its store's snapshot on the channel and exits;
//!    the new process imports it and releases the hold: the operations that
//!    waited run against the moved data. If the store does not come (the
//!    old process crashed) or cannot be loaded, the new process's store
//!    starts empty, and it says so as an error in its log and as
//!    `StoreHandoverFailed` in its events.
//!
//! If the new process exits, or is not ready within `ready_timeout`, it is
//! stopped (`SIGTERM`, then `SIGKILL` after `shutdown_timeout` +
//! `terminate_timeout`, the most its own graceful stop takes, so that the
//! connections it accepted already finish), the old one serves on, and
//! `upgrade` fails with the reason (`UpgradeFailed`).
//!
//! # A stop during an upgrade
//!
//! A stop of the old process (`SIGTERM`, `Cluster::shutdown`,
//! `POST /shutdown`) before the switch cancels the upgrade: the new process
//! is stopped as above and waited for before the old cluster ends,
//! `UpgradeFailed` says that the cluster is stopping, `upgrade` returns that
//! error, and the store stays with the old process (it is not handed to a
//! process that is gone). The switch and the end of the cluster decide under
//! one lock, so a stop that comes after the switch finds the store promised
//! to the new process, and hands it over. `upgrade` never returns `Ok`
//! unless the new process took over.
//!
//! # What the new process must be
//!
//! The manifest (`FORKLESS_UPGRADE`) is honoured only by a process whose
//! parent is the old process: an [`upgrade_command`](crate::Builder::upgrade_command)
//! that is a wrapper (`env`, a shell script) must `exec` the program, not
//! fork it. Only the first cluster a process starts reads the manifest: a
//! second `start` in the same process (two clusters, or a stop and a start)
//! binds its own sockets.
//!
//! The new process takes over the control sockets only if it runs a
//! control server: the Unix socket, and the
//! [`control_tcp`](crate::Builder::control_tcp) listener when it asks for
//! the same address. Those it does not serve on it closes at start.

use std::io::{BufRead, BufReader, Read as _, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use command_fds::{CommandFdExt, FdMapping};
use forkless_worker::rt::Errors as _;
use forkless_worker::Error;

use super::cluster::Cluster;
use super::handover::{
    receive_store, HandedFd, HandedTcp, Manifest, ReadyLine, ENV, FIRST_FD, MAX_READY_LINE,
};
use super::shared::{Gate, Msg, Shared};
use super::systemd::Systemd;
use crate::observe::events::Event;
use crate::time::deadline::from_now;

/// The new process side: once every first worker is ready, close the
/// inherited sockets that no worker listens on, tell the old process, then
/// wait on a thread of its own for the store it hands over.
pub(crate) fn child_ready(shared: &Arc<Shared>) {
    let channel = shared
        .upgrade_channel
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take();
    let Some(mut channel) = channel else {
        return;
    };
    // A socket of the old process's that this build does not listen on
    // would queue connections that nobody accepts: once the old process
    // closes its own copy, they are refused instead.
    shared.registry().close_unclaimed();
    if let Err(e) = channel.write_all(ReadyLine::ours().as_bytes()) {
        tracing::error!(error = %e, "cannot tell the old process that this one is ready; its store stays there");
        store_not_taken(
            shared,
            format!("cannot tell the old process that this one is ready: {e}"),
        );
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
/// ends without handing it (it crashed), or it cannot be imported, the
/// store starts empty, and [`Event::StoreHandoverFailed`] says why.
fn take_store(shared: &Shared, channel: UnixStream) {
    let received = receive_store(channel, shared.upgrade.handover_timeout);
    // The old process's workers are gone (or it is): the sockets it shared
    // with this one take this one's steering marks, whatever it wrote
    // during the overlap.
    shared.registry().steer_all();
    if received.is_ok() {
        // The old process has handed over: its control socket's path is
        // this one's now.
        shared.awaiting_switch.store(false, Ordering::Release);
    }
    let result = received.and_then(|snapshot| match snapshot {
        Some(snapshot) => shared
            .store
            .import(snapshot)
            .map_err(|e| format!("the old process's store cannot be loaded: {e}")),
        None => Ok(()),
    });
    match result {
        Ok(()) => tracing::info!("the store was handed over; its waiting operations run"),
        Err(e) => store_not_taken(shared, e),
    }
    shared.store.release_hold();
}

/// The store did not come over: said in the log and as an event, which a
/// reader of the events (or `forkless-ctl events`) sees even if it starts
/// reading later.
fn store_not_taken(shared: &Shared, reason: String) {
    tracing::error!(%reason, "the old process's store was not taken over; this process's starts empty");
    shared.events.emit(Event::StoreHandoverFailed { reason });
}

impl Cluster {
    /// Deploys a new build without losing a connection: starts the program
    /// anew beside this process (the file at the path it was started from,
    /// re-read, with the same arguments and environment, or
    /// [`Builder::upgrade_command`](crate::Builder::upgrade_command)), hands
    /// it every listening socket and the control sockets (the Unix socket,
    /// and the [`control_tcp`](crate::Builder::control_tcp) listener), and
    /// once every first worker of the new process is ready, stops this
    /// cluster gracefully and hands the new process the in-process store.
    /// Returns the new process's id once it serves; this cluster then stops
    /// by itself (`join` returns its report).
    ///
    /// Under [`Builder::run`](crate::Builder::run), `SIGUSR2` does the same;
    /// `forkless-ctl upgrade` and `POST /upgrade` on the control socket too.
    ///
    /// The new process says, when ready, which store snapshot versions it
    /// reads; one that cannot read this process's store is refused before
    /// the switch (stopped; this process serves on).
    ///
    /// A stop of this cluster (`shutdown`, `terminate`, `SIGTERM`,
    /// `POST /shutdown`) while the new process is not ready yet cancels the
    /// upgrade: the new process is stopped, and waited for, before this
    /// cluster ends; the store stays here. A stop after the switch changes
    /// nothing: the store goes to the new process.
    ///
    /// Blocks for at most `ready_timeout`, plus, when the new process has to
    /// be stopped, the time it gets to stop gracefully (`SIGTERM`, then
    /// `SIGKILL` after `shutdown_timeout` + `terminate_timeout`, so that the
    /// connections it accepted already can finish).
    ///
    /// # Errors
    ///
    /// [`Error::is_busy`] if an upgrade is under way;
    /// [`Error::is_stopped`] if the cluster is stopping;
    /// [`Error::is_upgrade_failed`] if the new process could not be started,
    /// exited, was not ready within `ready_timeout`, cannot read this
    /// process's store, or this cluster began to stop before the switch: it
    /// was stopped, and this cluster serves on (unless it is stopping).
    /// `Ok` only once the new process took over.
    pub fn upgrade(&self) -> Result<u32, Error> {
        let shared = &self.shared;
        {
            let mut gate = shared.gate();
            if shared.stopping.load(Ordering::Acquire) || self.is_stopped() {
                return Err(Error::stopped("upgrade"));
            }
            if *gate != Gate::Idle {
                return Err(Error::busy(
                    "an upgrade is under way; try again once it is over",
                ));
            }
            *gate = Gate::Starting;
        }
        let result = switch(shared);
        if result.is_err() {
            shared.upgrade_over();
        }
        result
    }
}

/// What the upgrade waits for.
enum Heard {
    Ready(ReadyLine),
    Exited(String),
    Silent,
    /// This cluster began to stop.
    Stopping,
}

/// The reason of an upgrade cancelled by a stop.
const STOPPING: &str = "the cluster is stopping: the upgrade was cancelled before the switch";

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

    let heard = listen(&ours, &mut child, config.ready_timeout, &shared.stopping);
    let reason = match heard {
        Heard::Ready(ready) => match ready.check_store(shared.store.moves()) {
            Err(why) => format!("the new process (pid {pid}) {why}"),
            Ok(()) => {
                let mut gate = shared.gate();
                // Decided under the gate: a stop from now on follows the
                // switch, and the end of this cluster hands the store over.
                if shared.stopping.load(Ordering::Acquire) {
                    STOPPING.to_owned()
                } else {
                    *shared
                        .handover
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner) = Some(ours);
                    shared.handed_over.store(true, Ordering::Release);
                    // Messages from other hosts go to the new process now.
                    shared.bus.switched();
                    *gate = Gate::Switched;
                    drop(gate);
                    shared.upgrade_settled.notify_all();
                    tracing::info!(
                        pid,
                        "upgrade: the new process serves; this one stops and hands it the store"
                    );
                    shared.events.emit(Event::Upgraded { pid });
                    systemd.main_pid(pid);
                    // The child is the service now: reap it if it ends while
                    // this process still runs (embedded), so it leaves no
                    // zombie.
                    let _ = std::thread::Builder::new()
                        .name("forkless-upgrade".to_owned())
                        .spawn(move || drop(child.wait()));
                    let _ = shared.tx.send(Msg::Shutdown);
                    return Ok(pid);
                }
            }
        },
        Heard::Exited(how) => format!("the new process (pid {pid}) {how} before it was ready"),
        Heard::Silent => format!(
            "the new process (pid {pid}) was not ready within ready_timeout ({:?})",
            config.ready_timeout
        ),
        Heard::Stopping => STOPPING.to_owned(),
    };
    stop_child(&mut child, config.child_grace);
    Err(failed(shared, &systemd, reason))
}

/// Reports a failed upgrade: this process serves on, unless it stops.
fn failed(shared: &Shared, systemd: &Systemd, reason: String) -> Error {
    // The new process (stopped by now) marked the sockets it shares with
    // this one as it steers: they get this process's marks back.
    shared.registry().steer_all();
    let stopping = shared.stopping.load(Ordering::Acquire);
    if stopping {
        tracing::warn!(%reason, "upgrade failed; this process stops");
    } else {
        tracing::error!(%reason, "upgrade failed; this process serves on");
    }
    shared.events.emit(Event::UpgradeFailed {
        reason: reason.clone(),
    });
    if !stopping {
        systemd.ready("upgrade failed; serving on");
    }
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
    let control_tcp = shared
        .control_tcp_fd
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .as_ref()
        .map(|(requested, fd)| fd.try_clone().map(|fd| (*requested, fd)))
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
    let control_tcp = control_tcp.map(|(requested, fd)| HandedTcp {
        requested,
        fd: map(fd),
    });
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
        control_tcp,
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

/// Waits for the new process's `ready`, its exit, `timeout`, or this
/// cluster's stop.
fn listen(
    channel: &UnixStream,
    child: &mut Child,
    timeout: Duration,
    stopping: &AtomicBool,
) -> Heard {
    let deadline = from_now(timeout);
    let mut reader = match channel.try_clone() {
        Ok(c) => BufReader::new(c),
        Err(e) => return Heard::Exited(format!("could not be listened to ({e})")),
    };
    // One line, kept across the wake-ups (it may come in pieces), and
    // never longer than `MAX_READY_LINE`.
    let mut line = Vec::new();
    loop {
        if stopping.load(Ordering::Acquire) {
            return Heard::Stopping;
        }
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Heard::Silent;
        }
        // Wake up now and then to see whether it exited, or this cluster
        // stops: its end of the channel may live on in a process it started.
        let wait = left.min(Duration::from_millis(100));
        if reader.get_ref().set_read_timeout(Some(wait)).is_err() {
            return Heard::Exited("could not be listened to".to_owned());
        }
        let room = (MAX_READY_LINE + 1).saturating_sub(line.len()) as u64;
        match reader.by_ref().take(room).read_until(b'\n', &mut line) {
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
            Ok(_) if line.last() == Some(&b'\n') => {
                let text = String::from_utf8_lossy(&line[..line.len() - 1]);
                return match ReadyLine::parse(&text) {
                    Ok(ready) => Heard::Ready(ready),
                    Err(why) => Heard::Exited(why),
                };
            }
            Ok(_) if line.len() > MAX_READY_LINE => {
                return Heard::Exited(format!(
                    "said more than {MAX_READY_LINE} bytes without a line end instead of ready"
                ))
            }
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
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

/// `SIGTERM` (its cluster stops gracefully), then `SIGKILL` after `grace`
/// (`shutdown_timeout` + `terminate_timeout`: what its graceful stop takes
/// at most, so the connections it accepted already can finish).
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
