//! Prometheus metrics: executions by runtime and status, run durations, pool occupancy, active
//! sessions, HTTP requests by route and status, and live async tasks, rendered in the text exposition format.

use std::sync::atomic::AtomicI64;

use axum::extract::{MatchedPath, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use isol8_api::ExecutionResult;
use isol8_docker::PoolStats;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::state::AppState;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ExecutionLabels {
    runtime: String,
    status: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RuntimeLabels {
    runtime: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabels {
    route: String,
    method: String,
    status: String,
}

type DurationFamily = Family<RuntimeLabels, Histogram, fn() -> Histogram>;

/// The server's metrics. Shared by handlers and middleware; every update is a lock-free atomic.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    executions: Family<ExecutionLabels, Counter>,
    durations: DurationFamily,
    http_requests: Family<HttpLabels, Counter>,
    pool_ready: Gauge<i64, AtomicI64>,
    pool_busy: Gauge<i64, AtomicI64>,
    sessions: Gauge<i64, AtomicI64>,
    tasks: Gauge<i64, AtomicI64>,
    /// Mirrors `PoolStats::prestarted_runs` (brought up to it at each render).
    prestarted_runs: Counter,
}

fn duration_histogram() -> Histogram {
    // 5 ms .. ~80 s: warm runs take milliseconds, timeouts tens of seconds.
    Histogram::new(exponential_buckets(0.005, 2.0, 15))
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("isol8");
        let executions = Family::<ExecutionLabels, Counter>::default();
        let durations: DurationFamily = Family::new_with_constructor(duration_histogram);
        let http_requests = Family::<HttpLabels, Counter>::default();
        let (pool_ready, pool_busy, sessions, tasks) = Default::default();
        let prestarted_runs = Counter::default();
        registry.register(
            "executions",
            "Executions finished, by runtime and status",
            executions.clone(),
        );
        registry.register(
            "execution_duration_seconds",
            "Wall-clock time of executions, by runtime",
            durations.clone(),
        );
        registry.register(
            "http_requests",
            "HTTP requests answered, by route, method and status",
            http_requests.clone(),
        );
        registry.register(
            "pool_ready_containers",
            "Warm containers waiting for a run",
            Gauge::<i64, AtomicI64>::clone(&pool_ready),
        );
        registry.register(
            "pool_busy_containers",
            "Containers running code",
            Gauge::<i64, AtomicI64>::clone(&pool_busy),
        );
        registry.register(
            "sessions_active",
            "Persistent sessions alive",
            Gauge::<i64, AtomicI64>::clone(&sessions),
        );
        registry.register(
            "tasks_alive",
            "Async tasks alive in the server (connections, runs, pool work): a leak shows as growth",
            Gauge::<i64, AtomicI64>::clone(&tasks),
        );
        registry.register(
            "prestarted_runs",
            "Runs whose program ran in a pre-started interpreter",
            prestarted_runs.clone(),
        );
        Metrics {
            registry,
            prestarted_runs,
            executions,
            durations,
            http_requests,
            pool_ready,
            pool_busy,
            sessions,
            tasks,
        }
    }
}

impl Metrics {
    pub fn record_execution(&self, result: &ExecutionResult) {
        let runtime = result.runtime.as_str().to_string();
        self.executions
            .get_or_create(&ExecutionLabels {
                runtime: runtime.clone(),
                status: result.status.as_str().to_string(),
            })
            .inc();
        self.durations
            .get_or_create(&RuntimeLabels { runtime })
            .observe(result.duration_ms as f64 / 1000.0);
    }

    /// The text exposition, with the gauges read now.
    pub fn render(&self, pool: PoolStats, sessions: usize) -> String {
        self.pool_ready.set(pool.ready as i64);
        self.pool_busy.set(pool.busy as i64);
        self.prestarted_runs.inc_by(
            pool.prestarted_runs
                .saturating_sub(self.prestarted_runs.get()),
        );
        self.sessions.set(sessions as i64);
        self.tasks.set(
            tokio::runtime::Handle::current()
                .metrics()
                .num_alive_tasks() as i64,
        );
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// The label of an HTTP method: the standard ones by name, anything else (`XFOO`, `BREW`, which
/// hyper accepts from anyone, before auth) as `other`, so a client cannot add series at will.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "other",
    }
}

/// Counts every response by the route that matched it (`unmatched` for unknown paths and for
/// requests refused before routing) and a method from a fixed set: every label takes one of a
/// bounded set of values, so scanners and unauthenticated clients cannot blow up the label set.
pub(crate) async fn count_requests(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let method = method_label(request.method()).to_string();
    let response = next.run(request).await;
    let route = response
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_string();
    state
        .metrics
        .http_requests
        .get_or_create(&HttpLabels {
            route,
            method,
            status: response.status().as_u16().to_string(),
        })
        .inc();
    response
}

/// Hands the matched route to [`count_requests`], which runs outside routing and cannot see it.
pub(crate) async fn expose_matched_path(request: Request, next: Next) -> Response {
    let path = request.extensions().get::<MatchedPath>().cloned();
    let mut response = next.run(request).await;
    if let Some(path) = path {
        response.extensions_mut().insert(path);
    }
    response
}
