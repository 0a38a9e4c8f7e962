//! What passes between an upgrade's old and new process, below the
//! supervisor's state: the manifest in `FORKLESS_UPGRADE` and the
//! descriptors it names (read by the new process before its cluster
//! exists), the upgrade's settings, and the store's passage on the channel.
//! `upgrade` (the switch) and `shared` (the old process's end) both use it;
//! it uses neither.

use std::ffi::OsString;
use std::io::{BufReader, Read, Write};
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use forkless_worker::rt::Errors as _;
use forkless_worker::Error;
use serde::{Deserialize, Serialize};
use socket2::Socket;

use crate::net::registry::Handed;
use crate::store::Snapshot;

/// The environment variable that tells a process it is an upgrade's new
/// process, and which descriptors it inherited.
pub(super) const ENV: &str = crate::config::env::UPGRADE;

/// The first descriptor number handed to the new process (after stdio).
pub(super) const FIRST_FD: RawFd = 3;

/// On the channel, before the store: the old process's store does not move
/// (it is on Redis) ...
const NO_STORE: u8 = 0;
/// ... or its snapshot follows.
const STORE: u8 = 1;

/// What `FORKLESS_UPGRADE` holds (JSON).
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Manifest {
    /// The process that started this one: the manifest is for its child
    /// only (a process this one starts later sees the variable too).
    pub(super) parent: u32,
    /// The channel to the old process.
    pub(super) channel: RawFd,
    /// The control server's Unix socket, if the old process had one.
    pub(super) control: Option<RawFd>,
    /// The control server's TCP listener
    /// ([`control_tcp`](crate::Builder::control_tcp)), if the old process
    /// had one. Absent in a manifest of a build from before it was handed.
    #[serde(default)]
    pub(super) control_tcp: Option<HandedTcp>,
    pub(super) sockets: Vec<HandedFd>,
}

/// The control server's TCP listener in a [`Manifest`]: the address asked
/// for (port 0 stays 0), and the descriptor.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct HandedTcp {
    pub(super) requested: SocketAddr,
    pub(super) fd: RawFd,
}

#[derive(Debug, Serialize, Deserialize)]
pub(super) struct HandedFd {
    pub(super) requested: SocketAddr,
    pub(super) bound: SocketAddr,
    pub(super) slot: Option<usize>,
    pub(super) fd: RawFd,
}

/// What an upgrade needs to know, fixed when the cluster starts.
pub(crate) struct UpgradeConfig {
    pub(crate) program: PathBuf,
    pub(crate) args: Vec<OsString>,
    pub(crate) ready_timeout: Duration,
    /// How long a new process that has to be stopped gets between `SIGTERM`
    /// and `SIGKILL`: its own graceful stop takes at most its
    /// `shutdown_timeout` and `terminate_timeout` (the same builder, most
    /// likely), so the connections it accepted already can finish.
    pub(crate) child_grace: Duration,
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
            child_grace: builder
                .shutdown_timeout
                .saturating_add(builder.terminate_timeout),
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
    /// The TCP control listener, with the address it was asked for.
    pub(crate) control_tcp: Option<(SocketAddr, std::net::TcpListener)>,
    pub(crate) sockets: Vec<Handed>,
}

/// Whether this process has read `FORKLESS_UPGRADE` already.
static CONSUMED: AtomicBool = AtomicBool::new(false);

/// Reads `FORKLESS_UPGRADE`: `None` unless this process is an upgrade's new
/// one. A manifest meant for another process (this one's parent set it for
/// its own child) is ignored.
///
/// Only the first cluster a process starts reads it (whether it is then
/// taken, ignored or refused): the descriptors it names are that cluster's,
/// and by a second start (two clusters, or a stop and a start) they are
/// closed, or reused for something else that must not be taken for a
/// listener.
pub(crate) fn inherited() -> Result<Option<Inherited>, Error> {
    if CONSUMED.swap(true, Ordering::AcqRel) {
        return Ok(None);
    }
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
    let control_tcp = match &manifest.control_tcp {
        Some(tcp) => Some((tcp.requested, std::net::TcpListener::from(take(tcp.fd)?))),
        None => None,
    };
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
        control_tcp,
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

/// The longest line the new process may write on the channel before the
/// store: a longer one is refused as garbage, not read without end.
pub(super) const MAX_READY_LINE: usize = 256;

/// The most snapshot versions a ready line may name.
const MAX_VERSIONS: usize = 16;

/// What the new process says on the channel once every first worker of its
/// is ready: `ready <pid> snapshots <version>[,<version>...]`, the store
/// snapshot format versions it reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ReadyLine {
    pub(super) pid: u32,
    pub(super) snapshots: Vec<u32>,
}

