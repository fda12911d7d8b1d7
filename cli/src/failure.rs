//! How the command fails: one line on stderr and an exit code.

use std::io::Write;
use std::process::ExitCode;

/// Exit code for bad input or usage.
pub const EXIT_USAGE: u8 = 2;
/// Exit code for every other failure (database, I/O, not found).
pub const EXIT_FAILURE: u8 = 1;

/// A failed command.
#[derive(Debug)]
pub enum Failure {
    /// The command line or an input file was wrong.
    Usage(String),
    /// The core refused or failed.
    Core(ferry::Error),
    /// Anything else, with its context chain.
    Other(anyhow::Error),
}

impl From<ferry::Error> for Failure {
    fn from(e: ferry::Error) -> Self {
        Failure::Core(e)
    }
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        match e.downcast::<ferry::Error>() {
            Ok(core) => Failure::Core(core),
            Err(e) => Failure::Other(e),
        }
    }
}

/// Whether a core error is the caller's fault (bad input) rather than a failure.
fn is_bad_input(e: &ferry::Error) -> bool {
    use ferry::Error::*;
    matches!(
        e,
        MalformedJson(_)
            | InvalidInput(_)
            | UnknownCollection(_)
            | UnknownColumn { .. }
            | WrongType { .. }
            | NullNotAllowed { .. }
            | TooLarge { .. }
            | AlreadyExists { .. }
            | InvalidName { .. }
            | InvalidSchema(_)
            | IncompatibleSchema(_)
            | InvalidQuery(_)
    )
}

impl Failure {
    fn message_and_code(&self) -> (String, u8) {
        match self {
            Failure::Usage(m) => (m.clone(), EXIT_USAGE),
            Failure::Core(e) => (
                e.to_string(),
                if is_bad_input(e) {
                    EXIT_USAGE
                } else {
                    EXIT_FAILURE
                },
            ),
            Failure::Other(e) => (format!("{e:#}"), EXIT_FAILURE),
        }
    }

    /// Prints `error: ...` as one line and returns the exit code.
    pub fn report(&self) -> ExitCode {
        let (msg, code) = self.message_and_code();
        print_error(&msg);
        ExitCode::from(code)
    }
}

/// Writes `error: msg` to stderr, folded onto one line.
pub fn print_error(msg: &str) {
    let line = msg.split_whitespace().collect::<Vec<_>>().join(" ");
    let _ = writeln!(std::io::stderr(), "error: {line}");
}

/// Handles a command-line parse error: help and version print as usual; real
/// errors become one line (clap's first), exit 2.
pub fn clap_exit(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    match e.kind() {
        ErrorKind::DisplayHelp
        | ErrorKind::DisplayVersion
        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print();
            if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
                ExitCode::from(EXIT_USAGE)
            } else {
                ExitCode::SUCCESS
            }
        }
        _ => {
            // clap's message is its first paragraph; usage and tips follow.
            let rendered = e.render().to_string();
            let para: Vec<&str> = rendered
                .lines()
                .map(str::trim)
                .skip_while(|l| l.is_empty())
                .take_while(|l| !l.is_empty())
                .collect();
            let msg = para.join(" ");
            let msg = msg.strip_prefix("error:").unwrap_or(&msg).trim();
            print_error(if msg.is_empty() {
                "invalid command line"
            } else {
                msg
            });
            ExitCode::from(EXIT_USAGE)
        }
    }
}
