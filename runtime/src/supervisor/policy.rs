//! The restart policy as a pure function: what the supervisor does with a
//! slot whose serving generation exited ([`decide`]), unit-tested row by
//! row against DESIGN.md's throttle rules.

use std::time::Duration;

use crate::config::builder::Builder;
use crate::config::policies::Restart;
use crate::fault::exit::Exit;

/// The restart rules, from the builder.
#[derive(Debug, Clone, Copy)]
pub(super) struct Policy {
    pub(super) restart: Restart,
    pub(super) throttle_delay: Duration,
    pub(super) max_backoff: Duration,
    pub(super) max_restarts: u32,
}

impl Policy {
    pub(super) fn of(config: &Builder) -> Policy {
        Policy {
            restart: config.restart,
            throttle_delay: config.throttle_delay,
            max_backoff: config.max_backoff,
            max_restarts: config.max_restarts,
        }
    }
}

/// What the supervisor does with a slot whose serving generation exited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Decision {
    /// Start the next generation after `delay` (zero: at once); the slot
    /// now has `quick_failures` in a row.
    Respawn {
        delay: Duration,
        quick_failures: u32,
    },
    /// Too many quick failures in a row: the slot stops for good.
    GiveUp { failures: u32 },
    /// The restart policy does not start this slot again.
    End,
}

/// The restart policy as a pure function (DESIGN.md, "Supervision").
///
/// `ran_for` is how long the generation ran, from its start to its exit
/// (`None`: it could not be started at all, which always counts as quick);
/// it was *quick* if it ran less than `throttle_delay`. `quick_failures` is
/// how many quick exits in a row the slot had before this one. Any quick exit counts,
/// a normal return included, so that a body that returns at once is
/// throttled like one that fails at once.
///
/// | policy | exit | quick (`ran_for < throttle_delay`) | decision |
/// |---|---|---|---|
/// | `Never` | any | any | end |
/// | `OnFailure` | normal or terminated | any | end |
/// | `Always`, or `OnFailure` and a failure | any | no | respawn at once; the count goes back to 0 |
/// | the same | any | yes, k-th in a row, k < `max_restarts` | respawn after `throttle_delay * 2^(k-1)`, at most `max_backoff` |
/// | the same | any | yes, k-th in a row, k >= `max_restarts` | give up |
pub(super) fn decide(
    policy: &Policy,
    exit: &Exit,
    ran_for: Option<Duration>,
    quick_failures: u32,
) -> Decision {
    let quick = ran_for.is_none_or(|ran| ran < policy.throttle_delay);
    let restart = match policy.restart {
        Restart::Always => true,
        Restart::OnFailure => exit.is_failure(),
        Restart::Never => false,
    };
    if !restart {
        return Decision::End;
    }
    if !quick {
        return Decision::Respawn {
            delay: Duration::ZERO,
            quick_failures: 0,
        };
    }
    let k = quick_failures.saturating_add(1);
    if k >= policy.max_restarts {
        return Decision::GiveUp { failures: k };
    }
    Decision::Respawn {
        delay: backoff(policy.throttle_delay, k, policy.max_backoff),
        quick_failures: k,
    }
}

