//! Where the control socket goes and who may use it: the default path and
//! the private directory it is in (created 0700, checked with `lstat`), the
//! uid this process acts as, binding the socket with mode 0600, what to do
//! about a file already at its path (a stale socket of ours is replaced,
//! anything else left intact), and the `SO_PEERCRED` check of a peer.

use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The uid this process acts as (its effective uid): the owner of the files
/// it creates, and the uid its peers see.
pub(super) fn our_uid() -> u32 {
    forkless_control::effective_uid()
}

/// The default socket path for a cluster named `name`:
/// `$XDG_RUNTIME_DIR/forkless-{name}.sock`, or, without it,
/// `{temp dir}/forkless-{uid}/forkless-{name}.sock`, `{uid}` being this
/// process's effective uid. Characters of `name` other than ASCII letters,
/// digits, `-` and `_` become `_`. The same as
/// [`forkless_control::default_socket`], which `forkless-ctl` uses.
///
/// The control server creates `{temp dir}/forkless-{uid}/` with mode 0700
/// and uses it only while it is a real directory (not a symbolic link),
/// owned by that uid, with no group or other permission bits; otherwise the
/// cluster runs without a control server and logs why. The socket itself
/// has mode 0600, and the server (like `forkless-ctl` on its side) talks
/// only to peers that run as the same uid or as root. See the
/// [`Builder::control`](crate::Builder::control) docs.
///
/// This function only computes the path: it creates and checks nothing.
///
/// ```
/// let path = forkless_runtime::default_control_socket("api");
/// assert!(path.ends_with("forkless-api.sock"));
/// ```
pub fn default_control_socket(name: &str) -> PathBuf {
    forkless_control::default_socket(name)
}

/// The default socket path of the cluster `name`, and the private
/// directory it is in when that is ours to create and check (not under
/// `XDG_RUNTIME_DIR`).
pub(super) fn default_place(name: &str, uid: u32) -> (PathBuf, Option<PathBuf>) {
    let place = forkless_control::default_socket_place(name, uid);
    (place.path, place.private_dir)
}

/// What `lstat` says about a path, as far as the control socket cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Facts {
    kind: Kind,
    /// The owner.
    uid: u32,
    /// The permission bits.
    mode: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Directory,
    Socket,
    Symlink,
    File,
    Other,
}

impl Facts {
    fn of(meta: &std::fs::Metadata) -> Facts {
        let t = meta.file_type();
        let kind = if t.is_symlink() {
            Kind::Symlink
        } else if t.is_dir() {
            Kind::Directory
        } else if t.is_socket() {
            Kind::Socket
        } else if t.is_file() {
            Kind::File
        } else {
            Kind::Other
        };
        Facts {
            kind,
            uid: meta.uid(),
            mode: meta.mode() & 0o7777,
        }
    }
}

/// Why the directory `facts` describes is not private to `uid`, if it is not.
fn not_private(facts: Facts, uid: u32) -> Option<String> {
    match facts.kind {
        Kind::Directory => {}
        Kind::Symlink => return Some("is a symbolic link, not a directory".to_owned()),
        _ => return Some("is not a directory".to_owned()),
    }
    if facts.uid != uid {
        return Some(format!(
            "is owned by uid {}, not by this process's uid {uid}",
            facts.uid
        ));
    }
    if facts.mode & 0o077 != 0 {
        return Some(format!(
            "has mode {:04o}: group or others have access to it (it must be 0700)",
            facts.mode
        ));
    }
    None
}

/// Creates `dir` with mode 0700 if it is not there, then checks (with
/// `lstat`) that it is private to `uid`.
pub(super) fn private_dir(dir: &Path, uid: u32) -> Result<(), String> {
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(format!("cannot be created: {e}")),
    }
    let meta = std::fs::symlink_metadata(dir).map_err(|e| format!("cannot be inspected: {e}"))?;
    match not_private(Facts::of(&meta), uid) {
        None => Ok(()),
        Some(why) => Err(why),
    }
}

/// What to do about a file found where the socket goes.
#[derive(Debug, PartialEq, Eq)]
enum Found {
    /// A socket of ours: remove it unless a cluster answers on it.
    OurSocket,
    /// Something else: leave it alone, and say what it is.
    Foreign(String),
}

fn found(facts: Facts, uid: u32) -> Found {
    let what = match facts.kind {
        Kind::Socket if facts.uid == uid => return Found::OurSocket,
        Kind::Socket => format!(
            "a socket owned by uid {} (not by this process's uid {uid})",
            facts.uid
        ),
        Kind::Symlink => "a symbolic link".to_owned(),
        Kind::Directory => "a directory".to_owned(),
        Kind::File => "a regular file".to_owned(),
        Kind::Other => "a special file".to_owned(),
    };
    Found::Foreign(format!(
        "{what} is already there; it is left intact (is the path right? remove it \
         if it is a leftover)"
    ))
}

