//! The HTTP client for Pictory's API: auth, timeouts, and every answer classified.

use super::report::JobReport;
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, RETRY_AFTER, USER_AGENT};
use reqwest::StatusCode;
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;
use std::time::{Duration, SystemTime};

/// Pictory sits behind Cloudflare, which refuses some default client agents (error 1010).
pub const USER_AGENT_VALUE: &str = concat!("jobhook/", env!("CARGO_PKG_VERSION"));

/// What one Get Job call told us.
#[derive(Debug, Clone)]
pub enum GetJob {
    /// A 200 with a readable body (which may itself say `JOB_NOT_FOUND`).
    Report {
        http_status: u16,
        report: JobReport,
        raw: String,
    },
    /// 404.
    NotFound { http_status: u16 },
    /// 401 or 403: the key is wrong, or Cloudflare refused us. A configuration problem.
    Unauthorized { http_status: u16, detail: String },
    /// 429.
    Throttled { retry_after: Option<Duration> },
    /// 5xx, or a 200 whose body is not JSON.
    ServerError {
        http_status: u16,
        retry_after: Option<Duration>,
    },
    /// Any other status.
    Unexpected { http_status: u16 },
    /// No answer: connection refused or reset, DNS, timeout.
    Network { detail: String },
}

impl GetJob {
    /// A short label for history entries and metrics.
    pub fn label(&self) -> String {
        match self {
            GetJob::Report { report, .. } => match &report.state {
                super::ReportedState::InProgress => "in_progress".into(),
                super::ReportedState::Completed(_) => "completed".into(),
                super::ReportedState::Failed(_) => "failed".into(),
                super::ReportedState::NotFound => "not_found".into(),
                super::ReportedState::Other(status) => format!("status:{status}"),
                super::ReportedState::Missing => "no_status".into(),
            },
            GetJob::NotFound { .. } => "not_found".into(),
            GetJob::Unauthorized { .. } => "unauthorized".into(),
            GetJob::Throttled { .. } => "throttled".into(),
            GetJob::ServerError { .. } => "server_error".into(),
            GetJob::Unexpected { .. } => "unexpected_status".into(),
            GetJob::Network { .. } => "network_error".into(),
        }
    }

    pub fn http_status(&self) -> Option<u16> {
        match self {
            GetJob::Report { http_status, .. }
            | GetJob::NotFound { http_status }
            | GetJob::Unauthorized { http_status, .. }
            | GetJob::ServerError { http_status, .. }
            | GetJob::Unexpected { http_status } => Some(*http_status),
            GetJob::Throttled { .. } => Some(429),
            GetJob::Network { .. } => None,
        }
    }

    /// True when Pictory answered as an authenticated API would (the key works).
    pub fn key_works(&self) -> bool {
        matches!(self, GetJob::Report { .. } | GetJob::NotFound { .. })
    }
}

/// What one Generate Video call did, classified by whether a paid job may exist.
#[derive(Debug, Clone)]
pub enum Generate {
    /// Pictory created the job.
    Created { job_id: String },
    /// Pictory refused the request (4xx other than 429): nothing was created.
    Rejected {
        http_status: u16,
        code: Option<String>,
        message: String,
        /// `(field, message)` pairs from Pictory's `fields`.
        fields: Vec<(String, String)>,
    },
    /// Certainly nothing was created (connection refused, 429, 503): safe to try again.
    NothingCreated {
        reason: String,
        retry_after: Option<Duration>,
    },
    /// A job may or may not exist (timeout after sending, 500, reset, unreadable answer).
    Ambiguous { reason: String },
}

/// Why a `GET /v1/quota` call gave nothing to relay.
#[derive(Debug, Clone, PartialEq)]
pub enum QuotaFailure {
    /// 401 or 403: the key is wrong, or Cloudflare refused us.
    Unauthorized { http_status: u16, detail: String },
    /// Trying again later may work: no answer (refused, reset, timed out), 429 or 503.
    Unavailable {
        reason: String,
        retry_after: Option<Duration>,
    },
    /// Any other status, or a 200 whose body is not JSON.
    Failed { reason: String },
}

#[derive(Clone)]
pub struct PictoryClient {
    http: reqwest::Client,
    base_url: String,
}

impl std::fmt::Debug for PictoryClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PictoryClient")
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

