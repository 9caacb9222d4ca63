//! jobhook's integration tests: one binary, real sockets, a fresh SQLite file per test.

#![allow(clippy::unwrap_used)]

mod helpers;

mod hostile;

mod cli;
mod continuations;
mod crash;
mod deliveries;
mod faults;
mod jobs;
mod listener;
mod listing;
mod mock;
mod notify;
mod on_time;
mod ops;
mod pictory;
mod quota;
mod reconcile;
mod soak;
mod state_machine;
mod storm;
mod stream;
mod usage;
mod videos;
mod webhooks;
