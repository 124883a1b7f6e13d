//! The acceptance check of the loadgen itself: a short `--local` run through the real binary
//! (nats-server, gateway, workers, function server, sink, ceiling) must audit clean and print
//! every documented JSON field.

use std::process::Command;

use serde_json::Value;

fn loadgen() -> Command {
    Command::new(env!("CARGO_BIN_EXE_flotilla-loadgen"))
}

/// Runs the loadgen to its end: its JSON report and its stderr, once it exited 0.
fn report_of(cmd: &mut Command) -> (Value, String) {
    let out = cmd.output().expect("run flotilla-loadgen");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "exit {:?}\n{stderr}", out.status);
    let report = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}):\n{}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    (report, stderr)
}

fn field<'a>(v: &'a Value, path: &str) -> &'a Value {
    path.split('.').fold(v, |v, key| {
        v.get(key)
            .unwrap_or_else(|| panic!("JSON report lacks {path} (at {key})"))
    })
}

#[test]
fn short_local_run_audits_clean_and_reports_json() {
    let plot =
        std::env::temp_dir().join(format!("flotilla-loadgen-test-{}.svg", std::process::id()));
    let (report, stderr) = report_of(
        loadgen()
            .args([
                "--local",
                "--rate",
                "150",
                "--duration",
                "2s",
                "--functions",
                "4",
                "--shards",
                "2",
                "--ceiling-duration",
                "300ms",
                "--ceiling-concurrency",
                "8",
                "--drain-timeout",
                "20s",
                "--json",
                "--quiet",
                "--plot",
            ])
            .arg(&plot),
    );

    // The audit: everything accepted completed, once.
    let accepted = field(&report, "audit.accepted").as_u64().unwrap();
    assert_eq!(accepted, 300, "150/s for 2 s, all accepted\n{stderr}");
    assert_eq!(field(&report, "audit.completed").as_u64(), Some(accepted));
    assert_eq!(field(&report, "audit.lost").as_u64(), Some(0));
    assert_eq!(field(&report, "audit.duplicates").as_u64(), Some(0));
    assert_eq!(field(&report, "audit.ok").as_bool(), Some(true));
    assert!(
        field(&report, "audit.lost_ids")
            .as_array()
            .unwrap()
            .is_empty()
    );

    // The documented fields are there, with sane values.
    assert_eq!(field(&report, "schema").as_u64(), Some(1));
    assert_eq!(field(&report, "target.kind").as_str(), Some("local"));
    assert_eq!(field(&report, "target.shards").as_u64(), Some(2));
    assert_eq!(field(&report, "load.model").as_str(), Some("open"));
    assert_eq!(field(&report, "load.rates").as_array().unwrap().len(), 1);
    assert_eq!(field(&report, "enqueue.sent").as_u64(), Some(300));
    assert_eq!(field(&report, "enqueue.errors").as_u64(), Some(0));
    let rate = field(&report, "enqueue.rate_per_s").as_f64().unwrap();
    assert!((120.0..=180.0).contains(&rate), "enqueue rate {rate}");
    for stage in ["enqueue", "completion"] {
        let p = field(&report, &format!("{stage}.latency_ms"));
        let (p50, p99, max) = (
            field(p, "p50").as_f64().unwrap(),
            field(p, "p99").as_f64().unwrap(),
            field(p, "max").as_f64().unwrap(),
        );
        assert!(p50 > 0.0 && p50 <= p99 && p99 <= max, "{stage}: {p}");
        assert_eq!(field(p, "count").as_u64(), Some(300));
        for k in ["mean", "p90", "p999"] {
            assert!(field(p, k).is_number(), "{stage}.latency_ms.{k}");
        }
    }
    assert_eq!(field(&report, "completion.completed").as_u64(), Some(300));
    assert!(field(&report, "completion.rate_per_s").as_f64().unwrap() > 0.0);
    // What each call cost in CPU, over the whole run (no backlog: enqueue has no share of its own).
    let cpu = field(&report, "completion.cpu_us_per_call");
    for k in ["process_us", "nats_server_us"] {
        assert!(field(cpu, k).as_f64().unwrap() >= 0.0, "{k}: {cpu}");
    }
    assert!(field(cpu, "machine_us").as_f64().unwrap() > 0.0, "{cpu}");
    assert!(report["enqueue"].get("cpu_us_per_call").is_none());
    assert!(stderr.contains("- CPU per call completed: "), "{stderr}");
    assert_eq!(field(&report, "function_status.200").as_u64(), Some(300));
    assert!(field(&report, "errors").as_object().unwrap().is_empty());
    for k in [
        "http_to_jetstream_per_s",
        "pull_post_ack_per_s",
        "pull_post_post_ack_per_s",
        "http_post_per_s",
        "full_pipeline_per_s",
    ] {
        assert!(
            field(&report, &format!("ceiling.{k}")).as_f64().unwrap() > 0.0,
            "{k}"
        );
    }
    for k in [
        "enqueue_vs_http_to_jetstream",
        "completion_vs_pull_post_ack",
        "completion_vs_pull_post_post_ack",
        "completion_vs_matching_ceiling",
        "enqueue_vs_http_post",
        "completion_vs_full_pipeline",
    ] {
        assert!(
            field(&report, &format!("ratios.{k}")).as_f64().unwrap() > 0.0,
            "{k}"
        );
    }
    let series = field(&report, "series");
    assert!(field(series, "bucket_s").as_f64().unwrap() > 0.0);
    let enq: f64 = field(series, "enqueue_per_s")
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .sum::<f64>()
        * field(series, "bucket_s").as_f64().unwrap();
    assert!((enq - 300.0).abs() < 1.0, "series holds every 202: {enq}");

    // The table went to stderr, the plot to its file.
    assert!(stderr.contains("| enqueue (202) |"), "{stderr}");
    assert!(stderr.contains(" of full pipeline "), "{stderr}");
    assert!(stderr.contains("lost 0"), "{stderr}");
    let svg = std::fs::read_to_string(&plot).expect("plot written");
    assert!(svg.contains("<svg") && svg.trim_end().ends_with("</svg>"));
    let _ = std::fs::remove_file(&plot);
}