impl PictoryClient {
    pub fn new(base_url: &str, api_key: &SecretString, timeout: Duration) -> anyhow::Result<Self> {
        let mut key = HeaderValue::from_str(api_key.expose_secret())
            .map_err(|_| anyhow::anyhow!("pictory.api_key contains characters a header cannot"))?;
        key.set_sensitive(true);
        let mut headers = HeaderMap::new();
        // Pictory wants the bare key, no `Bearer` prefix.
        headers.insert(AUTHORIZATION, key);
        headers.insert(USER_AGENT, HeaderValue::from_static(USER_AGENT_VALUE));
        let http = reqwest::Client::builder()
            .default_headers(headers)
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(PictoryClient {
            http,
            base_url: base_url.trim_end_matches('/').to_owned(),
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    /// `POST /v1/aistudio/videos`, classified. Never retried here: the caller decides.
    pub async fn generate(&self, body: &Value) -> Generate {
        let sent = self
            .http
            .post(self.url("/v1/aistudio/videos"))
            .json(body)
            .send()
            .await;
        let response = match sent {
            Ok(response) => response,
            // A refused or failed connection never carried the request.
            Err(err) if err.is_connect() => {
                return Generate::NothingCreated {
                    reason: describe(&err),
                    retry_after: None,
                }
            }
            Err(err) => {
                return Generate::Ambiguous {
                    reason: describe(&err),
                }
            }
        };
        let status = response.status();
        let retry_after = retry_after(response.headers());
        let text = match response.text().await {
            Ok(text) => text,
            Err(err) => {
                return Generate::Ambiguous {
                    reason: format!("HTTP {status}, body unreadable: {}", describe(&err)),
                }
            }
        };
        let json: Option<Value> = serde_json::from_str(&text).ok();
        match status {
            s if s.is_success() => {
                let job_id = json.as_ref().and_then(|j| JobReport::from_json(j).job_id);
                match job_id {
                    Some(job_id) => Generate::Created { job_id },
                    None => Generate::Ambiguous {
                        reason: format!("HTTP {status} without a job id"),
                    },
                }
            }
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => {
                Generate::NothingCreated {
                    reason: format!("HTTP {status}"),
                    retry_after,
                }
            }
            s if s.is_client_error() => {
                let field =
                    |v: &Value, key: &str| v.get(key).and_then(Value::as_str).map(str::to_owned);
                let fields = json
                    .as_ref()
                    .and_then(|j| j.get("fields"))
                    .and_then(Value::as_array)
                    .map(|list| {
                        list.iter()
                            .map(|f| {
                                let errors = match f.get("errors") {
                                    Some(Value::String(text)) => text.clone(),
                                    Some(other) => other.to_string(),
                                    None => String::new(),
                                };
                                (field(f, "name").unwrap_or_default(), errors)
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                Generate::Rejected {
                    http_status: status.as_u16(),
                    code: json.as_ref().and_then(|j| field(j, "code")),
                    message: json
                        .as_ref()
                        .and_then(|j| field(j, "message"))
                        .unwrap_or_else(|| format!("Pictory answered HTTP {status}")),
                    fields,
                }
            }
            _ => Generate::Ambiguous {
                reason: format!("HTTP {status}"),
            },
        }
    }

    /// `GET /v1/jobs/{id}`, classified.
    pub async fn get_job(&self, job_id: &str) -> GetJob {
        let url = self.url(&format!("/v1/jobs/{}", urlencode(job_id)));
        let response = match self.http.get(&url).send().await {
            Ok(response) => response,
            Err(err) => {
                return GetJob::Network {
                    detail: describe(&err),
                }
            }
        };
        let status = response.status();
        let retry_after = retry_after(response.headers());
        let body = match response.text().await {
            Ok(body) => body,
            Err(err) => {
                return GetJob::Network {
                    detail: describe(&err),
                }
            }
        };
        classify(status, retry_after, body)
    }
}

impl PictoryClient {
    /// `GET /v1/quota` (the account's used and limit of video minutes and AI credits): the
    /// JSON body of a 200, verbatim. Its shape is documented only as "used and limit for video
    /// minutes and AI credits", so jobhook relays it rather than reading it.
    pub async fn quota(&self) -> Result<String, QuotaFailure> {
        let response = match self.http.get(self.url("/v1/quota")).send().await {
            Ok(response) => response,
            Err(err) => {
                return Err(QuotaFailure::Unavailable {
                    reason: describe(&err),
                    retry_after: None,
                })
            }
        };
        let status = response.status();
        let retry_after = retry_after(response.headers());
        match response.text().await {
            Ok(body) => classify_quota(status, retry_after, body),
            Err(err) => Err(QuotaFailure::Unavailable {
                reason: describe(&err),
                retry_after: None,
            }),
        }
    }
}

fn classify_quota(
    status: StatusCode,
    retry_after: Option<Duration>,
    body: String,
) -> Result<String, QuotaFailure> {
    match status {
        s if s.is_success() => {
            if serde_json::from_str::<Value>(&body).is_ok() {
                Ok(body)
            } else {
                Err(QuotaFailure::Failed {
                    reason: format!("HTTP {status} with a body that is not JSON"),
                })
            }
        }
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Err(QuotaFailure::Unauthorized {
            http_status: status.as_u16(),
            detail: unauthorized_detail(status, &body),
        }),
        StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => {
            Err(QuotaFailure::Unavailable {
                reason: format!("HTTP {status}"),
                retry_after,
            })
        }
        _ => Err(QuotaFailure::Failed {
            reason: format!("HTTP {status}"),
        }),
    }
}

fn classify(status: StatusCode, retry_after: Option<Duration>, body: String) -> GetJob {
    let http_status = status.as_u16();
    match status {
        StatusCode::OK => match serde_json::from_str::<Value>(&body) {
            Ok(json) => GetJob::Report {
                http_status,
                report: JobReport::from_json(&json),
                raw: body,
            },
            Err(_) => GetJob::ServerError {
                http_status,
                retry_after,
            },
        },
        StatusCode::NOT_FOUND => GetJob::NotFound { http_status },
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => GetJob::Unauthorized {
            http_status,
            detail: unauthorized_detail(status, &body),
        },
        StatusCode::TOO_MANY_REQUESTS => GetJob::Throttled { retry_after },
        s if s.is_server_error() => GetJob::ServerError {
            http_status,
            retry_after,
        },
        _ => GetJob::Unexpected { http_status },
    }
}

/// What a 401 or 403 from Pictory means, for a person to act on.
fn unauthorized_detail(status: StatusCode, body: &str) -> String {
    if body.contains("1010") {
        "Cloudflare refused the client (error code 1010); check the User-Agent and network"
            .to_owned()
    } else if status == StatusCode::UNAUTHORIZED {
        "Pictory refused the API key (pictory.api_key)".to_owned()
    } else {
        "Pictory answered 403 Forbidden; check pictory.api_key and the account".to_owned()
    }
}

/// `Retry-After` as seconds or as an HTTP date.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(
        when.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

fn describe(err: &reqwest::Error) -> String {
    if err.is_timeout() {
        "timed out".to_owned()
    } else if err.is_connect() {
        "could not connect".to_owned()
    } else {
        let mut text = err.to_string();
        let mut source = std::error::Error::source(err);
        while let Some(cause) = source {
            text.push_str(": ");
            text.push_str(&cause.to_string());
            source = cause.source();
        }
        text
    }
}

/// Job ids go into a path segment; anything outside the unreserved set is escaped.
fn urlencode(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for byte in segment.bytes() {
        // `.` is escaped too, so an id like `..` can never walk up the path.
        if byte.is_ascii_alphanumeric() || b"-_~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_classified() {
        let ok = classify(
            StatusCode::OK,
            None,
            r#"{"data":{"status":"in-progress"}}"#.into(),
        );
        assert_eq!(ok.label(), "in_progress");
        assert!(ok.key_works());
        assert_eq!(
            classify(StatusCode::OK, None, "<html>".into()).label(),
            "server_error"
        );
        assert_eq!(
            classify(StatusCode::NOT_FOUND, None, String::new()).label(),
            "not_found"
        );
        let cloudflare = classify(StatusCode::FORBIDDEN, None, "error code: 1010".into());
        let GetJob::Unauthorized { detail, .. } = cloudflare else {
            panic!()
        };
        assert!(detail.contains("1010"));
        assert_eq!(
            classify(StatusCode::UNAUTHORIZED, None, String::new()).label(),
            "unauthorized"
        );
        assert_eq!(
            classify(
                StatusCode::TOO_MANY_REQUESTS,
                Some(Duration::from_secs(7)),
                String::new()
            )
            .label(),
            "throttled"
        );
        assert_eq!(
            classify(StatusCode::BAD_GATEWAY, None, String::new()).label(),
            "server_error"
        );
        assert_eq!(
            classify(StatusCode::IM_A_TEAPOT, None, String::new()).label(),
            "unexpected_status"
        );
    }

    #[test]
    fn quota_answers_are_relayed_or_classified() {
        let body = r#"{"success":true,"data":{"aiCredits":{"used":1,"limit":2}}}"#;
        assert_eq!(
            classify_quota(StatusCode::OK, None, body.into()),
            Ok(body.to_owned())
        );
        assert!(matches!(
            classify_quota(StatusCode::OK, None, "<html>".into()),
            Err(QuotaFailure::Failed { .. })
        ));
        assert!(matches!(
            classify_quota(StatusCode::FORBIDDEN, None, "error code: 1010".into()),
            Err(QuotaFailure::Unauthorized { http_status: 403, detail }) if detail.contains("1010")
        ));
        assert_eq!(
            classify_quota(
                StatusCode::TOO_MANY_REQUESTS,
                Some(Duration::from_secs(3)),
                String::new()
            ),
            Err(QuotaFailure::Unavailable {
                reason: "HTTP 429 Too Many Requests".into(),
                retry_after: Some(Duration::from_secs(3))
            })
        );
        assert!(matches!(
            classify_quota(StatusCode::INTERNAL_SERVER_ERROR, None, String::new()),
            Err(QuotaFailure::Failed { .. })
        ));
    }

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, HeaderValue::from_static("12"));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(12)));
        let later = SystemTime::now() + Duration::from_secs(120);
        headers.insert(
            RETRY_AFTER,
            HeaderValue::from_str(&httpdate::fmt_http_date(later)).unwrap(),
        );
        let parsed = retry_after(&headers).unwrap();
        assert!(parsed > Duration::from_secs(110) && parsed <= Duration::from_secs(120));
        headers.insert(RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&headers), None);
    }

    #[test]
    fn job_ids_are_escaped_in_the_path() {
        assert_eq!(urlencode("4a09edf9-d071"), "4a09edf9-d071");
        assert_eq!(urlencode("../x y"), "%2E%2E%2Fx%20y");
    }
}
