//! A tracked job, its history entries, and the decision of what a Pictory report changes.

use super::archive::{Archive, ArchiveView};
use super::status::{Cause, JobStatus};
use super::time::rfc3339;
use crate::pictory::{JobError, JobOutput, ReportedState};
use serde::Serialize;
use serde_json::{Map, Value};

/// A job as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    /// Internal row id; never shown.
    pub pk: i64,
    pub job_id: Option<String>,
    pub submission_id: Option<String>,
    pub status: JobStatus,
    pub output: Option<JobOutput>,
    pub error: Option<JobError>,
    pub metadata: Option<Value>,
    pub request: Option<Value>,
    pub resolved_by: Option<String>,
    pub poll_count: i64,
    pub created_at: i64,
    pub updated_at: i64,
    pub completed_at: Option<i64>,
    pub webhook_received_at: Option<i64>,
    pub last_polled_at: Option<i64>,
    pub next_poll_at: Option<i64>,
    /// Id of the newest history entry: the job's place in "newest change first".
    pub seq: i64,
    /// Internal row id of the job this one continues (SPEC §12); never shown.
    pub parent_pk: Option<i64>,
    /// The id (Pictory's, else the submission's) of the job this one continues: its first
    /// frame is that job's last frame.
    pub parent: Option<String>,
    /// The ids of the jobs that continue this one, oldest first.
    pub children: Vec<String>,
    /// Its files' copies in the output archive (SPEC §10); None when none was made.
    pub archive: Option<Archive>,
}

impl Job {
    /// A job jobhook starts tracking by its Pictory id at `now`, `pending`, before it has a
    /// row (its `pk` is the store's to give), as the row reads once inserted.
    pub fn tracked(job_id: String, next_poll_at: Option<i64>, now: i64) -> Job {
        Job {
            pk: 0,
            job_id: Some(job_id),
            submission_id: None,
            status: JobStatus::Pending,
            output: None,
            error: None,
            metadata: None,
            request: None,
            resolved_by: None,
            poll_count: 0,
            created_at: now,
            updated_at: now,
            completed_at: None,
            webhook_received_at: None,
            last_polled_at: None,
            next_poll_at,
            seq: 0,
            parent_pk: None,
            parent: None,
            children: Vec::new(),
            archive: None,
        }
    }
}

#[cfg(test)]
impl Job {
    /// A pending job known by Pictory id `j{pk}`, for unit tests.
    pub(crate) fn pending_for_tests(pk: i64) -> Job {
        Job {
            pk,
            seq: 1,
            ..Job::tracked(format!("j{pk}"), None, 0)
        }
    }
}

/// The job JSON of SPEC §3, shared by the REST API, the stream and notifications.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct JobView {
    /// Pictory's job id; null until Pictory has given one.
    pub job_id: Option<String>,
    /// jobhook's own id for jobs submitted through it.
    pub submission_id: Option<String>,
    pub status: JobStatus,
    pub output: Option<JobOutput>,
    pub error: Option<JobError>,
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub request: Option<Value>,
    /// `webhook`, `poll`, `refresh`, or null while not final.
    pub resolved_by: Option<String>,
    pub poll_count: i64,
    pub created_at: String,
    pub updated_at: String,
    pub completed_at: Option<String>,
    pub webhook_received_at: Option<String>,
    pub last_polled_at: Option<String>,
    pub next_poll_at: Option<String>,
    /// The job this one continues (`POST /v1/jobs/{id}/continue`), or null.
    pub parent: Option<String>,
    /// The jobs that continue this one, oldest first.
    pub children: Vec<String>,
    /// The copies of its files in the output archive; null when archiving is off (or the job
    /// has not completed).
    pub archive: Option<ArchiveView>,
}

