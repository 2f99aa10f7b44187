//! Reading request bodies that arrive slowly: every body is read within a
//! longest pause and a longest total time (408 `body_timeout` past either),
//! and within the size limit.

use actix_web::web;
use futures::StreamExt;

use crate::errors::ApiError;

/// How slowly a client may send a body. A client that trickles its body
/// holds only its own socket (uploads are spooled before a database
/// connection is taken), but it must not hold even that for ever.
#[derive(Debug, Clone, Copy)]
pub struct BodyTimeouts {
    /// Longest pause between two pieces of the body (`ASSAY_BODY_IDLE_TIMEOUT`).
    pub idle: std::time::Duration,
    /// Longest time for the whole body (`ASSAY_BODY_TIMEOUT`).
    pub total: std::time::Duration,
}

/// Reads a body piece by piece within `timeouts` and at most `limit` bytes.
pub struct BodyReader {
    payload: web::Payload,
    timeouts: BodyTimeouts,
    deadline: tokio::time::Instant,
    limit: usize,
    read: usize,
}

impl BodyReader {
    pub fn new(payload: web::Payload, timeouts: BodyTimeouts, limit: usize) -> Self {
        Self {
            payload,
            timeouts,
            deadline: tokio::time::Instant::now() + timeouts.total,
            limit,
            read: 0,
        }
    }

    /// The next piece of the body; None at its end.
    pub async fn next(&mut self) -> Result<Option<web::Bytes>, ApiError> {
        let idle_until = tokio::time::Instant::now() + self.timeouts.idle;
        let (until, what) = if idle_until < self.deadline {
            (
                idle_until,
                format!("paused for more than {:?}", self.timeouts.idle),
            )
        } else {
            (
                self.deadline,
                format!("took more than {:?}", self.timeouts.total),
            )
        };
        let piece = match tokio::time::timeout_at(until, self.payload.next()).await {
            Ok(piece) => piece,
            Err(_) => {
                metrics::counter!("assay_request_body_timeouts_total").increment(1);
                return Err(ApiError::BodyTimeout(format!("the request body {what}")));
            }
        };
        let Some(piece) = piece else {
            return Ok(None);
        };
        let piece =
            piece.map_err(|error| ApiError::MalformedJson(format!("reading the body: {error}")))?;
        self.read += piece.len();
        if self.read > self.limit {
            return Err(ApiError::PayloadTooLarge(self.limit));
        }
        Ok(Some(piece))
    }
}

/// The whole body, at most `limit` bytes, within `timeouts`.
pub async fn read_whole(
    payload: web::Payload,
    timeouts: BodyTimeouts,
    limit: usize,
) -> Result<web::BytesMut, ApiError> {
    let mut reader = BodyReader::new(payload, timeouts, limit);
    let mut body = web::BytesMut::new();
    while let Some(piece) = reader.next().await? {
        body.extend_from_slice(&piece);
    }
    Ok(body)
}
