//! Who can reach the control plane: the socket's directory and mode, what
//! is left alone at its path, peer credentials, the connection cap, the
//! token on TCP, and secrets kept out of `Debug`.
//!
//! What depends on process-wide state (the umask, `TMPDIR`,
//! `XDG_RUNTIME_DIR`, the uid) runs in a child process: this test binary
//! again, running one `#[ignore]`d test, told what to do by environment
//! variables.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use crate::common::{self, PATIENCE};
use forkless::{Cluster, Worker};

/// The uid a foreign client or owner runs as.
const NOBODY: u32 = 65534;

/// The control server's cap on connections per listener
/// (`control::MAX_CONNECTIONS`).
const CAP: usize = 64;

/// Set in a child: which scenario it plays, and where.
const SCENARIO: &str = "CONTROL_SECURITY_SCENARIO";
const PLACE: &str = "CONTROL_SECURITY_PLACE";

fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "forkless-control-security-{}-{test}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    dir
}

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path).expect("lstat").mode() & 0o7777
}

/// For the tests that act as another user, which only root can: they are
/// `#[ignore]`d, `.ci/run` runs them as root by name, and run by a user
/// they fail saying so rather than pass without checking.
fn need_root() {
    let uid = std::fs::metadata("/proc/self").expect("procfs").uid();
    assert_eq!(
        uid, 0,
        "this test needs root (it acts as another user, uid {NOBODY}); it runs as uid {uid}"
    );
}

fn idle(builder: forkless::Builder) -> Result<Cluster, forkless::Error> {
    builder.workers(1).start(|worker: Worker| async move {
        worker.ready();
        worker.shutdown_signal().await;
    })
}

