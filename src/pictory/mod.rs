//! Everything about Pictory: its wire format and the client that speaks it.

pub mod client;
pub mod report;
pub mod rules;

pub use client::{Generate, GetJob, PictoryClient, QuotaFailure};
pub use report::{JobError, JobOutput, JobReport, ReportedState};
