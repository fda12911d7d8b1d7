//! The `ferry-server` binary: flags and environment, logging, graceful shutdown.
//! All behaviour lives in the library; this file must stay a thin shell.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use ferry_server::config::{DEV_TOKENS, ServerConfig};
use ferry_server::{ServerOptions, start};

/// Reference Ferry sync backend (SQLite by default, PostgreSQL at scale).
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Address to listen on.
    #[arg(long, env = "FERRY_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// `sqlite:PATH`, a file path, or `postgres://user:pass@host/db`.
    #[arg(long, env = "FERRY_DATABASE_URL", default_value = "ferry-server.db")]
    database_url: String,
    /// JSON config (collections, users, limits). Without it a dev config is used.
    #[arg(long, env = "FERRY_CONFIG")]
    config: Option<PathBuf>,
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,tower_http=info".into()),
        )
        .init();
    let args = Args::parse();
    let config = match &args.config {
        Some(path) => match ServerConfig::load(path) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("ferry-server: {e}");
                return std::process::ExitCode::from(2);
            }
        },
        None => {
            println!(
                "ferry-server: no --config given, using the built-in DEV config (do not use in production)"
            );
            for (user, token) in DEV_TOKENS {
                println!("  dev user {user:<6} Authorization: Bearer {token}");
            }
            ServerConfig::dev()
        }
    };
    let opts = ServerOptions {
        listen: args.listen,
        database_url: args.database_url,
        config,
    };
    let server = match start(opts).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("ferry-server: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    println!("ferry-server listening on {}", server.url());
    shutdown_signal().await;
    tracing::info!("shutting down");
    server.shutdown().await;
    std::process::ExitCode::SUCCESS
}
