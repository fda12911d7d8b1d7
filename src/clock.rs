//! Time, injected so that tests drive backoff and scheduling without sleeping.

use std::future::Future;
use std::pin::Pin;

/// A future that resolves when a clock reaches a time.
pub type Sleep<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// A source of wall-clock time in milliseconds since the Unix epoch, and of
/// waiting for it: the sync driver's timers go through it, so a test that moves
/// a [`ManualClock`] moves them.
pub trait Clock: Send + Sync {
    fn now_ms(&self) -> i64;

    /// Resolves once [`Self::now_ms`] has reached `at_ms`.
    fn sleep_until(&self, at_ms: i64) -> Sleep<'_> {
        let wait = (at_ms - self.now_ms()).max(0) as u64;
        Box::pin(tokio::time::sleep(std::time::Duration::from_millis(wait)))
    }
}

/// The system clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0)
    }
}

/// A clock that moves only when told: tests and simulations drive backoff,
/// retries and scheduling with it, never by sleeping.
#[derive(Debug, Default)]
pub struct ManualClock {
    now: std::sync::atomic::AtomicI64,
    moved: tokio::sync::Notify,
}

impl ManualClock {
    /// A clock reading `start_ms`.
    pub fn new(start_ms: i64) -> ManualClock {
        ManualClock {
            now: std::sync::atomic::AtomicI64::new(start_ms),
            moved: tokio::sync::Notify::new(),
        }
    }

    /// Moves the clock forward by `ms`.
    pub fn advance(&self, ms: i64) {
        self.now.fetch_add(ms, std::sync::atomic::Ordering::SeqCst);
        self.moved.notify_waiters();
    }

    /// Sets the clock to `ms`, if that is not in the past.
    pub fn set(&self, ms: i64) {
        self.now.fetch_max(ms, std::sync::atomic::Ordering::SeqCst);
        self.moved.notify_waiters();
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.now.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn sleep_until(&self, at_ms: i64) -> Sleep<'_> {
        Box::pin(async move {
            loop {
                let moved = self.moved.notified();
                tokio::pin!(moved);
                moved.as_mut().enable();
                if self.now_ms() >= at_ms {
                    return;
                }
                moved.await;
            }
        })
    }
}