impl Job {
    pub fn view(&self) -> JobView {
        JobView {
            job_id: self.job_id.clone(),
            submission_id: self.submission_id.clone(),
            status: self.status,
            output: self.output.clone(),
            error: self.error.clone(),
            metadata: self.metadata.clone(),
            request: self.request.clone(),
            resolved_by: self.resolved_by.clone(),
            poll_count: self.poll_count,
            created_at: rfc3339(self.created_at),
            updated_at: rfc3339(self.updated_at),
            completed_at: self.completed_at.map(rfc3339),
            webhook_received_at: self.webhook_received_at.map(rfc3339),
            last_polled_at: self.last_polled_at.map(rfc3339),
            next_poll_at: self.next_poll_at.map(rfc3339),
            parent: self.parent.clone(),
            children: self.children.clone(),
            archive: self.archive.as_ref().map(|a| a.view(self.display_id())),
        }
    }

    /// Applies a planned move: the new status, outputs and error kept unless the move brings
    /// new ones, and for a final status its completion time and the end of polling. Returns
    /// the status it moved from, or None when the plan keeps the job as it is. The one place
    /// that says what a move does; every store path writes the job it leaves.
    pub fn apply(&mut self, plan: &ReportPlan, now: i64) -> Option<JobStatus> {
        let ReportPlan::Move {
            to,
            output,
            error,
            resolved_by,
        } = plan
        else {
            return None;
        };
        let from = self.status;
        self.status = *to;
        if output.is_some() {
            self.output.clone_from(output);
        }
        if error.is_some() {
            self.error.clone_from(error);
        }
        if let Some(by) = resolved_by {
            self.resolved_by = Some((*by).to_owned());
        }
        if to.is_final() {
            self.completed_at = Some(now);
            self.next_poll_at = None;
        }
        Some(from)
    }

    /// The id a person would use: Pictory's when known, else the submission's.
    pub fn display_id(&self) -> &str {
        self.job_id
            .as_deref()
            .or(self.submission_id.as_deref())
            .unwrap_or("?")
    }
}

/// One entry of a job's history (`GET /v1/jobs/{id}/events`).
#[derive(Debug, Clone, PartialEq)]
pub struct JobEvent {
    pub id: i64,
    pub at: i64,
    pub kind: String,
    /// Kind-specific fields, flattened into the entry.
    pub detail: Map<String, Value>,
}

impl JobEvent {
    pub fn to_json(&self) -> Value {
        let mut out = Map::new();
        out.insert("id".into(), self.id.into());
        out.insert("at".into(), rfc3339(self.at).into());
        out.insert("kind".into(), self.kind.clone().into());
        for (key, value) in &self.detail {
            out.entry(key.clone()).or_insert_with(|| value.clone());
        }
        Value::Object(out)
    }
}

/// What applying a report to a job must do.
#[derive(Debug, Clone, PartialEq)]
pub enum ReportPlan {
    /// Move to a new status (with outputs or error when it is final).
    Move {
        to: JobStatus,
        output: Option<JobOutput>,
        error: Option<JobError>,
        resolved_by: Option<&'static str>,
    },
    /// Nothing changes; the reason goes to the history.
    Keep { reason: String },
}

