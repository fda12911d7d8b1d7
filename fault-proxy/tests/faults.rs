//! Each fault as both sides see it: a hand-written upstream counts the whole
//! requests it got and answers each with a fixed JSON body; a reqwest client
//! goes through the proxy.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use ferry_fault_proxy::{Fault, FaultProxy, Script};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const BODY: &str = r#"{"answer":"the upstream's, long enough to be cut in the middle of it"}"#;

/// An upstream that reads each request whole (head and content-length body),
/// counts it, answers `BODY` and closes.
async fn upstream() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let whole = Arc::new(AtomicUsize::new(0));
    let w = whole.clone();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            let w = w.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let n = s.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return; // cut before the request was whole
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let Some(end) = buf.windows(4).position(|x| x == b"\r\n\r\n") else {
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .map_or(0, |v| v.trim().parse().unwrap());
                    if buf.len() >= end + 4 + len {
                        assert!(head.contains("connection: close"), "{head}");
                        break;
                    }
                }
                w.fetch_add(1, Ordering::SeqCst);
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{BODY}",
                    BODY.len()
                );
                let _ = s.write_all(answer.as_bytes()).await;
            });
        }
    });
    (addr, whole)
}

/// One POST through a proxy that applies `fault` to it: the status and body,
/// or the client's error; and how many whole requests reached the upstream.
async fn through(fault: Fault) -> (Result<(u16, String), String>, usize) {
    let (up, whole) = upstream().await;
    let proxy = FaultProxy::start(up, Script::new([fault])).await.unwrap();
    let got = async {
        let resp = reqwest::Client::new()
            .post(format!("{}/v1/push", proxy.url()))
            .header("content-type", "application/json")
            .body(r#"{"client_id":"c","mutations":[]}"#)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let text = resp.text().await.map_err(|e| e.to_string())?;
        Ok((status, text))
    }
    .await;
    assert_eq!(proxy.stats().get(fault.name()), Some(&1), "{fault:?}");
    (got, whole.load(Ordering::SeqCst))
}

#[tokio::test]
async fn each_fault_does_what_it_says_to_each_side() {
    assert_eq!(through(Fault::Pass).await, (Ok((200, BODY.into())), 1));
    let (got, whole) = through(Fault::CutRequest(0.5)).await;
    assert!(got.is_err(), "{got:?}");
    assert_eq!(whole, 0, "the upstream never got a whole request");
    for at in [0.0, 0.5, 0.99] {
        let (got, whole) = through(Fault::CutResponse(at)).await;
        assert!(got.is_err(), "cut at {at}: {got:?}");
        assert_eq!(whole, 1, "the upstream handled it");
    }
    let (got, whole) = through(Fault::Reset).await;
    assert!(got.is_err(), "{got:?}");
    assert_eq!(whole, 1);
    assert_eq!(through(Fault::Duplicate).await, (Ok((200, BODY.into())), 2));
    for code in [500, 502, 503] {
        let (got, whole) = through(Fault::Status(code)).await;
        let (status, body) = got.unwrap();
        assert_eq!(status, code);
        assert!(body.contains(r#""code":"unavailable""#), "{body}");
        assert_eq!(whole, 0, "the upstream was not asked");
    }
    let trickle = Fault::Trickle {
        bytes: 7,
        pause: Duration::ZERO,
    };
    assert_eq!(through(trickle).await, (Ok((200, BODY.into())), 1));
    assert_eq!(
        through(Fault::Delay(Duration::ZERO)).await,
        (Ok((200, BODY.into())), 1)
    );
}

#[tokio::test]
async fn a_random_plan_is_the_same_for_the_same_seed_and_off_at_rate_zero() {
    use ferry_fault_proxy::{Plan, Random};
    let faults = Random::all_faults(Duration::ZERO);
    let draw = |seed| {
        let p = Random::new(seed, 0.5, faults.clone(), 3);
        (0..200)
            .map(|_| p.next("POST / HTTP/1.1"))
            .collect::<Vec<_>>()
    };
    assert_eq!(draw(7), draw(7));
    assert_ne!(draw(7), draw(8));
    let p = Random::new(7, 0.5, faults.clone(), 3);
    let seq: Vec<Fault> = (0..200).map(|_| p.next("x")).collect();
    // A 5xx comes in a burst of 3 of the same status.
    let at = seq
        .iter()
        .position(|f| matches!(f, Fault::Status(_)))
        .unwrap();
    assert!(seq[at..at + 3].iter().all(|f| *f == seq[at]), "{seq:?}");
    p.set_rate(0.0);
    assert!((0..100).all(|_| p.next("x") == Fault::Pass));
}
