//! How every generation of every slot ended: the [`Report`] that `join`,
//! `stopped` and `run` return.

use std::fmt;
use std::time::Duration;

use crate::fault::exit::Exit;

/// How a cluster ran: per slot, every generation and how it ended.
///
/// Returned by [`Builder::run`](crate::Builder::run), [`Cluster::join`](crate::Cluster::join) and
/// [`Cluster::stopped`](crate::Cluster::stopped).
/// Its `Display` is a table, one line per generation.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Report {
    /// The cluster's name.
    pub name: String,
    /// One entry per slot, in slot order.
    pub slots: Vec<SlotReport>,
}

/// The history of one slot.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SlotReport {
    /// The slot's number.
    pub slot: usize,
    /// The core its workers were pinned to, if any.
    pub core: Option<usize>,
    /// How many generations of this slot started.
    pub started: u64,
    /// The generations that started, in order: all of them, or the last
    /// [`HISTORY`](SlotReport::HISTORY) when more started, so that a long
    /// life of crashes does not grow memory without bound.
    pub generations: Vec<GenerationReport>,
    /// True if the slot stopped respawning after `max_restarts` quick
    /// failures in a row.
    pub gave_up: bool,
}

/// One generation of one slot.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct GenerationReport {
    /// 0 for the slot's first worker, then 1, 2, ...
    pub generation: u64,
    /// How it ended.
    pub exit: Exit,
    /// From its start to its exit (to being abandoned, if hung).
    pub ran_for: Duration,
    /// From its start to its first successful `listen` or `ready()`, if it
    /// got there.
    pub ready_after: Option<Duration>,
    /// The wait before the next generation, when it was respawned: zero
    /// after a healthy run, growing with each quick failure in a row.
    pub restart_delay: Option<Duration>,
}

impl SlotReport {
    /// How many generations a slot's report keeps, at most.
    pub const HISTORY: usize = 1000;
}

impl Report {
    /// Every kept generation's exit, slot by slot.
    pub fn exits(&self) -> impl Iterator<Item = (usize, u64, &Exit)> {
        self.slots.iter().flat_map(|s| {
            s.generations
                .iter()
                .map(move |g| (s.slot, g.generation, &g.exit))
        })
    }

    /// How many respawns happened in all.
    pub fn restarts(&self) -> usize {
        self.slots
            .iter()
            .map(|s| s.started.saturating_sub(1))
            .sum::<u64>() as usize
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "cluster {}: {} slots", self.name, self.slots.len())?;
        for slot in &self.slots {
            let core = slot.core.map_or_else(|| "-".to_owned(), |c| c.to_string());
            for g in &slot.generations {
                write!(
                    f,
                    "  slot {} gen {} core {}: ran {:.3}s, {}",
                    slot.slot,
                    g.generation,
                    core,
                    g.ran_for.as_secs_f64(),
                    g.exit
                )?;
                if let Some(delay) = g.restart_delay {
                    write!(f, ", respawned after {:.3}s", delay.as_secs_f64())?;
                }
                writeln!(f)?;
            }
            if slot.gave_up {
                writeln!(f, "  slot {} gave up", slot.slot)?;
            }
        }
        Ok(())
    }
}
