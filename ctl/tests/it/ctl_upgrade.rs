//! `forkless-ctl upgrade` against a running `hello` started from a path of
//! the test's: the file at that path is what the upgrade starts. A program
//! that exits at once fails the upgrade, and the command says why and
//! exits 1 while the old process serves on; a fresh copy of `hello` takes
//! over, and the command exits 0 naming the new process.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::common::{ctl, hello_binary, wait_until, Hello};

/// Puts `write`'s file at `program` as a deploy does: written beside it,
/// then renamed over it (the running process keeps its own file).
fn deploy(program: &Path, write: impl FnOnce(&Path)) {
    let next = program.with_extension("next");
    write(&next);
    std::fs::set_permissions(&next, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    std::fs::rename(&next, program).expect("put the new build in place");
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn upgrade_says_why_it_failed_and_exits_1_and_exits_0_once_it_succeeds() {
    let dir = std::env::temp_dir().join(format!("forkless-ctl-upgrade-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let program = dir.join("hello");
    let copy_hello = |to: &Path| {
        std::fs::copy(hello_binary(), to).expect("copy hello");
    };
    deploy(&program, copy_hello);
    let (mut hello, _) = Hello::start_from(&program, &dir, 1, None);
    let socket = dir.join("forkless-hello.sock");
    wait_until("the control socket", || socket.exists());
    wait_until("hello to answer", || {
        ctl(&dir, &["status"]).status.success()
    });

    // A "new build" that exits at once with 3.
    deploy(&program, |to| {
        std::fs::write(to, "#!/bin/sh\nexit 3\n").expect("write the script");
    });
    let failed = ctl(&dir, &["upgrade"]);
    let (stdout, stderr) = (text(&failed.stdout), text(&failed.stderr));
    assert_eq!(failed.status.code(), Some(1), "{stdout}{stderr}");
    assert!(
        stderr.contains("upgrade failed") && stderr.contains("exit status: 3"),
        "the reason: {stderr}"
    );
    assert!(!stdout.contains("upgraded"), "{stdout}");
    // The old process serves on.
    let status = ctl(&dir, &["--json", "status"]);
    assert!(status.status.success(), "{status:?}");
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).expect("status JSON");
    assert_eq!(
        status["pid"].as_u64(),
        Some(u64::from(hello.id())),
        "{status}"
    );

    // A fresh copy of hello takes over.
    deploy(&program, copy_hello);
    let upgraded = ctl(&dir, &["upgrade"]);
    let (stdout, stderr) = (text(&upgraded.stdout), text(&upgraded.stderr));
    assert_eq!(upgraded.status.code(), Some(0), "{stdout}{stderr}");
    let pid: u32 = stdout
        .trim()
        .strip_prefix("upgraded: process ")
        .and_then(|rest| rest.strip_suffix(" serves now"))
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("{stdout:?}"));
    assert_ne!(pid, hello.id(), "a new process");
    let old = hello.wait().expect("the old process exits");
    assert!(old.success(), "the old process exits 0: {old:?}");
    let status = ctl(&dir, &["--json", "status"]);
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).expect("status JSON");
    assert_eq!(status["pid"].as_u64(), Some(u64::from(pid)), "{status}");

    // The new process is no child of this test: stop it on its socket.
    assert!(ctl(&dir, &["stop"]).status.success());
    wait_until("the new process to stop answering", || {
        ctl(&dir, &["status"]).status.code() == Some(2)
    });
    let _ = std::fs::remove_dir_all(&dir);
}
