//! Job statuses and the one function that says which moves between them are legal.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Where a job stands, as jobhook sees it (SPEC §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    Submitting,
    SubmitFailed,
    SubmitUnknown,
    Pending,
    InProgress,
    Completed,
    Failed,
    TimedOut,
    NotFound,
}

impl JobStatus {
    pub const ALL: [JobStatus; 9] = [
        JobStatus::Submitting,
        JobStatus::SubmitFailed,
        JobStatus::SubmitUnknown,
        JobStatus::Pending,
        JobStatus::InProgress,
        JobStatus::Completed,
        JobStatus::Failed,
        JobStatus::TimedOut,
        JobStatus::NotFound,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Submitting => "submitting",
            JobStatus::SubmitFailed => "submit_failed",
            JobStatus::SubmitUnknown => "submit_unknown",
            JobStatus::Pending => "pending",
            JobStatus::InProgress => "in_progress",
            JobStatus::Completed => "completed",
            JobStatus::Failed => "failed",
            JobStatus::TimedOut => "timed_out",
            JobStatus::NotFound => "not_found",
        }
    }

    /// Final statuses never change again.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            JobStatus::Completed | JobStatus::Failed | JobStatus::SubmitFailed
        )
    }

    /// The legal moves of SPEC §3. Staying put is not a move.
    pub fn can_move_to(self, to: JobStatus) -> bool {
        use JobStatus::*;
        if self == to {
            return false;
        }
        match self {
            Submitting => matches!(to, Pending | SubmitFailed | SubmitUnknown),
            SubmitUnknown | TimedOut | NotFound => matches!(to, InProgress | Completed | Failed),
            Pending => matches!(to, InProgress | Completed | Failed | TimedOut | NotFound),
            InProgress => matches!(to, Completed | Failed | TimedOut | NotFound),
            SubmitFailed | Completed | Failed => false,
        }
    }
}

impl fmt::Display for JobStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
#[error("unknown job status `{0}`")]
pub struct UnknownStatus(pub String);

impl FromStr for JobStatus {
    type Err = UnknownStatus;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        JobStatus::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| UnknownStatus(s.to_owned()))
    }
}

/// What made jobhook change or learn something about a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Cause {
    /// A webhook delivery (its body, or the Get Job call it triggered).
    Webhook,
    /// The reconciler's schedule.
    Poll,
    /// A manual refresh through the API.
    Refresh,
    /// An API call (registration, submission, replay).
    Api,
    /// The reconciler's deadline.
    Deadline,
}

impl Cause {
    pub fn as_str(self) -> &'static str {
        match self {
            Cause::Webhook => "webhook",
            Cause::Poll => "poll",
            Cause::Refresh => "refresh",
            Cause::Api => "api",
            Cause::Deadline => "deadline",
        }
    }

    /// The `resolved_by` value when this cause finalises a job.
    pub fn resolved_by(self) -> &'static str {
        match self {
            Cause::Webhook => "webhook",
            Cause::Refresh => "refresh",
            Cause::Poll | Cause::Deadline | Cause::Api => "poll",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn final_statuses_have_no_way_out() {
        let finals: Vec<JobStatus> = JobStatus::ALL
            .into_iter()
            .filter(|s| s.is_final())
            .collect();
        assert_eq!(
            finals,
            [
                JobStatus::SubmitFailed,
                JobStatus::Completed,
                JobStatus::Failed
            ]
        );
        for from in finals {
            for to in JobStatus::ALL {
                assert!(!from.can_move_to(to), "{from} -> {to} must be refused");
            }
        }
    }

    #[test]
    fn status_names_round_trip() {
        for status in JobStatus::ALL {
            assert_eq!(status.as_str().parse::<JobStatus>().unwrap(), status);
            let json = serde_json::to_string(&status).unwrap();
            assert_eq!(json, format!("\"{}\"", status.as_str()));
        }
        assert!("done".parse::<JobStatus>().is_err());
    }

    #[test]
    fn timed_out_and_not_found_move_on_with_new_evidence() {
        for from in [
            JobStatus::TimedOut,
            JobStatus::NotFound,
            JobStatus::SubmitUnknown,
        ] {
            assert!(from.can_move_to(JobStatus::Completed));
            assert!(from.can_move_to(JobStatus::Failed));
            assert!(from.can_move_to(JobStatus::InProgress));
            assert!(!from.can_move_to(JobStatus::Pending));
        }
    }
}
