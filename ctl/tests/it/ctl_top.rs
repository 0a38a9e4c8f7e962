//! `forkless-ctl top` against a live `hello`: the view's state fed with the
//! cluster's real status, drawn on ratatui's test backend, its keys carried
//! out on the control socket; and what the command says when there is no
//! cluster, or no terminal to draw on.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crossterm::event::{KeyCode, KeyEvent};
use forkless_control::{Client, Status, WorkerState};
use forkless_ctl::top::{Action, App};

use crate::common::{wait_for, Hello};

/// A fresh directory for the control socket of the cluster under test.
fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("forkless-ctl-top-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    dir
}

fn ctl(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_forkless-ctl"))
        .args(args)
        .env("XDG_RUNTIME_DIR", dir)
        .stdin(Stdio::null())
        .output()
        .expect("run forkless-ctl")
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// Asks for the status until `done` accepts it.
fn status_until(
    rt: &tokio::runtime::Runtime,
    client: &Client,
    what: &str,
    done: impl Fn(&Status) -> bool,
) -> Status {
    wait_for(what, || {
        rt.block_on(client.status())
            .ok()
            .filter(|status| done(status))
    })
}

fn all_ready(status: &Status, size: usize) -> bool {
    status.size == size
        && status.workers.len() == size
        && status.workers.iter().all(|w| w.state == WorkerState::Ready)
}

fn accepted(status: &Status) -> u64 {
    status.workers.iter().map(|w| w.accepted).sum()
}

/// The view drawn on a test terminal, as text.
fn screen(app: &App) -> String {
    forkless_ctl::top::as_text(app, 120, 24)
}

/// The table's row of `slot`.
fn row(text: &str, slot: usize) -> String {
    text.lines()
        .find(|l| {
            l.trim_start_matches(['│', '>', ' '])
                .split_whitespace()
                .next()
                == Some(&slot.to_string())
                && l.contains("ready")
        })
        .unwrap_or_else(|| panic!("a ready row for slot {slot} in\n{text}"))
        .to_owned()
}

fn get(addr: &str) {
    let mut stream = TcpStream::connect(addr).expect("connect to hello");
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .expect("request");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("answer");
    assert!(answer.contains("Hello, World!"), "{answer}");
}

#[test]
fn top_renders_the_table_of_a_live_cluster_and_steers_it() {
    let dir = scratch("live");
    let (mut hello, addr) = Hello::start(&dir, 2, None);
    let rt = runtime();
    let client = Client::new(dir.join("forkless-hello.sock"));
    let mut app = App::new(client.socket().display().to_string());

    let first = status_until(&rt, &client, "2 ready workers", |s| all_ready(s, 2));
    let before = accepted(&first);
    // The view is told when each snapshot was taken: a second apart here,
    // as the terminal loop takes them.
    let t0 = Instant::now();
    app.update(first, t0);
    for _ in 0..20 {
        get(&addr);
    }
    let second = status_until(&rt, &client, "20 more connections counted", |s| {
        all_ready(s, 2) && accepted(s) >= before + 20
    });
    app.update(second, t0 + Duration::from_secs(1));

    let text = screen(&app);
    assert!(text.contains("cluster hello"), "{text}");
    assert!(text.contains("2/2 ready"), "{text}");
    for slot in 0..2 {
        row(&text, slot);
    }
    let total = app.total_rate().expect("a rate from two snapshots");
    assert!(total > 0.0, "{total}");
    assert!(!text.contains("now -"), "{text}");

    // `c` recycles the selected slot: the outcome is in the status line,
    // and the slot's next generation serves.
    app.key(KeyEvent::from(KeyCode::Down));
    let slot = app.selected_slot().expect("a selected row");
    let action = app.key(KeyEvent::from(KeyCode::Char('c')));
    assert_eq!(action, Some(Action::Recycle(slot)));
    let outcome = rt.block_on(Action::Recycle(slot).perform(&client));
    assert_eq!(outcome, Ok(format!("recycling slot {slot}")));
    app.done(outcome.clone());
    let text = screen(&app);
    let shown = outcome.unwrap_or_else(|e| e);
    assert!(text.contains(&shown), "{shown} in\n{text}");

    // `+`: one worker more, and the table shows it.
    let action = app.key(KeyEvent::from(KeyCode::Char('+'))).expect("resize");
    let outcome = rt.block_on(action.perform(&client));
    assert_eq!(outcome.as_deref(), Ok("resizing: 2 -> 3 workers"));
    app.done(outcome);
    let third = status_until(&rt, &client, "3 ready workers", |s| all_ready(s, 3));
    app.update(third, t0 + Duration::from_secs(2));
    let text = screen(&app);
    assert!(text.contains("3/3 ready"), "{text}");
    for slot in 0..3 {
        row(&text, slot);
    }

    // The cluster stops: the view says it is unreachable.
    rt.block_on(client.shutdown()).expect("shutdown");
    assert!(hello.wait().expect("hello exits").success());
    let e = rt.block_on(client.status()).unwrap_err();
    app.unreachable(e.to_string());
    let text = screen(&app);
    assert!(text.contains("UNREACHABLE"), "{text}");
    assert!(text.contains("no cluster answers on"), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn top_needs_a_cluster_and_a_terminal() {
    let dir = scratch("cli");
    // Nothing runs: said plainly, exit 2.
    let none = ctl(&dir, &["top"]);
    assert_eq!(none.status.code(), Some(2), "{none:?}");
    let said = String::from_utf8_lossy(&none.stderr);
    assert!(
        said.contains("no forkless cluster of this user answers"),
        "{said}"
    );
    let named = ctl(&dir, &["--name", "nothere", "top"]);
    assert_eq!(named.status.code(), Some(2), "{named:?}");
    assert!(
        String::from_utf8_lossy(&named.stderr).contains("no cluster answers on"),
        "{named:?}"
    );

    let (mut hello, _) = Hello::start(&dir, 1, None);
    let rt = runtime();
    let client = Client::new(dir.join("forkless-hello.sock"));
    status_until(&rt, &client, "1 ready worker", |s| all_ready(s, 1));
    // A pipe is not a terminal: a clear error, nothing drawn.
    for args in [&["top"][..], &["--name", "hello", "top"][..]] {
        let piped = ctl(&dir, args);
        assert_eq!(piped.status.code(), Some(1), "{args:?}: {piped:?}");
        assert!(piped.stdout.is_empty(), "{args:?}: {piped:?}");
        let said = String::from_utf8_lossy(&piped.stderr);
        assert!(said.contains("stdout is not one"), "{args:?}: {said}");
    }
    let json = ctl(&dir, &["--json", "top"]);
    assert_eq!(json.status.code(), Some(2), "{json:?}");

    // `recycle SLOT`: the slot must be a number; the answer, whatever the
    // server says, is a line and an exit code, not a crash.
    let bad = ctl(&dir, &["recycle", "x"]);
    assert_eq!(bad.status.code(), Some(2), "{bad:?}");
    let negative = ctl(&dir, &["recycle", "-1"]);
    assert_eq!(negative.status.code(), Some(2), "{negative:?}");
    let recycle = ctl(&dir, &["recycle", "0"]);
    assert!(recycle.status.success(), "{recycle:?}");
    assert_eq!(
        String::from_utf8_lossy(&recycle.stdout).trim(),
        "recycling slot 0"
    );
    let missing = ctl(&dir, &["recycle", "9"]);
    assert_eq!(missing.status.code(), Some(1), "{missing:?}");
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("slots 0 to"),
        "{missing:?}"
    );

    rt.block_on(client.shutdown()).expect("shutdown");
    assert!(hello.wait().expect("hello exits").success());
    let _ = std::fs::remove_dir_all(&dir);
}

/// A pseudo-terminal with `forkless-ctl` running in it, and a terminal
/// emulator (vt100) that reads what it draws.
struct Pty {
    master: std::fs::File,
    child: Child,
    output: std::sync::mpsc::Receiver<Vec<u8>>,
    screen: vt100::Parser,
}

impl Drop for Pty {
    /// A test that fails leaves no `forkless-ctl top` running.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Pty {
    /// `forkless-ctl args` as the session leader of a new pseudo-terminal
    /// of `rows` x `cols`, which is its stdin, stdout, stderr and
    /// controlling terminal (so that `/dev/tty` is this terminal, not the
    /// one the tests run in).
    #[allow(unsafe_code)]
    fn spawn(dir: &Path, args: &[&str], rows: u16, cols: u16) -> Pty {
        use rustix::pty::{grantpt, openpt, ptsname, unlockpt, OpenptFlags};
        use std::os::unix::process::CommandExt;
        let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY).expect("openpt");
        grantpt(&master).expect("grantpt");
        unlockpt(&master).expect("unlockpt");
        let name = ptsname(&master, Vec::new()).expect("ptsname");
        let slave = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(name.to_str().expect("a path"))
            .expect("open the pty's slave");
        set_size(&master, rows, cols);
        let mut command = Command::new(env!("CARGO_BIN_EXE_forkless-ctl"));
        command
            .args(args)
            .env("XDG_RUNTIME_DIR", dir)
            .env("TERM", "xterm-256color")
            .stdin(slave.try_clone().expect("slave"))
            .stdout(slave.try_clone().expect("slave"))
            .stderr(slave);
        // SAFETY: between fork and exec the closure makes two system calls
        // (setsid, ioctl TIOCSCTTY) on a descriptor that is there (stdin,
        // the slave), allocates nothing and takes no lock.
        unsafe {
            command.pre_exec(|| {
                rustix::process::setsid()?;
                rustix::process::ioctl_tiocsctty(std::os::fd::BorrowedFd::borrow_raw(0))?;
                Ok(())
            });
        }
        let child = command.spawn().expect("start forkless-ctl in a pty");
        drop(command); // closes this process's copies of the slave
        let master = std::fs::File::from(master);
        let mut reader = master.try_clone().expect("master");
        let (tx, output) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            // Ends with EIO once the child and its slave are gone.
            while let Ok(n @ 1..) = reader.read(&mut buf) {
                if tx.send(buf[..n].to_vec()).is_err() {
                    return;
                }
            }
        });
        Pty {
            master,
            child,
            output,
            screen: vt100::Parser::new(rows, cols, 0),
        }
    }

    /// Reads what was drawn until the screen's text satisfies `done`.
    fn until(&mut self, what: &str, done: impl Fn(&str) -> bool) -> String {
        let mut shown = String::new();
        wait_for(what, || {
            while let Ok(bytes) = self.output.try_recv() {
                self.screen.process(&bytes);
            }
            let text = self.screen.screen().contents();
            if done(&text) {
                return Some(text);
            }
            // Each new screen, for the output of a test that fails.
            if text != shown {
                eprintln!("waiting for {what}; the screen:\n{text}");
                shown = text;
            }
            None
        })
    }

    fn keys(&mut self, keys: &str) {
        self.master.write_all(keys.as_bytes()).expect("type");
    }

    fn resize(&mut self, rows: u16, cols: u16) {
        self.screen.set_size(rows, cols);
        set_size(&self.master, rows, cols);
    }
}

