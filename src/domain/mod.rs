//! jobhook's own vocabulary: jobs, their statuses, and how a Pictory report moves them.

pub mod archive;
pub mod job;
pub mod search;
pub mod status;
pub mod time;
pub mod usage;

pub use job::{plan_report, Job, JobEvent, ReportPlan};
pub use status::{Cause, JobStatus};
