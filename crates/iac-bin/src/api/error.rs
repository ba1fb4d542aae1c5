//! The admin API's one error shape, `{"error": {"code": "...", "message": "..."}}`, for every
//! 4xx/5xx: [`ApiError`] (what handlers and the [`super::ControlPlaneBackend`] return) and the
//! [`json_errors`] middleware that rewrites every other error response — axum's own rejections
//! (bad JSON, wrong content type, body too large, bad path/query), 404 for unknown routes, 405 —
//! into the same shape, keeping the rejection's text as the message.

use axum::Json;
use axum::body::Body;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use iac_core::AuthError;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// An error answered by the API.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code} ({status}): {message}")]
pub struct ApiError {
    /// HTTP status (4xx/5xx).
    pub status: u16,
    /// Stable machine-readable code, e.g. `conflict`, `not_found`.
    pub code: String,
    /// Human-readable; names the input and what was expected. Never contains a secret.
    pub message: String,
}

/// `{"error": {...}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorResponse {
    /// What went wrong.
    pub error: ErrorBody,
}

/// The inner object of every error response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// Stable machine-readable code.
    pub code: String,
    /// What went wrong and what was expected.
    pub message: String,
}

impl ApiError {
    /// An error answered with HTTP `status` and the machine-readable `code`.
    pub fn new(status: u16, code: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code: code.into(),
            message: message.into(),
        }
    }
    /// 400 `bad_request`: the request could not be read (not JSON, wrong shape).
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "bad_request", message)
    }
    /// 422 `invalid_request`: the request was read but a value in it is not valid.
    pub fn unprocessable(message: impl Into<String>) -> Self {
        Self::new(422, "invalid_request", message)
    }
    /// 404 `not_found`: the project, service or deployment does not exist.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(404, "not_found", message)
    }
    /// 409 `conflict`: the project is busy with another deploy or destroy.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(409, "conflict", message)
    }
    /// 503 `unavailable`: the server cannot take it now (shutting down, engine down); retry later.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(503, "unavailable", message)
    }
    /// 502 `bad_gateway`: a service's agent or the engine answered wrongly.
    pub fn bad_gateway(message: impl Into<String>) -> Self {
        Self::new(502, "bad_gateway", message)
    }
    /// 500 `internal`: a bug or an unexpected failure of iac itself.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(500, "internal", message)
    }

    /// The body sent to the client (`code` and `message`; the status goes in the response line).
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            code: self.code.clone(),
            message: self.message.clone(),
        }
    }

    /// The HTTP status (500 if `status` is not a valid code).
    pub fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    /// The gRPC status with the same meaning.
    pub fn to_grpc(&self) -> tonic::Status {
        let code = match self.status {
            400 | 422 => tonic::Code::InvalidArgument,
            401 => tonic::Code::Unauthenticated,
            403 => tonic::Code::PermissionDenied,
            404 => tonic::Code::NotFound,
            409 => tonic::Code::Aborted,
            413 | 429 => tonic::Code::ResourceExhausted,
            502..=504 => tonic::Code::Unavailable,
            _ => tonic::Code::Internal,
        };
        tonic::Status::new(code, self.message.clone())
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        let code = match &e {
            AuthError::Missing => "missing_credentials",
            AuthError::Malformed(_) => "malformed_credentials",
            AuthError::Invalid(_) => "invalid_credentials",
            AuthError::Expired => "token_expired",
            AuthError::NotYetValid => "token_not_yet_valid",
            AuthError::Forbidden(_) => "forbidden",
            AuthError::Unavailable(_) => "auth_unavailable",
        };
        ApiError::new(e.status(), code, e.to_string())
    }
}

impl From<iac_core::Error> for ApiError {
    /// A request the core refused is the caller's (422, 409 for a conflict, 404 for a service
    /// the agent does not know); the engine unreachable is 503; a provisioner or agent that failed
    /// is an upstream failure (502); anything else is ours (500).
    fn from(e: iac_core::Error) -> Self {
        use iac_core::{Error as E, ProbeError, ProvisionError};
        let message = e.to_string();
        match &e {
            E::Slug(_) | E::Repos(_) | E::Name(_) => ApiError::unprocessable(message),
            E::Provision(ProvisionError::Conflict(_)) => ApiError::conflict(message),
            E::Provision(ProvisionError::Engine(_)) => ApiError::unavailable(message),
            E::Provision(ProvisionError::Tool { .. } | ProvisionError::Invalid(_)) => {
                ApiError::bad_gateway(message)
            }
            E::Probe(ProbeError::NotFound(_)) => ApiError::not_found(message),
            E::Probe(_) => ApiError::bad_gateway(message),
            E::Auth(a) => ApiError::from(a.clone()),
            _ => ApiError::internal(message),
        }
    }
}

impl From<iac_core::ProvisionError> for ApiError {
    fn from(e: iac_core::ProvisionError) -> Self {
        ApiError::from(iac_core::Error::from(e))
    }
}

