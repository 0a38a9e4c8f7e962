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

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use command_fds::{CommandFdExt, FdMapping};
use forkless_worker::rt::Errors as _;
use forkless_worker::Error;
use serde::{Deserialize, Serialize};
use socket2::Socket;

use super::cluster::Cluster;
use super::shared::{Msg, Shared};
use super::systemd::Systemd;
use crate::net::registry::Handed;
use crate::observe::events::Event;
use crate::time::deadline::from_now;

/// The environment variable that tells a process it is an upgrade's new
/// process, and which descriptors it inherited.
const ENV: &str = crate::config::env::UPGRADE;

/// The first descriptor number handed to the new process (after stdio).
const FIRST_FD: RawFd = 3;

/// On the channel, before the store: the old process's store does not move
/// (it is on Redis) ...
const NO_STORE: u8 = 0;
/// ... or its snapshot follows.
const STORE: u8 = 1;

/// What `FORKLESS_UPGRADE` holds (JSON).
#[derive(Debug, Serialize, Deserialize)]
struct Manifest {
    /// The process that started this one: the manifest is for its child
    /// only (a process this one starts later sees the variable too).
    parent: u32,
    /// The channel to the old process.
    channel: RawFd,
    /// The control server's Unix socket, if the old process had one.
    control: Option<RawFd>,
    sockets: Vec<HandedFd>,
}

#[derive(Debug, Serialize, Deserialize)]
struct HandedFd {
    requested: SocketAddr,
    bound: SocketAddr,
    slot: Option<usize>,
    fd: RawFd,
}

/// What an upgrade needs to know, fixed when the cluster starts.
pub(crate) struct UpgradeConfig {
    pub(crate) program: PathBuf,
    pub(crate) args: Vec<OsString>,
    pub(crate) ready_timeout: Duration,
    pub(crate) terminate_timeout: Duration,
    /// How long the new process waits, silent channel, for the old one's
    /// store: its stop takes at most `shutdown_timeout` and
    /// `terminate_timeout` (the same builder, most likely), plus a margin.
    pub(crate) handover_timeout: Duration,
    pub(crate) notify_systemd: bool,
}

impl UpgradeConfig {
    /// The upgrade command as the builder says, or this program again.
    pub(crate) fn of(builder: &crate::config::builder::Builder) -> UpgradeConfig {
        let (program, args) = match &builder.upgrade_command {
            Some((program, args)) => (program.clone(), args.clone()),
            None => (
                // The path it was started from, not /proc/self/exe: once a
                // new build replaces the file, that link names the deleted
                // old one.
                std::env::args_os()
                    .next()
                    .map(PathBuf::from)
                    .and_then(|p| absolute(&p))
                    .or_else(|| std::env::current_exe().ok())
                    .unwrap_or_default(),
                std::env::args_os().skip(1).collect(),
            ),
        };
        UpgradeConfig {
            program,
            args,
            ready_timeout: builder.ready_timeout,
            terminate_timeout: builder.terminate_timeout,
            handover_timeout: builder
                .shutdown_timeout
                .saturating_add(builder.terminate_timeout)
                .saturating_add(Duration::from_secs(60)),
            notify_systemd: builder.notify_systemd,
        }
    }
}

/// `path` as it resolves now: relative to the working directory if it
/// names a file, else looked up in `PATH` as the shell did.
fn absolute(path: &std::path::Path) -> Option<PathBuf> {
    if path.components().count() > 1 {
        return std::path::absolute(path).ok();
    }
    let paths = std::env::var_os("PATH")?;
    std::env::split_paths(&paths)
        .map(|dir| dir.join(path))
        .find(|candidate| candidate.is_file())
}

/// What the process an upgrade started inherited from the old one.
pub(crate) struct Inherited {
    pub(crate) channel: UnixStream,
    pub(crate) control: Option<OwnedFd>,
    pub(crate) sockets: Vec<Handed>,
}