/// Decides what a report means for a job in `current` status. Pure, so it is tested on its own.
pub fn plan_report(current: JobStatus, reported: &ReportedState, cause: Cause) -> ReportPlan {
    let (to, output, error) = match reported {
        ReportedState::InProgress => (JobStatus::InProgress, None, None),
        ReportedState::Completed(output) => (JobStatus::Completed, Some(output.clone()), None),
        ReportedState::Failed(error) => (JobStatus::Failed, None, Some(error.clone())),
        ReportedState::NotFound => {
            return ReportPlan::Keep {
                reason: "Pictory does not know the job".into(),
            }
        }
        ReportedState::Other(status) => {
            return ReportPlan::Keep {
                reason: format!("status `{status}` is not acted on"),
            }
        }
        ReportedState::Missing => {
            return ReportPlan::Keep {
                reason: "no status in the report".into(),
            }
        }
    };
    if current == to {
        return ReportPlan::Keep {
            reason: format!("already {current}"),
        };
    }
    if !current.can_move_to(to) {
        return ReportPlan::Keep {
            reason: format!("{current} does not move to {to}"),
        };
    }
    ReportPlan::Move {
        to,
        output,
        error,
        resolved_by: to.is_final().then(|| cause.resolved_by()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn reported() -> impl Strategy<Value = ReportedState> {
        prop_oneof![
            Just(ReportedState::InProgress),
            Just(ReportedState::Completed(JobOutput {
                url: Some("https://x/v.mp4".into()),
                ..JobOutput::default()
            })),
            Just(ReportedState::Failed(JobError {
                code: "E".into(),
                message: "m".into()
            })),
            Just(ReportedState::NotFound),
            Just(ReportedState::Other("cleaned".into())),
            Just(ReportedState::Missing),
        ]
    }

    fn cause() -> impl Strategy<Value = Cause> {
        prop_oneof![
            Just(Cause::Webhook),
            Just(Cause::Poll),
            Just(Cause::Refresh)
        ]
    }

    fn status() -> impl Strategy<Value = JobStatus> {
        proptest::sample::select(JobStatus::ALL.to_vec())
    }

    proptest! {
        /// No sequence of reports moves a final status, and every move is a legal one.
        #[test]
        fn reports_never_move_a_final_status(
            start in status(),
            reports in proptest::collection::vec((reported(), cause()), 0..40)
        ) {
            let mut current = start;
            let mut finalised_as: Option<JobStatus> = current.is_final().then_some(current);
            for (report, cause) in reports {
                if let ReportPlan::Move { to, resolved_by, .. } = plan_report(current, &report, cause) {
                    prop_assert!(current.can_move_to(to));
                    prop_assert_eq!(resolved_by.is_some(), to.is_final());
                    current = to;
                }
                if let Some(final_status) = finalised_as {
                    prop_assert_eq!(current, final_status);
                }
                if current.is_final() {
                    finalised_as.get_or_insert(current);
                }
            }
        }
    }

    fn pending_job() -> Job {
        Job {
            next_poll_at: Some(500),
            ..Job::pending_for_tests(1)
        }
    }

    #[test]
    fn applying_a_move_keeps_what_it_does_not_replace_and_ends_polling_when_final() {
        let mut job = pending_job();
        job.error = Some(JobError {
            code: "OLD".into(),
            message: "kept".into(),
        });
        let to_progress = plan_report(JobStatus::Pending, &ReportedState::InProgress, Cause::Poll);
        assert_eq!(job.apply(&to_progress, 10), Some(JobStatus::Pending));
        assert_eq!(
            (job.status, job.next_poll_at, job.completed_at),
            (JobStatus::InProgress, Some(500), None)
        );
        assert_eq!(job.error.as_ref().map(|e| e.code.as_str()), Some("OLD"));

        let output = JobOutput {
            url: Some("https://x/v.mp4".into()),
            ..JobOutput::default()
        };
        let done = plan_report(
            job.status,
            &ReportedState::Completed(output.clone()),
            Cause::Webhook,
        );
        assert_eq!(job.apply(&done, 20), Some(JobStatus::InProgress));
        assert_eq!(job.status, JobStatus::Completed);
        assert_eq!(job.output, Some(output));
        assert_eq!(job.resolved_by.as_deref(), Some("webhook"));
        assert_eq!((job.completed_at, job.next_poll_at), (Some(20), None));

        let late = plan_report(job.status, &ReportedState::InProgress, Cause::Webhook);
        let before = job.clone();
        assert_eq!(job.apply(&late, 30), None);
        assert_eq!(job, before, "a kept job is untouched");
    }

    #[test]
    fn late_in_progress_after_completion_is_kept_out() {
        let plan = plan_report(
            JobStatus::Completed,
            &ReportedState::InProgress,
            Cause::Webhook,
        );
        assert!(matches!(plan, ReportPlan::Keep { .. }));
    }

    #[test]
    fn a_webhook_that_finalises_says_so() {
        let plan = plan_report(
            JobStatus::Pending,
            &ReportedState::Completed(JobOutput::default()),
            Cause::Webhook,
        );
        assert_eq!(
            plan,
            ReportPlan::Move {
                to: JobStatus::Completed,
                output: Some(JobOutput::default()),
                error: None,
                resolved_by: Some("webhook")
            }
        );
    }
}
