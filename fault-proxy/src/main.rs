//! `ferry-fault-proxy`: the fault proxy as a process, for scripts/soak.sh and
//! by hand: every request meets a random fault with probability `--rate`.

use std::time::Duration;

use clap::Parser;
use ferry_fault_proxy::{FaultProxy, Random};

#[derive(Parser)]
#[command(about = "A loopback HTTP/1.1 proxy that injects faults per request")]
struct Args {
    /// Where to listen.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: std::net::SocketAddr,
    /// The server to proxy to.
    #[arg(long)]
    upstream: std::net::SocketAddr,
    /// Seed of the faults.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Share of requests that meet a fault.
    #[arg(long, default_value_t = 0.2)]
    rate: f64,
    /// Length of a burst of 5xx answers, in requests.
    #[arg(long, default_value_t = 3)]
    burst: usize,
    /// Delay and trickle pause, in ms.
    #[arg(long, default_value_t = 200)]
    slow_ms: u64,
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let a = Args::parse();
    let plan = Random::new(
        a.seed,
        a.rate,
        Random::all_faults(Duration::from_millis(a.slow_ms)),
        a.burst,
    );
    let proxy = FaultProxy::start_on(a.listen, a.upstream, plan).await?;
    // The address goes to stdout, for the script that started it.
    println!("{}", proxy.url());
    tokio::signal::ctrl_c().await?;
    eprintln!("{:?}", proxy.stats());
    Ok(())
}
