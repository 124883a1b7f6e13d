//! What HTTP/1.1 lets a function send, end to end: a function written on a raw socket answers
//! each path its own way, and a worker (with a real nats-server) must get the answer right,
//! apply the call's timeout to a stalled answer, and send a request at most once per attempt.
// A failed unwrap is the test failure we want.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Gateway, Nats, Worker, dead_letters, envelope};
use flotilla_testsupport::RecordingServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

const T: Duration = Duration::from_secs(20);

/// Requests seen per call id, and a signal each time the function closes an idle connection.
#[derive(Default)]
struct Seen {
    calls: Mutex<HashMap<String, usize>>,
    idle_closed: Notify,
}

impl Seen {
    fn of(&self, call_id: &str) -> usize {
        self.calls
            .lock()
            .unwrap()
            .get(call_id)
            .copied()
            .unwrap_or(0)
    }
}

/// Reads one request head and its `Content-Length` body; `None` when the peer closed first.
async fn read_request(sock: &mut TcpStream) -> Option<(String, String)> {
    let mut buf = Vec::new();
    let mut byte = [0_u8; 1024];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = sock.read(&mut byte).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&byte[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let header = |name: &str| {
        head.lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
            })
            .unwrap_or_default()
    };
    let length: usize = header("content-length").parse().unwrap_or(0);
    while buf.len() < head_end + length {
        let n = sock.read(&mut byte).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&byte[..n]);
    }
    let path = head.split(' ').nth(1).unwrap_or("/").to_owned();
    Some((path, header("x-call-id")))
}

