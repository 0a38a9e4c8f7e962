//! End to end: the `hello` example with its control socket, driven by
//! `forkless-ctl`: status, resize up and down, restart, metrics, events,
//! stop, and what it says when no cluster answers.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Command, Output, Stdio};

use crate::common::{ctl, wait_for, wait_until, Hello};

fn ok(output: &Output) -> String {
    assert!(
        output.status.success(),
        "{:?}: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Polls `status --json` until `done` accepts it.
fn status_until(dir: &Path, what: &str, done: impl Fn(&serde_json::Value) -> bool) {
    wait_until(what, || {
        let out = ctl(dir, &["--json", "status"]);
        out.status.success() && {
            let status: serde_json::Value =
                serde_json::from_slice(&out.stdout).expect("status JSON");
            done(&status)
        }
    });
}

fn all_ready(status: &serde_json::Value, size: u64, generation: u64) -> bool {
    status["size"] == size
        && status["workers"].as_array().is_some_and(|ws| {
            ws.iter()
                .all(|w| w["state"] == "ready" && w["generation"].as_u64() >= Some(generation))
        })
}

#[test]
fn forkless_ctl_drives_a_running_cluster() {
    let dir = std::env::temp_dir().join(format!("forkless-ctl-e2e-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let (mut hello, _) = Hello::start(&dir, 1, None);
    let socket = dir.join("forkless-hello.sock");
    wait_until(
        &format!("the control socket at {}", socket.display()),
        || socket.exists(),
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&socket)
        .expect("socket")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "mode {mode:o}");

    status_until(&dir, "1 ready worker", |s| all_ready(s, 1, 0));
    let table = ok(&ctl(&dir, &["status"]));
    assert!(table.contains("cluster hello (1 workers)"), "{table}");
    assert!(table.contains("slot") && table.contains("ready"), "{table}");
    // `hello` does not count memory (no `forkless::alloc::Counting`): it is
    // unknown, `-`, and absent from the JSON.
    let row = table.lines().find(|l| l.contains("ready")).unwrap_or("");
    assert!(row.trim_end().ends_with(" -"), "{table}");
    let json: serde_json::Value =
        serde_json::from_str(&ok(&ctl(&dir, &["--json", "status"]))).expect("status JSON");
    assert!(json["workers"][0].get("memory").is_none(), "{json}");

    assert_eq!(
        ok(&ctl(&dir, &["resize", "+1"])).trim(),
        "resizing: 1 -> 2 workers"
    );
    status_until(&dir, "2 ready workers", |s| all_ready(s, 2, 0));
    assert_eq!(
        ok(&ctl(&dir, &["resize", "-1"])).trim(),
        "resizing: 2 -> 1 workers"
    );
    status_until(&dir, "back to 1", |s| all_ready(s, 1, 0));
    assert_eq!(
        ok(&ctl(&dir, &["resize", "3"])).trim(),
        "resizing: 1 -> 3 workers"
    );
    status_until(&dir, "3 ready workers", |s| all_ready(s, 3, 0));

    assert_eq!(
        ok(&ctl(&dir, &["restart"])).trim(),
        "rolling restart started"
    );
    status_until(&dir, "every worker rolled", |s| all_ready(s, 3, 1));

    let metrics = ok(&ctl(&dir, &["metrics"]));
    assert!(metrics.contains("forkless_workers 3"), "{metrics}");
    assert!(
        !metrics.contains("forkless_worker_memory_bytes{"),
        "{metrics}"
    );

    let bad = ctl(&dir, &["resize", "0"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("422"),
        "{bad:?}"
    );

    // Follow the events; `stop` ends the cluster, and with it the stream.
    let mut events = Command::new(env!("CARGO_BIN_EXE_forkless-ctl"))
        .args(["--name", "hello", "events"])
        .env("XDG_RUNTIME_DIR", &dir)
        .stdout(Stdio::piped())
        .spawn()
        .expect("follow events");
    let mut first = String::new();
    let mut reader = BufReader::new(events.stdout.take().expect("stdout"));
    reader.read_line(&mut first).expect("an event");
    assert!(first.starts_with("worker_started "), "{first:?}");
    assert_eq!(ok(&ctl(&dir, &["stop"])).trim(), "stopping");
    let mut rest = String::new();
    reader
        .read_to_string(&mut rest)
        .expect("the rest of the events");
    assert!(events.wait().expect("events exits").success());
    assert!(
        rest.contains("roll_finished completed=true restarted=3"),
        "{rest}"
    );
    assert!(rest.trim_end().ends_with("stopped"), "{rest}");

    let status = hello.wait().expect("hello exits");
    assert!(status.success(), "{status:?}");
    let gone = ctl(&dir, &["status"]);
    assert_eq!(gone.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&gone.stderr).contains("no cluster answers"),
        "{gone:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `forkless-ctl args` with neither --name nor --socket.
fn ctl_any(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_forkless-ctl"))
        .args(args)
        .env("XDG_RUNTIME_DIR", dir)
        .output()
        .expect("run forkless-ctl")
}

#[test]
fn status_without_a_name_lists_every_cluster_that_answers() {
    let dir = std::env::temp_dir().join(format!("forkless-ctl-list-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let none = ctl_any(&dir, &["status"]);
    assert_eq!(none.status.code(), Some(2), "{none:?}");
    assert!(
        String::from_utf8_lossy(&none.stderr).contains("no forkless cluster of this user answers"),
        "{none:?}"
    );

    let (mut alpha, _) = Hello::start(&dir, 1, Some("alpha"));
    let (mut beta, _) = Hello::start(&dir, 1, Some("beta"));
    let table = wait_for("both clusters listed", || {
        let out = ctl_any(&dir, &["status"]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        (out.status.success() && text.contains("alpha") && text.contains("beta")).then_some(text)
    });
    for (name, child) in [("alpha", &alpha), ("beta", &beta)] {
        let line = table
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("{name} in {table}"));
        assert!(line.contains(&child.id().to_string()), "its pid: {line}");
        assert!(line.contains(&format!("forkless-{name}.sock")), "{line}");
    }
    let json = ok(&ctl_any(&dir, &["--json", "status"]));
    let list: serde_json::Value = serde_json::from_str(&json).expect("JSON");
    assert_eq!(list.as_array().map(Vec::len), Some(2), "{json}");
    // Two clusters: a command that steers one must be told which.
    let two = ctl_any(&dir, &["restart"]);
    assert_eq!(two.status.code(), Some(2), "{two:?}");
    // --name still selects one.
    assert!(ok(&ctl_any(&dir, &["--name", "beta", "status"])).contains("cluster beta"));

    // A cluster killed leaves its socket: it answers no more, and is not
    // listed.
    alpha.kill().expect("kill alpha");
    alpha.wait().expect("alpha");
    let listed = ok(&ctl_any(&dir, &["status"]));
    assert!(
        !listed.contains("alpha") && listed.contains("beta"),
        "{listed}"
    );
    // With one left, the other commands reach it without a name.
    assert!(ok(&ctl_any(&dir, &["metrics"])).contains("forkless_workers 1"));
    let _ = Command::new("kill")
        .args(["-TERM", &beta.id().to_string()])
        .status();
    assert!(beta.wait().expect("beta").success());
    let _ = std::fs::remove_dir_all(&dir);
}
