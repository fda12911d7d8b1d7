//! `ferry sync --server URL --token T`: one two-way sync of the database with a
//! running ferry-server, printing the report as JSON. Progress goes to stderr:
//! a progress bar on a terminal, plain lines otherwise.

use std::io::IsTerminal;
use std::sync::Arc;

use clap::{Args, ValueEnum};
use ferry::sync::{SyncClient, SyncConfig, SyncPhase, SyncStatus};
use ferry::transport::{HttpTransport, StaticToken};
use indicatif::{HumanBytes, ProgressBar, ProgressStyle};
use parking_lot::Mutex;
use serde_json::json;

use super::{Ctx, print_json};
use crate::failure::Failure;

#[derive(Debug, Args)]
pub struct SyncArgs {
    /// Base URL of the ferry-server, e.g. http://127.0.0.1:8080
    #[arg(long, env = "FERRY_SERVER")]
    server: String,
    /// Bearer token (the dev server prints its tokens at startup).
    #[arg(long, env = "FERRY_TOKEN", hide_env_values = true)]
    token: String,
    /// Rows per pulled page.
    #[arg(long, default_value_t = SyncConfig::default().page_size)]
    page_size: u32,
    /// Progress on stderr: a bar on a terminal and lines otherwise (auto), or
    /// as asked.
    #[arg(long, value_enum, default_value_t = ProgressMode::Auto)]
    progress: ProgressMode,
    /// Send now what waits out a backoff after failed pushes.
    #[arg(long)]
    retry_now: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ProgressMode {
    Auto,
    Bar,
    Lines,
    None,
}

/// Shows the sync's status as it changes (called on the store's event thread).
enum Progress {
    Bar(ProgressBar),
    /// The last (phase, page) printed, so that each line says something new.
    Lines(Mutex<Option<(SyncPhase, u64)>>),
}

impl Progress {
    fn new(mode: ProgressMode) -> Option<Progress> {
        let bar = match mode {
            ProgressMode::None => return None,
            ProgressMode::Auto => std::io::stderr().is_terminal(),
            ProgressMode::Bar => true,
            ProgressMode::Lines => false,
        };
        Some(if bar {
            let pb = ProgressBar::new_spinner();
            pb.set_style(
                ProgressStyle::with_template("{spinner} {msg} [{elapsed_precise}]")
                    .expect("a valid template"),
            );
            Progress::Bar(pb)
        } else {
            Progress::Lines(Mutex::new(None))
        })
    }

    fn show(&self, s: &SyncStatus) {
        let what = describe(s);
        match self {
            Progress::Bar(pb) => {
                if let Some(n) = s.records_expected {
                    if pb.length() != Some(n) {
                        pb.set_length(n);
                        pb.set_style(
                            ProgressStyle::with_template(
                                "{bar:30} {pos}/{len} records {msg} [{elapsed_precise}, {eta} left]",
                            )
                            .expect("a valid template"),
                        );
                    }
                    pb.set_position(s.records_done);
                }
                pb.set_message(what);
            }
            Progress::Lines(last) => {
                let now = (s.phase, s.pages_done);
                let mut last = last.lock();
                if s.phase != SyncPhase::Idle && *last != Some(now) {
                    *last = Some(now);
                    eprintln!("{what}");
                }
            }
        }
    }

    /// Ends the display with the sync's final status. Status reaches a
    /// listener as its latest value, so a line per page may be skipped; this
    /// last line always says what was pulled.
    fn finish(&self, done: Option<&SyncStatus>) {
        match (self, done) {
            (Progress::Bar(pb), _) => pb.finish_and_clear(),
            (Progress::Lines(_), Some(s)) => eprintln!("done: {}", pulled(s)),
            (Progress::Lines(_), None) => {}
        }
    }
}

fn pulled(s: &SyncStatus) -> String {
    let of = s
        .records_expected
        .map(|n| format!(" of {n}"))
        .unwrap_or_default();
    format!(
        "{} records{of}, {} in {} pages",
        s.records_done,
        HumanBytes(s.bytes_done),
        s.pages_done
    )
}

fn describe(s: &SyncStatus) -> String {
    let pulled = pulled(s);
    match s.phase {
        SyncPhase::Pulling => format!("pulling: {pulled}"),
        SyncPhase::Publishing => format!("publishing: {pulled}"),
        SyncPhase::Pushing => format!("pushing ({} pending)", s.pending),
        SyncPhase::Offline => "offline".into(),
        SyncPhase::Error => format!("error: {}", s.last_error.as_deref().unwrap_or("unknown")),
        SyncPhase::Idle => "idle".into(),
    }
}

pub fn run(ctx: &Ctx, args: SyncArgs) -> Result<(), Failure> {
    let store = ctx.open_existing()?;
    if args.retry_now {
        store.retry_now()?;
    }
    let transport = HttpTransport::new(&args.server).map_err(ferry::Error::from)?;
    let rt = runtime()?;
    let progress = Progress::new(args.progress).map(Arc::new);
    let (report, last) = rt.block_on(async {
        let client = SyncClient::new(
            store.clone(),
            Arc::new(transport),
            Arc::new(StaticToken(args.token)),
            SyncConfig {
                page_size: args.page_size,
                ..SyncConfig::default()
            },
        )?;
        if let Some(p) = &progress {
            let p = p.clone();
            client.add_status_listener(Arc::new(move |s: &SyncStatus| p.show(s)));
        }
        let report = client.sync().await;
        Ok::<_, ferry::Error>((report, client.status()))
    })?;
    // Every status reached the listener before the result is printed.
    store.flush_events();
    if let Some(p) = &progress {
        p.finish(report.is_ok().then_some(&last));
    }
    let report = report?;
    let status = store.status()?;
    print_json(
        &json!({"report": report, "pending": status.pending, "quarantined": status.quarantined}),
    )
}

pub fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::Other(anyhow::Error::new(e).context("starting the async runtime")))
}