/// The real `forkless-ctl top`, typed at in a pseudo-terminal: it draws
/// the live cluster, its keys resize, recycle and restart it, it redraws
/// at a new terminal size, says when the cluster is gone and finds it
/// again, and `q` leaves the terminal as it found it.
#[test]
fn top_in_a_pseudo_terminal() {
    let dir = scratch("pty");
    let (mut hello, _) = Hello::start(&dir, 1, None);
    let rt = runtime();
    let client = Client::new(dir.join("forkless-hello.sock"));
    status_until(&rt, &client, "1 ready worker", |s| all_ready(s, 1));

    let mut pty = Pty::spawn(&dir, &["--name", "hello", "top"], 30, 120);
    pty.until("the table", |s| {
        s.contains("cluster hello") && s.contains("1/1 ready") && s.contains("conn/s")
    });
    // The second refresh gives a rate.
    pty.until("a rate", |s| !s.contains("now -"));

    pty.keys("+");
    pty.until("the resize", |s| {
        s.contains("resizing: 1 -> 2 workers") && s.contains("2/2 ready")
    });
    pty.keys("jc");
    pty.until("the recycle's outcome", |s| s.contains("recycling slot 1"));
    pty.keys("r");
    pty.until("the question", |s| s.contains("restart all 2 workers"));
    pty.keys("y");
    pty.until("the restart", |s| s.contains("rolling restart started"));

    // A smaller terminal: drawn anew at its size.
    pty.resize(20, 90);
    pty.until("a redraw at 90 columns", |s| {
        s.lines()
            .nth(1)
            .is_some_and(|l| l.starts_with('┌') && l.chars().count() == 90 && l.ends_with('┐'))
    });

    // The cluster stops: unreachable, and asked again until it is back.
    rt.block_on(client.shutdown()).expect("shutdown");
    assert!(hello.wait().expect("hello exits").success());
    pty.until("unreachable", |s| s.contains("UNREACHABLE"));
    let (mut again, _) = Hello::start(&dir, 1, None);
    pty.until("the cluster back", |s| {
        !s.contains("UNREACHABLE") && s.contains("1/1 ready")
    });

    pty.keys("q");
    let status = wait_for("top to quit", || pty.child.try_wait().expect("wait"));
    assert!(status.success(), "{status:?}");
    while let Ok(bytes) = pty.output.recv_timeout(Duration::from_secs(1)) {
        pty.screen.process(&bytes);
    }
    assert!(
        !pty.screen.screen().alternate_screen(),
        "the alternate screen was left"
    );
    assert!(!pty.screen.screen().hide_cursor(), "the cursor is shown");
    let modes = rustix::termios::tcgetattr(&pty.master).expect("termios");
    assert!(
        modes
            .local_modes
            .contains(rustix::termios::LocalModes::ICANON | rustix::termios::LocalModes::ECHO),
        "raw mode was left: {:?}",
        modes.local_modes
    );

    rt.block_on(client.shutdown()).expect("shutdown");
    assert!(again.wait().expect("hello exits").success());
    let _ = std::fs::remove_dir_all(&dir);
}

/// Tells the terminal behind `master` its size.
fn set_size(master: &impl std::os::fd::AsFd, rows: u16, cols: u16) {
    rustix::termios::tcsetwinsize(
        master,
        rustix::termios::Winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        },
    )
    .expect("window size");
}
