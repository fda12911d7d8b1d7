//! A loopback TCP proxy for HTTP/1.1 that injects one fault per request.
//!
//! It reads each request whole (its head and a `content-length` body), asks
//! its [`Plan`] what to do with it, and then passes it on, cuts it, resets the
//! connection, sends it twice, or answers a 5xx itself. Every request goes to
//! the upstream on a connection of its own, marked `connection: close`, so the
//! response ends where the upstream closes; the proxy holds it whole and then
//! passes it on, cut, or in a trickle. The client sees the upstream's
//! `connection: close` and opens a new connection for its next request.
//!
//! What each fault looks like to each side is on [`Fault`]. The proxy never
//! changes a byte it passes on, apart from the request's `connection` header.
//!
//! Also here, for the same tests: [`helper`], processes to kill.

pub mod helper;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use rand::{Rng, SeedableRng, rngs::StdRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// What the proxy does with one request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Fault {
    /// Passes the request and its response on.
    Pass,
    /// Passes this share (0..1) of the request's bytes, then closes both
    /// sides: the upstream never gets a whole request, the client no answer.
    CutRequest(f64),
    /// Passes the whole request, then this share (0..1) of the response, then
    /// closes: the upstream handled it, the client gets a truncated answer
    /// (none at 0).
    CutResponse(f64),
    /// Passes the whole request, then resets the client's connection (RST)
    /// instead of answering.
    Reset,
    /// Sends the request to the upstream twice, one after the other, and
    /// answers the second response.
    Duplicate,
    /// Answers this status (a 500, 502 or 503) with a JSON error body, without
    /// the upstream.
    Status(u16),
    /// Waits this long before passing the request on.
    Delay(Duration),
    /// Passes the response in chunks of `bytes`, `pause` apart.
    Trickle { bytes: usize, pause: Duration },
}

impl Fault {
    /// Its name in [`Stats`].
    pub fn name(&self) -> &'static str {
        match self {
            Fault::Pass => "pass",
            Fault::CutRequest(_) => "cut_request",
            Fault::CutResponse(_) => "cut_response",
            Fault::Reset => "reset",
            Fault::Duplicate => "duplicate",
            Fault::Status(_) => "status",
            Fault::Delay(_) => "delay",
            Fault::Trickle { .. } => "trickle",
        }
    }
}

/// Decides the fault of each request, given its request line
/// (`POST /v1/push HTTP/1.1`).
pub trait Plan: Send + Sync {
    fn next(&self, request_line: &str) -> Fault;
}

/// The listed faults for the next requests, in order, then [`Fault::Pass`].
pub struct Script(Mutex<std::collections::VecDeque<Fault>>);

impl Script {
    pub fn new(faults: impl IntoIterator<Item = Fault>) -> Arc<Script> {
        Arc::new(Script(Mutex::new(faults.into_iter().collect())))
    }

    /// Queues more faults after those still waiting.
    pub fn push(&self, faults: impl IntoIterator<Item = Fault>) {
        self.0.lock().extend(faults);
    }
}

impl Plan for Script {
    fn next(&self, _request_line: &str) -> Fault {
        self.0.lock().pop_front().unwrap_or(Fault::Pass)
    }
}

/// Seeded random faults: each request gets a fault with probability `rate`,
/// drawn evenly from `faults` (cut points drawn anew), and a burst of 5xx
/// answers lasts `burst` requests. `set_rate(0.0)` turns it off.
pub struct Random {
    rng: Mutex<StdRng>,
    rate: Mutex<f64>,
    faults: Vec<Fault>,
    burst: usize,
    /// Requests left in the current 5xx burst, and its status.
    bursting: Mutex<(usize, u16)>,
}

impl Random {
    pub fn new(seed: u64, rate: f64, faults: Vec<Fault>, burst: usize) -> Arc<Random> {
        Arc::new(Random {
            rng: Mutex::new(StdRng::seed_from_u64(seed)),
            rate: Mutex::new(rate),
            faults,
            burst: burst.max(1),
            bursting: Mutex::new((0, 0)),
        })
    }

    /// Every fault this proxy can inject, with cut points to be drawn, and
    /// short delays and trickles (`slow` apart).
    pub fn all_faults(slow: Duration) -> Vec<Fault> {
        vec![
            Fault::CutRequest(0.5),
            Fault::CutResponse(0.5),
            Fault::CutResponse(0.0),
            Fault::Reset,
            Fault::Duplicate,
            Fault::Status(500),
            Fault::Status(502),
            Fault::Status(503),
            Fault::Delay(slow),
            Fault::Trickle {
                bytes: 512,
                pause: slow,
            },
        ]
    }

    pub fn set_rate(&self, rate: f64) {
        *self.rate.lock() = rate;
        if rate == 0.0 {
            self.bursting.lock().0 = 0;
        }
    }
}

impl Plan for Random {
    fn next(&self, _request_line: &str) -> Fault {
        {
            let mut b = self.bursting.lock();
            if b.0 > 0 {
                b.0 -= 1;
                return Fault::Status(b.1);
            }
        }
        let rate = *self.rate.lock();
        let mut rng = self.rng.lock();
        if self.faults.is_empty() || !rng.random_bool(rate.clamp(0.0, 1.0)) {
            return Fault::Pass;
        }
        let fault = self.faults[rng.random_range(0..self.faults.len())];
        match fault {
            Fault::CutRequest(_) => Fault::CutRequest(rng.random()),
            Fault::CutResponse(at) if at > 0.0 => Fault::CutResponse(rng.random()),
            Fault::Status(code) => {
                *self.bursting.lock() = (self.burst - 1, code);
                Fault::Status(code)
            }
            other => other,
        }
    }
}

