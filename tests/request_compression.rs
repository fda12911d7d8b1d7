//! The HTTP transport gzips request bodies of `COMPRESS_FROM_BYTES` or more
//! (protocol: "A request body may be gzip-compressed"), and sends smaller ones
//! as they are. Checked on the wire: a bare TCP listener reads the request the
//! transport sends and answers it by hand.

use std::io::Read;

use ferry::transport::{COMPRESS_FROM_BYTES, HttpTransport, Transport};
use ferry_protocol::{
    Mutation, MutationOutcome, MutationResult, Op, PullPage, PullRequest, PushRequest,
    PushResponse, RawFields,
};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Accepts one connection, reads one request, answers `answer` with 200.
/// Returns the request head (lowercase) and its body as sent.
async fn serve_one(listener: &TcpListener, answer: String) -> (String, Vec<u8>) {
    serve_one_with(listener, "200 OK", answer).await
}

async fn serve_one_with(listener: &TcpListener, status: &str, answer: String) -> (String, Vec<u8>) {
    let (mut socket, _) = listener.accept().await.unwrap();
    let mut buf = Vec::new();
    let head_end = loop {
        let mut chunk = [0u8; 4096];
        let n = socket.read(&mut chunk).await.unwrap();
        assert!(n > 0, "the connection closed before the request head ended");
        buf.extend_from_slice(&chunk[..n]);
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map(|v| v.trim().parse().unwrap())
        .expect("a content-length");
    while buf.len() < head_end + length {
        let mut chunk = [0u8; 4096];
        let n = socket.read(&mut chunk).await.unwrap();
        assert!(n > 0, "the connection closed mid-body");
        buf.extend_from_slice(&chunk[..n]);
    }
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{answer}",
        answer.len()
    );
    socket.write_all(response.as_bytes()).await.unwrap();
    (head, buf[head_end..head_end + length].to_vec())
}

fn push_of(n: usize) -> PushRequest<RawFields> {
    PushRequest {
        client_id: "c1".into(),
        mutations: (0..n)
            .map(|i| Mutation {
                mutation_id: format!("m{i}"),
                collection: "tasks".into(),
                record_id: format!("r{i}"),
                op: Op::Create,
                fields: serde_json::value::to_raw_value(&json!({"title": format!("task {i}")}))
                    .unwrap(),
                base_version: None,
            })
            .collect(),
    }
}

fn applied(req: &PushRequest<RawFields>) -> String {
    serde_json::to_string(&PushResponse {
        results: req
            .mutations
            .iter()
            .map(|m| MutationResult {
                mutation_id: m.mutation_id.clone(),
                outcome: MutationOutcome::Applied { version: 1 },
            })
            .collect(),
        write_checkpoint: "w".into(),
    })
    .unwrap()
}

#[tokio::test]
async fn a_large_body_goes_gzip_and_a_small_one_as_it_is() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let transport = HttpTransport::new(&url).unwrap();

    let big = push_of(100);
    let plain = serde_json::to_vec(&big).unwrap();
    assert!(plain.len() >= COMPRESS_FROM_BYTES);
    let (sent, (head, body)) = tokio::join!(
        transport.push("t", &big),
        serve_one(&listener, applied(&big))
    );
    assert_eq!(sent.unwrap().results.len(), 100);
    assert!(head.contains("content-encoding: gzip"), "{head}");
    assert!(head.contains("content-type: application/json"), "{head}");
    assert!(
        body.len() * 3 < plain.len(),
        "{} of {} bytes",
        body.len(),
        plain.len()
    );
    let mut unzipped = Vec::new();
    flate2::read::GzDecoder::new(&body[..])
        .read_to_end(&mut unzipped)
        .unwrap();
    assert_eq!(unzipped, plain, "the same JSON, compressed");

    let small = push_of(1);
    let (sent, (head, body)) = tokio::join!(
        transport.push("t", &small),
        serve_one(&listener, applied(&small))
    );
    sent.unwrap();
    assert!(!head.contains("content-encoding"), "{head}");
    assert_eq!(body, serde_json::to_vec(&small).unwrap());

    let pull: PullRequest = serde_json::from_value(json!({})).unwrap();
    let page = serde_json::to_string(&PullPage::<ferry::Fields> {
        cursor: "c".into(),
        ..Default::default()
    })
    .unwrap();
    let (got, (head, _)) = tokio::join!(transport.pull("t", &pull), serve_one(&listener, page));
    assert_eq!(got.unwrap().cursor, "c");
    assert!(!head.contains("content-encoding"), "{head}");
}

/// A server that does not take gzip bodies (it reads them as broken JSON, as
/// ferry-server did before it decompressed them, or answers 415): the body
/// goes again uncompressed, and later ones go uncompressed at once.
#[tokio::test]
async fn a_server_that_refuses_gzip_gets_the_body_again_uncompressed_and_no_more_gzip() {
    for (status, refusal) in [
        (
            "400 Bad Request",
            r#"{"error":{"code":"malformed_json","message":"expected value at line 1"}}"#,
        ),
        (
            "415 Unsupported Media Type",
            r#"{"error":{"code":"unsupported_media_type","message":"no gzip here"}}"#,
        ),
    ] {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let transport = HttpTransport::new(&url).unwrap();
        let big = push_of(100);
        let plain = serde_json::to_vec(&big).unwrap();
        let server = async {
            let first = serve_one_with(&listener, status, refusal.into()).await;
            let second = serve_one(&listener, applied(&big)).await;
            (first, second)
        };
        let (sent, ((head1, _), (head2, body2))) = tokio::join!(transport.push("t", &big), server);
        assert_eq!(sent.unwrap().results.len(), 100, "{status}: answered");
        assert!(head1.contains("content-encoding: gzip"), "{head1}");
        assert!(!head2.contains("content-encoding"), "{status}: {head2}");
        assert_eq!(body2, plain, "the same JSON, as it is");
        let (sent, (head3, _)) = tokio::join!(
            transport.push("t", &big),
            serve_one(&listener, applied(&big))
        );
        sent.unwrap();
        assert!(
            !head3.contains("content-encoding"),
            "{status}: no more gzip: {head3}"
        );
    }
}
