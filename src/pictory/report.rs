//! Tolerant reading of a Pictory job body (a Get Job answer or a webhook).
//!
//! Pictory documents little and changes shapes between job types, so this reader accepts every
//! variant listed in `reference/pictory-api.md`: `job_id`/`jobId` at the top or in `data`, errors
//! in `data` or at the top level, numbers sent as strings, render-job field names, unknown statuses
//! (kept, never final). It never fails: the worst case is a report with nothing recognisable in it.

use serde::Serialize;
use serde_json::{Map, Value};

/// What a Pictory body says about one job.
#[derive(Debug, Clone, PartialEq)]
pub struct JobReport {
    pub job_id: Option<String>,
    pub state: ReportedState,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ReportedState {
    InProgress,
    Completed(JobOutput),
    Failed(JobError),
    /// `JOB_NOT_FOUND` in the body.
    NotFound,
    /// A status jobhook does not act on (`cleaned`, or anything new); never final.
    Other(String),
    /// No status anywhere in the body.
    Missing,
}

/// The outputs of a completed job, in jobhook's snake_case shape.
#[derive(Debug, Clone, Default, PartialEq, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct JobOutput {
    pub url: Option<String>,
    pub duration: Option<String>,
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub thumbnail_image_url: Option<String>,
    pub last_frame_image_url: Option<String>,
    pub preview_image_url: Option<String>,
    pub ai_credits_used: Option<f64>,
}

/// Why a job failed, as Pictory (or jobhook) tells it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct JobError {
    pub code: String,
    pub message: String,
}

impl JobReport {
    /// Reads a parsed JSON body. Non-object bodies give an empty report.
    pub fn from_json(body: &Value) -> JobReport {
        let Some(top) = body.as_object() else {
            return JobReport {
                job_id: None,
                state: ReportedState::Missing,
            };
        };
        let data = top.get("data").and_then(Value::as_object);
        let lookup = |keys: &[&str]| -> Option<&Value> {
            keys.iter()
                .find_map(|key| data.and_then(|d| d.get(*key)).filter(|v| !v.is_null()))
                .or_else(|| {
                    keys.iter()
                        .find_map(|key| top.get(*key).filter(|v| !v.is_null()))
                })
        };

        let job_id = lookup(&["job_id", "jobId"])
            .and_then(text)
            .filter(|id| !id.is_empty());
        let error_code = lookup(&["error_code", "errorCode"]).and_then(text);
        let error_message = lookup(&["error_message", "errorMessage"]).and_then(text);
        let status = lookup(&["status"]).and_then(text).map(|s| normalise(&s));
        let refused = top.get("success").and_then(Value::as_bool) == Some(false);

        let not_found = [error_code.as_deref(), error_message.as_deref()]
            .into_iter()
            .flatten()
            .any(|text| text.eq_ignore_ascii_case("JOB_NOT_FOUND"));

        let state = if not_found {
            ReportedState::NotFound
        } else if status.as_deref() == Some("failed")
            || (refused && (error_code.is_some() || error_message.is_some()))
        {
            ReportedState::Failed(JobError {
                code: error_code.unwrap_or_else(|| "UNKNOWN".to_owned()),
                message: error_message
                    .unwrap_or_else(|| "Pictory reported the job failed".to_owned()),
            })
        } else {
            match status.as_deref() {
                Some("completed") => ReportedState::Completed(read_output(data.unwrap_or(top))),
                Some("in-progress") => ReportedState::InProgress,
                Some(other) => ReportedState::Other(other.to_owned()),
                None => ReportedState::Missing,
            }
        };
        JobReport { job_id, state }
    }
}

/// `in_progress`, `In-Progress` and `inprogress` all mean the same thing.
fn normalise(status: &str) -> String {
    let lower = status.trim().to_ascii_lowercase().replace('_', "-");
    if lower == "inprogress" {
        "in-progress".to_owned()
    } else {
        lower
    }
}

fn read_output(data: &Map<String, Value>) -> JobOutput {
    let get = |keys: &[&str]| {
        keys.iter()
            .find_map(|key| data.get(*key).filter(|v| !v.is_null()))
    };
    let duration = get(&["duration"]).and_then(text).or_else(|| {
        // Render jobs send `videoDuration` as a number of seconds.
        get(&["videoDuration"])
            .and_then(number)
            .map(|secs| format!("{secs}s"))
    });
    JobOutput {
        url: get(&["url", "videoURL", "videoUrl"]).and_then(text),
        duration,
        width: get(&["width"]).and_then(number).and_then(to_pixels),
        height: get(&["height"]).and_then(number).and_then(to_pixels),
        thumbnail_image_url: get(&["thumbnailImageUrl", "thumbnail"]).and_then(text),
        last_frame_image_url: get(&["lastFrameImageUrl"]).and_then(text),
        preview_image_url: get(&["previewImageUrl"]).and_then(text),
        ai_credits_used: get(&["aiCreditsUsed"]).and_then(number),
    }
}