/// Reads `FORKLESS_UPGRADE`: `None` unless this process is an upgrade's new
/// one. A manifest meant for another process (this one's parent set it for
/// its own child) is ignored.
pub(crate) fn inherited() -> Result<Option<Inherited>, Error> {
    let Some(text) = std::env::var_os(ENV) else {
        return Ok(None);
    };
    let manifest: Manifest = serde_json::from_str(&text.to_string_lossy())
        .map_err(|e| Error::config(format!("{ENV} is not an upgrade's manifest: {e}")))?;
    if std::os::unix::process::parent_id() != manifest.parent {
        return Ok(None);
    }
    let mut taken = Vec::new();
    let mut take = |fd: RawFd| -> Result<OwnedFd, Error> {
        if fd < FIRST_FD || taken.contains(&fd) {
            return Err(Error::config(format!(
                "{ENV} names descriptor {fd} twice or below {FIRST_FD}"
            )));
        }
        taken.push(fd);
        // The descriptor must be open: fcntl fails on one that is not.
        let borrowed = unsafe_borrow(fd)?;
        let owned = borrowed
            .try_clone_to_owned()
            .map_err(|e| Error::config(format!("{ENV}: descriptor {fd}: {e}")))?;
        Ok(owned)
    };
    let channel = UnixStream::from(take(manifest.channel)?);
    let control = manifest.control.map(&mut take).transpose()?;
    let mut sockets = Vec::new();
    for handed in &manifest.sockets {
        sockets.push(Handed {
            requested: handed.requested,
            bound: handed.bound,
            slot: handed.slot,
            socket: Socket::from(take(handed.fd)?),
        });
    }
    // The inherited numbers themselves are closed: the duplicates taken
    // above are close-on-exec, so a process this one starts gets none.
    for fd in taken {
        drop(unsafe_own(fd));
    }
    tracing::info!(
        sockets = sockets.len(),
        parent = manifest.parent,
        "started by an upgrade: taking over the old process's sockets"
    );
    Ok(Some(Inherited {
        channel,
        control,
        sockets,
    }))
}

/// Borrows descriptor `fd` after checking that it is open.
#[allow(unsafe_code)]
fn unsafe_borrow(fd: RawFd) -> Result<std::os::fd::BorrowedFd<'static>, Error> {
    // SAFETY: `fd` was handed to this process by its parent for this
    // purpose (the manifest names it), and is checked open below before use;
    // it is closed only through `unsafe_own`, after every use.
    let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    rustix::io::fcntl_getfd(borrowed)
        .map_err(|e| Error::config(format!("{ENV}: descriptor {fd} is not open: {e}")))?;
    Ok(borrowed)
}

/// Takes ownership of inherited descriptor `fd`, to close it.
#[allow(unsafe_code)]
fn unsafe_own(fd: RawFd) -> OwnedFd {
    // SAFETY: `fd` was inherited for this process's use only, checked open
    // by `unsafe_borrow`, and nothing else owns it.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

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
    if let Err(e) = channel.set_read_timeout(Some(shared.upgrade.handover_timeout)) {
        tracing::warn!(error = %e, "cannot bound the wait for the old process's store");
    }
    let mut reader = BufReader::new(channel);
    let mut tag = [0u8];
    let result = match reader.read_exact(&mut tag) {
        Err(e) => Err(format!("the channel closed: {e}")),
        Ok(()) if tag[0] == NO_STORE => Ok(()),
        Ok(()) if tag[0] == STORE => crate::store::Snapshot::read_from(&mut reader)
            .map_err(|e| e.to_string())
            .and_then(|snapshot| shared.store.import(snapshot).map_err(|e| e.to_string())),
        Ok(()) => Err(format!("an unknown tag {} on the channel", tag[0])),
    };
    match result {
        Ok(()) => tracing::info!("the store was handed over; its waiting operations run"),
        Err(e) => {
            tracing::error!(error = %e, "the old process did not hand the store over; it starts empty")
        }
    }
    shared.store.release_hold();
}

/// The old process side, at its end: hands the store to the new process,
/// if an upgrade switched to one. Called once every worker has exited.
pub(crate) fn hand_store(shared: &Shared) {
    let channel = shared
        .handover
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take();
    let Some(channel) = channel else {
        return;
    };
    let snapshot = shared.store.export();
    let mut writer = std::io::BufWriter::new(channel);
    let written = match &snapshot {
        None => writer.write_all(&[NO_STORE]),
        Some(snapshot) => writer
            .write_all(&[STORE])
            .and_then(|()| snapshot.write_to(&mut writer)),
    }
    .and_then(|()| writer.flush());
    match written {
        Ok(()) => tracing::info!("the store was handed to the new process"),
        Err(e) => tracing::error!(error = %e, "cannot hand the store to the new process"),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manifest_reads_back() {
        let manifest = Manifest {
            parent: 7,
            channel: 3,
            control: Some(4),
            sockets: vec![HandedFd {
                requested: "127.0.0.1:0".parse().expect("addr"),
                bound: "127.0.0.1:8080".parse().expect("addr"),
                slot: Some(1),
                fd: 5,
            }],
        };
        let text = serde_json::to_string(&manifest).expect("json");
        let back: Manifest = serde_json::from_str(&text).expect("read");
        assert_eq!(back.parent, 7);
        assert_eq!(back.sockets[0].slot, Some(1));
        assert_eq!(back.sockets[0].bound.port(), 8080);
    }

    #[test]
    fn a_closed_or_low_descriptor_is_refused() {
        assert!(unsafe_borrow(1_000_000).unwrap_err().is_config());
    }
}