impl ReadyLine {
    /// This process's ready line, `\n` included.
    pub(super) fn ours() -> String {
        let versions: Vec<String> = Snapshot::VERSIONS_READ.iter().map(u32::to_string).collect();
        format!(
            "ready {} snapshots {}\n",
            std::process::id(),
            versions.join(",")
        )
    }

    /// Reads a ready line (without its `\n`). A line without `snapshots`
    /// comes from a build from before the field, which reads version 1.
    ///
    /// # Errors
    ///
    /// Anything else than a ready line, saying what was wrong.
    pub(super) fn parse(line: &str) -> Result<ReadyLine, String> {
        let said = || format!("said {:?} instead of ready", shown(line));
        let mut words = line.split_ascii_whitespace();
        if words.next() != Some("ready") {
            return Err(said());
        }
        let pid = words
            .next()
            .and_then(|w| w.parse::<u32>().ok())
            .filter(|pid| *pid > 0)
            .ok_or_else(|| format!("{}: no process id", said()))?;
        let snapshots = match (words.next(), words.next(), words.next()) {
            (None, _, _) => vec![1],
            (Some("snapshots"), Some(list), None) => list
                .split(',')
                .map(|v| v.parse::<u32>().ok().filter(|v| *v > 0))
                .collect::<Option<Vec<u32>>>()
                .filter(|v| v.len() <= MAX_VERSIONS)
                .ok_or_else(|| format!("{}: bad snapshot versions", said()))?,
            _ => return Err(format!("{}: unknown fields", said())),
        };
        Ok(ReadyLine { pid, snapshots })
    }

    /// Whether the new process can load what this one's store hands over:
    /// a store that `moves` (in-process) is written in
    /// [`Snapshot::VERSION_WRITTEN`].
    ///
    /// # Errors
    ///
    /// Why it cannot, to fail the upgrade with before the switch.
    pub(super) fn check_store(&self, moves: bool) -> Result<(), String> {
        let ours = Snapshot::VERSION_WRITTEN;
        if !moves || self.snapshots.contains(&ours) {
            return Ok(());
        }
        let theirs: Vec<String> = self.snapshots.iter().map(u32::to_string).collect();
        Err(format!(
            "the new process reads store snapshots of version {}, and this one writes \
             version {ours}: it could not load the store (deploy a build in between that \
             reads both)",
            theirs.join(", ")
        ))
    }
}

/// `line` cut to a length fit for a log line or an error.
fn shown(line: &str) -> String {
    const MAX: usize = 64;
    match line.char_indices().nth(MAX) {
        Some((at, _)) => format!("{}...", &line[..at]),
        None => line.to_owned(),
    }
}

/// The old process's side, once every worker has exited: writes its
/// store's snapshot on the channel, or that its store does not move.
pub(super) fn send_store(channel: UnixStream, snapshot: Option<&Snapshot>) -> std::io::Result<()> {
    let mut writer = std::io::BufWriter::new(channel);
    match snapshot {
        None => writer.write_all(&[NO_STORE])?,
        Some(snapshot) => {
            writer.write_all(&[STORE])?;
            snapshot.write_to(&mut writer)?;
        }
    }
    writer.flush()
}

