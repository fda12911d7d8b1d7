//! The background sync machine: when to sync, decided from inputs alone.
//!
//! It takes inputs (a local write, the network going or coming back, the app
//! going to the background or the foreground, a timer firing, a sync
//! finishing) together with the time, and says what to do next: sync now, or
//! wake at a given time, or nothing. It never reads a clock, sleeps or does I/O;
//! its jitter comes from a seeded generator. The driver
//! ([`super::client::SyncClient::start`]) feeds it and carries out what it says,
//! so every schedule can be tested by feeding inputs and reading actions.
//!
//! The rules (docs/architecture.md, "One sync at a time"):
//! - a local write, the network coming back or the app coming to the foreground
//!   asks for a sync after the debounce; what asks during the debounce is
//!   covered by that same sync;
//! - nothing runs while offline, in the background, or after the server refused
//!   the credentials (until the app syncs explicitly);
//! - after a failed sync, the next try waits a backoff that grows with each
//!   failure in a row; after a successful one, the machine wakes when the next
//!   entry waiting to retry is due, and otherwise stays idle: nothing polls.

use super::policy;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    /// The app wrote to a synced collection.
    LocalWrite,
    /// The host says whether the network is reachable.
    Network(bool),
    /// The host says whether the app is in the foreground.
    Foreground(bool),
    /// The time asked for with [`Action::WakeAt`] has come.
    TimerFired,
    /// A sync the machine asked for finished.
    SyncFinished(Finished),
}

/// How a sync ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finished {
    /// It succeeded; an entry waits to retry until this time, if any.
    Ok { next_retry_at: Option<i64> },
    /// It failed; `auth` if the server refused the credentials even after a refresh.
    Failed { auth: bool },
    /// The app synced explicitly (its result is the app's); the schedule resets.
    Explicit,
}

/// What to do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Sync now, then report [`Input::SyncFinished`].
    Sync,
    /// Report [`Input::TimerFired`] at this time, unless another input comes first.
    WakeAt(i64),
    /// Nothing until the next input.
    Idle,
}

/// The schedule's state.
#[derive(Debug)]
pub struct Machine {
    debounce_ms: i64,
    online: bool,
    foreground: bool,
    auth_failed: bool,
    /// Failed syncs in a row.
    failures: u32,
    /// A sync was asked for and runs at this time.
    due_at: Option<i64>,
    /// A sync is running.
    syncing: bool,
    rng: fastrand::Rng,
}

impl Machine {
    /// A machine for a client that is online and in the foreground.
    pub fn new(debounce_ms: i64, seed: u64) -> Machine {
        Machine {
            debounce_ms,
            online: true,
            foreground: true,
            auth_failed: false,
            failures: 0,
            due_at: None,
            syncing: false,
            rng: fastrand::Rng::with_seed(seed),
        }
    }

    /// Takes the host's current reports without asking for a sync (the driver
    /// starting up).
    pub fn hold(&mut self, online: bool, foreground: bool) {
        self.online = online;
        self.foreground = foreground;
    }

    /// Failed syncs in a row.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Takes one input at time `now`; returns what to do.
    pub fn step(&mut self, now: i64, input: Input) -> Action {
        match input {
            Input::LocalWrite => self.ask(now),
            Input::Network(online) => {
                self.online = online;
                if online {
                    self.ask(now);
                }
            }
            Input::Foreground(foreground) => {
                self.foreground = foreground;
                if foreground {
                    self.ask(now);
                }
            }
            Input::TimerFired => {}
            Input::SyncFinished(finished) => {
                self.syncing = false;
                match finished {
                    Finished::Ok { next_retry_at } => {
                        self.failures = 0;
                        self.auth_failed = false;
                        self.due_at = min_time(self.due_at, next_retry_at);
                    }
                    Finished::Failed { auth: true } => {
                        self.failures += 1;
                        self.auth_failed = true;
                        self.due_at = None;
                    }
                    Finished::Failed { auth: false } => {
                        self.failures += 1;
                        let wait = policy::backoff_ms(self.failures, self.rng.f64());
                        self.due_at = Some(now + wait);
                    }
                    Finished::Explicit => {
                        self.failures = 0;
                        self.auth_failed = false;
                    }
                }
            }
        }
        self.next(now)
    }

    /// Something asks for a sync: after the debounce, unless one is due sooner.
    fn ask(&mut self, now: i64) {
        if self.auth_failed {
            return;
        }
        self.due_at = min_time(self.due_at, Some(now + self.debounce_ms));
    }

    fn next(&mut self, now: i64) -> Action {
        if self.syncing || !self.online || !self.foreground || self.auth_failed {
            // Held: what is due stays due for when the host lets it run.
            return Action::Idle;
        }
        match self.due_at {
            Some(at) if at <= now => {
                self.due_at = None;
                self.syncing = true;
                Action::Sync
            }
            Some(at) => Action::WakeAt(at),
            None => Action::Idle,
        }
    }
}

