//! The API client of the tests: the product's own ([`assay_client`]), with
//! the tests' timeout, so tests send what users send.

use std::ops::Deref;
use std::time::Duration;

pub use assay_client::{Response, encode};

/// [`assay_client::Client`] that gives up after 30 s: a server that hangs
/// fails its test instead of stalling the run.
#[derive(Clone)]
pub struct Client(assay_client::Client);

const TIMEOUTS: assay_client::Timeouts = assay_client::Timeouts {
    total: Duration::from_secs(30),
    connect: None,
};

impl Client {
    pub fn new(base_url: impl Into<String>, key: Option<String>) -> Self {
        Self(assay_client::Client::new(base_url, key, TIMEOUTS).expect("client builds"))
    }

    pub fn with_key(&self, key: Option<String>) -> Self {
        Self(self.0.with_key(key))
    }
}

impl Deref for Client {
    type Target = assay_client::Client;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}
