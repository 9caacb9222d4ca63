//! What the pages show of a job, read from the job JSON the API answers (`Job::view()`), so
//! the dashboard shows exactly what a client of `GET /v1/jobs/{id}` sees, archive included.
//!
//! Reading the JSON rather than the struct is deliberate: the output archive adds an
//! `"archive"` block (SPEC §10), and a file is taken from there when its copy is `done` and
//! from Pictory's own URL otherwise, so a video still plays after Pictory cleaned its copy.

use crate::domain::job::JobView;
use crate::domain::usage::model_of;
use crate::domain::Job;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde_json::Value;

/// Everything but the unreserved characters of RFC 3986 is encoded in a path segment.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// `text` as one path segment (job ids may hold `?`, `#`, `%` and the like).
pub fn segment(text: &str) -> String {
    utf8_percent_encode(text, SEGMENT).to_string()
}

/// A job's output file: the archived copy when it is done, else Pictory's URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileLink {
    pub url: String,
    /// Served by jobhook from the archive (kept), not by Pictory (deleted after a while).
    pub archived: bool,
}

/// Names of the files in the archive block, and the `output` fields Pictory gives them under.
pub const FILES: [(&str, &str); 4] = [
    ("video", "url"),
    ("thumbnail", "thumbnail_image_url"),
    ("last_frame", "last_frame_image_url"),
    ("preview", "preview_image_url"),
];

/// The job JSON of `job`, as `GET /v1/jobs/{id}` answers it.
pub fn job_json(job: &Job) -> Value {
    serde_json::to_value(job.view()).unwrap_or(Value::Null)
}

/// Where to fetch file `name` of the job JSON `job`, if anywhere.
pub fn file_link(job: &Value, name: &str) -> Option<FileLink> {
    let archived = &job["archive"]["files"][name];
    if archived["status"] == "done" {
        if let Some(url) = archived["url"].as_str().filter(|u| !u.is_empty()) {
            return Some(FileLink {
                url: url.to_owned(),
                archived: true,
            });
        }
    }
    let field = FILES
        .iter()
        .find(|(file, _)| *file == name)
        .map(|(_, field)| *field)?;
    job["output"][field]
        .as_str()
        .filter(|u| is_web_url(u))
        .map(|url| FileLink {
            url: url.to_owned(),
            archived: false,
        })
}

/// Only http(s) URLs reach an `src` attribute: a stored `javascript:` URL must not.
fn is_web_url(url: &str) -> bool {
    let lower = url.trim_start().to_ascii_lowercase();
    lower.starts_with("https://") || lower.starts_with("http://")
}

/// A point in time, as an ISO timestamp and how long ago it was.
#[derive(Debug, Clone)]
pub struct When {
    pub iso: String,
    pub ago: String,
}

impl When {
    pub fn of(value: &Value, now: i64) -> Option<When> {
        let iso = value.as_str()?;
        let at = crate::domain::time::parse_rfc3339(iso)?;
        Some(When {
            iso: iso.to_owned(),
            ago: ago(now - at),
        })
    }
}

/// `ms` as a short age: `12 s`, `4 min`, `3 h`, `2 d` (`in 5 s` ahead of now).
pub fn ago(ms: i64) -> String {
    let (ahead, ms) = (ms < 0, ms.unsigned_abs());
    let secs = ms / 1000;
    let text = match secs {
        0..=59 => format!("{secs} s"),
        60..=3599 => format!("{} min", secs / 60),
        3600..=86_399 => format!("{} h", secs / 3600),
        _ => format!("{} d", secs / 86_400),
    };
    if ahead {
        format!("in {text}")
    } else {
        format!("{text} ago")
    }
}