fn min_time(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEBOUNCE: i64 = 300;

    fn machine() -> Machine {
        Machine::new(DEBOUNCE, 7)
    }

    #[test]
    fn idle_means_no_timer_and_no_sync() {
        let mut m = machine();
        assert_eq!(m.step(0, Input::TimerFired), Action::Idle);
        assert_eq!(m.step(10, Input::Network(false)), Action::Idle);
        assert_eq!(m.step(20, Input::Foreground(false)), Action::Idle);
    }

    #[test]
    fn a_burst_of_local_writes_syncs_once_after_the_debounce_from_the_first() {
        let mut m = machine();
        assert_eq!(m.step(1_000, Input::LocalWrite), Action::WakeAt(1_300));
        assert_eq!(m.step(1_100, Input::LocalWrite), Action::WakeAt(1_300));
        assert_eq!(m.step(1_299, Input::TimerFired), Action::WakeAt(1_300));
        assert_eq!(m.step(1_300, Input::TimerFired), Action::Sync);
        // A write while the sync runs is covered by the next one, after it.
        assert_eq!(m.step(1_350, Input::LocalWrite), Action::Idle);
        assert_eq!(
            m.step(
                1_400,
                Input::SyncFinished(Finished::Ok {
                    next_retry_at: None
                })
            ),
            Action::WakeAt(1_650)
        );
        assert_eq!(m.step(1_650, Input::TimerFired), Action::Sync);
        assert_eq!(
            m.step(
                1_700,
                Input::SyncFinished(Finished::Ok {
                    next_retry_at: None
                })
            ),
            Action::Idle,
            "nothing left: no polling"
        );
    }

    #[test]
    fn offline_holds_what_is_due_and_the_network_coming_back_syncs() {
        let mut m = machine();
        assert_eq!(m.step(0, Input::Network(false)), Action::Idle);
        assert_eq!(m.step(10, Input::LocalWrite), Action::Idle);
        assert_eq!(m.step(5_000, Input::TimerFired), Action::Idle);
        assert_eq!(m.step(6_000, Input::Network(true)), Action::Sync, "overdue");
    }

    #[test]
    fn the_network_coming_back_alone_syncs_after_the_debounce() {
        let mut m = machine();
        m.step(0, Input::Network(false));
        assert_eq!(m.step(100, Input::Network(true)), Action::WakeAt(400));
        assert_eq!(m.step(400, Input::TimerFired), Action::Sync);
    }

    #[test]
    fn the_background_holds_sync_until_the_foreground() {
        let mut m = machine();
        assert_eq!(m.step(0, Input::Foreground(false)), Action::Idle);
        assert_eq!(m.step(10, Input::LocalWrite), Action::Idle);
        assert_eq!(m.step(400, Input::TimerFired), Action::Idle);
        assert_eq!(m.step(900, Input::Foreground(true)), Action::Sync);
    }

    #[test]
    fn failures_back_off_longer_each_time_and_success_resets() {
        let mut m = machine();
        m.step(0, Input::LocalWrite);
        assert_eq!(m.step(300, Input::TimerFired), Action::Sync);
        let mut at = 300;
        let mut waits = Vec::new();
        for n in 1..=4u32 {
            let Action::WakeAt(next) =
                m.step(at, Input::SyncFinished(Finished::Failed { auth: false }))
            else {
                panic!("a failure schedules a retry");
            };
            let wait = next - at;
            let ceiling = policy::BACKOFF_BASE_MS << (n - 1);
            assert!(
                (ceiling / 2..=ceiling).contains(&wait),
                "failure {n}: {wait} ms"
            );
            waits.push(wait);
            assert_eq!(m.step(next - 1, Input::TimerFired), Action::WakeAt(next));
            assert_eq!(m.step(next, Input::TimerFired), Action::Sync);
            at = next;
        }
        assert!(waits.windows(2).all(|w| w[1] > w[0]), "{waits:?}");
        assert_eq!(m.failures(), 4);
        m.step(
            at,
            Input::SyncFinished(Finished::Ok {
                next_retry_at: None,
            }),
        );
        assert_eq!(m.failures(), 0);
    }

    #[test]
    fn the_same_seed_gives_the_same_schedule() {
        let run = |seed| {
            let mut m = Machine::new(DEBOUNCE, seed);
            m.step(0, Input::LocalWrite);
            m.step(300, Input::TimerFired);
            m.step(300, Input::SyncFinished(Finished::Failed { auth: false }))
        };
        assert_eq!(run(1), run(1));
        assert_ne!(run(1), run(2), "jitter depends on the seed");
    }

    #[test]
    fn a_refused_token_stops_background_sync_until_an_explicit_sync() {
        let mut m = machine();
        m.step(0, Input::LocalWrite);
        m.step(300, Input::TimerFired);
        assert_eq!(
            m.step(310, Input::SyncFinished(Finished::Failed { auth: true })),
            Action::Idle
        );
        assert_eq!(m.step(400, Input::LocalWrite), Action::Idle);
        assert_eq!(m.step(500, Input::Network(true)), Action::Idle);
        assert_eq!(
            m.step(600, Input::SyncFinished(Finished::Explicit)),
            Action::Idle
        );
        assert_eq!(m.step(700, Input::LocalWrite), Action::WakeAt(1_000));
    }

    #[test]
    fn an_entry_waiting_to_retry_wakes_the_machine_when_due() {
        let mut m = machine();
        m.step(0, Input::LocalWrite);
        m.step(300, Input::TimerFired);
        assert_eq!(
            m.step(
                320,
                Input::SyncFinished(Finished::Ok {
                    next_retry_at: Some(60_000)
                })
            ),
            Action::WakeAt(60_000)
        );
        assert_eq!(m.step(60_000, Input::TimerFired), Action::Sync);
    }
}
