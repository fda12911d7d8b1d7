//! Crash points: the named places where the kill -9 tests
//! (`tests/crash_points.rs`) stop the process, each inside the transaction
//! it names. Compiled only with the feature `crash-points` (never in an app's
//! build); without it a point is nothing.

/// With the feature `crash-points` and `FERRY_CRASH_AT=<name>` in the
/// environment, the thread that reaches the point `name` writes
/// `FERRY_CRASH_POINT <name>` on stdout and waits there for ever, for the test
/// to kill the process right at that place.
#[inline]
pub(crate) fn point(name: &str) {
    #[cfg(feature = "crash-points")]
    {
        use std::io::Write;
        if std::env::var("FERRY_CRASH_AT").as_deref() == Ok(name) {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "FERRY_CRASH_POINT {name}");
            let _ = out.flush();
            drop(out);
            loop {
                std::thread::park();
            }
        }
    }
    #[cfg(not(feature = "crash-points"))]
    let _ = name;
}
