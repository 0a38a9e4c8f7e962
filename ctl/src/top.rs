//! `forkless-ctl top`: a live view of one cluster, as `pm2 monit` shows a
//! Node cluster: a row per worker (state, generation, connections per
//! second, busy ratio, loop lag, restarts), a sparkline of the cluster's
//! connections per second, and keys that steer it.
//!
//! Three parts, so that all but the last are tested without a terminal:
//!
//! - [`App`]: the state, fed with [`Status`] snapshots
//!   ([`App::update`], [`App::unreachable`]), key events ([`App::key`],
//!   which answers the [`Action`] to carry out) and the outcome of those
//!   actions ([`App::done`]). Rates come from the difference of two
//!   snapshots' cumulative counters.
//! - [`render`]: draws an `App` on a ratatui [`Frame`], any backend.
//! - [`run`]: the terminal loop: raw mode and the alternate screen
//!   (restored on exit and on panic), a status request each second on a
//!   thread of its own (so that keys answer at once even when the cluster
//!   does not), a redraw on each change and on a resize of the terminal.
//!
//! The runtime counts accepted connections, not requests: the rates are
//! connections accepted per second, and the view says so.

use std::collections::VecDeque;
use std::io::{self, IsTerminal};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crossterm::event::{self, Event as TermEvent, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use forkless_control::{Client, Status, WorkerState, WorkerStatus, Workers};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Cell, Paragraph, Row, Sparkline, Table, TableState};
use ratatui::Frame;

/// How often the view asks for the cluster's status.
pub const REFRESH: Duration = Duration::from_secs(1);

/// How long a request may take before the view calls the cluster
/// unreachable (status) or the action failed.
const PATIENCE: Duration = Duration::from_secs(5);

/// Two snapshots closer than this give no rate: the quotient would be noise.
const SHORTEST_INTERVAL: Duration = Duration::from_millis(100);

/// How many refreshes of history the sparkline keeps (its width shows the
/// latest of them).
const HISTORY: usize = 600;

/// Something a key asks the cluster to do; [`run`] sends it on the control
/// socket and hands the outcome to [`App::done`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Action {
    /// A rolling restart (`r`, then `y` to confirm).
    Restart,
    /// One worker more (`+`) or fewer (`-`).
    Resize(Workers),
    /// Replace the worker of this slot by a new generation (`c` on the
    /// selected row).
    Recycle(usize),
}

impl std::fmt::Display for Action {
    /// `rolling restart`, `resize +1`, `recycle slot 2`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Action::Restart => f.write_str("rolling restart"),
            Action::Resize(w) => write!(f, "resize {w}"),
            Action::Recycle(slot) => write!(f, "recycle slot {slot}"),
        }
    }
}

impl Action {
    /// Carries the action out with `client`: the line to show, or the
    /// error.
    ///
    /// # Errors
    ///
    /// The server's refusal or the connection's failure, as text that names
    /// the action.
    pub async fn perform(self, client: &Client) -> Result<String, String> {
        match self {
            Action::Restart => client
                .restart()
                .await
                .map(|_| "rolling restart started".to_owned())
                .map_err(|e| format!("{self}: {e}")),
            Action::Resize(workers) => client
                .resize(workers)
                .await
                .map(|a| format!("resizing: {} -> {} workers", a.from, a.to))
                .map_err(|e| format!("{self}: {e}")),
            Action::Recycle(slot) => client
                .recycle(slot)
                .await
                .map(|a| format!("recycling slot {}", a.slot))
                .map_err(|e| format!("{self}: {e}")),
        }
    }
}

/// What one worker's counters were at one snapshot.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Sample {
    pid: u32,
    slot: usize,
    generation: u64,
    accepted: u64,
    at: Instant,
}

/// Connections accepted per second between two samples of a slot; `None`
/// when the two cannot be compared: another process (the cluster was
/// started anew or upgraded), another generation (a restart, a roll or a
/// recycle starts its count at zero), a count that went backwards, or
/// samples too close in time.
fn rate(before: &Sample, after: &Sample) -> Option<f64> {
    if before.pid != after.pid || before.slot != after.slot || before.generation != after.generation
    {
        return None;
    }
    let elapsed = after.at.checked_duration_since(before.at)?;
    if elapsed < SHORTEST_INTERVAL {
        return None;
    }
    let more = after.accepted.checked_sub(before.accepted)?;
    Some(more as f64 / elapsed.as_secs_f64())
}

/// The state of the view: the last snapshot, the rates computed from the
/// two last ones, the history of the cluster's rate, the selected row, and
/// what the last action or request said.
///
/// ```
/// use std::time::{Duration, Instant};
/// use forkless_ctl::top::App;
/// use forkless_control::Status;
///
/// let status: Status = serde_json::from_str(
///     r#"{"name":"api","size":0,"rolling":false,"stopping":false,"workers":[]}"#,
/// )?;
/// let mut app = App::new("/run/user/1000/forkless-api.sock");
/// let now = Instant::now();
/// app.update(status.clone(), now);
/// app.update(status, now + Duration::from_secs(1));
/// assert_eq!(app.total_rate(), Some(0.0));
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Debug)]
pub struct App {
    socket: String,
    status: Option<Status>,
    samples: Vec<Sample>,
    rates: Vec<Option<f64>>,
    history: VecDeque<Option<u64>>,
    compared: bool,
    selected: usize,
    unreachable: Option<String>,
    message: Option<Message>,
    confirming: Option<Action>,
    quit: bool,
}

