//! A webhook receiver for tests: a real HTTP/1.1 server on a local port
//! that records every request and answers with the status a script picks
//! by the request's number (e.g. 500 three times, then 200).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// One request as it arrived, and the status it was answered.
#[derive(Debug, Clone)]
pub struct Received {
    /// Header names in lower case.
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
    pub status: u16,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }
}

type Script = dyn Fn(usize) -> u16 + Send + Sync;

pub struct Receiver {
    /// `http://127.0.0.1:<port>/hook`.
    pub url: String,
    received: Arc<Mutex<Vec<Received>>>,
    server: tokio::task::JoinHandle<()>,
}

impl Receiver {
    /// Answers 500 to the first `failures` requests, then 200.
    pub async fn failing_first(failures: usize) -> anyhow::Result<Self> {
        Self::scripted(move |index| if index < failures { 500 } else { 200 }).await
    }

    /// Answers every request with `status`.
    pub async fn always(status: u16) -> anyhow::Result<Self> {
        Self::scripted(move |_| status).await
    }

    /// Answers request number `n` (from 0) with `script(n)`.
    pub async fn scripted(
        script: impl Fn(usize) -> u16 + Send + Sync + 'static,
    ) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}/hook", listener.local_addr()?);
        let received = Arc::new(Mutex::new(Vec::new()));
        let script: Arc<Script> = Arc::new(script);
        let counter = Arc::new(AtomicUsize::new(0));
        let server = tokio::spawn({
            let received = received.clone();
            async move {
                while let Ok((stream, _)) = listener.accept().await {
                    let (received, script, counter) =
                        (received.clone(), script.clone(), counter.clone());
                    tokio::spawn(async move {
                        let _ = serve(stream, received, script, counter).await;
                    });
                }
            }
        });
        Ok(Self {
            url,
            received,
            server,
        })
    }

    /// Every request so far, in arrival order.
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().expect("not poisoned").clone()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// One request per connection (the answer closes it).
async fn serve(
    mut stream: TcpStream,
    received: Arc<Mutex<Vec<Received>>>,
    script: Arc<Script>,
    counter: Arc<AtomicUsize>,
) -> anyhow::Result<()> {
    let mut buffer = Vec::new();
    let header_end = loop {
        let mut chunk = [0u8; 4096];
        let read = stream.read(&mut chunk).await?;
        anyhow::ensure!(read > 0, "connection closed before the headers ended");
        buffer.extend_from_slice(&chunk[..read]);
        if let Some(end) = buffer.windows(4).position(|window| window == b"\r\n\r\n") {
            break end;
        }
        anyhow::ensure!(buffer.len() < 1 << 20, "headers too long");
    };
    let head = String::from_utf8_lossy(&buffer[..header_end]).into_owned();
    let headers: HashMap<String, String> = head
        .lines()
        .skip(1)
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    let length: usize = headers
        .get("content-length")
        .and_then(|value| value.parse().ok())
        .unwrap_or(0);
    let mut body = buffer[header_end + 4..].to_vec();
    while body.len() < length {
        let mut chunk = vec![0u8; length - body.len()];
        let read = stream.read(&mut chunk).await?;
        anyhow::ensure!(read > 0, "connection closed before the body ended");
        body.extend_from_slice(&chunk[..read]);
    }
    let status = script(counter.fetch_add(1, Ordering::SeqCst));
    received.lock().expect("not poisoned").push(Received {
        headers,
        body,
        status,
    });
    let reason = if status < 300 { "OK" } else { "Error" };
    let answer = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: text/plain\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"
    );
    stream.write_all(answer.as_bytes()).await?;
    stream.shutdown().await?;
    Ok(())
}
