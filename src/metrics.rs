//! Prometheus metrics, kept per service instance (no global recorder, so tests stay apart).

mod recent;

pub use recent::{LastMinute, RecentCalls};

use crate::sync::lock;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, EncodeLabelValue, EncodeMetric,
};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabel {
    pub status: String,
}

#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum Listener {
    Public,
    Api,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub listener: Listener,
    pub method: String,
    /// The matched route template, never the raw path (ids would explode the label set).
    pub route: String,
    pub status: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabel {
    pub listener: Listener,
}

/// Why jobhook closed a connection that had no request in flight.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClosedLabels {
    pub listener: Listener,
    /// `header_timeout`, `idle_timeout` or `evicted` (made room for a new connection).
    pub reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AcceptErrorLabels {
    pub listener: Listener,
    /// `emfile` (the process is out of descriptors), `enfile` (the system is), or `other`.
    pub error: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelLabel {
    pub model: String,
}

/// `jobhook_ai_credits_used_total{model}`: the credits Pictory reported for every job the
/// database holds, by model. Read from the database at each scrape (see
/// [`Metrics::set_credits_used`]) rather than counted in the process, so it is exact, survives
/// restarts, and is the same whichever process is asked.
#[derive(Debug, Default, Clone)]
struct CreditsUsed(std::sync::Arc<std::sync::Mutex<Vec<(String, f64)>>>);

impl Collector for CreditsUsed {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let by_model = lock(&self.0).clone();
        let counter = ConstCounter::new(0.0f64);
        let mut metric = encoder.encode_descriptor(
            "ai_credits_used",
            "AI credits Pictory reported as used (aiCreditsUsed) by the jobs in the database, by model",
            None,
            counter.metric_type(),
        )?;
        for (model, credits) in by_model {
            let label = ModelLabel { model };
            ConstCounter::new(credits).encode(metric.encode_family(&label)?)?;
        }
        Ok(())
    }
}

pub struct Metrics {
    registry: Registry,
    credits_used: CreditsUsed,
    pub deliveries: Family<OutcomeLabel, Counter>,
    pub duplicates: Counter,
    pub get_job_calls: Family<ResultLabel, Counter>,
    /// The same calls over the last minute, per second (the dashboard's operations page).
    pub get_job_calls_recent: RecentCalls,
    pub jobs: Family<StatusLabel, Gauge>,
    pub overdue_jobs: Gauge,
    pub oldest_overdue_seconds: Gauge,
    pub effective_rate: Gauge,
    pub long_polls_waiting: Gauge,
    pub throttled: Gauge,
    pub notification_attempts: Family<OutcomeLabel, Counter>,
    pub pruned_bodies: Counter,
    pub archive_files: Family<ResultLabel, Counter>,
    pub archive_bytes: Family<ResultLabel, Counter>,
    pub request_duration: Family<RequestLabels, Histogram>,
    pub connections_open: Family<ListenerLabel, Gauge>,
    pub connections_max: Family<ListenerLabel, Gauge>,
    pub connections_refused: Family<ListenerLabel, Counter>,
    pub connections_closed: Family<ClosedLabels, Counter>,
    pub accept_errors: Family<AcceptErrorLabels, Counter>,
    pub replicas: Gauge,
}

