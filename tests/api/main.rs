//! jobhook's integration tests: one binary, real sockets, a fresh database per test (SQLite, or
//! PostgreSQL when `JOBHOOK_TEST_POSTGRES` is set; see `helpers::TestDb`).

#![allow(clippy::unwrap_used)]

mod helpers;

mod hostile;

mod archive;
mod archive_binary;
mod cli;
mod cluster;
mod continuations;
mod copy_db;
mod crash;
mod dashboard;
mod deliveries;
mod deploy;
mod faults;
mod ingest_paths;
mod jobs;
mod listener;
mod listing;
mod mock;
mod notify;
mod on_time;
mod ops;
mod outage;
mod pictory;
mod proxy;
mod quota;
mod reconcile;
mod replicas;
mod soak;
mod state_machine;
mod storm;
mod stream;
mod usage;
mod videos;
mod webhooks;