/// A line for the status bar, and whether it reports a failure.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Message {
    text: String,
    failed: bool,
}

impl App {
    /// A view of the cluster whose control socket is `socket` (shown until
    /// the first snapshot arrives).
    pub fn new(socket: impl Into<String>) -> App {
        App {
            socket: socket.into(),
            status: None,
            samples: Vec::new(),
            rates: Vec::new(),
            history: VecDeque::new(),
            compared: false,
            selected: 0,
            unreachable: None,
            message: None,
            confirming: None,
            quit: false,
        }
    }

    /// A new snapshot, taken at `at`: the rates are those since the last
    /// one, per slot, and their sum joins the sparkline's history.
    pub fn update(&mut self, status: Status, at: Instant) {
        let samples: Vec<Sample> = status
            .workers
            .iter()
            .map(|w| Sample {
                pid: status.pid,
                slot: w.slot,
                generation: w.generation,
                accepted: w.accepted,
                at,
            })
            .collect();
        self.rates = samples
            .iter()
            .map(|now| {
                self.samples
                    .iter()
                    .find(|before| before.slot == now.slot)
                    .and_then(|before| rate(before, now))
            })
            .collect();
        self.compared = self.status.is_some();
        self.samples = samples;
        self.unreachable = None;
        if self.compared {
            if self.history.len() == HISTORY {
                self.history.pop_front();
            }
            // `as` saturates: a huge rate is the largest bar, not a wrap;
            // an unknown one is no bar.
            let total = self.total_rate().map(|r| r.round() as u64);
            self.history.push_back(total);
        }
        self.selected = self.selected.min(status.workers.len().saturating_sub(1));
        self.status = Some(status);
    }

    /// The status request failed with `error`: the view says the cluster is
    /// unreachable (and keeps the last snapshot, its rates dropped).
    pub fn unreachable(&mut self, error: impl Into<String>) {
        self.unreachable = Some(error.into());
        self.rates.iter_mut().for_each(|r| *r = None);
    }

    /// A key was pressed: the action it asks for, if any (quitting is
    /// [`should_quit`](App::should_quit)).
    ///
    /// `q`, Esc, Ctrl-C: quit. Up/Down (or `k`/`j`): select a worker. `c`:
    /// recycle the selected worker's slot. `+`/`-`: one worker more/fewer.
    /// `r`: a rolling restart, once confirmed with `y`.
    pub fn key(&mut self, key: KeyEvent) -> Option<Action> {
        if key.kind != KeyEventKind::Press {
            return None;
        }
        let ctrl_c =
            key.code == KeyCode::Char('c') && key.modifiers.contains(KeyModifiers::CONTROL);
        if ctrl_c {
            self.quit = true;
            return None;
        }
        if let Some(action) = self.confirming.take() {
            if matches!(key.code, KeyCode::Char('y' | 'Y')) {
                return self.asked(action);
            }
            self.say("rolling restart cancelled", false);
            return None;
        }
        match key.code {
            KeyCode::Char('q' | 'Q') | KeyCode::Esc => self.quit = true,
            KeyCode::Up | KeyCode::Char('k') => self.selected = self.selected.saturating_sub(1),
            KeyCode::Down | KeyCode::Char('j') => {
                let last = self.workers().len().saturating_sub(1);
                self.selected = (self.selected + 1).min(last);
            }
            KeyCode::Char('+' | '=') => return self.asked(Action::Resize(Workers::More(1))),
            KeyCode::Char('-' | '_') => return self.asked(Action::Resize(Workers::Fewer(1))),
            KeyCode::Char('c') => match self.selected_slot() {
                Some(slot) => return self.asked(Action::Recycle(slot)),
                None => self.say("no worker to recycle", true),
            },
            KeyCode::Char('r') => {
                self.confirming = Some(Action::Restart);
                let n = self.status.as_ref().map_or(0, |s| s.size);
                self.say(
                    &format!("restart all {n} workers, one at a time? y: yes, any other key: no"),
                    false,
                );
            }
            _ => {}
        }
        None
    }

    fn asked(&mut self, action: Action) -> Option<Action> {
        self.say(&format!("{action}..."), false);
        Some(action)
    }

    fn say(&mut self, text: &str, failed: bool) {
        self.message = Some(Message {
            text: text.to_owned(),
            failed,
        });
    }

    /// The outcome of an [`Action`] (from [`Action::perform`]): shown in
    /// the status line.
    pub fn done(&mut self, outcome: Result<String, String>) {
        match outcome {
            Ok(text) => self.say(&text, false),
            Err(text) => self.say(&text, true),
        }
    }

    /// Whether a quit key was pressed.
    pub fn should_quit(&self) -> bool {
        self.quit
    }

    /// The last snapshot, if any arrived.
    pub fn status(&self) -> Option<&Status> {
        self.status.as_ref()
    }

