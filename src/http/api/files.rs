//! `/v1/jobs/{id}/files/{name}` and `/v1/jobs/{id}/archive`: the output archive (SPEC §10).
//!
//! Files are streamed from the store with their content type, the SHA-256 as `ETag`, one byte
//! range at a time (`206`), and `304` for a copy the client already has, so a browser's
//! `<video>` can seek in a kept video and cache it.

use super::jobs::find_job;
use crate::domain::archive::{ArchivedFile, FileStatus};
use crate::domain::job::JobView;
use crate::domain::JobStatus;
use crate::http::error::{ApiError, ErrorBody};
use crate::http::extract::ApiPath;
use crate::state::AppState;
use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use object_store::path::Path;
use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt};
use std::ops::RangeInclusive;

/// Browsers may keep a copy for this long, asking again with `If-None-Match` afterwards
/// (archiving again can change the bytes, so not for ever).
const CACHE_CONTROL: &str = "private, max-age=3600";

/// Stream one archived file of a job.
#[utoipa::path(get, path = "/v1/jobs/{id}/files/{name}", tag = "archive",
    params(("id" = String, Path, description = "Pictory job id or submission id"),
        ("name" = String, Path, description = "`video`, `thumbnail`, `last_frame` or `preview`")),
    responses(
        (status = 200, description = "The whole file", content_type = "application/octet-stream"),
        (status = 206, description = "The byte range asked for (`Range`)", content_type = "application/octet-stream"),
        (status = 304, description = "`If-None-Match` names this copy"),
        (status = 404, description = "No such job, or the file is not archived", body = ErrorBody),
        (status = 416, description = "The range is outside the file", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn get_file(
    State(state): State<AppState>,
    ApiPath((id, name)): ApiPath<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let job = find_job(&state, &id).await?;
    let not_kept = || ApiError::NotFound(format!("the {name} of job {id} is not archived"));
    let Some(archive) = &state.archive else {
        return Err(not_kept());
    };
    let file = job
        .archive
        .as_ref()
        .and_then(|a| a.file(&name))
        .filter(|f| f.status == FileStatus::Done)
        .ok_or_else(not_kept)?;
    let kept = Kept::of(file).ok_or_else(not_kept)?;
    let etag = format!("\"{}\"", kept.sha256);

    if headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| etag_matches(v, &etag))
    {
        let mut response = StatusCode::NOT_MODIFIED.into_response();
        describe(&mut response, &kept, &etag);
        return Ok(response);
    }
    let range = match requested_range(&headers, &etag, kept.size) {
        Ok(range) => range,
        Err(()) => {
            let mut response = ApiError::RangeNotSatisfiable(format!(
                "the {name} of job {id} has {} bytes",
                kept.size
            ))
            .into_response();
            response.headers_mut().insert(
                header::CONTENT_RANGE,
                header_value(&format!("bytes */{}", kept.size)),
            );
            return Ok(response);
        }
    };
    // The key was stored as the store wrote it (each part already escaped).
    let location = Path::parse(&kept.key).map_err(|_| not_kept())?;
    let fetched = match &range {
        None => archive.store.get(&location).await,
        Some(range) => {
            let options = GetOptions {
                range: Some(GetRange::Bounded(*range.start()..range.end() + 1)),
                ..GetOptions::default()
            };
            archive.store.get_opts(&location, options).await
        }
    };
    let fetched = fetched.map_err(|err| match err {
        object_store::Error::NotFound { .. } => ApiError::NotFound(format!(
            "the archived {name} of job {id} is missing from the archive store"
        )),
        other => {
            tracing::warn!(error = %other, "the archive store could not serve a file");
            ApiError::UpstreamUnavailable {
                message: "the archive store did not answer; retry shortly".into(),
                retry_after_secs: 5,
            }
        }
    })?;
    let mut response = Body::from_stream(fetched.into_stream()).into_response();
    describe(&mut response, &kept, &etag);
    let headers = response.headers_mut();
    match range {
        None => {
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(kept.size));
        }
        Some(range) => {
            *response.status_mut() = StatusCode::PARTIAL_CONTENT;
            let headers = response.headers_mut();
            headers.insert(
                header::CONTENT_LENGTH,
                HeaderValue::from(range.end() - range.start() + 1),
            );
            headers.insert(
                header::CONTENT_RANGE,
                header_value(&format!(
                    "bytes {}-{}/{}",
                    range.start(),
                    range.end(),
                    kept.size
                )),
            );
        }
    }
    Ok(response)
}