/// A string, or a number written as a string.
fn text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.trim().to_owned()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// A number, or a string holding one.
fn number(value: &Value) -> Option<f64> {
    match value {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().trim_end_matches('s').parse().ok(),
        _ => None,
    }
    .filter(|n: &f64| n.is_finite())
}

fn to_pixels(n: f64) -> Option<u32> {
    (n >= 0.0 && n <= f64::from(u32::MAX)).then(|| n.round() as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn read(body: Value) -> JobReport {
        JobReport::from_json(&body)
    }

    #[test]
    fn in_progress_as_documented() {
        let report =
            read(json!({"job_id": "j1", "success": true, "data": {"status": "in-progress"}}));
        assert_eq!(report.job_id.as_deref(), Some("j1"));
        assert_eq!(report.state, ReportedState::InProgress);
    }

    #[test]
    fn completed_with_every_documented_output_field() {
        let report = read(json!({"job_id": "j1", "success": true, "data": {
            "status": "completed", "url": "https://x/v.mp4", "duration": "8s",
            "width": 1280, "height": "720", "thumbnailImageUrl": "https://x/t.jpg",
            "lastFrameImageUrl": "https://x/l.png", "previewImageUrl": "https://x/p.jpg",
            "aiCreditsUsed": "12.8", "somethingNew": 1}}));
        let ReportedState::Completed(output) = report.state else {
            panic!("expected completed, got {:?}", report.state)
        };
        assert_eq!(output.url.as_deref(), Some("https://x/v.mp4"));
        assert_eq!(output.duration.as_deref(), Some("8s"));
        assert_eq!((output.width, output.height), (Some(1280), Some(720)));
        assert_eq!(
            output.thumbnail_image_url.as_deref(),
            Some("https://x/t.jpg")
        );
        assert_eq!(
            output.last_frame_image_url.as_deref(),
            Some("https://x/l.png")
        );
        assert_eq!(output.preview_image_url.as_deref(), Some("https://x/p.jpg"));
        assert_eq!(output.ai_credits_used, Some(12.8));
    }

    #[test]
    fn render_job_fields_are_understood() {
        let report = read(json!({"data": {"jobId": 42, "status": "completed",
            "videoURL": "https://x/r.mp4", "thumbnail": "https://x/t.jpg", "videoDuration": 31.5}}));
        assert_eq!(report.job_id.as_deref(), Some("42"));
        let ReportedState::Completed(output) = report.state else {
            panic!("expected completed")
        };
        assert_eq!(output.url.as_deref(), Some("https://x/r.mp4"));
        assert_eq!(output.duration.as_deref(), Some("31.5s"));
        assert_eq!(
            output.thumbnail_image_url.as_deref(),
            Some("https://x/t.jpg")
        );
    }

    #[test]
    fn failure_inside_data_or_at_the_top() {
        let inside = read(
            json!({"job_id": "j", "success": false, "data": {"status": "failed",
            "error_code": "TEXT_TO_VIDEO_FAILED", "error_message": "boom"}}),
        );
        assert_eq!(
            inside.state,
            ReportedState::Failed(JobError {
                code: "TEXT_TO_VIDEO_FAILED".into(),
                message: "boom".into()
            })
        );
        let top = read(
            json!({"job_id": "j", "success": false, "error_code": 7001, "error_message": "bad"}),
        );
        assert_eq!(
            top.state,
            ReportedState::Failed(JobError {
                code: "7001".into(),
                message: "bad".into()
            })
        );
    }

    #[test]
    fn job_not_found_in_the_body_is_not_a_failure() {
        let report =
            read(json!({"success": false, "error_code": "5000", "error_message": "JOB_NOT_FOUND"}));
        assert_eq!(report.state, ReportedState::NotFound);
    }

    #[test]
    fn unknown_and_cleaned_statuses_are_kept_and_not_final() {
        assert_eq!(
            read(json!({"data": {"status": "cleaned"}})).state,
            ReportedState::Other("cleaned".into())
        );
        assert_eq!(
            read(json!({"data": {"status": "Queued"}})).state,
            ReportedState::Other("queued".into())
        );
        assert_eq!(
            read(json!({"data": {"status": "IN_PROGRESS"}})).state,
            ReportedState::InProgress
        );
        assert_eq!(read(json!({"job_id": "x"})).state, ReportedState::Missing);
    }

    #[test]
    fn non_objects_and_empty_ids_give_nothing() {
        assert_eq!(read(json!([1, 2])).job_id, None);
        assert_eq!(read(json!({"job_id": ""})).job_id, None);
        assert_eq!(read(json!({"job_id": {"nested": true}})).job_id, None);
    }
}
