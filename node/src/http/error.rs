//! One error type for the HTTP API: every failure becomes a status code and the JSON body
//! `{"error": {"code": "...", "message": "..."}}` in exactly one place ([`ApiError`]'s
//! `IntoResponse`). A decision-layer [`ClusterError`] becomes an `ApiError` in one `match`
//! (`From<ClusterError>`), here and nowhere else; the peer port sends that same form to a node
//! that forwarded an admin operation (as [`crate::cluster::error::RemoteError`], the same fields),
//! so a client sees the coordinator's error unchanged.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use crate::cluster::ClusterError;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message} ({code}, HTTP {status})")]
pub struct ApiError {
    pub status: u16,
    pub code: String,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        ApiError {
            status: status.as_u16(),
            code: code.to_string(),
            message: message.into(),
        }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }
    pub fn conflict(code: &str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code, message)
    }
    pub fn unavailable(code: &str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, code, message)
    }
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }
    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }
    pub fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }
}

impl From<ClusterError> for ApiError {
    fn from(e: ClusterError) -> ApiError {
        use ClusterError as E;
        use StatusCode as S;
        let (status, code) = match &e {
            E::NoLeader => (S::SERVICE_UNAVAILABLE, "no_leader"),
            E::NotLeader(_) => (S::SERVICE_UNAVAILABLE, "not_leader"),
            E::LeaderUnreachable { .. } => (S::SERVICE_UNAVAILABLE, "leader_unreachable"),
            E::CoordinatorUnreachable(_) => (S::SERVICE_UNAVAILABLE, "coordinator_unreachable"),
            E::ShuttingDown(_) => (S::SERVICE_UNAVAILABLE, "shutting_down"),
            E::Timeout(_) => (S::SERVICE_UNAVAILABLE, "timeout"),
            E::PreviousLeaseRunning => (S::SERVICE_UNAVAILABLE, "previous_lease_running"),
            E::SteppedDown(_) => (S::CONFLICT, "stepped_down"),
            E::NotPrimary(_) => (S::CONFLICT, "not_primary"),
            E::Invalid(_) => (S::BAD_REQUEST, "bad_request"),
            E::NotFound(_) => (S::NOT_FOUND, "not_found"),
            E::Rejected(_) => (S::CONFLICT, "rejected"),
            E::MembershipChangeInProgress(_) => (S::CONFLICT, "membership_change_in_progress"),
            E::EmptyMembership => (S::CONFLICT, "empty_membership"),
            E::DuplicateId(_) => (S::CONFLICT, "duplicate_id"),
            E::DuplicateAddress(_) => (S::CONFLICT, "duplicate_address"),
            E::AlreadyVoter(_) => (S::CONFLICT, "already_voter"),
            E::NotCaughtUp(_) => (S::CONFLICT, "not_caught_up"),
            E::QuorumAtRisk(_) => (S::CONFLICT, "quorum_at_risk"),
            E::BadTarget(_) => (S::CONFLICT, "bad_target"),
            E::NoPrimary => (S::CONFLICT, "no_primary"),
            E::NoCandidate => (S::CONFLICT, "no_candidate"),
            E::PrimaryHealthy(_) => (S::CONFLICT, "primary_healthy"),
            E::Internal(_) => (S::INTERNAL_SERVER_ERROR, "internal"),
            E::Remote(r) => {
                return ApiError {
                    status: r.status,
                    code: r.code.clone(),
                    message: r.message.clone(),
                }
            }
        };
        ApiError::new(status, code, e.to_string())
    }
}

#[derive(Serialize)]
struct Body<'a> {
    error: Inner<'a>,
}
#[derive(Serialize)]
struct Inner<'a> {
    code: &'a str,
    message: &'a str,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Body {
            error: Inner {
                code: &self.code,
                message: &self.message,
            },
        };
        (self.status_code(), axum::Json(body)).into_response()
    }
}

/// `axum::extract::Path` whose rejection (a segment that is not UTF-8, a missing parameter) is a JSON
/// 400 in Keel's error format instead of axum's plain-text answer.
pub struct ApiPath<T>(pub T);

impl<S, T> axum::extract::FromRequestParts<S> for ApiPath<T>
where
    T: serde::de::DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(value)) => Ok(ApiPath(value)),
            Err(e) => Err(ApiError::bad_request(format!(
                "{}; percent-encode keys and paths as UTF-8",
                e.body_text()
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn renders_contract_body() {
        let resp = ApiError::conflict("duplicate_id", "member 3 exists").into_response();
        assert_eq!(resp.status(), StatusCode::CONFLICT);
        let bytes = axum::body::to_bytes(resp.into_body(), 1024).await.unwrap();
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["error"]["code"], "duplicate_id");
        assert_eq!(v["error"]["message"], "member 3 exists");
    }
}
