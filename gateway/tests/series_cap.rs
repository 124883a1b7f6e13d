//! Per-function metric series are bounded: with `--max-function-series 3`, calls to ten
//! functions leave three names in the labels and count the rest under `function_name="~other"`.

#[path = "support/harness.rs"]
mod harness;

use std::collections::BTreeSet;

use flotilla_testsupport::NatsServer;
use harness::{Gateway, call, get};
use http::StatusCode;

#[tokio::test]
async fn function_names_beyond_the_cap_count_under_other() {
    let nats = NatsServer::start();
    let gw = Gateway::ready(
        &nats.url(),
        &["--shards", "1", "--max-function-series", "3"],
    )
    .await;
    for i in 0..10 {
        let r = call(
            gw.addr,
            "POST",
            &format!("/async-function/fn-{i}"),
            &[],
            b"x",
        )
        .await;
        assert_eq!(r.status, StatusCode::ACCEPTED);
    }
    let (_, metrics) = get(gw.addr, "/metrics").await;
    let names: BTreeSet<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("gateway_function_invocation_total{"))
        .filter_map(|l| l.split("function_name=\"").nth(1)?.split('"').next())
        .collect();
    assert_eq!(names.len(), 4, "{names:?}");
    assert!(names.contains("~other"), "{names:?}");
    let other = metrics
        .lines()
        .find(|l| {
            l.starts_with("gateway_function_invocation_total{")
                && l.contains("function_name=\"~other\"")
        })
        .and_then(|l| l.rsplit(' ').next())
        .unwrap_or_default();
    assert_eq!(other, "7", "{metrics}");
}
