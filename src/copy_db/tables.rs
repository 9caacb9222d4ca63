//! What `copy-db` copies: every table that holds state, the columns both backends have, and an
//! order that never inserts a row before the rows it refers to.

/// How a column is read and written on either backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Int,
    Text,
    Bytes,
    /// BOOLEAN on PostgreSQL, 0/1 INTEGER on SQLite.
    Bool,
}

/// How a table's rows are paged through, in a stable order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// By the integer `id`: kept as it is, so event ids, cursors, `Last-Event-ID` and
    /// delivery ids mean the same in the copy.
    Id,
    /// By the text primary key (one column).
    Key(&'static str),
    /// By an integer primary key other than `id` (one column).
    IntKey(&'static str),
    /// Small tables with a composite key: read whole.
    All(&'static str),
    /// A composite primary key of a text and an integer column, in that order (the first two
    /// columns of the table): paged through by both.
    TextInt(&'static str, &'static str),
    /// A composite primary key of an integer and a text column, in that order (the first two
    /// columns of the table): paged through by both.
    IntText(&'static str, &'static str),
}

pub struct Table {
    pub name: &'static str,
    pub columns: &'static [(&'static str, Kind)],
    pub order: Order,
    /// PostgreSQL makes the id with `GENERATED ALWAYS AS IDENTITY`: inserting ids needs
    /// `OVERRIDING SYSTEM VALUE`, and the sequence is moved past them afterwards.
    pub identity: bool,
}

use Kind::{Bool, Bytes, Int, Text};

/// `jobs.raw_delivery` refers to a delivery, and deliveries refer to jobs: jobs are copied
/// without it, and it is set once the deliveries are in.
pub const RAW_DELIVERY: &str = "raw_delivery";

/// In insertion order. `heartbeat` is rewritten by every `/readyz`; the shared pace and the
/// replicas table (PostgreSQL) describe running processes, not state; neither is copied.
pub const TABLES: &[Table] = &[
    Table {
        name: "jobs",
        columns: &[
            ("id", Int),
            ("job_id", Text),
            ("submission_id", Text),
            ("status", Text),
            ("output", Text),
            ("error", Text),
            ("metadata", Text),
            ("request", Text),
            ("resolved_by", Text),
            ("poll_count", Int),
            ("not_found_streak", Int),
            ("raw_response", Text),
            ("created_at", Int),
            ("updated_at", Int),
            ("completed_at", Int),
            ("webhook_received_at", Int),
            ("last_polled_at", Int),
            ("next_poll_at", Int),
            ("poll_priority", Int),
            ("leased", Bool),
            ("seq", Int),
            (RAW_DELIVERY, Int),
            // A continuation's parent: an earlier job, so in id order it is copied first.
            ("parent_pk", Int),
        ],
        order: Order::Id,
        identity: true,
    },
    Table {
        name: "job_events",
        columns: &[
            ("id", Int),
            ("job_pk", Int),
            ("at", Int),
            ("kind", Text),
            ("detail", Text),
            ("snapshot", Text),
        ],
        order: Order::Id,
        identity: true,
    },
    Table {
        name: "deliveries",
        columns: &[
            ("id", Int),
            ("received_at", Int),
            ("job_pk", Int),
            ("outcome", Text),
            ("reason", Text),
            ("remote_addr", Text),
            ("headers", Text),
            ("body", Bytes),
            ("body_sha256", Bytes),
            ("body_size", Int),
            ("duplicate_of", Int),
            ("pruned_at", Int),
        ],
        order: Order::Id,
        identity: true,
    },
    Table {
        name: "notifications",
        columns: &[
            ("id", Int),
            ("endpoint", Text),
            ("event_type", Text),
            ("job_pk", Int),
            ("change_id", Int),
            ("message_id", Text),
            ("payload", Text),
            ("state", Text),
            ("attempts", Int),
            ("round_attempts", Int),
            ("next_attempt_at", Int),
            ("leased", Bool),
            ("last_status", Int),
            ("last_error", Text),
            ("created_at", Int),
            ("delivered_at", Int),
        ],
        order: Order::Id,
        identity: true,
    },
    Table {
        name: "idempotency_keys",
        columns: &[
            ("key", Text),
            ("fingerprint", Bytes),
            ("job_pk", Int),
            ("status_code", Int),
            ("response", Text),
            ("created_at", Int),
        ],
        order: Order::Key("key"),
        identity: false,
    },
    Table {
        name: "notify_endpoints",
        columns: &[
            ("url", Text),
            ("fingerprint", Text),
            ("disabled_at", Int),
            ("disabled_reason", Text),
        ],
        order: Order::Key("url"),
        identity: false,
    },
    Table {
        name: "job_usage",
        columns: &[
            ("job_pk", Int),
            ("at", Int),
            ("model", Text),
            ("status", Text),
            ("credits_milli", Int),
            ("video_ms", Int),
            ("metadata", Text),
        ],
        order: Order::IntKey("job_pk"),
        identity: false,
    },
    Table {
        name: "usage_daily",
        columns: &[
            ("day", Int),
            ("model", Text),
            ("status", Text),
            ("jobs", Int),
            ("credits_milli", Int),
            ("video_ms", Int),
        ],
        order: Order::All("day, model, status"),
        identity: false,
    },
    Table {
        name: "job_metadata_values",
        columns: &[("value", Text), ("job_pk", Int)],
        order: Order::TextInt("value", "job_pk"),
        identity: false,
    },
    // The output archive: each completed job's file records (where its copies are), and the
    // completions whose notifications wait for them. Not the policy: every `serve` writes it
    // from its configuration. Leases are left behind: a copy's attempt in flight is simply due
    // again in the copy, and made again there.
    Table {
        name: "archive_files",
        columns: &[
            ("job_pk", Int),
            ("name", Text),
            ("source_url", Text),
            ("status", Text),
            ("attempts", Int),
            ("due_at", Int),
            ("object_key", Text),
            ("size", Int),
            ("sha256", Text),
            ("content_type", Text),
            ("error", Text),
            ("updated_at", Int),
        ],
        order: Order::IntText("job_pk", "name"),
        identity: false,
    },
    Table {
        name: "archive_holds",
        columns: &[("job_pk", Int), ("change_id", Int)],
        order: Order::IntKey("job_pk"),
        identity: false,
    },
    Table {
        name: "notify_routes",
        columns: &[("url", Text), ("event_type", Text)],
        order: Order::All("url, event_type"),
        identity: false,
    },
];

impl Table {
    pub fn column_list(&self) -> String {
        self.columns
            .iter()
            .map(|(name, _)| *name)
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Where `name` is among the columns.
    pub fn position(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|(column, _)| *column == name)
    }
}