    /// Connections accepted per second by the worker of row `row`, between
    /// the last two snapshots; `None` when unknown (see [`update`](App::update)).
    pub fn rate(&self, row: usize) -> Option<f64> {
        self.rates.get(row).copied().flatten()
    }

    /// The sum of the known rates (connections accepted per second by the
    /// whole cluster); `None` before two snapshots were compared, while the
    /// cluster does not answer, or when no worker's rate is known.
    pub fn total_rate(&self) -> Option<f64> {
        if !self.compared || self.unreachable.is_some() {
            return None;
        }
        let known: Vec<f64> = self.rates.iter().filter_map(|r| *r).collect();
        if known.is_empty() && !self.rates.is_empty() {
            return None;
        }
        Some(known.iter().sum())
    }

    /// The slot of the selected row.
    pub fn selected_slot(&self) -> Option<usize> {
        self.workers().get(self.selected).map(|w| w.slot)
    }

    fn workers(&self) -> &[WorkerStatus] {
        self.status.as_ref().map_or(&[], |s| s.workers.as_slice())
    }
}

/// A column of the workers' table: its title, width, and what a row shows
/// in it. Adding a column is one line in [`COLUMNS`].
struct Column {
    title: &'static str,
    width: u16,
    cell: fn(&WorkerStatus, Option<f64>) -> String,
}

fn dash() -> String {
    "-".to_owned()
}

/// The workers' table, left to right.
const COLUMNS: &[Column] = &[
    Column {
        title: "slot",
        width: 4,
        cell: |w, _| w.slot.to_string(),
    },
    Column {
        title: "gen",
        width: 5,
        cell: |w, _| w.generation.to_string(),
    },
    Column {
        title: "core",
        width: 4,
        cell: |w, _| w.core.map_or_else(dash, |c| c.to_string()),
    },
    Column {
        title: "state",
        width: 10,
        cell: |w, _| w.state.to_string(),
    },
    Column {
        title: "uptime",
        width: 8,
        cell: |w, _| w.uptime_secs.map_or_else(dash, uptime),
    },
    Column {
        title: "conn/s",
        width: 9,
        cell: |_, rate| rate.map_or_else(dash, per_second),
    },
    Column {
        title: "accepted",
        width: 10,
        cell: |w, _| w.accepted.to_string(),
    },
    Column {
        title: "busy",
        width: 5,
        cell: |w, _| busy(w.busy_ratio),
    },
    Column {
        title: "lag",
        width: 9,
        cell: |w, _| lag(w.loop_lag_ms),
    },
    Column {
        title: "mem",
        width: 9,
        cell: |w, _| {
            w.memory
                .map_or_else(dash, |b| format!("{:.1}M", b as f64 / 1_048_576.0))
        },
    },
    Column {
        title: "restarts",
        width: 8,
        cell: |w, _| w.restarts.to_string(),
    },
    Column {
        title: "recycles",
        width: 8,
        cell: |w, _| w.recycles.to_string(),
    },
    Column {
        title: "last exit",
        width: 24,
        cell: |w, _| w.last_exit.clone().unwrap_or_default(),
    },
];

fn per_second(rate: f64) -> String {
    if rate.is_finite() && rate >= 0.0 {
        format!("{rate:.1}")
    } else {
        dash()
    }
}

/// A share from 0 to 1 as a percentage; a value out of range is clamped,
/// one that is not a number is unknown.
fn busy(ratio: f64) -> String {
    if ratio.is_nan() {
        return dash();
    }
    format!("{:.0}%", ratio.clamp(0.0, 1.0) * 100.0)
}

fn lag(ms: f64) -> String {
    if ms.is_finite() && ms >= 0.0 {
        format!("{ms:.2}ms")
    } else {
        dash()
    }
}

/// `42s`, `3m5s`, `2h10m`, `3d4h`.
pub fn uptime(secs: f64) -> String {
    if !secs.is_finite() || secs < 0.0 {
        return dash();
    }
    let s = secs as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{}s", s / 60, s % 60),
        3600..=86399 => format!("{}h{}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{}h", s / 86400, (s % 86400) / 3600),
    }
}

fn state_style(state: WorkerState) -> Style {
    match state {
        WorkerState::Ready => Style::new().fg(Color::Green),
        WorkerState::Starting | WorkerState::Restarting => Style::new().fg(Color::Yellow),
        WorkerState::Stalled | WorkerState::GaveUp => {
            Style::new().fg(Color::Red).add_modifier(Modifier::BOLD)
        }
        _ => Style::new().fg(Color::DarkGray),
    }
}

