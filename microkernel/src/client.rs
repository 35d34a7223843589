//! The node API client (`/node/v1/` on the rack agent's HTTP server).

use std::time::Duration;

use protocol::node::{ActionResult, CheckinRequest, CheckinResponse, LogsRequest, NodeAction};
use protocol::Mac;
use reqwest::StatusCode;

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No connection or no answer.
    #[error("{url}: {source}")]
    Transport {
        /// The URL called.
        url: String,
        /// The transport error.
        #[source]
        source: reqwest::Error,
    },
    /// The rack agent answered with an error status.
    #[error("{url}: HTTP {status}: {body}")]
    Status {
        /// The URL called.
        url: String,
        /// The status.
        status: StatusCode,
        /// The error body (JSON `{code, message, field?}`).
        body: String,
    },
}

/// Talks to one rack agent on behalf of one machine.
#[derive(Debug, Clone)]
pub struct NodeClient {
    http: reqwest::Client,
    base: String,
    mac: Mac,
}

/// Extra time on top of a long poll's `wait` before the request is given up.
const POLL_SLACK: Duration = Duration::from_secs(10);
/// Timeout of the short calls.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

impl NodeClient {
    /// A client for the rack agent at `base` (`http://host:port`), reporting as `mac`.
    pub fn new(base: &str, mac: Mac) -> NodeClient {
        NodeClient {
            http: reqwest::Client::new(),
            base: base.trim_end_matches('/').to_owned(),
            mac,
        }
    }

    /// The MAC this client reports as.
    pub fn mac(&self) -> Mac {
        self.mac
    }

    fn url(&self, path: &str) -> String {
        format!("{}/node/v1/{path}", self.base)
    }

    async fn check(url: String, r: reqwest::Response) -> Result<reqwest::Response, ClientError> {
        if r.status().is_success() {
            return Ok(r);
        }
        let status = r.status();
        let body = r.text().await.unwrap_or_default();
        Err(ClientError::Status { url, status, body })
    }

    /// Reports the machine's inventory.
    pub async fn checkin(&self, req: &CheckinRequest) -> Result<CheckinResponse, ClientError> {
        let url = self.url("checkin");
        let transport = |source| ClientError::Transport {
            url: url.clone(),
            source,
        };
        let r = self
            .http
            .post(&url)
            .timeout(CALL_TIMEOUT)
            .json(req)
            .send()
            .await
            .map_err(transport)?;
        let r = Self::check(url.clone(), r).await?;
        r.json().await.map_err(transport)
    }

    /// Waits up to `wait` for the next action; `None` when none came.
    pub async fn next(&self, wait: Duration) -> Result<Option<NodeAction>, ClientError> {
        let url = self.url("next");
        let transport = |source| ClientError::Transport {
            url: url.clone(),
            source,
        };
        let r = self
            .http
            .get(&url)
            .query(&[
                ("mac", self.mac.to_string()),
                ("wait", wait.as_secs().to_string()),
            ])
            .timeout(wait + POLL_SLACK)
            .send()
            .await
            .map_err(transport)?;
        if r.status() == StatusCode::NO_CONTENT {
            return Ok(None);
        }
        let r = Self::check(url.clone(), r).await?;
        r.json().await.map(Some).map_err(transport)
    }

    /// Sends log lines, attributed to `action` when given.
    pub async fn logs(&self, action: Option<&str>, lines: Vec<String>) -> Result<(), ClientError> {
        let url = self.url("logs");
        let body = LogsRequest {
            mac: self.mac,
            action: action.map(str::to_owned),
            lines,
        };
        let r = self
            .http
            .post(&url)
            .timeout(CALL_TIMEOUT)
            .json(&body)
            .send()
            .await
            .map_err(|source| ClientError::Transport {
                url: url.clone(),
                source,
            })?;
        Self::check(url, r).await.map(|_| ())
    }

    /// Reports an action's result.
    pub async fn result(&self, result: &ActionResult) -> Result<(), ClientError> {
        let url = self.url("results");
        let r = self
            .http
            .post(&url)
            .timeout(CALL_TIMEOUT)
            .json(result)
            .send()
            .await
            .map_err(|source| ClientError::Transport {
                url: url.clone(),
                source,
            })?;
        Self::check(url, r).await.map(|_| ())
    }
}
