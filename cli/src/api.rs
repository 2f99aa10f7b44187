//! The CLI's view of the API: the shared client ([`assay_client`]) with
//! patient timeouts, where an answer is its JSON on success and otherwise an
//! error that carries the API's problem detail (and the field at fault), so
//! a user sees why the server refused.

use std::time::Duration;

use anyhow::Context as _;
use assay_client::{Client, Response, Timeouts};
use serde_json::Value;

pub use assay_client::encode;

/// Long enough for a large upload or export; the connection itself should
/// open at once.
const TIMEOUTS: Timeouts = Timeouts {
    total: Duration::from_secs(600),
    connect: Some(Duration::from_secs(10)),
};

pub struct Api {
    client: Client,
}

impl Api {
    pub fn new(base_url: &str, key: &str) -> anyhow::Result<Self> {
        Ok(Self {
            client: Client::new(base_url, Some(key.to_owned()), TIMEOUTS)?,
        })
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.succeeded(self.client.get(path).await)
    }

    /// GET, with a 404 as None.
    pub async fn get_optional(&self, path: &str) -> anyhow::Result<Option<Value>> {
        let response = self.reached(self.client.get(path).await)?;
        if response.status == 404 {
            return Ok(None);
        }
        Self::success(response).map(Some)
    }

    pub async fn post(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        self.succeeded(self.client.post(path, body).await)
    }

    pub async fn put(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        self.succeeded(self.client.put(path, body).await)
    }

    /// POSTs a body of `content_type` (a dataset upload, possibly streamed).
    pub async fn post_body(
        &self,
        path: &str,
        content_type: &str,
        body: reqwest::Body,
    ) -> anyhow::Result<Value> {
        self.succeeded(self.client.post_raw(path, content_type, body).await)
    }

    fn succeeded(&self, response: anyhow::Result<Response>) -> anyhow::Result<Value> {
        Self::success(self.reached(response)?)
    }

    /// The answer, or why there was none.
    fn reached(&self, response: anyhow::Result<Response>) -> anyhow::Result<Response> {
        response.with_context(|| format!("cannot reach the API at {}", self.client.base_url))
    }

    /// The body of a success; a refusal as an error in the API's words.
    fn success(response: Response) -> anyhow::Result<Value> {
        if !response.is_success() {
            let status = reqwest::StatusCode::from_u16(response.status)
                .map_or_else(|_| response.status.to_string(), |status| status.to_string());
            let body = &response.body;
            let detail = body["detail"].as_str().unwrap_or("the API gave no detail");
            match body["field"].as_str() {
                Some(field) => anyhow::bail!("the API answered {status}: {field}: {detail}"),
                None => anyhow::bail!("the API answered {status}: {detail}"),
            }
        }
        Ok(response.body)
    }
}
