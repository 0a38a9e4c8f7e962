//! The control server: HTTP/1.1 + JSON on a Unix socket (mode 0600), and
//! optionally on a loopback TCP port behind a bearer token, so that
//! `curl --unix-socket` and `forkless-ctl` can watch and steer a running
//! cluster.
//!
//! | request | answer |
//! |---|---|
//! | `GET /status` | the cluster's status as JSON |
//! | `GET /events` | its events as newline-delimited JSON, streamed until it stops |
//! | `POST /resize` | `{"workers": 4}`, or a change: `{"workers": "+1"}` / `"-2"` |
//! | `POST /restart` | a rolling restart |
//! | `POST /upgrade` | an upgrade (body empty or `{}`; anything else is 400): answers once the new process serves (`{"upgraded": true, "pid": N}`), or with why it did not |
//! | `POST /shutdown` | a graceful stop |
//! | `GET /metrics` | Prometheus metrics, in the text format |
//!
//! Errors are 4xx with `{"error": "..."}`: an unknown path is 404, a known
//! path asked with another method 405 with `Allow` (one `match (method,
//! path)` in `route` decides). The JSON documents are the types of
//! [`forkless_control`], which `forkless-ctl` reads with.
//!
//! # Who can reach the control plane
//!
//! Anyone who reaches it can stop or resize the cluster, so:
//!
//! - **The Unix socket** is `$XDG_RUNTIME_DIR/forkless-{name}.sock` by
//!   default, or, without `XDG_RUNTIME_DIR`, `forkless-{name}.sock` in the
//!   private directory `{temp dir}/forkless-{uid}/`. That directory is
//!   created with mode 0700 and, before each use, checked with `lstat`: a
//!   real directory (not a symbolic link), owned by this process's
//!   (effective) uid, with no group or other permission bits. A directory
//!   that fails the check is used for nothing: the cluster runs without a
//!   control server and logs why (owner, mode).
//! - The socket file has mode 0600 from the moment it exists: the mode is
//!   set on the socket before `bind` (Linux takes the file's mode from it),
//!   so no umask and no race opens it wider.
//! - A file already at the socket's path is removed only if `lstat` says it
//!   is a socket owned by this uid and no cluster answers on it (what a
//!   crashed cluster leaves). Anything else there (a regular file, a
//!   symbolic link, another user's socket) is left intact: an explicit
//!   [`control_socket`](crate::Builder::control_socket) path is then a
//!   start-up error that says what is there; the default path means no
//!   control server, and an error log.
//! - Every connection accepted on the Unix socket has its peer's
//!   credentials checked (`SO_PEERCRED`): only this uid and root are
//!   served; anyone else (who got in through a mode loosened by hand) is
//!   disconnected at once, with a warning in the log. `forkless-ctl` checks
//!   the server the same way, and refuses to talk to one that runs as
//!   another user.
//! - **The TCP listener** ([`control_tcp`](crate::Builder::control_tcp))
//!   serves only requests with `Authorization: Bearer <token>` (16 bytes at
//!   least, compared in constant time); any other request gets 401 and the
//!   connection is closed.
//! - Each listener serves at most [`MAX_CONNECTIONS`] connections at once;
//!   one over that is closed as soon as it is accepted, so clients of the
//!   TCP port cannot crowd the owner out of the Unix socket. A client must
//!   send its headers within 5 s. A failing `accept` (out of file
//!   descriptors) pauses the loop, from 5 ms up to 1 s, instead of spinning.
//! - A panic while serving a request ends that connection only; it is
//!   counted in `forkless_runtime_panics_total{thread="forkless-control"}`.
//!
//! # Layout
//!
//! - this module: [`start`], which binds the listeners and spawns the
//!   control thread, and the limits promised above (body size, read
//!   timeout, connection cap, accept pauses);
//! - `socket`: where the Unix socket goes, the private directory, binding
//!   it with mode 0600, stale sockets, and which peers are served;
//! - `server`: the accept loops, the connection cap, the pause after a
//!   failed `accept`, and serving one connection;
//! - `routes`: the endpoints, the bearer token, and the answers;
//! - `convert`: the cluster's status and events as [`forkless_control`] writes
//!   them.

mod convert;
mod routes;
mod server;
mod socket;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::config::ControlConfig;
use crate::Cluster;
use forkless_worker::rt::Errors as _;
use forkless_worker::Error;

pub use socket::default_control_socket;
use socket::{bind_unix, default_place, our_uid, private_dir};

/// The most a request body may hold.
const MAX_BODY: usize = 4096;

/// How long a client has to send its headers, then its body.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// The most connections the control server serves at once, on each of its
/// listeners (the Unix socket, the TCP port). A connection over the cap is
/// closed as soon as it is accepted. Event streams (`GET /events`) count
/// while they last.
const MAX_CONNECTIONS: usize = 64;

/// The first pause after a failed `accept`; each further failure doubles it,
/// up to [`MAX_ACCEPT_PAUSE`].
const FIRST_ACCEPT_PAUSE: Duration = Duration::from_millis(5);

/// The longest pause after a failed `accept`.
const MAX_ACCEPT_PAUSE: Duration = Duration::from_secs(1);

/// The name the control thread's caught panics are counted under.
const THREAD: &str = "forkless-control";