/// Copy a completed job's files to the archive again (e.g. after changing `archive.url`).
#[utoipa::path(post, path = "/v1/jobs/{id}/archive", tag = "archive",
    params(("id" = String, Path, description = "Pictory job id or submission id")),
    responses((status = 202, description = "Copying again; the job with its archive block", body = JobView),
        (status = 404, body = ErrorBody),
        (status = 409, description = "Archiving is off, or the job is not completed", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn archive_job(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<(StatusCode, Json<JobView>), ApiError> {
    let job = find_job(&state, &id).await?;
    if state.archive.is_none() {
        return Err(ApiError::Conflict(
            "archiving is off: set archive.url to keep jobs' files".into(),
        ));
    }
    if job.status != JobStatus::Completed {
        return Err(ApiError::Conflict(format!(
            "job {id} is {}; only a completed job has files to archive",
            job.status
        )));
    }
    let job = state
        .store
        .archive_again(job.pk, state.now_ms())
        .await?
        .ok_or_else(|| ApiError::Conflict(format!("job {id} cannot be archived now")))?;
    state.changes.publish(&job);
    state.wake_archiver();
    Ok((StatusCode::ACCEPTED, Json(job.view())))
}

/// What serving a kept file needs from its record.
struct Kept {
    key: String,
    size: u64,
    sha256: String,
    content_type: String,
}

impl Kept {
    fn of(file: &ArchivedFile) -> Option<Kept> {
        Some(Kept {
            key: file.key.clone()?,
            size: u64::try_from(file.size?).ok()?,
            sha256: file.sha256.clone()?,
            content_type: file
                .content_type
                .clone()
                .unwrap_or_else(|| "application/octet-stream".into()),
        })
    }
}

fn describe(response: &mut Response, kept: &Kept, etag: &str) {
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, header_value(&kept.content_type));
    headers.insert(header::ETAG, header_value(etag));
    headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(CACHE_CONTROL),
    );
}

fn header_value(text: &str) -> HeaderValue {
    HeaderValue::from_str(text).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

/// `If-None-Match`: `*`, or a list of tags one of which is ours (weak or strong).
fn etag_matches(header: &str, etag: &str) -> bool {
    header
        .split(',')
        .map(str::trim)
        .any(|tag| tag == "*" || tag.trim_start_matches("W/") == etag)
}

/// The one range to serve: None for the whole file (no `Range`, a malformed one, several
/// ranges, or an `If-Range` that names another copy); `Err` when it lies outside the file.
fn requested_range(
    headers: &HeaderMap,
    etag: &str,
    size: u64,
) -> Result<Option<RangeInclusive<u64>>, ()> {
    let Some(range) = headers.get(header::RANGE).and_then(|v| v.to_str().ok()) else {
        return Ok(None);
    };
    if let Some(if_range) = headers.get(header::IF_RANGE).and_then(|v| v.to_str().ok()) {
        if if_range.trim() != etag {
            return Ok(None);
        }
    }
    // A Range the server cannot read is ignored (RFC 9110 §14.2).
    let Ok(parsed) = http_range_header::parse_range_header(range) else {
        return Ok(None);
    };
    let ranges = parsed.validate(size).map_err(|_| ())?;
    match ranges.as_slice() {
        [one] => Ok(Some(one.clone())),
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(name, value)| (name.clone(), HeaderValue::from_str(value).unwrap()))
            .collect()
    }

    #[test]
    fn ranges_are_served_one_at_a_time_and_refused_outside_the_file() {
        let etag = "\"abc\"";
        let range = |value: &str| requested_range(&with(&[(header::RANGE, value)]), etag, 100);
        assert_eq!(range("bytes=0-9"), Ok(Some(0..=9)));
        assert_eq!(range("bytes=90-"), Ok(Some(90..=99)));
        assert_eq!(range("bytes=-10"), Ok(Some(90..=99)));
        assert_eq!(range("bytes=95-200"), Ok(Some(95..=99)));
        assert_eq!(range("bytes=0-1,5-6"), Ok(None));
        assert_eq!(range("lines=1-2"), Ok(None));
        assert_eq!(range("bytes=100-"), Err(()));
        assert_eq!(requested_range(&HeaderMap::new(), etag, 100), Ok(None));
        let other_copy = with(&[(header::RANGE, "bytes=0-9"), (header::IF_RANGE, "\"old\"")]);
        assert_eq!(requested_range(&other_copy, etag, 100), Ok(None));
        let same_copy = with(&[(header::RANGE, "bytes=0-9"), (header::IF_RANGE, etag)]);
        assert_eq!(requested_range(&same_copy, etag, 100), Ok(Some(0..=9)));
    }

    #[test]
    fn if_none_match_takes_lists_weak_tags_and_star() {
        assert!(etag_matches("\"abc\"", "\"abc\""));
        assert!(etag_matches("\"x\", W/\"abc\"", "\"abc\""));
        assert!(etag_matches("*", "\"abc\""));
        assert!(!etag_matches("\"abd\"", "\"abc\""));
    }
}
