//! Policy: how long to wait, how often to try, and how large a pull page to ask
//! for. Pure functions, constants and state without I/O, so the machine and its
//! tests decide the same way the driver does.

use serde::Serialize;

/// The first retry waits about this long; each failure doubles it.
pub const BACKOFF_BASE_MS: i64 = 1_000;
/// No retry waits longer than this.
pub const BACKOFF_CAP_MS: i64 = 300_000;

/// A WatermelonDB backend refuses a whole push when anything changed since the
/// pull it names; a sync then pulls and pushes again, at most this many times.
pub const MAX_REPULL_ROUNDS: usize = 3;

/// The wait before attempt `attempts + 1` after `attempts` failures (1-based),
/// in ms: between half and all of `min(base · 2^(attempts-1), cap)`, placed by
/// `jitter` in `[0, 1]` (so that many devices do not retry in step).
pub fn backoff_ms(attempts: u32, jitter: f64) -> i64 {
    let exp = attempts.saturating_sub(1).min(16);
    let ceiling = (BACKOFF_BASE_MS << exp).min(BACKOFF_CAP_MS);
    let half = ceiling / 2;
    half + (half as f64 * jitter.clamp(0.0, 1.0)).round() as i64
}

/// Adaptive pull pages: the page size follows the measured throughput so that
/// a page takes about `target_ms`, within `min_rows..=max_rows`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageSizing {
    pub target_ms: u64,
    pub min_rows: u32,
    pub max_rows: u32,
}

/// Default [`PageSizing::target_ms`].
pub const DEFAULT_PAGE_TARGET_MS: u64 = 2_000;
/// Default [`PageSizing::min_rows`].
pub const DEFAULT_MIN_PAGE_ROWS: u32 = 100;

impl Default for PageSizing {
    fn default() -> Self {
        PageSizing {
            target_ms: DEFAULT_PAGE_TARGET_MS,
            min_rows: DEFAULT_MIN_PAGE_ROWS,
            max_rows: ferry_protocol::DEFAULT_MAX_PAGE_ROWS,
        }
    }
}

/// The page size of the next pull request: time-targeted, with AIMD around it.
/// A page that came back grows the size toward what the measured rate says
/// fits `target_ms`: at first by doubling at most (a slow start, as TCP's), and
/// after the first page that took too long or the first failure by at most a
/// tenth of the range (additive increase). A page that took longer shrinks the
/// size to what fits at once; a failure (timeout, no answer, 5xx) halves it.
/// The state outlives one sync: a retry starts where the last one ended, never
/// from the configured start again.
#[derive(Debug, Clone, PartialEq)]
pub struct PageSizer {
    sizing: PageSizing,
    size: u32,
    /// Where it started, for [`Self::restart`].
    initial: u32,
    /// The round trip the host reported, if any ([`Self::set_rtt`]).
    rtt_ms: Option<u32>,
    /// Growing by doubling, until a page is too slow or a request fails.
    slow_start: bool,
}

/// A page should spend at most a tenth of its time on the round trip: with a
/// known RTT the time target is at least this many round trips.
pub const RTTS_PER_PAGE: u64 = 10;

/// What kind of network the host says the device is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[cfg_attr(feature = "ffi", derive(uniffi::Enum))]
#[serde(rename_all = "snake_case")]
pub enum NetworkKind {
    #[default]
    Unknown,
    Wifi,
    Cellular,
    Ethernet,
    Other,
}

/// What the host knows of the network (`SyncClient::set_network`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[cfg_attr(feature = "ffi", derive(uniffi::Record))]
pub struct NetworkHints {
    pub kind: NetworkKind,
    /// The user pays by the byte (cellular, a hotspot); see
    /// `SyncConfig::metered_priority`.
    pub metered: bool,
    /// The round trip the platform measured or estimates, in ms.
    pub rtt_ms: Option<u32>,
}

