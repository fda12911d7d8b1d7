//! Policy: how long to wait and how often to try. Pure functions and constants,
//! so the machine and its tests decide the same way the driver does. Adaptive
//! batching will live here too.

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

#[cfg(test)]
mod tests {
    use super::*;

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
