//! The operators' tools, for real: Debian's `prometheus` package (installed by the test
//! command, `scripts/ensure-prometheus.sh`) checks and unit-tests the shipped alert rules,
//! and a real Prometheus server scrapes a running firehose-edge and answers queries over its
//! series — including a `histogram_quantile` over the request histogram. The Grafana
//! dashboard is checked to be JSON that uses only metric names the service exports.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::{TestServer, WAIT, post, test_config, track_body};
use serde_json::Value;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A Prometheus binary from the `prometheus` Debian package.
fn tool(name: &str) -> PathBuf {
    let path = PathBuf::from("/usr/bin").join(name);
    assert!(
        path.exists(),
        "{} is missing: run ./scripts/test, which installs Debian's `prometheus` package \
         (it has promtool) with scripts/ensure-prometheus.sh",
        path.display()
    );
    path
}

#[test]
fn the_alert_rules_are_valid_and_each_fires_when_it_should() {
    let dir = root().join("deploy/prometheus");
    for args in [
        &["check", "rules", "alerts.yml"][..],
        &["test", "rules", "alerts_test.yml"][..],
    ] {
        let out = std::process::Command::new(tool("promtool"))
            .args(args)
            .current_dir(&dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The metric names `src/metrics.rs` declares (its `pub const … = "firehose_edge_…"`).
fn declared_metrics() -> BTreeSet<String> {
    let source = std::fs::read_to_string(root().join("src/metrics.rs")).unwrap();
    source
        .lines()
        .filter_map(|l| l.trim().strip_prefix("pub const "))
        .filter_map(|l| l.split('"').nth(1))
        .filter(|name| name.starts_with("firehose_edge_"))
        .map(str::to_owned)
        .collect()
}

/// Every `firehose_edge_…` name in `text`, without the histogram suffixes.
fn used_metrics(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (i, _) in text.match_indices("firehose_edge_") {
        let name: String = text[i..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        let base = ["_bucket", "_count", "_sum"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(&name);
        out.insert(base.to_owned());
    }
    out
}

#[test]
fn the_dashboard_and_the_alerts_use_only_metrics_that_exist() {
    let declared = declared_metrics();
    assert!(declared.len() >= 15, "{declared:?}");
    let dashboard =
        std::fs::read_to_string(root().join("deploy/grafana/firehose-edge.json")).unwrap();
    let parsed: Value = serde_json::from_str(&dashboard).expect("the dashboard is JSON");
    assert!(parsed["panels"].as_array().is_some_and(|p| p.len() >= 10));
    let alerts = std::fs::read_to_string(root().join("deploy/prometheus/alerts.yml")).unwrap();
    for (file, text) in [("dashboard", &dashboard), ("alerts", &alerts)] {
        let unknown: Vec<String> = used_metrics(text).difference(&declared).cloned().collect();
        assert!(
            unknown.is_empty(),
            "{file} uses metrics that do not exist: {unknown:?}"
        );
    }
}

/// One recorder for this test binary, as `main` installs one for the process.
fn recorder() -> metrics_exporter_prometheus::PrometheusHandle {
    static HANDLE: std::sync::OnceLock<metrics_exporter_prometheus::PrometheusHandle> =
        std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            firehose_edge::metrics::exporter()
                .install_recorder()
                .expect("one recorder per process")
        })
        .clone()
}

/// A real Prometheus server scraping the service every second, stopped on drop.
struct Prometheus {
    child: tokio::process::Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    async fn start(target: &str) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\n\
                 scrape_configs:\n  - job_name: firehose-edge\n    static_configs:\n      - targets: ['{target}']\n",
                root().join("deploy/prometheus/alerts.yml").display()
            ),
        )
        .unwrap();
        let child = tokio::process::Command::new(tool("prometheus"))
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        Prometheus {
            child,
            url: format!("http://127.0.0.1:{port}"),
            _dir: dir,
        }
    }

    /// Polls an instant query until it returns at least one series (bounded).
    async fn query_until_present(&mut self, query: &str) -> Vec<Value> {
        let client = reqwest::Client::new();
        let found = tokio::time::timeout(WAIT, async {
            loop {
                if let Ok(Some(status)) = self.child.try_wait() {
                    panic!("prometheus exited: {status}");
                }
                let answer = client
                    .get(format!("{}/api/v1/query", self.url))
                    .query(&[("query", query)])
                    .send()
                    .await;
                if let Ok(answer) = answer
                    && let Ok(body) = answer.json::<Value>().await
                    && let Some(result) = body["data"]["result"].as_array()
                    && !result.is_empty()
                {
                    return result.clone();
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
        .await;
        found.unwrap_or_else(|_| panic!("prometheus never answered {query}"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scrapes_the_service_and_queries_its_histograms() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_observed(
        test_config(dir.path()),
        common::Observed::new(std::sync::Arc::new(firehose_edge::sink::FileSink::new(
            dir.path().join("lake"),
        ))),
        Some(recorder()),
    )
    .await;
    let target = server.admin.trim_start_matches("http://").to_owned();
    let mut prometheus = Prometheus::start(&target).await;
    let up = prometheus
        .query_until_present("up{job=\"firehose-edge\"} == 1")
        .await;
    assert_eq!(up.len(), 1);
    // Traffic across several scrapes, so that rates have samples that differ.
    for i in 0..40 {
        assert_eq!(
            post(&server, "/track", &track_body(&format!("p{i}"))).await,
            200
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let requests = prometheus
        .query_until_present(
            "sum(firehose_edge_requests_total{endpoint=\"track\",status=\"200\"}) >= 40",
        )
        .await;
    assert_eq!(requests[0]["value"][1], "40");
    let p99 = prometheus
        .query_until_present(
            "histogram_quantile(0.99, sum by (le) (rate(firehose_edge_request_duration_seconds_bucket{endpoint=\"track\"}[1m]))) > 0",
        )
        .await;
    let seconds: f64 = p99[0]["value"][1].as_str().unwrap().parse().unwrap();
    assert!(seconds > 0.0 && seconds < 60.0, "p99 {seconds} s");
    prometheus
        .query_until_present("firehose_edge_queue_moved_aside_total == 0")
        .await;
    server.stop().await;
}