/// One row of the jobs table (and the summary at the top of a job's page).
#[derive(Debug, Clone)]
pub struct JobRow {
    /// Pictory's id, else the submission's: what links and searches use.
    pub id: String,
    pub href: String,
    pub job_id: Option<String>,
    pub submission_id: Option<String>,
    pub status: String,
    pub model: String,
    pub prompt: Option<String>,
    pub thumbnail: Option<FileLink>,
    pub credits: Option<String>,
    pub resolved_by: Option<String>,
    pub poll_count: i64,
    pub created: Option<When>,
    pub updated: Option<When>,
}

impl JobRow {
    pub fn of(job: &Job, now: i64) -> JobRow {
        JobRow::from_json(&job_json(job), job.request.as_ref(), now)
    }

    /// From a job as `GET /v1/jobs` lists it.
    pub fn of_view(view: &JobView, now: i64) -> JobRow {
        let json = serde_json::to_value(view).unwrap_or(Value::Null);
        JobRow::from_json(&json, view.request.as_ref(), now)
    }

    fn from_json(json: &Value, request: Option<&Value>, now: i64) -> JobRow {
        let text = |v: &Value| v.as_str().map(str::to_owned);
        let id = text(&json["job_id"])
            .or_else(|| text(&json["submission_id"]))
            .unwrap_or_default();
        let prompt = request
            .and_then(|r| r["prompt"].as_str())
            .map(|p| excerpt(p, 80));
        JobRow {
            href: format!("/jobs/{}", segment(&id)),
            job_id: text(&json["job_id"]),
            submission_id: text(&json["submission_id"]),
            status: text(&json["status"]).unwrap_or_default(),
            model: model_of(request),
            prompt,
            thumbnail: file_link(json, "thumbnail"),
            credits: json["output"]["ai_credits_used"]
                .as_f64()
                .map(|c| format!("{c}")),
            resolved_by: text(&json["resolved_by"]),
            poll_count: json["poll_count"].as_i64().unwrap_or(0),
            created: When::of(&json["created_at"], now),
            updated: When::of(&json["updated_at"], now),
            id,
        }
    }

    /// The status for people: `in progress`, `timed out`.
    pub fn status_label(&self) -> String {
        self.status.replace('_', " ")
    }
}

/// The first `chars` characters of `text`, with an ellipsis when cut.
pub fn excerpt(text: &str, chars: usize) -> String {
    let mut cut: String = text.chars().take(chars).collect();
    if text.chars().nth(chars).is_some() {
        cut.push('…');
    }
    cut
}

/// JSON for people to read: indented, or `null`.
pub fn pretty(value: &Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_archived_file_goes_before_pictorys_url() {
        let mut job = json!({"job_id": "j", "output": {
            "url": "https://cdn.example/v.mp4", "thumbnail_image_url": "javascript:alert(1)"}});
        assert_eq!(
            file_link(&job, "video"),
            Some(FileLink {
                url: "https://cdn.example/v.mp4".into(),
                archived: false
            })
        );
        assert_eq!(file_link(&job, "thumbnail"), None, "only http(s) URLs");
        job["archive"] = json!({"status": "partial", "files": {
            "video": {"status": "done", "url": "/v1/jobs/j/files/video"},
            "thumbnail": {"status": "failed"}}});
        assert_eq!(
            file_link(&job, "video"),
            Some(FileLink {
                url: "/v1/jobs/j/files/video".into(),
                archived: true
            })
        );
        assert_eq!(file_link(&job, "preview"), None);
    }

    #[test]
    fn ids_are_encoded_as_one_path_segment() {
        assert_eq!(segment("a/b?c#d%e f"), "a%2Fb%3Fc%23d%25e%20f");
        assert_eq!(segment("4a09edf9-d071_x.y~z"), "4a09edf9-d071_x.y~z");
    }

    #[test]
    fn ages_read_naturally() {
        assert_eq!(ago(5_000), "5 s ago");
        assert_eq!(ago(125_000), "2 min ago");
        assert_eq!(ago(7_200_000), "2 h ago");
        assert_eq!(ago(-3_000), "in 3 s");
        assert_eq!(excerpt("abcdef", 3), "abc…");
        assert_eq!(excerpt("abc", 3), "abc");
    }
}