/// `base * 2^(k-1)`, at most `max`.
pub(super) fn backoff(base: Duration, k: u32, max: Duration) -> Duration {
    let factor = 1u32.checked_shl(k.saturating_sub(1)).unwrap_or(u32::MAX);
    base.checked_mul(factor).unwrap_or(max).min(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(restart: Restart) -> Policy {
        Policy {
            restart,
            throttle_delay: Duration::from_secs(2),
            max_backoff: Duration::from_secs(30),
            max_restarts: 4,
        }
    }

    /// A run that was quick (under the 2 s throttle delay) or not.
    fn ran(quick: bool) -> Option<Duration> {
        Some(Duration::from_millis(if quick { 1_999 } else { 2_000 }))
    }

    fn failed() -> Exit {
        Exit::Failed("no".into())
    }

    #[test]
    fn the_restart_policy_row_by_row() {
        let s = Duration::from_secs;
        let respawn = |delay, quick_failures| Decision::Respawn {
            delay,
            quick_failures,
        };
        let panicked = Exit::Panicked {
            message: "boom".into(),
            location: None,
        };
        // Never: every exit ends the slot.
        for exit in [Exit::Normal, failed(), Exit::Terminated, panicked.clone()] {
            for quick in [false, true] {
                assert_eq!(
                    decide(&policy(Restart::Never), &exit, ran(quick), 0),
                    Decision::End
                );
            }
        }
        // OnFailure: a return or a termination ends it, a failure restarts.
        let on_failure = policy(Restart::OnFailure);
        assert_eq!(
            decide(&on_failure, &Exit::Normal, ran(false), 0),
            Decision::End
        );
        assert_eq!(
            decide(&on_failure, &Exit::Terminated, ran(true), 0),
            Decision::End
        );
        assert_eq!(
            decide(&on_failure, &failed(), ran(false), 3),
            respawn(s(0), 0)
        );
        assert_eq!(
            decide(&on_failure, &panicked, ran(true), 0),
            respawn(s(2), 1)
        );
        // Always: a healthy run respawns at once and forgets the failures.
        let always = policy(Restart::Always);
        assert_eq!(
            decide(&always, &Exit::Normal, ran(false), 3),
            respawn(s(0), 0)
        );
        assert_eq!(decide(&always, &failed(), ran(false), 3), respawn(s(0), 0));
        // Quick exits back off, doubling, a quick return included...
        assert_eq!(
            decide(&always, &Exit::Normal, ran(true), 0),
            respawn(s(2), 1)
        );
        assert_eq!(decide(&always, &failed(), ran(true), 1), respawn(s(4), 2));
        assert_eq!(decide(&always, &failed(), ran(true), 2), respawn(s(8), 3));
        // ... until the max_restarts-th in a row gives up.
        assert_eq!(
            decide(&always, &failed(), ran(true), 3),
            Decision::GiveUp { failures: 4 }
        );
        // The back-off is capped, and a count at its maximum cannot wrap.
        let patient = Policy {
            max_restarts: u32::MAX,
            ..always
        };
        assert_eq!(
            decide(&patient, &failed(), ran(true), 10),
            respawn(s(30), 11)
        );
        assert_eq!(
            decide(&patient, &failed(), ran(true), u32::MAX),
            Decision::GiveUp { failures: u32::MAX }
        );
        // max_restarts 0 and 1 both give up at the first quick failure.
        for max_restarts in [0, 1] {
            let strict = Policy {
                max_restarts,
                ..always
            };
            assert_eq!(
                decide(&strict, &failed(), ran(true), 0),
                Decision::GiveUp { failures: 1 }
            );
        }
    }

    #[test]
    fn quick_means_less_than_the_throttle_delay_or_never_started() {
        let always = policy(Restart::Always);
        let at = |ms| decide(&always, &failed(), Some(Duration::from_millis(ms)), 0);
        let at_once = Decision::Respawn {
            delay: Duration::ZERO,
            quick_failures: 0,
        };
        let throttled = Decision::Respawn {
            delay: Duration::from_secs(2),
            quick_failures: 1,
        };
        assert_eq!(at(0), throttled);
        assert_eq!(at(1_999), throttled);
        assert_eq!(at(2_000), at_once);
        assert_eq!(at(60_000), at_once);
        // A generation that could not be started is quick, whatever the
        // delay (even zero, so that a failing start cannot spin).
        assert_eq!(decide(&always, &failed(), None, 0), throttled);
        let no_delay = Policy {
            throttle_delay: Duration::ZERO,
            ..always
        };
        assert_eq!(
            decide(&no_delay, &failed(), Some(Duration::ZERO), 0),
            at_once
        );
        assert_eq!(
            decide(&no_delay, &failed(), None, 0),
            Decision::Respawn {
                delay: Duration::ZERO,
                quick_failures: 1,
            }
        );
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let s = Duration::from_secs;
        assert_eq!(backoff(s(2), 1, s(30)), s(2));
        assert_eq!(backoff(s(2), 2, s(30)), s(4));
        assert_eq!(backoff(s(2), 4, s(30)), s(16));
        assert_eq!(backoff(s(2), 5, s(30)), s(30));
        assert_eq!(backoff(s(2), 40, s(30)), s(30));
        assert_eq!(backoff(Duration::ZERO, 3, s(30)), Duration::ZERO);
    }
}
