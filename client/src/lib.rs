//! The Assay API's HTTP client, one for every caller: the `assay` CLI (which
//! turns an answer into success or a clear error, see `assay-cli`'s `api`)
//! and the tests (which look at any answer, see `assay-testkit`).
//!
//! It builds URLs, adds the bearer key, applies the caller's timeouts, sends,
//! and reads every answer whole into a [`Response`], whatever its status:
//! what a status means is the caller's business.

use std::time::Duration;

use anyhow::Context as _;
use reqwest::Method;
use serde_json::Value;

/// How long a request may take. Each caller picks its own: the CLI waits
/// long for a large upload, a test gives up soon on a server that hangs.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// From sending to the last byte of the answer.
    pub total: Duration,
    /// To open the connection; None: only `total` applies.
    pub connect: Option<Duration>,
}

#[derive(Clone)]
pub struct Client {
    /// Where the API is, without a trailing `/`: paths are appended to it.
    pub base_url: String,
    /// Sent as a bearer token; None sends no `Authorization`.
    pub key: Option<String>,
    http: reqwest::Client,
}

/// An answer: status, the headers callers look at, and the body (JSON when
/// it parses, else its text as a JSON string).
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub content_type: String,
    pub location: Option<String>,
    /// The `X-Request-Id` the server answered with.
    pub request_id: Option<String>,
    /// Every header of the answer (rate limits, replays).
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Response {
    /// A header's value as text, if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|value| value.to_str().ok())
    }

    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

impl Client {
    pub fn new(
        base_url: impl Into<String>,
        key: Option<String>,
        timeouts: Timeouts,
    ) -> anyhow::Result<Self> {
        let mut http = reqwest::Client::builder().timeout(timeouts.total);
        if let Some(connect) = timeouts.connect {
            http = http.connect_timeout(connect);
        }
        let base_url: String = base_url.into();
        Ok(Self {
            base_url: base_url.trim_end_matches('/').to_owned(),
            key,
            http: http.build().context("building the HTTP client")?,
        })
    }

    /// The same client (and connection pool) with another key.
    pub fn with_key(&self, key: Option<String>) -> Self {
        Self {
            key,
            ..self.clone()
        }
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<Response> {
        self.request(Method::GET, path).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> anyhow::Result<Response> {
        self.send_with_headers(Method::POST, path, Some(body), &[])
            .await
    }

    /// POSTs JSON with extra headers (e.g. `X-Request-Id`).
    pub async fn post_with_headers(
        &self,
        path: &str,
        body: &Value,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<Response> {
        self.send_with_headers(Method::POST, path, Some(body), headers)
            .await
    }

    pub async fn put(&self, path: &str, body: &Value) -> anyhow::Result<Response> {
        self.send_with_headers(Method::PUT, path, Some(body), &[])
            .await
    }

    pub async fn delete(&self, path: &str) -> anyhow::Result<Response> {
        self.request(Method::DELETE, path).await
    }

    /// Sends `method` to `path` with no body.
    pub async fn request(&self, method: Method, path: &str) -> anyhow::Result<Response> {
        self.send_with_headers(method, path, None, &[]).await
    }

    /// Sends `method` to `path` with a JSON body (when given) and extra headers.
    pub async fn send_with_headers(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<Response> {
        let mut request = self.http.request(method, self.url(path));
        if let Some(body) = body {
            request = request.json(body);
        }
        self.send(request, headers).await
    }

    /// POSTs a body of `content_type`: a dataset upload (possibly streamed
    /// from disk), or bytes that are not JSON at all.
    pub async fn post_raw(
        &self,
        path: &str,
        content_type: &str,
        body: impl Into<reqwest::Body>,
    ) -> anyhow::Result<Response> {
        self.post_raw_with_headers(path, content_type, body, &[])
            .await
    }

    /// [`Self::post_raw`] with extra headers.
    pub async fn post_raw_with_headers(
        &self,
        path: &str,
        content_type: &str,
        body: impl Into<reqwest::Body>,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<Response> {
        let request = self
            .http
            .post(self.url(path))
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .body(body);
        self.send(request, headers).await
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    async fn send(
        &self,
        mut request: reqwest::RequestBuilder,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<Response> {
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some(key) = &self.key {
            request = request.bearer_auth(key);
        }
        let response = request.send().await?;
        let status = response.status().as_u16();
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|value| value.to_str().ok())
                .map(str::to_owned)
        };
        let content_type = header("content-type").unwrap_or_default();
        let location = header("location");
        let request_id = header("x-request-id");
        let headers = response.headers().clone();
        let text = response.text().await?;
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Ok(Response {
            status,
            content_type,
            location,
            request_id,
            headers,
            body,
        })
    }
}

/// Percent-encodes a path segment or query value.
pub fn encode(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (byte as char).to_string()
            }
            _ => format!("%{byte:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_all_but_unreserved_bytes() {
        assert_eq!(encode("a-b_c.d~e"), "a-b_c.d~e");
        assert_eq!(
            encode("support bot/v2?x=1&é"),
            "support%20bot%2Fv2%3Fx%3D1%26%C3%A9"
        );
    }

    #[test]
    fn paths_are_appended_to_the_base_without_its_trailing_slash() {
        let timeouts = Timeouts {
            total: Duration::from_secs(1),
            connect: None,
        };
        let client = Client::new("http://127.0.0.1:8080/", None, timeouts).unwrap();
        assert_eq!(client.url("/v1/models"), "http://127.0.0.1:8080/v1/models");
    }
}