impl NetworkHints {
    /// Whether going from `self` to `next` changes the link so much that what
    /// the sizers measured no longer holds: a change between two known kinds
    /// (wifi to cellular, say). Learning the kind for the first time is not.
    pub fn other_link(&self, next: &NetworkHints) -> bool {
        self.kind != NetworkKind::Unknown
            && next.kind != NetworkKind::Unknown
            && self.kind != next.kind
    }
}

impl PageSizer {
    /// Starts at `initial`, within the bounds.
    pub fn new(sizing: PageSizing, initial: u32) -> PageSizer {
        let (lo, hi) = (
            sizing.min_rows.max(1),
            sizing.max_rows.max(sizing.min_rows.max(1)),
        );
        PageSizer {
            sizing: PageSizing {
                min_rows: lo,
                max_rows: hi,
                ..sizing
            },
            size: initial.clamp(lo, hi),
            initial: initial.clamp(lo, hi),
            rtt_ms: None,
            slow_start: true,
        }
    }

    /// The time a page should take: the configured target, raised to
    /// [`RTTS_PER_PAGE`] round trips when the host reported a longer RTT.
    pub fn target_ms(&self) -> u64 {
        let floor = self.rtt_ms.map_or(0, |rtt| rtt as u64 * RTTS_PER_PAGE);
        self.sizing.target_ms.max(floor)
    }

    /// The host reported the round trip (`None`: it no longer knows).
    pub fn set_rtt(&mut self, rtt_ms: Option<u32>) {
        self.rtt_ms = rtt_ms;
    }

    /// Back to the start size: the link changed, and what was measured on
    /// the old one says nothing about the new one.
    pub fn restart(&mut self) {
        self.size = self.initial;
        self.slow_start = true;
    }

    /// Rows to ask for next.
    pub fn size(&self) -> u32 {
        self.size
    }

    /// A page of `rows` came back in `elapsed_ms`; `full` when it held as many
    /// rows as asked (a short page says nothing about a larger one).
    pub fn on_page(&mut self, rows: u64, elapsed_ms: i64, full: bool) {
        let PageSizing {
            min_rows, max_rows, ..
        } = self.sizing;
        let target_ms = self.target_ms();
        let elapsed = elapsed_ms.max(1) as f64;
        if rows == 0 || (!full && elapsed <= target_ms as f64) {
            return;
        }
        let fits = (rows as f64 * target_ms as f64 / elapsed).floor();
        let step = if self.slow_start {
            self.size as f64
        } else {
            ((max_rows - min_rows) / 10).max(1) as f64
        };
        let next = if fits > self.size as f64 {
            fits.min(self.size as f64 + step)
        } else {
            self.slow_start = false;
            fits
        };
        self.size = (next as u32).clamp(min_rows, max_rows);
    }

