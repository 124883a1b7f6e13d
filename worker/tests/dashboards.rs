//! The shipped dashboard, alert rules and autoscaling queries name only metrics a running fleet
//! exports, and both scrapes pass `promtool check metrics`. A gateway (in-process) and a worker
//! (its binary, as deployed) run calls that succeed, fail, retry, die and call back, then both
//! are scraped.
// A failed unwrap in a helper is the test failure we want, as in the tests themselves.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::{Gateway, Nats, get, spawn_worker};
use flotilla_testsupport::{Recorded, RecordingServer, Reply};

const T: Duration = Duration::from_secs(30);
/// Metric name prefixes the fleet exports; a token with one of these in a query is a metric.
const PREFIXES: [&str; 4] = ["flotilla_", "gateway_", "worker_", "process_"];

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .into()
}

/// promtool: `PROMTOOL_BIN`, or where `scripts/setup --for-tests` puts it.
fn promtool() -> PathBuf {
    std::env::var_os("PROMTOOL_BIN").map_or_else(
        || repo_root().join(".tools/prometheus/promtool"),
        PathBuf::from,
    )
}

/// Metric names in a PromQL expression: identifiers starting with one of [`PREFIXES`], with a
/// histogram's `_bucket`, `_sum` and `_count` suffix taken off.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let starts_word = i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_');
        if starts_word && PREFIXES.iter().any(|p| expr[i..].starts_with(p)) {
            let end = expr[i..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .map_or(expr.len(), |n| i + n);
            let name = &expr[i..end];
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(name);
            names.insert(base.to_owned());
            i = end;
        } else {
            i += 1;
        }
    }
    names
}

/// Every `expr` in a Grafana dashboard (panels nest in rows).
fn dashboard_exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("expr" | "query", serde_json::Value::String(s)) => out.push(s.clone()),
                    _ => dashboard_exprs(v, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| dashboard_exprs(v, out)),
        _ => {}
    }
}

/// Every query in the Kubernetes manifests: alert rules' `expr` and KEDA triggers' `query`,
/// which may be block scalars spanning the lines below them.
fn manifest_exprs(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let lines: Vec<&str> = text.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        let trimmed = line.trim_start();
        let trimmed = trimmed.strip_prefix("- ").unwrap_or(trimmed);
        let Some(value) = ["expr:", "query:"]
            .iter()
            .find_map(|k| trimmed.strip_prefix(k))
        else {
            continue;
        };
        let mut expr = value.to_owned();
        let indent = line.len() - trimmed.len();
        for next in &lines[i + 1..] {
            let t = next.trim_start();
            if !t.is_empty() && next.len() - t.len() <= indent {
                break;
            }
            expr.push('\n');
            expr.push_str(t);
        }
        out.push(expr);
    }
    out
}

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files_under(&path, out);
        } else {
            out.push(path);
        }
    }
}

/// The metric names each shipped query file uses, by file.
fn shipped_queries() -> Vec<(PathBuf, BTreeSet<String>)> {
    let mut files = Vec::new();
    files_under(&repo_root().join("deploy"), &mut files);
    let mut found = Vec::new();
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let exprs = match path.extension().and_then(|e| e.to_str()) {
            Some("json") => {
                let mut out = Vec::new();
                dashboard_exprs(&serde_json::from_str(&text).unwrap(), &mut out);
                out
            }
            Some("yaml" | "yml") => manifest_exprs(&text),
            _ => continue,
        };
        let names: BTreeSet<String> = exprs.iter().flat_map(|e| metric_names(e)).collect();
        if !names.is_empty() {
            found.push((path, names));
        }
    }
    found
}

