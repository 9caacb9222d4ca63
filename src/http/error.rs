//! The one error type every handler returns, rendered as `{"error": {"code", "message"}}`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use serde_json::json;

use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    NotFound(String),
    #[error("{message}")]
    BadRequest { code: &'static str, message: String },
    #[error("missing or invalid bearer token")]
    Unauthorized,
    #[error("{0}")]
    InvalidSignature(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    HeadersTooLarge(String),
    #[error("{0}")]
    RequestTimeout(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{message}")]
    Unprocessable {
        code: &'static str,
        message: String,
        fields: Vec<FieldError>,
    },
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    RateLimited(String),
    #[error("{0}")]
    RangeNotSatisfiable(String),
    #[error("storage is unavailable, retry later")]
    Unavailable { retry_after_secs: u32 },
    /// Pictory answered with an error, or with something jobhook cannot relay: `502`.
    #[error("{message}")]
    BadGateway { code: &'static str, message: String },
    /// Pictory could not be reached or asked to wait: `503` with `Retry-After`.
    #[error("{message}")]
    UpstreamUnavailable {
        message: String,
        retry_after_secs: u32,
    },
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

/// One invalid field of a request body.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

/// The error body, for the OpenAPI description.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable, machine-readable: `not_found`, `bad_request`, `unauthorized`, ...
    pub code: String,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fields: Option<Vec<FieldError>>,
}

impl ApiError {
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::BadRequest {
            code,
            message: message.into(),
        }
    }

    pub fn invalid_field(field: &str, message: impl Into<String>) -> Self {
        let message = message.into();
        ApiError::Unprocessable {
            code: "invalid_request",
            message: format!("{field}: {message}"),
            fields: vec![FieldError {
                field: field.to_owned(),
                message,
            }],
        }
    }

    /// The HTTP status this error answers with.
    pub fn status(&self) -> StatusCode {
        self.status_and_code().0
    }

    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::BadRequest { code, .. } => (StatusCode::BAD_REQUEST, code),
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::InvalidSignature(_) => (StatusCode::UNAUTHORIZED, "invalid_signature"),
            ApiError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            ApiError::RequestTimeout(_) => (StatusCode::REQUEST_TIMEOUT, "request_timeout"),
            ApiError::HeadersTooLarge(_) => (
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "headers_too_large",
            ),
            ApiError::UnsupportedMediaType(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            ApiError::Unprocessable { code, .. } => (StatusCode::UNPROCESSABLE_ENTITY, code),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            ApiError::RateLimited(_) => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            ApiError::RangeNotSatisfiable(_) => {
                (StatusCode::RANGE_NOT_SATISFIABLE, "range_not_satisfiable")
            }
            ApiError::Unavailable { .. } => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ApiError::BadGateway { code, .. } => (StatusCode::BAD_GATEWAY, code),
            ApiError::UpstreamUnavailable { .. } => {
                (StatusCode::SERVICE_UNAVAILABLE, "upstream_unavailable")
            }
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        tracing::error!(error = %err, "storage failed");
        ApiError::Unavailable {
            retry_after_secs: 5,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        if let ApiError::Internal(cause) = &self {
            // The cause chain goes to the log, never to the client.
            tracing::error!(error = format!("{cause:#}"), "request failed");
        }
        let mut error = json!({"code": code, "message": self.to_string()});
        if let ApiError::Unprocessable { fields, .. } = &self {
            if !fields.is_empty() {
                error["fields"] = json!(fields);
            }
        }
        let mut response = (status, Json(json!({ "error": error }))).into_response();
        match &self {
            ApiError::RateLimited(_) => {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(1));
            }
            ApiError::Unavailable { retry_after_secs }
            | ApiError::UpstreamUnavailable {
                retry_after_secs, ..
            } => {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_secs));
            }
            ApiError::Unauthorized => {
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            _ => {}
        }
        response
    }
}