/// Runs the `#[ignore]`d test `test` of this module in a child process of
/// the test binary, with `env`, `umask 000` first if asked, as `uid` if
/// given.
fn child(test: &str, env: &[(&str, OsString)], umask_0: bool, uid: Option<u32>) -> Output {
    let exe = std::env::current_exe().expect("this test binary");
    let name = common::test_path(module_path!(), test);
    let mut command = if umask_0 {
        let mut c = Command::new("sh");
        c.arg("-c").arg(r#"umask 000 && exec "$0" "$@""#).arg(&exe);
        c
    } else {
        Command::new(&exe)
    };
    command
        .args([
            "--exact",
            &name,
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env_remove("XDG_RUNTIME_DIR");
    for (k, v) in env {
        command.env(k, v);
    }
    if let Some(uid) = uid {
        command.uid(uid).gid(uid);
    }
    let output = command.output().expect("run the child");
    assert!(
        output.status.success() && String::from_utf8_lossy(&output.stdout).contains("1 passed"),
        "the child {test} failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn scenario() -> Option<(String, PathBuf)> {
    let scenario = std::env::var(SCENARIO).ok()?;
    let place = std::env::var_os(PLACE)?;
    Some((scenario, PathBuf::from(place)))
}

/// Sends `request`, reads until the server closes (or `patience`): what
/// came back, or the read's error.
fn exchange<S: Read + Write>(mut stream: S, request: &str) -> std::io::Result<String> {
    stream.write_all(request.as_bytes())?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer)?;
    Ok(String::from_utf8_lossy(&answer).into_owned())
}

const STATUS: &str = "GET /status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";

fn unix(path: &Path, patience: Duration) -> UnixStream {
    let stream = UnixStream::connect(path).expect("connect");
    stream.set_read_timeout(Some(patience)).expect("timeout");
    stream
}

// The children.

/// Under `umask 000`: the default private directory is 0700 and the
/// socket 0600; so is an explicit socket.
#[test]
#[ignore = "run by the_socket_is_0600_and_its_directory_0700_under_umask_0"]
fn umask_child() {
    let Some((_, place)) = scenario() else { return };
    let status = std::fs::read_to_string("/proc/self/status").expect("status");
    assert!(
        status.lines().any(|l| l == "Umask:\t0000"),
        "the child's umask is not 0"
    );
    // The default place, in a private directory under TMPDIR.
    let cluster = idle(Cluster::builder().name("umask").control(true)).expect("start");
    let (path, _) = cluster.control_address().expect("a control server");
    let uid = std::fs::metadata("/proc/self").expect("procfs").uid();
    let dir = place.join(format!("forkless-{uid}"));
    assert_eq!(path, dir.join("forkless-umask.sock"));
    assert_eq!(forkless::default_control_socket("umask"), path);
    assert_eq!(mode(&dir), 0o700, "the directory");
    assert_eq!(mode(&path), 0o600, "the socket");
    let answer = exchange(unix(&path, PATIENCE), STATUS).expect("answer");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    cluster.shutdown();
    cluster.join();
    // An explicit path.
    let path = place.join("explicit.sock");
    let cluster = idle(Cluster::builder().control_socket(&path)).expect("start");
    assert_eq!(mode(&path), 0o600, "the explicit socket");
    cluster.shutdown();
    cluster.join();
}

/// The default path, when the private directory (under TMPDIR = PLACE) is
/// not fit: the cluster runs, without a control server.
#[test]
#[ignore = "run by a_private_directory_that_is_not_private_means_no_control_server and a_private_directory_of_another_user_means_no_control_server"]
fn default_path_child() {
    let Some((scenario, _)) = scenario() else {
        return;
    };
    // The error log goes to stderr, for the parent to read.
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
    let cluster =
        idle(Cluster::builder().name("squatted").control(true)).expect("the cluster starts anyway");
    assert_eq!(cluster.control_address(), None, "{scenario}");
    cluster.shutdown();
    cluster.join();
}

/// As another user: connects to PLACE, asks for /status, and must get no
/// answer, only the end of the stream.
#[test]
#[ignore = "run by a_client_of_another_user_is_disconnected_without_an_answer"]
fn foreign_client_child() {
    let Some((_, place)) = scenario() else { return };
    let started = Instant::now();
    let mut stream = unix(&place, PATIENCE);
    // The server may close before it reads the request: the write may
    // fail, and the close be a reset.
    let _ = stream.write_all(STATUS.as_bytes());
    let mut answer = Vec::new();
    match stream.read_to_end(&mut answer) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("the server did not close the connection: {e}"),
    }
    assert_eq!(
        String::from_utf8_lossy(&answer),
        "",
        "another user was answered"
    );
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "closed only after {:?} (the header timeout?)",
        started.elapsed()
    );
}

// The tests.

#[test]
fn the_socket_is_0600_and_its_directory_0700_under_umask_0() {
    let place = scratch("umask");
    child(
        "umask_child",
        &[
            (SCENARIO, "umask".into()),
            (PLACE, place.clone().into()),
            ("TMPDIR", place.clone().into()),
        ],
        true,
        None,
    );
    let _ = std::fs::remove_dir_all(&place);
}

/// Starts a cluster with the default control socket under `place` (its
/// `TMPDIR`) in a child playing `scenario`; what the child logged.
fn run(scenario: &str, place: &Path) -> String {
    let output = child(
        "default_path_child",
        &[
            (SCENARIO, scenario.into()),
            (PLACE, place.into()),
            ("TMPDIR", place.into()),
        ],
        false,
        None,
    );
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn a_private_directory_that_is_not_private_means_no_control_server() {
    let uid = std::fs::metadata("/proc/self").expect("procfs").uid();

    // Ours, but open to others.
    let place = scratch("dir-mode");
    let dir = place.join(format!("forkless-{uid}"));
    std::fs::create_dir(&dir).expect("dir");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let log = run("mode", &place);
    assert!(
        log.contains(&format!("control socket directory {}", dir.display()))
            && log.contains("has mode 0755")
            && log.contains("WITHOUT a control server"),
        "{log}"
    );
    assert_eq!(std::fs::read_dir(&dir).expect("dir").count(), 0);
    assert_eq!(mode(&dir), 0o755, "left as it was");

    // A symbolic link to a directory of ours.
    let place = scratch("dir-link");
    let real = place.join("real");
    std::fs::create_dir(&real).expect("dir");
    std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    std::os::unix::fs::symlink(&real, place.join(format!("forkless-{uid}"))).expect("link");
    let log = run("link", &place);
    assert!(log.contains("is a symbolic link"), "{log}");
    assert_eq!(std::fs::read_dir(&real).expect("dir").count(), 0);

    // A regular file in the socket's place, in our own private directory.
    let place = scratch("file-there");
    let dir = place.join(format!("forkless-{uid}"));
    std::fs::create_dir(&dir).expect("dir");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    let file = dir.join("forkless-squatted.sock");
    std::fs::write(&file, b"not a socket").expect("write");
    let log = run("file", &place);
    assert!(
        log.contains("a regular file is already there") && log.contains("left intact"),
        "{log}"
    );
    assert_eq!(std::fs::read(&file).expect("intact"), b"not a socket");
    for test in ["dir-mode", "dir-link", "file-there"] {
        let _ = std::fs::remove_dir_all(scratch(test));
    }
}

/// Taken first by another user.
#[test]
#[ignore = "needs root: as root, cargo test -p forkless --all-features --test it -- --ignored --exact control_security::a_private_directory_of_another_user_means_no_control_server"]
fn a_private_directory_of_another_user_means_no_control_server() {
    need_root();
    let uid = 0;
    let place = scratch("dir-owner");
    let dir = place.join(format!("forkless-{uid}"));
    std::fs::create_dir(&dir).expect("dir");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    std::os::unix::fs::chown(&dir, Some(NOBODY), Some(NOBODY)).expect("chown");
    let log = run("owner", &place);
    assert!(
        log.contains(&format!(
            "is owned by uid {NOBODY}, not by this process's uid {uid}"
        )),
        "{log}"
    );
    assert_eq!(std::fs::read_dir(&dir).expect("dir").count(), 0);
    let _ = std::fs::remove_dir_all(&place);
}

/// A cluster whose control socket is `path` does not start: a
/// configuration error that names the path and says `says`.
fn refused(path: &Path, says: &str) {
    let e = idle(Cluster::builder().control_socket(path)).expect_err("refused");
    let text = e.to_string();
    assert!(e.is_config(), "{text}");
    assert!(
        text.contains(&path.display().to_string()) && text.contains(says),
        "{text}"
    );
}

#[test]
fn an_explicit_path_that_is_taken_is_a_config_error_and_left_intact() {
    let dir = scratch("explicit");
    // A file the path names by mistake.
    let data = dir.join("data.db");
    std::fs::write(&data, b"precious").expect("write");
    refused(&data, "a regular file is already there");
    assert_eq!(std::fs::read(&data).expect("intact"), b"precious");
    // A symbolic link: neither it nor its target is touched.
    let link = dir.join("link.sock");
    std::os::unix::fs::symlink(&data, &link).expect("link");
    refused(&link, "a symbolic link");
    assert!(std::fs::symlink_metadata(&link)
        .expect("link")
        .file_type()
        .is_symlink());
    assert_eq!(std::fs::read(&data).expect("intact"), b"precious");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Another user's socket at an explicit path, dead or not.
#[test]
#[ignore = "needs root: as root, cargo test -p forkless --all-features --test it -- --ignored --exact control_security::an_explicit_path_at_another_users_socket_is_a_config_error_and_left_intact"]
fn an_explicit_path_at_another_users_socket_is_a_config_error_and_left_intact() {
    need_root();
    let dir = scratch("explicit-theirs");
    let theirs = dir.join("theirs.sock");
    drop(std::os::unix::net::UnixListener::bind(&theirs).expect("bind"));
    std::os::unix::fs::lchown(&theirs, Some(NOBODY), Some(NOBODY)).expect("chown");
    refused(&theirs, &format!("a socket owned by uid {NOBODY}"));
    assert_eq!(
        std::fs::symlink_metadata(&theirs).expect("intact").uid(),
        NOBODY
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
#[ignore = "needs root: as root, cargo test -p forkless --all-features --test it -- --ignored --exact control_security::a_client_of_another_user_is_disconnected_without_an_answer"]
fn a_client_of_another_user_is_disconnected_without_an_answer() {
    need_root();
    let dir = scratch("peer");
    let path = dir.join("control.sock");
    let cluster = idle(Cluster::builder().control_socket(&path)).expect("start");
    // Loosen the mode by hand, as an operator might: the peer check holds.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    child(
        "foreign_client_child",
        &[(SCENARIO, "peer".into()), (PLACE, path.clone().into())],
        false,
        Some(NOBODY),
    );
    // Our own uid still gets answers.
    let answer = exchange(unix(&path, PATIENCE), STATUS).expect("answer");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    cluster.shutdown();
    cluster.join();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn connections_over_the_cap_are_closed_at_once() {
    let dir = scratch("cap");
    let path = dir.join("control.sock");
    let cluster = idle(Cluster::builder().control_socket(&path)).expect("start");
    // Idle clients that hold every place (the header timeout, 5 s, would
    // end them in time).
    let held: Vec<UnixStream> = (0..CAP)
        .map(|_| UnixStream::connect(&path).expect("connect"))
        .collect();
    for _ in 0..4 {
        let started = Instant::now();
        let mut extra = unix(&path, Duration::from_secs(3));
        let mut buf = [0u8; 64];
        let n = extra
            .read(&mut buf)
            .expect("closed at once, not left waiting");
        assert_eq!(n, 0);
        assert!(started.elapsed() < Duration::from_secs(3));
    }
    drop(held);
    // Their places free up as the server sees them go.
    common::wait_until("an answer once the held places are free", || {
        exchange(unix(&path, PATIENCE), STATUS)
            .unwrap_or_default()
            .starts_with("HTTP/1.1 200")
    });
    cluster.shutdown();
    cluster.join();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_tcp_client_without_the_token_gets_401_and_the_connection_ends() {
    let dir = scratch("tcp-close");
    let token = "0123456789abcdef0123";
    let cluster = idle(
        Cluster::builder()
            .control_socket(dir.join("control.sock"))
            .control_tcp(SocketAddr::from(([127, 0, 0, 1], 0)), token),
    )
    .expect("start");
    let addr = cluster
        .control_address()
        .and_then(|(_, tcp)| tcp)
        .expect("a TCP address");
    // Keep-alive asked for; the server closes anyway after its 401 (the
    // header timeout would take 5 s).
    let stream = std::net::TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    let answer = exchange(stream, "GET /status HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("the server closes the connection after its 401");
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );
    // With the token, keep-alive is kept.
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    write!(
        stream,
        "GET /status HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n"
    )
    .expect("send");
    let mut buf = [0u8; 4096];
    let n = stream.read(&mut buf).expect("an answer");
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    cluster.shutdown();
    cluster.join();
    let _ = std::fs::remove_dir_all(&dir);
}