/// Metric names in a scrape (histogram series under their base name), after `promtool check
/// metrics` passed on it.
fn checked_scrape(what: &str, text: &str) -> BTreeSet<String> {
    let mut child = std::process::Command::new(promtool())
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e} (scripts/setup --for-tests installs it)",
                promtool().display()
            )
        });
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics on the {what}'s scrape:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .flat_map(|l| metric_names(l.split(['{', ' ']).next().unwrap_or_default()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_shipped_query_names_a_metric_the_fleet_exports() {
    let shipped = shipped_queries();
    let files: Vec<String> = shipped
        .iter()
        .map(|(p, _)| p.strip_prefix(repo_root()).unwrap().display().to_string())
        .collect();
    for needed in [
        "deploy/grafana/flotilla.json",
        "prometheusrule",
        "scaledobject",
    ] {
        assert!(
            files.iter().any(|f| f.to_lowercase().contains(needed)),
            "no query file matching {needed} in {files:?}"
        );
    }

    let nats = Nats::start(1).await;
    // `ok` answers 200, `bad` 400 (final, not retried), `flaky` 503 (retried, then dead).
    let function = RecordingServer::start(Arc::new(|r: &Recorded| match r.path.as_str() {
        p if p.starts_with("/bad") => Reply::status(400),
        p if p.starts_with("/flaky") => Reply::status(503),
        _ => Reply::status(200).body("done"),
    }))
    .await;
    let sink = RecordingServer::answering(200).await;
    let template = format!("{}/{{name}}", function.url());
    let dir = tempfile::tempdir().unwrap();
    let policies = dir.path().join("policies.toml");
    std::fs::write(
        &policies,
        "[functions.flaky.retry]\nattempts = 2\nmin_backoff = \"10ms\"\nmax_backoff = \"20ms\"\n",
    )
    .unwrap();
    let policies = policies.to_str().unwrap();
    let url = nats.url();
    let gw = Gateway::start(&[
        "--nats-url",
        &url,
        "--function-url-template",
        &template,
        "--policies",
        policies,
    ])
    .await;
    let admin = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let listen = admin.to_string();
    let mut worker = spawn_worker(
        &url,
        &template,
        &["--listen", &listen, "--policies", policies],
    );

    let callback = format!("{}/cb", sink.url());
    for function in ["ok", "bad", "flaky"] {
        let a = gw
            .post(
                &format!("/async-function/{function}"),
                &[("x-callback-url", &callback)],
                "x",
            )
            .await
            .unwrap();
        assert_eq!(a.status, 202);
    }
    assert_eq!(gw.post("/function/ok", &[], "x").await.unwrap().status, 200);
    // A refusal, so the gateway's error counter has a series.
    assert_eq!(
        gw.post("/async-function/bad%20name", &[], "x")
            .await
            .unwrap()
            .status,
        400
    );
    // Every call reached its callback: `flaky` after its retry, from the dead letters.
    sink.wait_for(3, T).await;

    let (status, gateway) = get(gw.addr, "/metrics").await;
    assert_eq!(status, 200);
    let (status, worker_scrape) = get(admin, "/metrics").await;
    assert_eq!(status, 200);
    let mut exported = checked_scrape("gateway", &gateway);
    exported.extend(checked_scrape("worker", &worker_scrape));
    for (scrape, binary) in [
        (&gateway, "flotilla-gateway"),
        (&worker_scrape, "flotilla-worker"),
    ] {
        assert!(
            scrape.contains(&format!("flotilla_build_info{{binary=\"{binary}\"")),
            "{scrape}"
        );
    }
    assert!(
        worker_scrape.contains("worker_nats_connected 1"),
        "{worker_scrape}"
    );

    for (path, names) in &shipped {
        let missing: Vec<&String> = names.difference(&exported).collect();
        assert!(
            missing.is_empty(),
            "{} names metrics no process exports: {missing:?}",
            path.display()
        );
    }
    common::sigterm(&worker);
    tokio::time::timeout(T, worker.wait())
        .await
        .unwrap()
        .unwrap();
}

#[test]
fn metric_names_are_found_in_promql_and_histograms_fold_to_their_base() {
    let names = metric_names(
        "histogram_quantile(0.99, sum by (le) (rate(worker_call_duration_seconds_bucket[5m]))) \
         / on() group_left count(flotilla_build_info{binary=\"flotilla-worker\"}) + my_worker_x",
    );
    let want: BTreeSet<String> = ["worker_call_duration_seconds", "flotilla_build_info"]
        .map(String::from)
        .into();
    assert_eq!(names, want);
    let yaml = "      expr: |\n        sum(worker_pending)\n          > 10\n      for: 5m\n    - query: gateway_nats_connected == 0\n";
    assert_eq!(
        manifest_exprs(yaml),
        [
            " |\nsum(worker_pending)\n> 10",
            " gateway_nats_connected == 0"
        ]
    );
}
