//! Slow uploads: a client that trickles its body holds no database
//! connection or transaction meanwhile (an upload is checked and spooled as
//! it arrives and written once it has ended), and a body that pauses past
//! the idle time is cut off with 408 and writes nothing.

use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::TestApp;

/// More uploads than the API has pooled connections (4 in tests).
const UPLOADS: usize = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_slow_uploads_leave_the_database_pool_to_other_requests() {
    let app = TestApp::spawn().await;
    let (finish, finishing) = watch::channel(false);
    let mut uploads = Vec::new();
    for upload in 0..UPLOADS {
        let (base_url, key) = (app.client.base_url.clone(), app.client.key.clone().unwrap());
        let finishing = finishing.clone();
        uploads.push(tokio::spawn(async move {
            let mut stream = SlowUpload::start(&base_url, &key, &format!("slow-{upload}")).await;
            // One line a second until told to end, as a slow client sends.
            let mut lines = 0;
            loop {
                stream.send_line(lines).await;
                lines += 1;
                if *finishing.borrow() && lines >= 2 {
                    break;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            (stream.end().await, lines)
        }));
    }
    // Every upload has begun sending (its dataset does not exist yet).
    tokio::time::sleep(Duration::from_millis(500)).await;
    for _ in 0..10 {
        let response = app.client.get("/v1/datasets").await.unwrap();
        assert_eq!(
            response.status, 200,
            "an authenticated request while the uploads trickle in: {:?}",
            response.body
        );
    }
    assert!(
        uploads.iter().all(|upload| !upload.is_finished()),
        "the uploads were still open while those requests were served"
    );
    finish.send(true).unwrap();
    for upload in uploads {
        let ((status, body), lines) = upload.await.unwrap();
        assert_eq!(status, 201, "{body}");
        assert_eq!(body["item_count"], lines, "{body}");
    }
}

#[tokio::test]
async fn an_upload_that_pauses_past_the_idle_time_is_a_408_and_writes_nothing() {
    let app = TestApp::spawn().await;
    let datasets_before = app.count_rows("datasets").await;
    let mut upload = SlowUpload::start(
        &app.client.base_url,
        app.client.key.as_deref().unwrap(),
        "paused",
    )
    .await;
    upload.send_line(0).await;
    // The test API's idle time is 5 s; the answer comes without the body's end.
    let (status, body) = upload.response().await;
    assert_eq!(status, 408, "{body}");
    assert_eq!(body["code"], "body_timeout", "{body}");
    assert!(
        body["detail"].as_str().unwrap().contains("paused"),
        "{body}"
    );
    assert_eq!(app.count_rows("datasets").await, datasets_before);
    assert_eq!(app.count_rows("dataset_items").await, 0);
}

/// A JSON Lines upload over a raw connection, sent in chunks as the test says.
struct SlowUpload {
    stream: TcpStream,
}

impl SlowUpload {
    async fn start(base_url: &str, key: &str, name: &str) -> Self {
        let address = base_url.trim_start_matches("http://");
        let mut stream = TcpStream::connect(address).await.unwrap();
        let head = format!(
            "POST /v1/datasets?name={name} HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {key}\r\n\
             Content-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        Self { stream }
    }

    async fn send_line(&mut self, n: usize) {
        let line = format!("{{\"id\": \"item-{n}\", \"vars\": {{\"question\": \"q{n}\"}}}}\n");
        let chunk = format!("{:x}\r\n{line}\r\n", line.len());
        self.stream.write_all(chunk.as_bytes()).await.unwrap();
    }

    async fn end(mut self) -> (u16, Value) {
        self.stream.write_all(b"0\r\n\r\n").await.unwrap();
        self.response().await
    }

    /// The status and JSON body, read by the response's `Content-Length`
    /// (the server may keep the connection open after a refused body).
    async fn response(&mut self) -> (u16, Value) {
        let mut answer = Vec::new();
        let mut buffer = [0u8; 4096];
        loop {
            let text = String::from_utf8_lossy(&answer).into_owned();
            if let Some(end_of_head) = text.find("\r\n\r\n") {
                let head = &text[..end_of_head];
                let length: usize = head
                    .lines()
                    .find_map(|line| {
                        let (name, value) = line.split_once(':')?;
                        name.eq_ignore_ascii_case("content-length")
                            .then(|| value.trim().parse().ok())?
                    })
                    .expect("the answer has a Content-Length");
                if answer.len() >= end_of_head + 4 + length {
                    let status = head
                        .split(' ')
                        .nth(1)
                        .and_then(|status| status.parse().ok())
                        .unwrap_or_else(|| panic!("no status in {head:?}"));
                    let body = &answer[end_of_head + 4..end_of_head + 4 + length];
                    return (status, serde_json::from_slice(body).unwrap_or(Value::Null));
                }
            }
            let read = self.stream.read(&mut buffer).await.unwrap();
            assert!(
                read > 0,
                "the connection closed before the answer: {text:?}"
            );
            answer.extend_from_slice(&buffer[..read]);
        }
    }
}
