//! Everything about Pictory's wire format.

pub mod report;

pub use report::{JobError, JobOutput, JobReport, ReportedState};