/// Whether a live cluster answers on `path`.
fn path_is_live(path: &Path) -> bool {
    std::os::unix::net::UnixStream::connect(path).is_ok()
}

/// Binds the Unix socket at `path` with mode 0600, replacing a stale socket
/// of ours (from a cluster that died), refusing one that a live cluster
/// answers on, and leaving anything else intact. The error says what is
/// wrong, without the path.
pub(super) fn bind_unix(path: &Path, uid: u32) -> Result<std::os::unix::net::UnixListener, String> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) => match found(Facts::of(&meta), uid) {
            Found::Foreign(why) => return Err(why),
            Found::OurSocket if path_is_live(path) => {
                return Err(
                    "a running cluster already answers there (give this one another \
                            name, or another control_socket path)"
                        .to_owned(),
                )
            }
            Found::OurSocket => std::fs::remove_file(path)
                .map_err(|e| format!("cannot remove the stale socket: {e}"))?,
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("cannot be inspected: {e}")),
    }
    bind_private(path).map_err(|e| e.to_string())
}

/// Binds a listening Unix socket at `path` whose file has mode 0600 from the
/// moment it exists: Linux's `bind` gives the file the socket inode's mode
/// (less the umask), so the mode is set on the socket first. Nothing to
/// chmod afterwards, hence no window.
fn bind_private(path: &Path) -> io::Result<std::os::unix::net::UnixListener> {
    let socket = socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::STREAM, None)?;
    let file = std::fs::File::from(OwnedFd::from(socket));
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    let socket = socket2::Socket::from(OwnedFd::from(file));
    socket.bind(&socket2::SockAddr::unix(path)?)?;
    #[cfg(not(target_os = "linux"))]
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    socket.listen(128)?;
    socket.set_nonblocking(true)?;
    Ok(std::os::unix::net::UnixListener::from(OwnedFd::from(
        socket,
    )))
}