/// The function: `/<name>` picks the behaviour.
async fn raw_function(seen: Arc<Seen>) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                while let Some((path, call_id)) = read_request(&mut sock).await {
                    *seen.calls.lock().unwrap().entry(call_id).or_default() += 1;
                    let answer: Vec<u8> = match path.as_str() {
                        "/chunked" => b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
                            5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n"
                            .to_vec(),
                        "/close" => {
                            let _ = sock
                                .write_all(b"HTTP/1.1 200 OK\r\n\r\nuntil the end")
                                .await;
                            return;
                        }
                        "/http10" => b"HTTP/1.0 200 OK\r\nContent-Length: 6\r\n\r\nold ok".to_vec(),
                        "/interim" => b"HTTP/1.1 100 Continue\r\n\r\n\
                            HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n\
                            HTTP/1.1 201 Created\r\nContent-Length: 3\r\n\r\nyes"
                            .to_vec(),
                        "/bigheader" => format!(
                            "HTTP/1.1 200 OK\r\nX-Big: {}\r\nContent-Length: 3\r\n\r\nbig",
                            "a".repeat(20 * 1024)
                        )
                        .into_bytes(),
                        "/large" => format!(
                            "HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n{}",
                            "L".repeat(5000)
                        )
                        .into_bytes(),
                        "/stall" => {
                            // Three bytes of ten, then nothing: only the call's timeout ends it.
                            let _ = sock
                                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
                                .await;
                            let mut rest = [0_u8; 64];
                            let _ = tokio::time::timeout(T, sock.read(&mut rest)).await;
                            return;
                        }
                        // Read the call, then vanish without a word (a crash mid-call).
                        "/drop" => return,
                        "/idle" => {
                            let _ = sock
                                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                                .await;
                            // Kept alive, then closed by the function while idle.
                            let mut next = [0_u8; 1];
                            if let Ok(Ok(n)) = tokio::time::timeout(
                                Duration::from_millis(100),
                                sock.peek(&mut next),
                            )
                            .await
                                && n > 0
                            {
                                continue;
                            }
                            drop(sock);
                            seen.idle_closed.notify_one();
                            return;
                        }
                        _ => b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_vec(),
                    };
                    if sock.write_all(&answer).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_http_lets_a_function_send_arrives_right() {
    let nats = Nats::start(1).await;
    let seen = Arc::new(Seen::default());
    let addr = raw_function(seen.clone()).await;
    let sink = RecordingServer::answering(200).await;
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policies.toml");
    std::fs::write(
        &policy,
        "[defaults.retry]\nmin_backoff = \"50ms\"\nmax_backoff = \"100ms\"\n\
         [functions.large]\nkeep_results = true\nmax_result_bytes = 1000\n\
         [functions.stall]\ntimeout = \"1s\"\n[functions.stall.retry]\nattempts = 1\n\
         [functions.drop.retry]\nattempts = 2\n",
    )
    .unwrap();
    let template = format!("http://{addr}/{{name}}");
    let gateway = Gateway::start(&["--nats-url", &nats.url()]).await;
    let worker = Worker::start_ready(
        &nats.url(),
        &[
            "--function-url-template",
            &template,
            "--policies",
            policy.to_str().unwrap(),
        ],
    )
    .await;
    let cb = format!("{}/cb", sink.url());
    let expected = [
        ("chunked", "200", "hello world"),
        ("close", "200", "until the end"),
        ("http10", "200", "old ok"),
        ("interim", "201", "yes"),
        ("bigheader", "200", "big"),
        ("stall", "504", ""),
    ];
    for (name, _, _) in expected {
        nats.publish(&envelope(name, &format!("{name}-1"), Some(&cb), "x"))
            .await;
    }
    nats.publish(&envelope("large", "large-1", Some(&cb), "x"))
        .await;
    sink.wait_for(expected.len() + 1, T).await;
    let callbacks = sink.requests();
    let by_call = |id: &str| {
        callbacks
            .iter()
            .find(|c| c.header("x-call-id") == id)
            .unwrap_or_else(|| panic!("no callback for {id}"))
            .clone()
    };
    for (name, status, body) in expected {
        let c = by_call(&format!("{name}-1"));
        assert_eq!(c.header("x-function-status"), status, "{name}");
        if !body.is_empty() {
            assert_eq!(String::from_utf8_lossy(&c.body), body, "{name}");
        }
        assert_eq!(seen.of(&format!("{name}-1")), 1, "{name}: one request");
    }
    // An answer above the result limit reaches the callback whole; it is only not kept.
    let large = by_call("large-1");
    assert_eq!(
        (large.header("x-function-status"), large.body.len()),
        ("200", 5000)
    );
    let status = gateway
        .send(http::Method::GET, "/async-call/large-1", &[], "")
        .await
        .unwrap();
    let record: serde_json::Value = serde_json::from_slice(&status.body).unwrap();
    assert_eq!(record["state"], "succeeded", "{record}");
    let result = gateway
        .send(http::Method::GET, "/async-call/large-1/result", &[], "")
        .await
        .unwrap();
    assert_eq!(result.status, 404, "too large to keep");

    // A function that read the call and vanished saw it once per attempt, not twice.
    nats.publish(&envelope("drop", "drop-1", Some(&cb), "x"))
        .await;
    // (The stalled call, allowed one attempt, is the first dead letter.)
    let letters = dead_letters(&nats, 2).await;
    assert_eq!(seen.of("drop-1"), 2, "two attempts, one request each");
    let header = |h: &async_nats::HeaderMap, name: &str| {
        h.get(name)
            .map(|v| v.as_str().to_owned())
            .unwrap_or_default()
    };
    let letter = letters
        .iter()
        .find(|(subject, _, _)| subject == "flotilla.dead.drop")
        .unwrap_or_else(|| panic!("no dead letter for drop-1: {letters:?}"));
    let reason = header(&letter.1, flotilla_queue::headers::DEAD_REASON);
    assert!(reason.contains("closed the connection"), "{reason}");

    // A kept-alive connection the function closed while idle costs the next call nothing.
    nats.publish(&envelope("idle", "idle-1", Some(&cb), "x"))
        .await;
    tokio::time::timeout(T, seen.idle_closed.notified())
        .await
        .expect("the function closed its idle connection");
    nats.publish(&envelope("idle", "idle-2", Some(&cb), "x"))
        .await;
    sink.wait_for(expected.len() + 4, T).await;
    let callbacks = sink.requests();
    let idle2 = callbacks
        .iter()
        .find(|c| c.header("x-call-id") == "idle-2")
        .unwrap();
    assert_eq!(
        (idle2.header("x-function-status"), idle2.header("x-retry")),
        ("200", "0"),
        "no attempt lost"
    );
    assert_eq!(seen.of("idle-2"), 1);
    worker.stop(T).await.unwrap();
}
