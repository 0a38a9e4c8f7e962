//! What the master has under way, as data: a rolling restart's plan and
//! the one gated replacement step ([`replace`](super::replace)). The master
//! holds them; `roll`, `recycle` and `replace` act on them. Kept apart so
//! that the master's state imports nothing that acts on it.

use std::collections::VecDeque;
use std::time::Instant;

use crate::observe::recycle::RecycleReason;

/// A rolling restart under way: the slots still to replace.
pub(super) struct Roll {
    pub(super) pending: VecDeque<usize>,
    pub(super) restarted: usize,
}

/// The replacement under way: slot `slot`'s candidate `generation` must be
/// ready by `deadline`.
pub(super) struct Step {
    pub(super) slot: usize,
    pub(super) generation: u64,
    pub(super) deadline: Instant,
    pub(super) purpose: Purpose,
}

/// What a replacement is for.
pub(super) enum Purpose {
    /// A step of the rolling restart.
    Roll,
    /// A recycle, and why.
    Recycle(RecycleReason),
}
