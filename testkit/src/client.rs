//! A JSON client for the API under test.

use std::time::Duration;

use serde_json::Value;

#[derive(Clone)]
pub struct Client {
    pub base_url: String,
    pub key: Option<String>,
    http: reqwest::Client,
}

/// A response: status, content type and body (JSON when it parses, else a string).
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
}

impl Client {
    pub fn new(base_url: impl Into<String>, key: Option<String>) -> Self {
        Self {
            base_url: base_url.into(),
            key,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("client builds"),
        }
    }

    pub fn with_key(&self, key: Option<String>) -> Self {
        Self {
            key,
            ..self.clone()
        }
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<Response> {
        self.send(self.http.get(format!("{}{path}", self.base_url)))
            .await
    }

    pub async fn post(&self, path: &str, body: &Value) -> anyhow::Result<Response> {
        self.send(
            self.http
                .post(format!("{}{path}", self.base_url))
                .json(body),
        )
        .await
    }

    /// POSTs JSON with extra headers (e.g. `X-Request-Id`).
    pub async fn post_with_headers(
        &self,
        path: &str,
        body: &Value,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<Response> {
        let mut request = self
            .http
            .post(format!("{}{path}", self.base_url))
            .json(body);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        self.send(request).await
    }

    pub async fn put(&self, path: &str, body: &Value) -> anyhow::Result<Response> {
        self.send(self.http.put(format!("{}{path}", self.base_url)).json(body))
            .await
    }

    pub async fn delete(&self, path: &str) -> anyhow::Result<Response> {
        self.send(self.http.delete(format!("{}{path}", self.base_url)))
            .await
    }

    /// POSTs raw bytes with a content type (for malformed bodies and JSONL uploads).
    pub async fn post_raw(
        &self,
        path: &str,
        content_type: &str,
        body: impl Into<reqwest::Body>,
    ) -> anyhow::Result<Response> {
        self.send(
            self.http
                .post(format!("{}{path}", self.base_url))
                .header("content-type", content_type)
                .body(body),
        )
        .await
    }

    /// Sends `method` to `path` with a JSON body (when given) and extra headers.
    pub async fn send_with_headers(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<Response> {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base_url));
        if let Some(body) = body {
            request = request.json(body);
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        self.send(request).await
    }

    /// POSTs raw bytes with a content type and extra headers.
    pub async fn post_raw_with_headers(
        &self,
        path: &str,
        content_type: &str,
        body: impl Into<reqwest::Body>,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<Response> {
        let mut request = self
            .http
            .post(format!("{}{path}", self.base_url))
            .header("content-type", content_type)
            .body(body);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        self.send(request).await
    }

    pub async fn request(&self, method: reqwest::Method, path: &str) -> anyhow::Result<Response> {
        self.send(
            self.http
                .request(method, format!("{}{path}", self.base_url)),
        )
        .await
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> anyhow::Result<Response> {
        let request = match &self.key {
            Some(key) => request.bearer_auth(key),
            None => request,
        };
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
