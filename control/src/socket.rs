//! Where a cluster's control socket is by default, and whom to trust on it.

use std::path::PathBuf;

/// The default control socket of a cluster, and the private directory it is
/// in when that directory is the server's to create and check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketPlace {
    /// The socket's path.
    pub path: PathBuf,
    /// `{temp dir}/forkless-{uid}/`, which holds `path` when
    /// `XDG_RUNTIME_DIR` is not set; `None` under `XDG_RUNTIME_DIR`. The
    /// server creates it with mode 0700 and binds in it only while it is a
    /// real directory owned by the uid, closed to group and others.
    pub private_dir: Option<PathBuf>,
}

/// The default socket path for a cluster named `name`:
/// `$XDG_RUNTIME_DIR/forkless-{name}.sock`, or, without it,
/// `{temp dir}/forkless-{uid}/forkless-{name}.sock`, `{uid}` being this
/// process's effective uid. Characters of `name` other than ASCII letters,
/// digits, `-` and `_` become `_`.
///
/// This only computes the path: it creates and checks nothing (the server
/// checks the private directory before it binds; the [`Client`](crate::Client)
/// checks who answers).
///
/// ```
/// let path = forkless_control::default_socket("api");
/// assert!(path.ends_with("forkless-api.sock"));
/// ```
pub fn default_socket(name: &str) -> PathBuf {
    default_socket_place(name, effective_uid()).path
}

/// [`default_socket`] for the uid `uid`, with the private directory it is
/// in when that is not under `XDG_RUNTIME_DIR`.
///
/// ```
/// let place = forkless_control::default_socket_place("api", 1234);
/// if let Some(dir) = &place.private_dir {
///     assert!(dir.ends_with("forkless-1234"));
///     assert_eq!(place.path, dir.join("forkless-api.sock"));
/// }
/// ```
pub fn default_socket_place(name: &str, uid: u32) -> SocketPlace {
    let file: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let file = format!("forkless-{file}.sock");
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        Some(dir) => SocketPlace {
            path: PathBuf::from(dir).join(file),
            private_dir: None,
        },
        None => {
            let dir = std::env::temp_dir().join(format!("forkless-{uid}"));
            SocketPlace {
                path: dir.join(file),
                private_dir: Some(dir),
            }
        }
    }
}

/// The control sockets of this user's clusters where clusters put them by
/// default: files `forkless-*.sock` that are sockets owned by this uid, in
/// the directory [`default_socket`] uses (`$XDG_RUNTIME_DIR`, or
/// `{temp dir}/forkless-{uid}/`), sorted. Whether a cluster answers on each
/// is for the caller to ask: a crashed cluster leaves its socket behind.
pub fn discover() -> Vec<PathBuf> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let uid = effective_uid();
    let Some(dir) = default_socket_place("x", uid)
        .path
        .parent()
        .map(PathBuf::from)
    else {
        return Vec::new();
    };
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name.starts_with("forkless-") && name.ends_with(".sock")
        })
        .filter(|e| {
            // `symlink_metadata`: a link is not followed anywhere.
            std::fs::symlink_metadata(e.path())
                .is_ok_and(|m| m.file_type().is_socket() && m.uid() == uid)
        })
        .map(|e| e.path())
        .collect();
    found.sort();
    found
}

/// The uid this process acts as (its effective uid): the owner of the files
/// it creates, and the uid its peers see.
pub fn effective_uid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// Whether a peer on the control socket that runs as `peer` is trusted by
/// a process that runs as `ours`: the same user, or root. The server serves
/// only such clients, and the client talks only to such a server.
///
/// ```
/// assert!(forkless_control::peer_trusted(1000, 1000));
/// assert!(forkless_control::peer_trusted(0, 1000));
/// assert!(!forkless_control::peer_trusted(1001, 1000));
/// ```
pub fn peer_trusted(peer: u32, ours: u32) -> bool {
    peer == ours || peer == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_names_are_safe_file_names() {
        let path = default_socket("my app/../x");
        let name = path.file_name().expect("a file").to_string_lossy();
        assert_eq!(name, "forkless-my_app____x.sock");
    }

    #[test]
    fn without_xdg_the_socket_is_in_a_directory_named_by_uid() {
        let place = default_socket_place("api", 1234);
        match std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
            Some(xdg) => {
                assert_eq!(place.path, PathBuf::from(xdg).join("forkless-api.sock"));
                assert_eq!(place.private_dir, None);
            }
            None => {
                let dir = place.private_dir.expect("a private directory");
                assert_eq!(dir, std::env::temp_dir().join("forkless-1234"));
                assert_eq!(place.path, dir.join("forkless-api.sock"));
            }
        }
    }

    #[test]
    fn only_our_uid_and_root_are_trusted() {
        assert!(peer_trusted(1000, 1000));
        assert!(peer_trusted(0, 1000));
        assert!(peer_trusted(0, 0));
        assert!(!peer_trusted(1001, 1000));
        assert!(!peer_trusted(65534, 0));
    }
}
