//! What the ctl tests share: the `hello` example they drive, as a [`Hello`]
//! that is killed when its test fails instead of outliving it.
#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader};
use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

#[path = "../../../../tests/support/wait.rs"]
mod wait;
pub use wait::{wait_for, wait_until};

/// `target/<profile>/examples/hello`, which `cargo test --workspace` builds.
pub fn hello_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>");
    let path = dir.join("examples").join("hello");
    assert!(
        path.exists(),
        "{} is missing: run the whole suite (`cargo test --workspace`), which builds the examples",
        path.display()
    );
    path
}

/// A running `hello`; killed on drop if it still runs (a test that panics
/// leaves no cluster behind; a process that an upgrade of it started is
/// not its child, and is the test's to stop).
pub struct Hello(Child);

impl Hello {
    /// `hello` with `workers` workers, its control socket in `dir`, named
    /// `name` (through `FORKLESS_NAME`) or by default; and its HTTP address.
    pub fn start(dir: &Path, workers: usize, name: Option<&str>) -> (Hello, String) {
        Hello::start_from(&hello_binary(), dir, workers, name)
    }

    /// [`Hello::start`] of the `hello` binary at `binary`.
    pub fn start_from(
        binary: &Path,
        dir: &Path,
        workers: usize,
        name: Option<&str>,
    ) -> (Hello, String) {
        let mut command = Command::new(binary);
        command
            .args(["--port", "0", "--workers", &workers.to_string()])
            .env("XDG_RUNTIME_DIR", dir)
            .env("RUST_LOG", "error")
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        if let Some(name) = name {
            command.env("FORKLESS_NAME", name);
        }
        let mut child = command.spawn().expect("start hello");
        let mut line = String::new();
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        stdout.read_line(&mut line).expect("the listening line");
        // The rest is read and dropped, so that no later write finds the
        // pipe closed: a process an upgrade starts inherits it, and prints
        // its own listening line.
        std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
        let hello = Hello(child);
        let addr = line
            .trim()
            .strip_prefix("listening on http://")
            .unwrap_or_else(|| panic!("{line:?}"))
            .to_owned();
        (hello, addr)
    }
}

impl Deref for Hello {
    type Target = Child;

    fn deref(&self) -> &Child {
        &self.0
    }
}

impl DerefMut for Hello {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Hello {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Runs `forkless-ctl --name hello ARGS` with `dir` as its runtime
/// directory, and returns what it did.
pub fn ctl(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_forkless-ctl"))
        .args(["--name", "hello"])
        .args(args)
        .env("XDG_RUNTIME_DIR", dir)
        .output()
        .expect("run forkless-ctl")
}