/// The first line: which cluster, and whether it answers.
fn header(app: &App) -> Line<'static> {
    let bold = Style::new().add_modifier(Modifier::BOLD);
    let Some(status) = &app.status else {
        return Line::from(match &app.unreachable {
            Some(e) => vec![
                Span::styled("UNREACHABLE", bold.fg(Color::Red)),
                Span::raw(format!(" (retrying each second): {e}")),
            ],
            None => vec![Span::raw(format!("connecting to {}...", app.socket))],
        });
    };
    let mut spans = vec![
        Span::raw("cluster "),
        Span::styled(status.name.clone(), bold),
    ];
    if let Some(e) = &app.unreachable {
        spans.push(Span::styled(" UNREACHABLE", bold.fg(Color::Red)));
        spans.push(Span::raw(format!(" (retrying each second): {e}")));
        return Line::from(spans);
    }
    let ready = status
        .workers
        .iter()
        .filter(|w| w.state == WorkerState::Ready)
        .count();
    spans.push(Span::raw(format!(
        "  pid {}  up {}  {ready}/{} ready",
        status.pid,
        uptime(status.uptime_secs),
        status.size
    )));
    if status.rolling {
        spans.push(Span::styled("  rolling restart", bold.fg(Color::Yellow)));
    }
    if status.stopping {
        spans.push(Span::styled("  stopping", bold.fg(Color::Yellow)));
    }
    for b in status.backends.iter().filter(|b| !b.reachable) {
        spans.push(Span::styled(
            format!("  {} on {}: NOT REACHABLE", b.name, b.kind),
            bold.fg(Color::Red),
        ));
    }
    Line::from(spans)
}

/// Draws `app` on `frame`: the header, the workers' table (the selected
/// row highlighted), the sparkline of connections per second, the status
/// line and the keys.
pub fn render(app: &App, frame: &mut Frame<'_>) {
    // The table as tall as its rows (borders and header: 3 lines), the
    // sparkline below it taking the rest; on a short terminal the table
    // gives way, and scrolls to keep the selected row in view.
    let rows = u16::try_from(app.workers().len())
        .unwrap_or(u16::MAX)
        .saturating_add(3);
    let [top, table_area, spark_area, message_area, keys_area] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(rows),
        Constraint::Min(5),
        Constraint::Length(1),
        Constraint::Length(1),
    ])
    .areas(frame.area());

    frame.render_widget(Paragraph::new(header(app)), top);

    let stale = app.unreachable.is_some();
    let rows = app.workers().iter().enumerate().map(|(i, w)| {
        let rate = app.rate(i);
        let cells = COLUMNS.iter().map(|c| {
            let text = (c.cell)(w, rate);
            if c.title == "state" && !stale {
                Cell::from(text).style(state_style(w.state))
            } else {
                Cell::from(text)
            }
        });
        let row = Row::new(cells);
        if stale {
            row.style(Style::new().fg(Color::DarkGray))
        } else {
            row
        }
    });
    let table =
        Table::new(rows, COLUMNS.iter().map(|c| Constraint::Length(c.width)))
            .header(
                Row::new(COLUMNS.iter().map(|c| c.title))
                    .style(Style::new().add_modifier(Modifier::BOLD | Modifier::UNDERLINED)),
            )
            .block(Block::bordered().title(
                " workers (conn/s: connections accepted per second since the last refresh) ",
            ))
            .row_highlight_style(Style::new().add_modifier(Modifier::REVERSED))
            .highlight_symbol("> ");
    let mut state =
        TableState::default().with_selected((!app.workers().is_empty()).then_some(app.selected));
    frame.render_stateful_widget(table, table_area, &mut state);

    let width = usize::from(spark_area.width.saturating_sub(2));
    let skip = app.history.len().saturating_sub(width);
    // Right-aligned: the latest second at the right edge.
    let shown: Vec<Option<u64>> =
        std::iter::repeat_n(None, width.saturating_sub(app.history.len()))
            .chain(app.history.iter().skip(skip).copied())
            .collect();
    let max = shown.iter().flatten().copied().max().unwrap_or(0);
    // The sparkline multiplies each value by its height in eighths: a
    // value past u32::MAX (no real rate) would overflow it.
    let bars: Vec<Option<u64>> = shown
        .iter()
        .map(|v| v.map(|v| v.min(u64::from(u32::MAX))))
        .collect();
    let now = app.total_rate().map_or_else(dash, per_second);
    let title = format!(
        " connections accepted/s, all workers (requests are not counted): now {now}, max {max} "
    );
    frame.render_widget(
        Sparkline::default()
            .block(Block::bordered().title(title))
            .data(&bars)
            .style(Style::new().fg(Color::Cyan)),
        spark_area,
    );

    if let Some(m) = &app.message {
        let style = if m.failed {
            Style::new().fg(Color::Red)
        } else {
            Style::new()
        };
        frame.render_widget(
            Paragraph::new(Span::styled(m.text.clone(), style)),
            message_area,
        );
    }
    let slot = app
        .selected_slot()
        .map_or_else(String::new, |s| format!(" {s}"));
    frame.render_widget(
        Paragraph::new(format!(
            "up/down: select  c: recycle slot{slot}  r: rolling restart  +/-: one worker more/fewer  q: quit"
        ))
        .style(Style::new().fg(Color::DarkGray)),
        keys_area,
    );
}

/// What the terminal loop asks of the thread that talks to the cluster.
enum Ask {
    Status,
    Do(Action),
}

/// What that thread answers.
enum Told {
    Status(Result<Status, String>),
    Done(Result<String, String>),
}

