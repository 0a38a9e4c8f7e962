//! `forkless-ctl` talks only to a control server that runs as its own user
//! or as root: a socket that another user took at the path gets no request.

use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::wait_until;

/// The uid the squatter runs as.
const NOBODY: u32 = 65534;

/// Where the squatter child listens; set only in the child.
const SQUATTER: &str = "CTL_PEER_TEST_SQUATTER_SOCKET";

/// Run by `a_server_of_another_user_is_refused` in a child process as
/// another user: listens at the socket and answers one request with a
/// status, as a squatter would.
#[test]
#[ignore = "the squatter half of a_server_of_another_user_is_refused"]
fn squatter() {
    let Some(path) = std::env::var_os(SQUATTER) else {
        return;
    };
    let listener = std::os::unix::net::UnixListener::bind(&path).expect("bind");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let (mut stream, _) = listener.accept().expect("accept");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut request = [0u8; 1024];
    let _ = stream.read(&mut request);
    let body = r#"{"name":"squatter","size":0,"workers":[]}"#;
    let _ = write!(
        stream,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}

/// Needs root, which alone can run the squatter as another user: `.ci/run`
/// runs it by name when it runs as root; run by another user, it fails
/// saying so rather than pass without checking.
#[test]
#[ignore = "needs root: as root, cargo test -p forkless-ctl --test it -- --ignored --exact ctl_peer::a_server_of_another_user_is_refused"]
fn a_server_of_another_user_is_refused() {
    let uid = rustix::process::geteuid().as_raw();
    assert_eq!(
        uid, 0,
        "this test needs root (it runs a server as another user, uid {NOBODY}); it runs as uid {uid}"
    );
    let dir = std::env::temp_dir().join(format!("forkless-ctl-peer-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    std::os::unix::fs::chown(&dir, Some(NOBODY), Some(NOBODY)).expect("chown");
    let socket: PathBuf = dir.join("forkless-hello.sock");
    let mut child = Command::new(std::env::current_exe().expect("this test binary"))
        .args(["--exact", "ctl_peer::squatter", "--ignored", "--nocapture"])
        .env(SQUATTER, &socket)
        .uid(NOBODY)
        .gid(NOBODY)
        .stdout(Stdio::null())
        .spawn()
        .expect("start the squatter");
    let exe = std::env::current_exe().expect("this test binary");
    wait_until(
        &format!(
            "the squatter to listen (can uid {NOBODY} run {}?)",
            exe.display()
        ),
        || {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("the squatter exited: {status:?}");
            }
            socket.exists()
        },
    );
    let out = Command::new(env!("CARGO_BIN_EXE_forkless-ctl"))
        .args(["--json", "status", "--socket"])
        .arg(&socket)
        .output()
        .expect("run forkless-ctl");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stdout}{stderr}");
    assert!(!stdout.contains("squatter"), "{stdout}");
    assert!(
        stderr.contains("refusing to talk to")
            && stderr.contains(&format!("runs as uid {NOBODY}"))
            && stderr.contains(&socket.display().to_string()),
        "{stderr}"
    );
    // The squatter got a connection and no request: it ends either way.
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
}