#[test]
fn bad_flags_exit_64() {
    let out = loadgen()
        .args(["--gateway", "http://127.0.0.1:9", "--duration", "1s"])
        .output()
        .expect("run flotilla-loadgen");
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--callback-listen"));
}

#[test]
fn without_callbacks_the_function_arrivals_are_audited() {
    let (report, stderr) = report_of(loadgen().args([
        "--local",
        "--no-callbacks",
        "--backlog",
        "--count",
        "200",
        "--functions",
        "2",
        "--no-ceiling",
        "--drain-timeout",
        "20s",
        "--json",
        "--quiet",
    ]));
    assert_eq!(field(&report, "load.callbacks").as_bool(), Some(false));
    assert_eq!(field(&report, "audit.accepted").as_u64(), Some(200));
    assert_eq!(field(&report, "audit.completed").as_u64(), Some(200));
    assert_eq!(field(&report, "audit.duplicates").as_u64(), Some(0));
    assert_eq!(field(&report, "function_status.200").as_u64(), Some(200));
    assert!(stderr.contains("end to end (function)"), "{stderr}");
    // A backlog tells the enqueue's CPU and the drain's apart.
    for stage in ["enqueue", "completion"] {
        let cpu = field(&report, &format!("{stage}.cpu_us_per_call"));
        assert!(
            field(cpu, "machine_us").as_f64().unwrap() >= 0.0,
            "{stage}: {cpu}"
        );
    }
}

#[test]
fn the_status_audit_counts_every_call_by_its_final_state() {
    let (report, stderr) = report_of(loadgen().args([
        "--local",
        "--audit",
        "status",
        "--count",
        "300",
        "--functions",
        "3",
        "--failure-rate",
        "0.5",
        "--no-ceiling",
        "--drain-timeout",
        "20s",
        "--json",
        "--quiet",
    ]));
    assert_eq!(field(&report, "load.callbacks").as_bool(), Some(false));
    assert_eq!(field(&report, "load.status_api").as_bool(), Some(true));
    assert_eq!(field(&report, "audit.accepted").as_u64(), Some(300));
    assert_eq!(field(&report, "audit.lost").as_u64(), Some(0));
    let states = field(&report, "audit.states").as_object().expect("states");
    let total: u64 = states.values().filter_map(Value::as_u64).sum();
    assert_eq!(total, 300, "{states:?}");
    // Half the attempts fail with a retried status: with three attempts most calls succeed and
    // some exhaust their budget.
    assert!(
        states.get("succeeded").and_then(Value::as_u64) > Some(0),
        "{states:?}"
    );
    assert!(
        states.get("dead").and_then(Value::as_u64) > Some(0),
        "{states:?}"
    );
    assert!(stderr.contains("end to end (status API)"), "{stderr}");
}

#[test]
fn batches_go_through_the_batch_route_and_audit_clean() {
    let (report, _) = report_of(loadgen().args([
        "--local",
        "--batch",
        "50",
        "--concurrency",
        "2",
        "--count",
        "500",
        "--functions",
        "2",
        "--no-ceiling",
        "--json",
        "--quiet",
    ]));
    assert_eq!(field(&report, "load.batch").as_u64(), Some(50));
    assert_eq!(field(&report, "audit.accepted").as_u64(), Some(500));
    assert_eq!(field(&report, "audit.completed").as_u64(), Some(500));
    assert_eq!(field(&report, "audit.duplicates").as_u64(), Some(0));
    assert_eq!(field(&report, "enqueue.errors").as_u64(), Some(0));
}
