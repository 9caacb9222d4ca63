//! jobhook: receives Pictory's job webhooks durably, keeps every job's state and history, and serves
//! them to the team's own systems. `main.rs` is a thin command line over this library; tests drive
//! [`app::run`] with their own listeners, clock and shutdown.

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod app;
pub mod archive;
pub mod changes;
pub mod cli;
pub mod config;
pub mod copy_db;
pub mod demo;
pub mod domain;
pub mod http;
pub mod ingest;
pub mod metrics;
pub mod mock;
pub mod notify;
pub mod pictory;
pub mod quota;
pub mod reconcile;
pub mod retention;
mod retry;
pub mod signature;
pub mod state;
pub mod store;
mod sync;
pub mod telemetry;
pub mod webhook_key;