/// The control server's thread: join it to let the last answers (an event
/// stream's end) go out before the process exits.
pub(crate) type ControlThread = std::thread::JoinHandle<()>;

/// Starts the control server for `cluster` on its own thread. Returns the
/// socket path, and the TCP address if one was asked for.
///
/// On the default path (no `control_socket`, no TCP listener), a problem
/// does not stop the cluster: another live cluster answering there (two
/// services that both keep the default name), a private directory that
/// is not private, a file that is not ours. The cluster runs without a
/// control server, says why in an error log, and this returns `None`. With
/// an explicit path, any problem is an [`Error::is_config`] error that names
/// the path and what is wrong.
pub(crate) fn start(
    cluster: &Cluster,
    config: &ControlConfig,
) -> Result<Option<(PathBuf, Option<SocketAddr>, ControlThread)>, Error> {
    let uid = our_uid();
    // Started by an upgrade: the old process's socket is this one's, at the
    // same path (the same name or the same `control_socket`).
    let inherited = cluster
        .shared
        .control_inherited
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take();
    let (path, unix) = match (inherited, &config.path) {
        (Some(fd), path) => {
            let path = path
                .clone()
                .unwrap_or_else(|| default_place(cluster.name(), uid).0);
            let unix = std::os::unix::net::UnixListener::from(fd);
            unix.set_nonblocking(true)
                .map_err(|e| Error::config(format!("control socket {}: {e}", path.display())))?;
            (path, unix)
        }
        (None, Some(path)) => {
            let unix = bind_unix(path, uid).map_err(|why| {
                Error::config(format!("control socket {}: {why}", path.display()))
            })?;
            (path.clone(), unix)
        }
        (None, None) => {
            let (path, dir) = default_place(cluster.name(), uid);
            let bound = match &dir {
                Some(dir) => private_dir(dir, uid).map_err(|why| {
                    format!(
                        "control socket directory {} {why}; remove it, or set \
                         XDG_RUNTIME_DIR, or give the cluster Builder::control_socket",
                        dir.display()
                    )
                }),
                None => Ok(()),
            }
            .and_then(|()| {
                bind_unix(&path, uid)
                    .map_err(|why| format!("control socket {}: {why}", path.display()))
            });
            match bound {
                Ok(unix) => (path, unix),
                Err(why) if config.tcp.is_none() => {
                    tracing::error!(
                        "{why}; this cluster runs WITHOUT a control server (name it with \
                         Builder::name, or give it Builder::control_socket)"
                    );
                    return Ok(None);
                }
                Err(why) => return Err(Error::config(why)),
            }
        }
    };
    // Started by an upgrade with the same `control_tcp`: the old process's
    // listener is this one's (binding the address again would fail).
    let tcp_inherited = cluster
        .shared
        .control_tcp_inherited
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take();
    let tcp = match &config.tcp {
        None => None,
        Some((addr, token)) => {
            if !addr.ip().is_loopback() {
                tracing::warn!(%addr, "the TCP control listener is not on loopback: only its token guards it");
            }
            let listener = match tcp_inherited {
                Some(listener) => Ok(listener),
                None => std::net::TcpListener::bind(addr),
            }
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .map_err(|e| Error::bind(addr, e))?;
            Some((*addr, listener, token.clone()))
        }
    };
    let tcp_addr = tcp.as_ref().and_then(|(_, l, _)| l.local_addr().ok());
    // What an upgrade hands the next process.
    *cluster
        .shared
        .control_fd
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) =
        unix.try_clone().ok().map(std::os::fd::OwnedFd::from);
    *cluster
        .shared
        .control_tcp_fd
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) =
        tcp.as_ref().and_then(|(requested, listener, _)| {
            let dup = listener.try_clone().ok()?;
            Some((*requested, std::os::fd::OwnedFd::from(dup)))
        });
    let tcp = tcp.map(|(_, listener, token)| (listener, token));
    let cluster = cluster.clone();
    let thread = std::thread::Builder::new()
        .name(THREAD.to_owned())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!(error = %e, "the control server cannot start its runtime");
                    return;
                }
            };
            // The socket file is removed when the cluster finishes (before
            // `join` returns), not here: by now another cluster may have
            // bound the same path.
            rt.block_on(server::serve(cluster, unix, tcp, uid));
        })
        .map_err(|e| Error::spawn("cannot spawn the control thread", e))?;
    tracing::info!(socket = %path.display(), tcp = ?tcp_addr, "control server listening");
    Ok(Some((path, tcp_addr, thread)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A fresh directory for one test, mode 0755 (the tests of `socket`,
    /// `server` and `routes` use it too).
    pub(super) fn scratch(test: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "forkless-control-unit-{}-{test}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        dir
    }

    #[test]
    fn the_token_is_not_shown() {
        let config = ControlConfig {
            enabled: Some(true),
            path: None,
            tcp: Some((
                SocketAddr::from(([127, 0, 0, 1], 7000)),
                "a-very-secret-token-123".to_owned(),
            )),
        };
        let shown = format!("{config:?}");
        assert!(!shown.contains("a-very-secret-token-123"), "{shown}");
        assert!(
            shown.contains(r#"tcp: Some((127.0.0.1:7000, "***"))"#),
            "{shown}"
        );
    }
}