/// Takes one off its gauge when dropped (however the holder ends).
pub struct GaugeGuard(Gauge);

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("jobhook");
        let deliveries = Family::<OutcomeLabel, Counter>::default();
        registry.register(
            "webhook_deliveries",
            "Webhook deliveries received, by outcome (accepted, duplicate, rejected)",
            deliveries.clone(),
        );
        let duplicates = Counter::default();
        registry.register(
            "webhook_duplicates",
            "Deliveries identical to an earlier one for the same job",
            duplicates.clone(),
        );
        let get_job_calls = Family::<ResultLabel, Counter>::default();
        registry.register(
            "pictory_get_job_calls",
            "Calls to Pictory's Get Job endpoint, by result",
            get_job_calls.clone(),
        );
        let jobs = Family::<StatusLabel, Gauge>::default();
        registry.register("jobs", "Tracked jobs by status", jobs.clone());
        let overdue_jobs = Gauge::default();
        registry.register(
            "jobs_overdue",
            "Jobs whose next poll is past due",
            overdue_jobs.clone(),
        );
        let oldest_overdue_seconds = Gauge::default();
        registry.register(
            "jobs_oldest_overdue_seconds",
            "How long the most overdue poll has been waiting",
            oldest_overdue_seconds.clone(),
        );
        let effective_rate = Gauge::default();
        registry.register(
            "reconcile_effective_rate",
            "Get Job calls per second allowed now: reconcile.rate, or less after Pictory's 429s",
            effective_rate.clone(),
        );
        let long_polls_waiting = Gauge::default();
        registry.register(
            "long_polls_waiting",
            "GET /v1/jobs/{id}?wait= requests waiting for their job to become final",
            long_polls_waiting.clone(),
        );
        let throttled = Gauge::default();
        registry.register(
            "reconcile_throttled",
            "1 while Pictory's 429s hold polls back or keep the rate below reconcile.rate",
            throttled.clone(),
        );
        let notification_attempts = Family::<OutcomeLabel, Counter>::default();
        registry.register(
            "notification_attempts",
            "Outbound notification attempts, by outcome",
            notification_attempts.clone(),
        );
        let pruned_bodies = Counter::default();
        registry.register(
            "delivery_bodies_pruned",
            "Raw webhook bodies removed by retention",
            pruned_bodies.clone(),
        );
        let archive_files = Family::<ResultLabel, Counter>::default();
        registry.register(
            "archive_files",
            "Archive attempts by result: done, retrying, gone, too_large, failed",
            archive_files.clone(),
        );
        let archive_bytes = Family::<ResultLabel, Counter>::default();
        registry.register(
            "archive_bytes",
            "Bytes downloaded by archive attempts, by result (a cut download counts what it got)",
            archive_bytes.clone(),
        );
        let request_duration = Family::<RequestLabels, Histogram>::new_with_constructor(|| {
            Histogram::new([
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
            ])
        });
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency by listener, route and status",
            request_duration.clone(),
        );
        let connections_open = Family::<ListenerLabel, Gauge>::default();
        registry.register(
            "connections_open",
            "Open client connections, by listener",
            connections_open.clone(),
        );
        let connections_max = Family::<ListenerLabel, Gauge>::default();
        registry.register(
            "connections_max",
            "Most client connections a listener holds at once (server.max_connections)",
            connections_max.clone(),
        );
        let connections_refused = Family::<ListenerLabel, Counter>::default();
        registry.register(
            "connections_refused",
            "Connections answered 503 and closed at once: the listener was full of requests in flight",
            connections_refused.clone(),
        );
        let connections_closed = Family::<ClosedLabels, Counter>::default();
        registry.register(
            "connections_closed",
            "Connections jobhook closed while no request was in flight, by reason \
             (header_timeout, idle_timeout, evicted)",
            connections_closed.clone(),
        );
        let accept_errors = Family::<AcceptErrorLabels, Counter>::default();
        registry.register(
            "accept_errors",
            "Failed accepts, by error (emfile: out of file descriptors; enfile; other)",
            accept_errors.clone(),
        );
        let credits_used = CreditsUsed::default();
        registry.register_collector(Box::new(credits_used.clone()));
        let replicas = Gauge::default();
        registry.register(
            "replicas",
            "Replicas sharing the database seen alive in the last 30 s (1 on SQLite)",
            replicas.clone(),
        );
        Metrics {
            replicas,
            registry,
            credits_used,
            deliveries,
            duplicates,
            get_job_calls,
            get_job_calls_recent: RecentCalls::default(),
            jobs,
            overdue_jobs,
            oldest_overdue_seconds,
            effective_rate,
            long_polls_waiting,
            throttled,
            notification_attempts,
            pruned_bodies,
            archive_files,
            archive_bytes,
            request_duration,
            connections_open,
            connections_max,
            connections_refused,
            connections_closed,
            accept_errors,
        }
    }

    pub fn count_delivery(&self, outcome: &str) {
        self.deliveries
            .get_or_create(&OutcomeLabel {
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    /// Counts one more long-poll waiting, until the guard is dropped.
    pub fn long_poll_waiting(&self) -> GaugeGuard {
        self.long_polls_waiting.inc();
        GaugeGuard(self.long_polls_waiting.clone())
    }

    /// The credits used by model, as the database sums them (set before each scrape).
    pub fn set_credits_used(&self, by_model: Vec<(String, f64)>) {
        *lock(&self.credits_used.0) = by_model;
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Err(err) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %err, "cannot encode metrics");
        }
        out
    }
}