    /// A request failed for want of an answer (timeout, drop, 5xx): halve.
    pub fn on_failure(&mut self) {
        self.size = (self.size / 2).max(self.sizing.min_rows);
        self.slow_start = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIZING: PageSizing = PageSizing {
        target_ms: 1_000,
        min_rows: 100,
        max_rows: 10_100,
    };

    #[test]
    fn page_size_doubles_then_grows_additively_toward_the_time_target() {
        let mut s = PageSizer::new(SIZING, 1_000);
        // 1,000 rows in 100 ms: 10,000 would fit; slow start doubles.
        s.on_page(1_000, 100, true);
        assert_eq!(s.size(), 2_000);
        s.on_page(2_000, 200, true);
        assert_eq!(s.size(), 4_000);
        // Slower than the target: shrink to what fits, and the slow start ends.
        s.on_page(4_000, 2_000, true);
        assert_eq!(s.size(), 2_000);
        // From now on, at most a tenth of the range per page.
        s.on_page(2_000, 200, true);
        assert_eq!(s.size(), 3_000);
        // Nearly on target: settle at what fits.
        s.on_page(3_000, 1_000, true);
        assert_eq!(s.size(), 3_000);
        // A new link starts slow again.
        s.restart();
        s.on_page(1_000, 100, true);
        assert_eq!(s.size(), 2_000);
        // A failure ends the slow start too.
        s.on_failure();
        assert_eq!(s.size(), 1_000);
        s.on_page(1_000, 100, true);
        assert_eq!(s.size(), 2_000, "1,000 + a tenth of the range");
        s.on_page(2_000, 200, true);
        assert_eq!(s.size(), 3_000);
        // Never past the bound.
        for _ in 0..20 {
            let n = s.size() as u64;
            s.on_page(n, 1, true);
        }
        assert_eq!(s.size(), 10_100);
    }

    #[test]
    fn a_slow_page_shrinks_to_what_fits_and_a_failure_halves_within_bounds() {
        let mut s = PageSizer::new(SIZING, 5_000);
        // 5,000 rows took 4 s: 1,250 fit in the target.
        s.on_page(5_000, 4_000, true);
        assert_eq!(s.size(), 1_250);
        s.on_failure();
        assert_eq!(s.size(), 625);
        for _ in 0..10 {
            s.on_failure();
        }
        assert_eq!(s.size(), 100, "not below the floor");
        // A short, fast last page says nothing: no change.
        s.on_page(10, 5, false);
        assert_eq!(s.size(), 100);
        // A short but slow page does: it took too long for its rows.
        let mut t = PageSizer::new(SIZING, 5_000);
        t.on_page(2_000, 4_000, false);
        assert_eq!(t.size(), 500);
    }

    #[test]
    fn a_long_round_trip_raises_the_target_and_a_new_link_restarts() {
        let mut s = PageSizer::new(SIZING, 1_000);
        assert_eq!(s.target_ms(), 1_000);
        // 300 ms round trips: a page should take 3 s, not 1 s.
        s.set_rtt(Some(300));
        assert_eq!(s.target_ms(), 3_000);
        // 1,000 rows in 1.5 s: 2,000 fit in 3 s (without the RTT, 666).
        s.on_page(1_000, 1_500, true);
        assert_eq!(s.size(), 2_000);
        // A short round trip never lowers the configured target.
        s.set_rtt(Some(20));
        assert_eq!(s.target_ms(), 1_000);
        s.set_rtt(None);
        assert_eq!(s.target_ms(), 1_000);
        s.restart();
        assert_eq!(s.size(), 1_000);
    }

    #[test]
    fn only_a_change_between_two_known_kinds_is_another_link() {
        let hints = |kind| NetworkHints {
            kind,
            ..NetworkHints::default()
        };
        let (unknown, wifi, cell) = (
            hints(NetworkKind::Unknown),
            hints(NetworkKind::Wifi),
            hints(NetworkKind::Cellular),
        );
        assert!(wifi.other_link(&cell));
        assert!(
            !unknown.other_link(&wifi),
            "learning the kind is not a change"
        );
        assert!(!wifi.other_link(&unknown));
        let measured = NetworkHints {
            rtt_ms: Some(40),
            metered: true,
            ..wifi
        };
        assert!(!wifi.other_link(&measured), "the same kind");
    }

    #[test]
    fn bounds_hold_for_any_start() {
        assert_eq!(PageSizer::new(SIZING, 0).size(), 100);
        assert_eq!(PageSizer::new(SIZING, u32::MAX).size(), 10_100);
        let odd = PageSizing {
            target_ms: 10,
            min_rows: 0,
            max_rows: 0,
        };
        assert_eq!(PageSizer::new(odd, 50).size(), 1);
    }

    #[test]
    fn backoff_doubles_from_half_a_second_to_five_minutes_and_jitter_spreads_it() {
        assert_eq!(backoff_ms(1, 0.0), 500);
        assert_eq!(backoff_ms(1, 1.0), 1_000);
        assert_eq!(backoff_ms(2, 0.0), 1_000);
        assert_eq!(backoff_ms(3, 1.0), 4_000);
        assert_eq!(backoff_ms(10, 1.0), BACKOFF_CAP_MS);
        assert_eq!(backoff_ms(40, 0.0), BACKOFF_CAP_MS / 2);
        assert_eq!(backoff_ms(0, 0.5), 750, "no failure yet counts as one");
        assert_eq!(backoff_ms(1, 7.0), 1_000, "jitter is clamped");
    }
}
