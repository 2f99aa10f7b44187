//! A thin JSON client: errors carry the API's problem detail (and the field
//! at fault), so a user sees why the server refused.

use anyhow::Context as _;
use serde_json::Value;

pub struct Api {
    base_url: String,
    key: String,
    http: reqwest::Client,
}

impl Api {
    pub fn new(base_url: &str, key: &str) -> anyhow::Result<Self> {
        Ok(Self {
            base_url: base_url.trim_end_matches('/').to_owned(),
            key: key.to_owned(),
            http: reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(600))
                .connect_timeout(std::time::Duration::from_secs(10))
                .build()?,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.send(self.http.get(self.url(path))).await
    }

    /// GET, with a 404 as None.
    pub async fn get_optional(&self, path: &str) -> anyhow::Result<Option<Value>> {
        let response = self
            .http
            .get(self.url(path))
            .bearer_auth(&self.key)
            .send()
            .await
            .with_context(|| format!("cannot reach the API at {}", self.base_url))?;
        if response.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        Self::read(response).await.map(Some)
    }

    pub async fn post(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        self.send(self.http.post(self.url(path)).json(body)).await
    }

    pub async fn put(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        self.send(self.http.put(self.url(path)).json(body)).await
    }

    /// POSTs a body of `content_type` (a dataset upload, possibly streamed).
    pub async fn post_body(
        &self,
        path: &str,
        content_type: &str,
        body: reqwest::Body,
    ) -> anyhow::Result<Value> {
        self.send(
            self.http
                .post(self.url(path))
                .header(reqwest::header::CONTENT_TYPE, content_type)
                .body(body),
        )
        .await
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> anyhow::Result<Value> {
        let response = request
            .bearer_auth(&self.key)
            .send()
            .await
            .with_context(|| format!("cannot reach the API at {}", self.base_url))?;
        Self::read(response).await
    }

    async fn read(response: reqwest::Response) -> anyhow::Result<Value> {
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            let detail = body["detail"].as_str().unwrap_or("the API gave no detail");
            match body["field"].as_str() {
                Some(field) => anyhow::bail!("the API answered {status}: {field}: {detail}"),
                None => anyhow::bail!("the API answered {status}: {detail}"),
            }
        }
        Ok(body)
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