/// How many requests met each fault.
pub type Stats = BTreeMap<&'static str, u64>;

/// A running proxy; it stops when dropped.
pub struct FaultProxy {
    addr: SocketAddr,
    stats: Arc<Mutex<Stats>>,
    task: JoinHandle<()>,
}

impl FaultProxy {
    /// Listens on a free loopback port and proxies to `upstream`.
    pub async fn start(upstream: SocketAddr, plan: Arc<dyn Plan>) -> std::io::Result<FaultProxy> {
        Self::start_on("127.0.0.1:0".parse().unwrap(), upstream, plan).await
    }

    /// Listens on `listen` and proxies to `upstream`.
    pub async fn start_on(
        listen: SocketAddr,
        upstream: SocketAddr,
        plan: Arc<dyn Plan>,
    ) -> std::io::Result<FaultProxy> {
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let stats = Arc::new(Mutex::new(Stats::new()));
        let s = stats.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                let (plan, stats) = (plan.clone(), s.clone());
                tokio::spawn(async move {
                    if let Err(e) = serve(client, upstream, &*plan, &stats).await {
                        tracing::debug!(error = %e, "fault proxy connection ended");
                    }
                });
            }
        });
        Ok(FaultProxy { addr, stats, task })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<addr>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// How many requests met each fault so far.
    pub fn stats(&self) -> Stats {
        self.stats.lock().clone()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One request of an HTTP/1.1 connection: its head (with `connection: close`)
/// and body, or `None` at a clean end of the connection.
async fn read_request(client: &mut TcpStream) -> std::io::Result<Option<(String, Vec<u8>)>> {
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let mut chunk = [0u8; 8192];
        let n = client.read(&mut chunk).await?;
        if n == 0 {
            return if buf.is_empty() {
                Ok(None)
            } else {
                Err(std::io::Error::other("the client closed mid-head"))
            };
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut length = 0usize;
    let mut lines: Vec<&str> = Vec::new();
    for line in head.split("\r\n").filter(|l| !l.is_empty()) {
        let lower = line.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            length = v
                .trim()
                .parse()
                .map_err(|_| std::io::Error::other("a bad content-length"))?;
        }
        if lower.starts_with("transfer-encoding:") {
            return Err(std::io::Error::other(
                "chunked request bodies are not proxied",
            ));
        }
        if !lower.starts_with("connection:") {
            lines.push(line);
        }
    }
    while buf.len() < head_end + length {
        let mut chunk = [0u8; 8192];
        let n = client.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::Error::other("the client closed mid-body"));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let head = format!("{}\r\nconnection: close\r\n\r\n", lines.join("\r\n"));
    Ok(Some((head, buf[head_end..head_end + length].to_vec())))
}

/// Sends one request upstream on a connection of its own; the whole response.
async fn round_trip(upstream: SocketAddr, request: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut up = TcpStream::connect(upstream).await?;
    up.write_all(request).await?;
    let mut response = Vec::new();
    up.read_to_end(&mut response).await?;
    Ok(response)
}

async fn serve(
    mut client: TcpStream,
    upstream: SocketAddr,
    plan: &dyn Plan,
    stats: &Mutex<Stats>,
) -> std::io::Result<()> {
    // One request a connection: every answer says `connection: close`.
    let Some((head, body)) = read_request(&mut client).await? else {
        return Ok(());
    };
    let line = head.lines().next().unwrap_or_default().to_string();
    let fault = plan.next(&line);
    *stats.lock().entry(fault.name()).or_default() += 1;
    tracing::debug!(request = %line, ?fault, "fault proxy");
    let mut request = head.into_bytes();
    request.extend_from_slice(&body);
    match fault {
        Fault::Pass => {
            client
                .write_all(&round_trip(upstream, &request).await?)
                .await?
        }
        Fault::Delay(wait) => {
            tokio::time::sleep(wait).await;
            client
                .write_all(&round_trip(upstream, &request).await?)
                .await?
        }
        Fault::CutRequest(at) => {
            let mut up = TcpStream::connect(upstream).await?;
            let n = ((request.len() as f64 * at.clamp(0.0, 1.0)) as usize)
                .min(request.len().saturating_sub(1));
            up.write_all(&request[..n]).await?;
            return Ok(());
        }
        Fault::CutResponse(at) => {
            let response = round_trip(upstream, &request).await?;
            let n = ((response.len() as f64 * at.clamp(0.0, 1.0)) as usize)
                .min(response.len().saturating_sub(1));
            client.write_all(&response[..n]).await?;
            return Ok(());
        }
        Fault::Reset => {
            round_trip(upstream, &request).await?;
            client.set_zero_linger()?;
            return Ok(());
        }
        Fault::Duplicate => {
            round_trip(upstream, &request).await?;
            client
                .write_all(&round_trip(upstream, &request).await?)
                .await?
        }
        Fault::Status(code) => {
            let body =
                format!(r#"{{"error":{{"code":"unavailable","message":"fault proxy: {code}"}}}}"#);
            let reason = match code {
                500 => "Internal Server Error",
                502 => "Bad Gateway",
                503 => "Service Unavailable",
                _ => "Error",
            };
            let answer = format!(
                "HTTP/1.1 {code} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            client.write_all(answer.as_bytes()).await?;
            return Ok(());
        }
        Fault::Trickle { bytes, pause } => {
            let response = round_trip(upstream, &request).await?;
            for chunk in response.chunks(bytes.max(1)) {
                client.write_all(chunk).await?;
                client.flush().await?;
                tokio::time::sleep(pause).await;
            }
        }
    }
    Ok(())
}