impl From<iac_core::ProbeError> for ApiError {
    fn from(e: iac_core::ProbeError) -> Self {
        ApiError::from(iac_core::Error::from(e))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status_code();
        let mut resp = (status, Json(ErrorResponse { error: self.body() })).into_response();
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"iac\", error=\"invalid_token\""),
            );
        }
        if status == StatusCode::SERVICE_UNAVAILABLE {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        }
        resp
    }
}

/// The `code` used for a bare status.
fn code_for(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "bad_request",
        401 => "unauthorized",
        403 => "forbidden",
        404 => "not_found",
        405 => "method_not_allowed",
        408 => "request_timeout",
        409 => "conflict",
        413 => "payload_too_large",
        415 => "unsupported_media_type",
        422 => "invalid_request",
        429 => "too_many_requests",
        502 => "bad_gateway",
        503 => "unavailable",
        504 => "gateway_timeout",
        s if s >= 500 => "internal",
        _ => "error",
    }
}

/// Largest rejection body read to become a message.
const MAX_REJECTION_TEXT: usize = 16 * 1024;

/// Which methods each documented path template accepts, to fill `Allow` and the message of a
/// 405 (axum's own 405 carries no usable `Allow` for routes registered through utoipa-axum).
#[derive(Debug, Default)]
pub struct AllowTable(Vec<(Vec<String>, Vec<String>)>);

impl AllowTable {
    /// From an OpenAPI document's `paths`.
    pub fn from_openapi(doc: &utoipa::openapi::OpenApi) -> Self {
        let v = serde_json::to_value(&doc.paths.paths).unwrap_or_default();
        let mut out = Vec::new();
        if let Some(paths) = v.as_object() {
            for (template, item) in paths {
                let segs = template.split('/').map(str::to_string).collect();
                let mut methods: Vec<String> = item
                    .as_object()
                    .map(|o| {
                        o.keys()
                            .map(|m| m.to_uppercase())
                            .filter(|m| m != "PARAMETERS")
                            .collect()
                    })
                    .unwrap_or_default();
                methods.sort();
                out.push((segs, methods));
            }
        }
        AllowTable(out)
    }

    /// The methods `path` accepts, comma-separated, if it is a known path.
    pub fn allowed(&self, path: &str) -> Option<String> {
        let segs: Vec<&str> = path.split('/').collect();
        self.0.iter().find_map(|(tpl, methods)| {
            let matches = tpl.len() == segs.len()
                && tpl
                    .iter()
                    .zip(&segs)
                    .all(|(t, s)| (t.starts_with('{') && !s.is_empty()) || t == s);
            matches.then(|| methods.join(", "))
        })
    }
}

/// Rewrites every 4xx/5xx response that is not JSON already into the error shape. gRPC answers
/// (always HTTP 200 with a `grpc-status`) pass untouched.
pub async fn json_errors(
    State(allow): State<Arc<AllowTable>>,
    req: Request,
    next: Next,
) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let resp = next.run(req).await;
    let status = resp.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return resp;
    }
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let text = match axum::body::to_bytes(body, MAX_REJECTION_TEXT).await {
        Ok(b) => String::from_utf8_lossy(&b).trim().to_string(),
        Err(_) => String::new(),
    };
    let message = match status {
        StatusCode::NOT_FOUND if text.is_empty() => format!("no route for {method} {path}"),
        StatusCode::METHOD_NOT_ALLOWED => {
            let allowed = allow.allowed(&path).unwrap_or_default();
            if let Ok(v) = HeaderValue::from_str(&allowed) {
                parts.headers.insert(header::ALLOW, v);
            }
            format!("method {method} is not allowed on {path}; allowed: {allowed}")
        }
        StatusCode::PAYLOAD_TOO_LARGE => {
            format!(
                "request body too large{}",
                if text.is_empty() {
                    String::new()
                } else {
                    format!(": {text}")
                }
            )
        }
        _ if text.is_empty() => status.canonical_reason().unwrap_or("error").to_string(),
        _ => text,
    };
    let body = serde_json::to_vec(&ErrorResponse {
        error: ErrorBody {
            code: code_for(status).to_string(),
            message,
        },
    })
    .expect("error body serializes");
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use iac_core::{ProbeError, ProvisionError};

    #[test]
    fn core_errors_map_to_the_status_that_names_whose_fault_it_is() {
        let conflict = ApiError::from(ProvisionError::Conflict(
            "docker engine: create container demo-web: name in use".into(),
        ));
        assert_eq!(conflict.status_code(), StatusCode::CONFLICT);
        assert_eq!(conflict.body().code, "conflict");
        assert!(conflict.body().message.contains("name in use"));
        let cases = [
            (
                ApiError::from(ProvisionError::Engine("unreachable".into())),
                503,
            ),
            (
                ApiError::from(ProvisionError::Tool {
                    tool: "terraform".into(),
                    step: "apply".into(),
                    code: Some(1),
                    message: "boom".into(),
                }),
                502,
            ),
            (ApiError::from(ProbeError::NotFound("web".into())), 404),
            (ApiError::from(ProbeError::Tls("bad cert".into())), 502),
        ];
        for (e, want) in cases {
            assert_eq!(e.status_code().as_u16(), want, "{:?}", e.body());
        }
    }
}
