//! Forwards the core's `tracing` output to a host [`Logger`].
//!
//! `set_logger` installs, once per process, a `tracing` subscriber that formats
//! each event and queues it; a dedicated `ferry-log` thread calls the host. So a
//! log line emitted under a store lock never waits for the host, a slow logger
//! only drops lines (the queue is bounded), and a throwing logger is caught.
//! Later calls replace the logger and level. Spans are not reported.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::mpsc::{SyncSender, sync_channel};
use std::sync::{Arc, OnceLock};

use parking_lot::RwLock;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};

use super::error::FerryError;

/// Severity, most to least severe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, uniffi::Enum)]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

/// Receives the core's log lines, on the `ferry-log` thread.
#[uniffi::export(with_foreign)]
pub trait Logger: Send + Sync {
    fn log(&self, level: LogLevel, target: String, message: String);
}

type Line = (LogLevel, String, String);

static HOST: RwLock<Option<Arc<dyn Logger>>> = RwLock::new(None);
/// The most verbose level forwarded, or [`OFF`].
static MAX_LEVEL: AtomicU8 = AtomicU8::new(OFF);
const OFF: u8 = u8::MAX;
static QUEUE: OnceLock<Result<SyncSender<Line>, String>> = OnceLock::new();

/// Lines queued for the host at most; past it new lines are dropped.
const QUEUE_LINES: usize = 4096;

/// Sends the core's log lines at `level` or more severe to `logger`. The first
/// call installs the process-wide `tracing` subscriber; it fails with
/// `InvalidInput` if another one was installed first. [`unset_logger`] undoes it.
#[uniffi::export]
pub fn set_logger(logger: Arc<dyn Logger>, level: LogLevel) -> Result<(), FerryError> {
    *HOST.write() = Some(logger);
    MAX_LEVEL.store(level as u8, Ordering::SeqCst);
    QUEUE
        .get_or_init(install)
        .clone()
        .map(drop)
        .map_err(|detail| FerryError::InvalidInput { detail })
}

/// Stops forwarding log lines and releases the logger: nothing is formatted or
/// queued any more. (A separate call, not `set_logger(null)`: uniffi-bindgen-react-native
/// 0.31.0-5 cannot pass a JS object inside an optional.)
#[uniffi::export]
pub fn unset_logger() {
    MAX_LEVEL.store(OFF, Ordering::SeqCst);
    HOST.write().take();
}

fn install() -> Result<SyncSender<Line>, String> {
    let (tx, rx) = sync_channel::<Line>(QUEUE_LINES);
    tracing::subscriber::set_global_default(HostSubscriber { tx: tx.clone() })
        .map_err(|e| format!("cannot forward logs: {e}"))?;
    std::thread::Builder::new()
        .name("ferry-log".into())
        .spawn(move || {
            for (level, target, message) in rx {
                let host = HOST.read().clone();
                if let Some(h) = host {
                    // A throwing host logger reaches Rust as a panic: drop the line.
                    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        h.log(level, target, message)
                    }));
                }
            }
        })
        .map_err(|e| format!("cannot start the log thread: {e}"))?;
    Ok(tx)
}

fn level_of(l: &Level) -> LogLevel {
    match *l {
        Level::ERROR => LogLevel::Error,
        Level::WARN => LogLevel::Warn,
        Level::INFO => LogLevel::Info,
        Level::DEBUG => LogLevel::Debug,
        Level::TRACE => LogLevel::Trace,
    }
}

struct HostSubscriber {
    tx: SyncSender<Line>,
}

/// `message` first, then ` key=value` for each other field.
#[derive(Default)]
struct Text(String);

impl Visit for Text {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let rest = std::mem::take(&mut self.0);
            let _ = write!(self.0, "{value:?}{rest}");
        } else {
            let _ = write!(self.0, " {}={value:?}", field.name());
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.record_debug(field, &format_args!("{value}"))
        } else {
            let _ = write!(self.0, " {}={value}", field.name());
        }
    }
}

impl Subscriber for HostSubscriber {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        let max = MAX_LEVEL.load(Ordering::Relaxed);
        max != OFF && level_of(metadata.level()) as u8 <= max
    }

    fn register_callsite(&self, _: &'static Metadata<'static>) -> tracing::subscriber::Interest {
        // The level can change at run time: ask `enabled` every time.
        tracing::subscriber::Interest::sometimes()
    }

    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }

    fn record(&self, _: &Id, _: &Record<'_>) {}

    fn record_follows_from(&self, _: &Id, _: &Id) {}

    fn event(&self, event: &Event<'_>) {
        let mut text = Text::default();
        event.record(&mut text);
        let m = event.metadata();
        let _ = self
            .tx
            .try_send((level_of(m.level()), m.target().to_string(), text.0));
    }

    fn enter(&self, _: &Id) {}

    fn exit(&self, _: &Id) {}
}
