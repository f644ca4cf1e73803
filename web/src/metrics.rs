//! Request metrics in the Prometheus text format: request counts per route, method and status,
//! latency histograms per route, plus gauges the caller supplies (queue depth, catalogue size).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds (seconds) of the latency histogram buckets.
const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Debug, Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

#[derive(Debug, Default)]
struct Inner {
    requests: BTreeMap<(String, String, u16), u64>,
    latency: BTreeMap<String, Histogram>,
}

/// Counters and histograms of HTTP requests. `Sync`; share it in the app state.
#[derive(Debug, Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

impl Metrics {
    /// Records one finished request on `route` (the route pattern, not the raw path).
    pub fn observe(&self, route: &str, method: &str, status: u16, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        let mut inner = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *inner
            .requests
            .entry((route.to_string(), method.to_string(), status))
            .or_default() += 1;
        let h = inner.latency.entry(route.to_string()).or_default();
        h.count += 1;
        h.sum += secs;
        if let Some(i) = BUCKETS.iter().position(|&b| secs <= b) {
            h.counts[i] += 1;
        }
    }

    /// The Prometheus exposition text, followed by `gauges` as (name, help, value).
    pub fn render(&self, gauges: &[(&str, &str, f64)]) -> String {
        let inner = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut out = String::new();
        out.push_str(
            "# HELP animelens_http_requests_total HTTP requests by route, method and status.\n",
        );
        out.push_str("# TYPE animelens_http_requests_total counter\n");
        for ((route, method, status), n) in &inner.requests {
            let _ = writeln!(
                out,
                "animelens_http_requests_total{{route=\"{route}\",method=\"{method}\",status=\"{status}\"}} {n}"
            );
        }
        out.push_str("# HELP animelens_http_request_duration_seconds Request latency by route.\n");
        out.push_str("# TYPE animelens_http_request_duration_seconds histogram\n");
        for (route, h) in &inner.latency {
            let mut cumulative = 0;
            for (bound, n) in BUCKETS.iter().zip(h.counts) {
                cumulative += n;
                let _ = writeln!(
                    out,
                    "animelens_http_request_duration_seconds_bucket{{route=\"{route}\",le=\"{bound}\"}} {cumulative}"
                );
            }
            let _ = writeln!(
                out,
                "animelens_http_request_duration_seconds_bucket{{route=\"{route}\",le=\"+Inf\"}} {}\n\
                 animelens_http_request_duration_seconds_sum{{route=\"{route}\"}} {}\n\
                 animelens_http_request_duration_seconds_count{{route=\"{route}\"}} {}",
                h.count, h.sum, h.count
            );
        }
        for (name, help, value) in gauges {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counts_and_cumulative_buckets() {
        let m = Metrics::default();
        m.observe("/api/v1/search", "POST", 200, Duration::from_millis(3));
        m.observe("/api/v1/search", "POST", 200, Duration::from_millis(30));
        m.observe("/api/v1/search", "POST", 422, Duration::from_micros(100));
        let text = m.render(&[("animelens_inference_queue_depth", "Jobs waiting.", 2.0)]);
        assert!(text.contains(
            "animelens_http_requests_total{route=\"/api/v1/search\",method=\"POST\",status=\"200\"} 2"
        ));
        assert!(text.contains("le=\"0.005\"} 2"));
        assert!(text.contains("le=\"+Inf\"} 3"));
        assert!(text.contains("animelens_inference_queue_depth 2"));
    }
}