/// The thread that talks to the cluster: one request at a time, each
/// bounded by [`PATIENCE`], so that the terminal loop never waits on the
/// socket.
fn talk(client: Client, asks: mpsc::Receiver<Ask>, told: mpsc::Sender<Told>) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = told.send(Told::Status(Err(format!("no runtime: {e}"))));
            return;
        }
    };
    while let Ok(ask) = asks.recv() {
        let answer = rt.block_on(async {
            match ask {
                Ask::Status => Told::Status(
                    match tokio::time::timeout(PATIENCE, client.status()).await {
                        Ok(Ok(status)) => Ok(status),
                        Ok(Err(e)) => Err(e.to_string()),
                        Err(_) => Err(format!("no answer within {}s", PATIENCE.as_secs())),
                    },
                ),
                Ask::Do(action) => Told::Done(
                    match tokio::time::timeout(PATIENCE, action.perform(&client)).await {
                        Ok(outcome) => outcome,
                        Err(_) => Err(format!(
                            "{action}: no answer within {}s",
                            PATIENCE.as_secs()
                        )),
                    },
                ),
            }
        });
        if told.send(answer).is_err() {
            return;
        }
    }
}

/// The view as a `width` x `height` terminal would show it, as text (a line
/// per row): what the tests read, with no terminal.
pub fn as_text(app: &App, width: u16, height: u16) -> String {
    let backend = ratatui::backend::TestBackend::new(width, height);
    let Ok(mut terminal) = ratatui::Terminal::new(backend) else {
        return String::new();
    };
    if terminal.draw(|f| render(app, f)).is_err() {
        return String::new();
    }
    let buffer = terminal.backend().buffer();
    let mut text = String::new();
    for y in 0..buffer.area.height {
        for x in 0..buffer.area.width {
            text.push_str(buffer[(x, y)].symbol());
        }
        text.push('\n');
    }
    text
}

/// Runs the live view of the cluster behind `client` on this terminal
/// until a quit key, starting from the snapshot `first`.
///
/// # Errors
///
/// Stdout is not a terminal (the view would be garbage in a file or a
/// pipe), or the terminal cannot be set up or written to. A cluster that
/// stops answering is no error: the view says so and keeps asking.
pub fn run(client: Client, first: Status) -> Result<(), String> {
    if !io::stdout().is_terminal() {
        return Err(
            "top draws on a terminal, and stdout is not one; for a program, use `status --json`"
                .to_owned(),
        );
    }
    let mut app = App::new(client.socket().display().to_string());
    app.update(first, Instant::now());
    let (asks, asked) = mpsc::channel();
    let (tell, told) = mpsc::channel();
    std::thread::Builder::new()
        .name("forkless-ctl-top".to_owned())
        .spawn(move || talk(client, asked, tell))
        .map_err(|e| format!("cannot start a thread: {e}"))?;
    // Sets a panic hook that restores the terminal, then raw mode and the
    // alternate screen.
    let terminal = ratatui::try_init();
    let result = match terminal {
        Ok(mut terminal) => {
            let result = draw_loop(&mut terminal, &mut app, &asks, &told);
            let _ = terminal.show_cursor();
            result
        }
        Err(e) => Err(e),
    };
    let restored = ratatui::try_restore();
    result
        .and(restored)
        .map_err(|e| format!("the terminal: {e}"))
    // The talking thread ends with the process; one stuck on a request
    // ends within PATIENCE anyway.
}

