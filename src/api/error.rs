//! The control API's errors, its limits, and the small checks every
//! route shares.

use crate::actors::cluster_bus::ListMembers;
use crate::node::NodeHandle;
use crate::wire::Target;
use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde_json::json;
use std::fmt;
use tracing::warn;

/// The default and the largest timeout of `POST /v1/request`; the largest
/// is also the longest a deploy waits for results.
pub const DEFAULT_REQUEST_TIMEOUT_MS: u64 = 5_000;
pub const MAX_REQUEST_TIMEOUT_MS: u64 = 600_000;

/// An API error: `{"error": "<human sentence>", "code": "<snake_case>"}`
/// with a 4xx/5xx status.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.message, self.code)
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        HttpResponse::build(self.status).json(json!({"error": self.message, "code": self.code}))
    }
}

/// A selector from a query or body, parsed; a bad one is a 400 naming the term.
pub fn parse_target(target: Option<&str>) -> Result<Option<Target>, ApiError> {
    target
        .map(|t| {
            Target::parse(t).map_err(|e| {
                warn!(error = %e, "rejected API request with a bad selector");
                ApiError::bad_request("bad_selector", e.to_string())
            })
        })
        .transpose()
}

/// Every member, as the cluster side lists it.
pub async fn list_members(node: &NodeHandle) -> Result<Vec<crate::actors::Member>, ApiError> {
    node.ctx
        .cluster
        .members
        .send(ListMembers)
        .await
        .map_err(|_| ApiError::unavailable("the cluster bus is not running"))
}

/// A 400 with `code`, logged.
pub fn rejected(code: &'static str, message: impl Into<String>) -> ApiError {
    let api = ApiError::bad_request(code, message);
    warn!(code, error = %api.message, "rejected API request");
    api
}