/// Whether the control server serves a Unix peer running as `peer`, itself
/// running as `ours`: the same user, or root.
pub(super) fn peer_allowed(peer: u32, ours: u32) -> bool {
    forkless_control::peer_trusted(peer, ours)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::tests::scratch;

    fn mode(path: &Path) -> u32 {
        std::fs::symlink_metadata(path)
            .expect("lstat")
            .permissions()
            .mode()
            & 0o7777
    }

    #[test]
    fn socket_names_are_safe_file_names() {
        let path = default_control_socket("my app/../x");
        let name = path
            .file_name()
            .expect("a file")
            .to_string_lossy()
            .into_owned();
        assert_eq!(name, "forkless-my_app____x.sock");
    }

    #[test]
    fn without_xdg_the_default_socket_is_in_a_directory_named_by_uid() {
        let (path, dir) = default_place("api", 1234);
        match std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
            Some(xdg) => {
                assert_eq!(path, PathBuf::from(xdg).join("forkless-api.sock"));
                assert_eq!(dir, None);
            }
            None => {
                let dir = dir.expect("a private directory");
                assert_eq!(dir, std::env::temp_dir().join("forkless-1234"));
                assert_eq!(path, dir.join("forkless-api.sock"));
            }
        }
    }

    #[test]
    fn the_uid_comes_from_the_os() {
        use std::os::unix::fs::MetadataExt;
        // /proc/self belongs to the process's effective uid.
        let owner = std::fs::metadata("/proc/self").expect("procfs").uid();
        assert_eq!(our_uid(), owner);
    }

    fn facts(kind: Kind, uid: u32, mode: u32) -> Facts {
        Facts { kind, uid, mode }
    }

    #[test]
    fn a_private_directory_is_a_real_directory_of_ours_closed_to_others() {
        assert_eq!(not_private(facts(Kind::Directory, 7, 0o700), 7), None);
        assert_eq!(not_private(facts(Kind::Directory, 7, 0o500), 7), None);
        for (f, says) in [
            (facts(Kind::Symlink, 7, 0o777), "symbolic link"),
            (facts(Kind::File, 7, 0o600), "not a directory"),
            (facts(Kind::Socket, 7, 0o600), "not a directory"),
            (
                facts(Kind::Directory, 8, 0o700),
                "owned by uid 8, not by this process's uid 7",
            ),
            (facts(Kind::Directory, 0, 0o700), "owned by uid 0"),
            (facts(Kind::Directory, 7, 0o750), "mode 0750"),
            (facts(Kind::Directory, 7, 0o701), "mode 0701"),
            (facts(Kind::Directory, 7, 0o1777), "mode 1777"),
        ] {
            let why = not_private(f, 7).unwrap_or_else(|| panic!("{f:?} is not private"));
            assert!(why.contains(says), "{f:?}: {why}");
        }
    }

    #[test]
    fn only_a_socket_of_ours_may_be_replaced() {
        assert_eq!(found(facts(Kind::Socket, 7, 0o600), 7), Found::OurSocket);
        for (f, says) in [
            (facts(Kind::Socket, 8, 0o600), "a socket owned by uid 8"),
            (facts(Kind::Socket, 0, 0o600), "a socket owned by uid 0"),
            (facts(Kind::File, 7, 0o600), "a regular file"),
            (facts(Kind::Symlink, 7, 0o777), "a symbolic link"),
            (facts(Kind::Directory, 7, 0o700), "a directory"),
            (facts(Kind::Other, 7, 0o600), "a special file"),
        ] {
            match found(f, 7) {
                Found::Foreign(why) => {
                    assert!(why.contains(says) && why.contains("left intact"), "{why}")
                }
                Found::OurSocket => panic!("{f:?} would be removed"),
            }
        }
    }

    #[test]
    fn the_private_directory_is_created_0700_and_checked() {
        let root = scratch("private-dir");
        let uid = our_uid();
        let dir = root.join("forkless-x");
        private_dir(&dir, uid).expect("created");
        assert_eq!(mode(&dir), 0o700);
        private_dir(&dir, uid).expect("ours already");

        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let why = private_dir(&dir, uid).unwrap_err();
        assert!(why.contains("mode 0755"), "{why}");

        let link = root.join("forkless-link");
        std::os::unix::fs::symlink(&dir, &link).expect("symlink");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).expect("chmod");
        let why = private_dir(&link, uid).unwrap_err();
        assert!(why.contains("symbolic link"), "{why}");

        let why = private_dir(&dir, uid + 1).unwrap_err();
        assert!(why.contains(&format!("owned by uid {uid}")), "{why}");
        std::fs::remove_dir_all(&root).expect("clean up");
    }

    /// Without the mode set before `bind`, the file would be born with
    /// 0777 less the umask (0755 under the usual 022), and a chmod after
    /// `bind` leaves a window.
    #[test]
    fn the_socket_file_is_0600_as_it_is_bound() {
        let dir = scratch("bind-private");
        let path = dir.join("s.sock");
        let listener = bind_private(&path).expect("bind");
        assert_eq!(mode(&path), 0o600);
        drop(listener);
        std::fs::remove_dir_all(&dir).expect("clean up");
    }

    #[test]
    fn only_a_stale_socket_of_ours_is_replaced_anything_else_is_left_intact() {
        let dir = scratch("stale");
        let uid = our_uid();

        // A regular file (a database, say) given by mistake.
        let data = dir.join("data.db");
        std::fs::write(&data, b"precious").expect("write");
        let why = bind_unix(&data, uid).unwrap_err();
        assert!(
            why.contains("a regular file") && why.contains("left intact"),
            "{why}"
        );
        assert_eq!(std::fs::read(&data).expect("still there"), b"precious");

        // A symbolic link: neither it nor what it points to is touched.
        let link = dir.join("link.sock");
        std::os::unix::fs::symlink(&data, &link).expect("symlink");
        let why = bind_unix(&link, uid).unwrap_err();
        assert!(why.contains("a symbolic link"), "{why}");
        assert!(std::fs::symlink_metadata(&link)
            .expect("link")
            .file_type()
            .is_symlink());
        assert_eq!(std::fs::read(&data).expect("still there"), b"precious");

        // A dead socket of another user.
        let theirs = dir.join("theirs.sock");
        drop(std::os::unix::net::UnixListener::bind(&theirs).expect("bind"));
        let why = bind_unix(&theirs, uid + 1).unwrap_err();
        assert!(
            why.contains(&format!("a socket owned by uid {uid}")),
            "{why}"
        );
        assert!(theirs.exists());

        // A live socket of ours.
        let live = dir.join("live.sock");
        let listener = std::os::unix::net::UnixListener::bind(&live).expect("bind");
        let why = bind_unix(&live, uid).unwrap_err();
        assert!(why.contains("already answers"), "{why}");
        drop(listener);

        // Now dead: a stale socket of ours, replaced.
        let listener = bind_unix(&live, uid).expect("replaces the stale socket");
        assert_eq!(mode(&live), 0o600);
        drop(listener);
        std::fs::remove_dir_all(&dir).expect("clean up");
    }

    #[test]
    fn peers_of_our_uid_and_root_are_served() {
        assert!(peer_allowed(1000, 1000));
        assert!(peer_allowed(0, 1000));
        assert!(peer_allowed(0, 0));
        assert!(!peer_allowed(1001, 1000));
        assert!(!peer_allowed(65534, 0));
    }
}