fn draw_loop(
    terminal: &mut ratatui::DefaultTerminal,
    app: &mut App,
    asks: &mpsc::Sender<Ask>,
    told: &mpsc::Receiver<Told>,
) -> io::Result<()> {
    let gone = || io::Error::other("the thread that talks to the cluster ended");
    let mut next = Instant::now() + REFRESH;
    let mut waiting = false;
    let mut dirty = true;
    loop {
        if dirty {
            terminal.draw(|frame| render(app, frame))?;
            dirty = false;
        }
        if app.should_quit() {
            return Ok(());
        }
        let now = Instant::now();
        if now >= next && !waiting {
            asks.send(Ask::Status).map_err(|_| gone())?;
            waiting = true;
            next = now + REFRESH;
        }
        // Keys answer at once; answers are picked up within 50 ms.
        if event::poll(Duration::from_millis(50))? {
            match event::read()? {
                TermEvent::Key(key) => {
                    if let Some(action) = app.key(key) {
                        asks.send(Ask::Do(action)).map_err(|_| gone())?;
                    }
                    dirty = true;
                }
                TermEvent::Resize(..) => dirty = true,
                _ => {}
            }
        }
        loop {
            match told.try_recv() {
                Ok(Told::Status(Ok(status))) => {
                    waiting = false;
                    app.update(status, Instant::now());
                }
                Ok(Told::Status(Err(e))) => {
                    waiting = false;
                    app.unreachable(e);
                }
                Ok(Told::Done(outcome)) => app.done(outcome),
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => return Err(gone()),
            }
            dirty = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A status of process `pid` with a worker per `(slot, generation,
    /// accepted, state)`. Built from JSON, as the server sends it, so that a
    /// field added to the wire types does not break these tests.
    fn status(pid: u32, workers: &[(usize, u64, u64, &str)]) -> Status {
        let workers: Vec<serde_json::Value> = workers
            .iter()
            .map(|(slot, generation, accepted, state)| {
                serde_json::json!({
                    "slot": slot, "generation": generation, "core": slot, "state": state,
                    "uptime_secs": 65.0, "restarts": generation, "last_exit": null,
                    "accepted": accepted, "alive_tasks": 1, "busy_ratio": 0.25,
                    "loop_lag_ms": 0.5,
                })
            })
            .collect();
        serde_json::from_value(serde_json::json!({
            "name": "api", "size": workers.len(), "rolling": false, "stopping": false,
            "pid": pid, "uptime_secs": 3700.0, "workers": workers,
        }))
        .expect("a Status")
    }

    fn press(app: &mut App, code: KeyCode) -> Option<Action> {
        app.key(KeyEvent::from(code))
    }

    fn screen(app: &App, width: u16, height: u16) -> String {
        super::as_text(app, width, height)
    }

    fn two(app: &mut App, before: Status, after: Status, apart: Duration) {
        let t0 = Instant::now();
        app.update(before, t0);
        app.update(after, t0 + apart);
    }

    #[test]
    fn rates_are_the_difference_of_two_snapshots_over_the_time_between() {
        let mut app = App::new("s");
        two(
            &mut app,
            status(1, &[(0, 0, 10, "ready"), (1, 0, 0, "ready")]),
            status(1, &[(0, 0, 30, "ready"), (1, 0, 5, "ready")]),
            Duration::from_secs(2),
        );
        assert_eq!(app.rate(0), Some(10.0));
        assert_eq!(app.rate(1), Some(2.5));
        assert_eq!(app.total_rate(), Some(12.5));
        assert_eq!(app.history.back(), Some(&Some(13)));
    }

    #[test]
    fn one_snapshot_gives_no_rate() {
        let mut app = App::new("s");
        app.update(status(1, &[(0, 0, 10, "ready")]), Instant::now());
        assert_eq!(app.rate(0), None);
        assert_eq!(app.total_rate(), None);
        assert!(app.history.is_empty());
        assert!(screen(&app, 120, 20).contains("now -"));
    }

    /// A count that went backwards (a new generation after a restart, a
    /// roll or a recycle; a new process after an upgrade) is no rate, never
    /// a negative or a wrapped-around huge one.
    #[test]
    fn a_counter_that_starts_anew_gives_no_rate() {
        let second = Duration::from_secs(1);
        for (before, after, why) in [
            (
                status(1, &[(0, 0, 500, "ready")]),
                status(1, &[(0, 0, 3, "ready")]),
                "backwards",
            ),
            (
                status(1, &[(0, 0, 5, "ready")]),
                status(1, &[(0, 1, 9, "ready")]),
                "new generation",
            ),
            (
                status(1, &[(0, 0, 5, "ready")]),
                status(2, &[(0, 0, 9, "ready")]),
                "new process",
            ),
            (
                status(1, &[(1, 0, 5, "ready")]),
                status(1, &[(0, 0, 9, "ready")]),
                "new slot",
            ),
        ] {
            let mut app = App::new("s");
            two(&mut app, before, after, second);
            assert_eq!(app.rate(0), None, "{why}");
            assert_eq!(app.total_rate(), None, "{why}");
            assert_eq!(app.history.back(), Some(&None), "{why}");
            let text = screen(&app, 120, 20);
            let row = text
                .lines()
                .find(|l| l.starts_with("│> 0"))
                .unwrap_or_else(|| panic!("{why}: {text}"));
            let cells: Vec<&str> = row.split_whitespace().collect();
            // │> 0 gen core state uptime conn/s
            assert_eq!(cells[6], "-", "{why}: {row}");
            assert!(text.contains("now -"), "{why}: {text}");
        }
        // Too close in time: no quotient of noise.
        let mut app = App::new("s");
        two(
            &mut app,
            status(1, &[(0, 0, 0, "ready")]),
            status(1, &[(0, 0, 9, "ready")]),
            Duration::from_millis(1),
        );
        assert_eq!(app.rate(0), None);
        // The same instant twice.
        let mut app = App::new("s");
        two(
            &mut app,
            status(1, &[(0, 0, 0, "ready")]),
            status(1, &[(0, 0, 9, "ready")]),
            Duration::ZERO,
        );
        assert_eq!(app.rate(0), None);
    }

    /// The largest count there is: a finite rate, a bar that saturates, a
    /// table that draws.
    #[test]
    fn extreme_counts_draw() {
        let mut app = App::new("s");
        two(
            &mut app,
            status(1, &[(0, 0, 0, "ready")]),
            status(1, &[(0, 0, u64::MAX, "ready")]),
            Duration::from_secs(1),
        );
        let rate = app.rate(0).expect("a rate");
        assert!(rate.is_finite() && rate > 1e18, "{rate}");
        assert_eq!(app.history.back(), Some(&Some(u64::MAX)));
        let text = screen(&app, 120, 20);
        assert!(text.contains(&u64::MAX.to_string()), "{text}");
    }

    #[test]
    fn values_out_of_range_show_clamped_or_unknown() {
        assert_eq!(busy(7.0), "100%");
        assert_eq!(busy(-1.0), "0%");
        assert_eq!(busy(f64::NAN), "-");
        assert_eq!(busy(0.254), "25%");
        assert_eq!(lag(-1.0), "-");
        assert_eq!(lag(f64::INFINITY), "-");
        assert_eq!(lag(1.5), "1.50ms");
        assert_eq!(per_second(f64::NAN), "-");
        assert_eq!(per_second(-3.0), "-");
        assert_eq!(uptime(-1.0), "-");
        assert_eq!(
            uptime(f64::MAX),
            format!("{}d{}h", u64::MAX / 86400, (u64::MAX % 86400) / 3600)
        );
        assert_eq!(uptime(42.9), "42s");
        assert_eq!(uptime(185.0), "3m5s");
        assert_eq!(uptime(7800.0), "2h10m");
        assert_eq!(uptime(3.0 * 86400.0 + 4.0 * 3600.0), "3d4h");
    }

    #[test]
    fn the_table_has_a_row_per_worker_with_its_state() {
        let mut app = App::new("s");
        two(
            &mut app,
            status(
                7,
                &[
                    (0, 2, 10, "ready"),
                    (1, 0, 0, "starting"),
                    (2, 4, 1, "gave up"),
                ],
            ),
            status(
                7,
                &[
                    (0, 2, 30, "ready"),
                    (1, 0, 0, "starting"),
                    (2, 4, 1, "gave up"),
                ],
            ),
            Duration::from_secs(2),
        );
        let text = screen(&app, 120, 20);
        assert!(
            text.contains("cluster api  pid 7  up 1h1m  1/3 ready"),
            "{text}"
        );
        for title in ["slot", "gen", "state", "conn/s", "busy", "lag", "restarts"] {
            assert!(text.contains(title), "{title}: {text}");
        }
        let row = |slot: &str| {
            text.lines()
                .find(|l| l.trim_start_matches(['│', ' ', '>']).starts_with(slot))
                .unwrap_or_else(|| panic!("row {slot} in {text}"))
                .to_owned()
        };
        let first = row("0 ");
        assert!(first.contains("ready") && first.contains("10.0"), "{first}");
        assert!(first.contains("25%") && first.contains("0.50ms"), "{first}");
        assert!(first.starts_with("│> "), "the selected row: {first}");
        assert!(row("1 ").contains("starting"), "{text}");
        assert!(row("2 ").contains("gave up"), "{text}");
        assert!(text.contains("now 10.0, max 10"), "{text}");
        assert!(text.contains("requests are not counted"), "{text}");
    }

    #[test]
    fn keys_select_and_ask() {
        let mut app = App::new("s");
        app.update(
            status(
                1,
                &[(0, 0, 0, "ready"), (1, 0, 0, "ready"), (2, 0, 0, "ready")],
            ),
            Instant::now(),
        );
        assert_eq!(app.selected_slot(), Some(0));
        assert_eq!(press(&mut app, KeyCode::Up), None);
        assert_eq!(app.selected_slot(), Some(0));
        for _ in 0..5 {
            press(&mut app, KeyCode::Down);
        }
        assert_eq!(app.selected_slot(), Some(2), "stops at the last row");
        press(&mut app, KeyCode::Char('k'));
        assert_eq!(
            press(&mut app, KeyCode::Char('c')),
            Some(Action::Recycle(1))
        );
        assert!(screen(&app, 120, 20).contains("recycle slot 1..."));
        assert_eq!(
            press(&mut app, KeyCode::Char('+')),
            Some(Action::Resize(Workers::More(1)))
        );
        assert_eq!(
            press(&mut app, KeyCode::Char('-')),
            Some(Action::Resize(Workers::Fewer(1)))
        );
        assert_eq!(press(&mut app, KeyCode::Char('x')), None);
        assert!(!app.should_quit());
        // A key released, not pressed, does nothing.
        let mut release = KeyEvent::from(KeyCode::Char('q'));
        release.kind = KeyEventKind::Release;
        assert_eq!(app.key(release), None);
        assert!(!app.should_quit());
    }

    #[test]
    fn a_rolling_restart_waits_for_yes() {
        let mut app = App::new("s");
        app.update(status(1, &[(0, 0, 0, "ready")]), Instant::now());
        assert_eq!(press(&mut app, KeyCode::Char('r')), None);
        assert!(screen(&app, 120, 20).contains("restart all 1 workers, one at a time? y"));
        assert_eq!(press(&mut app, KeyCode::Char('n')), None);
        assert!(screen(&app, 120, 20).contains("rolling restart cancelled"));
        // `y` alone is nothing.
        assert_eq!(press(&mut app, KeyCode::Char('y')), None);
        assert_eq!(press(&mut app, KeyCode::Char('r')), None);
        assert_eq!(press(&mut app, KeyCode::Char('y')), Some(Action::Restart));
        // `q` while asked cancels rather than quits.
        press(&mut app, KeyCode::Char('r'));
        assert_eq!(press(&mut app, KeyCode::Char('q')), None);
        assert!(!app.should_quit());
    }

    #[test]
    fn q_esc_and_ctrl_c_quit() {
        for key in [
            KeyEvent::from(KeyCode::Char('q')),
            KeyEvent::from(KeyCode::Esc),
            KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL),
        ] {
            let mut app = App::new("s");
            assert_eq!(app.key(key), None);
            assert!(app.should_quit(), "{key:?}");
        }
        // Ctrl-C quits even while a restart waits for its yes.
        let mut app = App::new("s");
        press(&mut app, KeyCode::Char('r'));
        app.key(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL));
        assert!(app.should_quit());
    }

    #[test]
    fn with_no_worker_there_is_nothing_to_recycle() {
        let mut app = App::new("s");
        assert_eq!(press(&mut app, KeyCode::Char('c')), None);
        assert!(screen(&app, 120, 20).contains("no worker to recycle"));
        app.update(status(1, &[]), Instant::now());
        press(&mut app, KeyCode::Down);
        assert_eq!(press(&mut app, KeyCode::Char('c')), None);
    }

    #[test]
    fn the_selection_follows_a_smaller_cluster() {
        let mut app = App::new("s");
        app.update(
            status(
                1,
                &[(0, 0, 0, "ready"), (1, 0, 0, "ready"), (2, 0, 0, "ready")],
            ),
            Instant::now(),
        );
        press(&mut app, KeyCode::Down);
        press(&mut app, KeyCode::Down);
        app.update(status(1, &[(0, 0, 0, "ready")]), Instant::now());
        assert_eq!(app.selected_slot(), Some(0));
        assert_eq!(
            press(&mut app, KeyCode::Char('c')),
            Some(Action::Recycle(0))
        );
    }

    #[test]
    fn an_action_s_outcome_is_shown() {
        let mut app = App::new("s");
        app.done(Err("recycle slot 0: 404 Not Found: no such path".to_owned()));
        assert!(screen(&app, 120, 20).contains("recycle slot 0: 404 Not Found: no such path"));
        app.done(Ok("resizing: 1 -> 2 workers".to_owned()));
        assert!(screen(&app, 120, 20).contains("resizing: 1 -> 2 workers"));
    }

    #[test]
    fn a_cluster_that_stops_answering_is_shown_unreachable_until_it_answers() {
        let mut app = App::new("/tmp/x.sock");
        assert!(screen(&app, 120, 20).contains("connecting to /tmp/x.sock"));
        app.unreachable("no cluster answers on /tmp/x.sock");
        assert!(screen(&app, 120, 20).contains("UNREACHABLE (retrying each second)"));
        two(
            &mut app,
            status(1, &[(0, 0, 0, "ready")]),
            status(1, &[(0, 0, 4, "ready")]),
            Duration::from_secs(1),
        );
        assert_eq!(app.total_rate(), Some(4.0));
        app.unreachable("no cluster answers on /tmp/x.sock");
        assert_eq!(app.rate(0), None);
        assert_eq!(app.total_rate(), None);
        let text = screen(&app, 120, 20);
        assert!(text.contains("cluster api UNREACHABLE"), "{text}");
        assert!(text.contains("ready"), "the last rows stay: {text}");
        // Back: the rate is over the whole gap.
        let t = Instant::now();
        app.samples.iter_mut().for_each(|s| s.at = t);
        app.update(
            status(1, &[(0, 0, 24, "ready")]),
            t + Duration::from_secs(10),
        );
        assert_eq!(app.total_rate(), Some(2.0));
        assert!(!screen(&app, 120, 20).contains("UNREACHABLE"));
    }

    /// A terminal too small for the view still draws, without a panic.
    #[test]
    fn a_tiny_terminal_draws() {
        let mut app = App::new("s");
        two(
            &mut app,
            status(1, &[(0, 0, 0, "ready"), (1, 0, 0, "ready")]),
            status(1, &[(0, 0, 4, "ready"), (1, 0, 0, "ready")]),
            Duration::from_secs(1),
        );
        for (w, h) in [(1, 1), (10, 3), (40, 8), (0, 0)] {
            screen(&app, w, h);
        }
    }

    /// More workers than lines: the sparkline keeps its place, and the
    /// table scrolls to the selected row.
    #[test]
    fn many_workers_scroll_to_the_selected_one() {
        let mut app = App::new("s");
        let workers: Vec<(usize, u64, u64, &str)> = (0..64).map(|i| (i, 0, 0, "ready")).collect();
        app.update(status(1, &workers), Instant::now());
        for _ in 0..63 {
            press(&mut app, KeyCode::Down);
        }
        assert_eq!(app.selected_slot(), Some(63));
        let text = screen(&app, 120, 20);
        assert!(text.lines().any(|l| l.starts_with("│> 63 ")), "{text}");
        assert!(text.contains("connections accepted/s"), "{text}");
    }

    #[test]
    fn the_history_is_bounded() {
        let mut app = App::new("s");
        let t = Instant::now();
        for i in 0..(HISTORY as u64 + 50) {
            app.update(status(1, &[(0, 0, i, "ready")]), t + Duration::from_secs(i));
        }
        assert_eq!(app.history.len(), HISTORY);
        assert_eq!(app.history.back(), Some(&Some(1)));
    }
}