/// The new process's side: reads what [`send_store`] wrote, waiting at
/// most `timeout` for each read. `Ok(None)`: the old store does not move
/// (it is on Redis).
pub(super) fn receive_store(
    channel: UnixStream,
    timeout: Duration,
) -> Result<Option<Snapshot>, String> {
    if let Err(e) = channel.set_read_timeout(Some(timeout)) {
        tracing::warn!(error = %e, "cannot bound the wait for the old process's store");
    }
    let mut reader = BufReader::new(channel);
    let mut tag = [0u8];
    match reader.read_exact(&mut tag) {
        Err(e) => Err(format!("the channel closed: {e}")),
        Ok(()) if tag[0] == NO_STORE => Ok(None),
        Ok(()) if tag[0] == STORE => Snapshot::read_from(&mut reader)
            .map(Some)
            .map_err(|e| e.to_string()),
        Ok(()) => Err(format!("an unknown tag {} on the channel", tag[0])),
    }
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
            control_tcp: Some(HandedTcp {
                requested: "127.0.0.1:0".parse().expect("addr"),
                fd: 6,
            }),
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
        assert_eq!(back.control_tcp.map(|t| t.fd), Some(6));
        // A manifest of a build from before the TCP control listener moved.
        let old = r#"{"parent":7,"channel":3,"control":null,"sockets":[]}"#;
        let back: Manifest = serde_json::from_str(old).expect("an older manifest");
        assert!(back.control_tcp.is_none());
    }

    #[test]
    fn a_ready_line_reads_back_and_garbage_is_refused() {
        let ours = ReadyLine::ours();
        assert!(
            ours.ends_with('\n') && ours.len() <= MAX_READY_LINE,
            "{ours:?}"
        );
        let back = ReadyLine::parse(ours.trim_end()).expect("ours");
        assert_eq!(back.pid, std::process::id());
        assert_eq!(back.snapshots, Snapshot::VERSIONS_READ);
        assert_eq!(
            ReadyLine::parse("ready 42"),
            Ok(ReadyLine {
                pid: 42,
                snapshots: vec![1]
            }),
            "a build from before the field reads version 1"
        );
        assert_eq!(
            ReadyLine::parse("ready 42 snapshots 1,2,7"),
            Ok(ReadyLine {
                pid: 42,
                snapshots: vec![1, 2, 7]
            })
        );
        let many = (1..=17)
            .map(|v| v.to_string())
            .collect::<Vec<_>>()
            .join(",");
        let long = "x".repeat(10_000);
        for garbage in [
            "",
            " ",
            "ready",
            "Ready 42",
            "ready x",
            "ready 0",
            "ready -1",
            "ready 4294967296",
            "ready 42 snapshots",
            "ready 42 snapshots ",
            "ready 42 snapshots 1,,2",
            "ready 42 snapshots ,",
            "ready 42 snapshots 0",
            "ready 42 snapshots -1",
            "ready 42 snapshots 4294967296",
            "ready 42 snapshots one",
            "ready 42 snapshots 1 2",
            "ready 42 versions 1",
            &format!("ready 42 snapshots {many}"),
            "\u{0}\u{ffff}",
            &long,
        ] {
            let e = ReadyLine::parse(garbage).expect_err(garbage);
            assert!(e.contains("instead of ready"), "{e}");
            assert!(e.len() < 200, "the error is cut short: {e}");
        }
    }

    #[test]
    fn a_store_is_handed_only_to_a_process_that_reads_its_version() {
        let reads = |snapshots: Vec<u32>| ReadyLine { pid: 42, snapshots };
        let ours = Snapshot::VERSION_WRITTEN;
        assert!(reads(vec![ours]).check_store(true).is_ok());
        assert!(reads(vec![ours + 1, ours]).check_store(true).is_ok());
        let e = reads(vec![ours + 1])
            .check_store(true)
            .expect_err("too new");
        assert!(e.contains(&format!("version {ours}")), "{e}");
        assert!(e.contains(&format!("version {}", ours + 1)), "{e}");
        // Nothing moves (the store is on Redis): any version will do.
        assert!(reads(vec![ours + 1]).check_store(false).is_ok());
    }

    #[test]
    fn a_closed_or_low_descriptor_is_refused() {
        assert!(unsafe_borrow(1_000_000).unwrap_err().is_config());
    }
}
