//! The operator console (`/system/ui`) in a real browser, headless Chromium driven over
//! WebDriver, against a real fleet behind `/system`'s basic auth: the queues page counts a
//! function's pending calls; a dead letter is inspected (its `<script>` body and headers shown as
//! text, nothing run), replayed, and its call then succeeds; another is deleted; a batch's
//! progress reaches done; a call is looked up from the keyboard and cancelled; a finished call
//! shows its kept result; the layout fits a phone's width.
//!
//! With `FLOTILLA_CONSOLE_SCREENSHOTS=<dir>` the test saves a screenshot of each page there
//! (`docs/console/` holds the ones the docs show). When no browser can be started the test says
//! why on one line and passes without running.

// A failed unwrap is the test failure we want.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{Gateway, Nats, Worker};
use flotilla_testsupport::{Browser, RecordingServer, Reply, wait_until_async};
use http::Method;
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(30);
/// `admin:secret`.
const AUTH: &str = "Basic YWRtaW46c2VjcmV0";
const CONFIRM: &str = "#confirm-ok";

/// What a hostile client puts in a call: markup and scripts in its body and a header.
const EVIL_BODY: &str =
    "<img src=x onerror=\"window.pwned=2\"><script>window.pwned=3</script><b>bold</b>";
const EVIL_HEADER: &str = "<script>window.pwned=1</script>";

async fn enqueue(gw: &Gateway, function: &str, headers: &[(&str, &str)], body: &str) -> String {
    let a = gw
        .post(
            &format!("/async-function/{function}"),
            headers,
            body.to_owned(),
        )
        .await
        .unwrap();
    assert_eq!(a.status, 202, "{:?}", a.body);
    a.call_id.unwrap()
}

async fn api(gw: &Gateway, method: Method, path: &str) -> (u16, Value) {
    let a = gw
        .send(method, path, &[("authorization", AUTH)], "")
        .await
        .unwrap();
    (
        a.status,
        serde_json::from_slice(&a.body).unwrap_or(Value::Null),
    )
}

async fn wait_state(gw: &Gateway, call_id: &str, state: &str) {
    wait_until_async(T, &format!("call {call_id} {state}"), || async {
        api(gw, Method::GET, &format!("/async-call/{call_id}"))
            .await
            .1["state"]
            == state
    })
    .await;
}

/// Saves a screenshot of the page as `<name>.png` when screenshots are asked for (a relative
/// folder is taken from the workspace's root).
async fn screenshot(browser: &Browser, name: &str) {
    if let Some(dir) = std::env::var_os("FLOTILLA_CONSOLE_SCREENSHOTS") {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join(dir);
        std::fs::create_dir_all(&dir).unwrap();
        browser
            .screenshot(&dir.join(format!("{name}.png")))
            .await
            .unwrap();
    }
}

/// The dead-letter sequence of the row that shows `call_id`.
async fn letter_of(browser: &Browser, call_id: &str) -> u64 {
    let script = "for (const row of document.querySelectorAll('#dead-letters tr[data-sequence]')) { \
                    const id = row.querySelector('[data-field=call_id]'); \
                    if (id && id.textContent === arguments[0]) return row.dataset.sequence; } \
                  return null;";
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let found = browser.run(script, vec![call_id.into()]).await.unwrap();
        if let Some(sequence) = found.as_str().and_then(|s| s.parse().ok()) {
            return sequence;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the dead letter of {call_id} is not listed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Clicks `css`, then OK in the confirmation dialog.
async fn confirmed_click(browser: &Browser, css: &str) {
    browser.click(css).await.unwrap();
    browser
        .wait_text("#confirm-text", T, |t| !t.is_empty())
        .await;
    browser.click(CONFIRM).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_shows_queues_letters_batches_and_calls() {
    let browser = match Browser::start().await {
        Ok(b) => b,
        Err(why) => {
            eprintln!("console browser test skipped: {why}");
            return;
        }
    };
    let nats = Nats::start(1).await;
    let gw = Gateway::start(&[
        "--nats-url",
        &nats.url(),
        "--basic-auth-user",
        "admin",
        "--basic-auth-password",
        "secret",
    ])
    .await;
    browser
        .send_headers_with_every_request(&[("Authorization", AUTH)])
        .await
        .unwrap();
    let ui = format!("http://{}/system/ui", gw.addr);

    // Queues: seven calls and no worker yet, so all seven are pending.
    for n in 0..7 {
        enqueue(&gw, "waiting", &[], &format!("call {n}")).await;
    }
    browser.open(&format!("{ui}#/queues")).await.unwrap();
    browser
        .wait_text(
            "#queues tr[data-function='waiting'] td[data-field='pending']",
            T,
            |t| t == "7",
        )
        .await;
    screenshot(&browser, "queues").await;

    // A worker whose `flaky` function fails until healed: one attempt, then the dead letters.
    let healed = Arc::new(AtomicBool::new(false));
    let function = {
        let healed = healed.clone();
        RecordingServer::start(Arc::new(move |r| {
            if r.path.starts_with("/flaky") && !healed.load(Ordering::SeqCst) {
                Reply::status(500).body("not yet")
            } else {
                let body = format!("done: {}", String::from_utf8_lossy(&r.body));
                Reply::status(200)
                    .header("content-type", "text/plain")
                    .body(body)
            }
        }))
        .await
    };
    let policies = "[defaults]\nkeep_results = true\n[defaults.retry]\nattempts = 1\n";
    let _worker = Worker::with_policies(&nats.url(), &function.url(), policies).await;
    let flaky = enqueue(&gw, "flaky", &[("content-type", "text/plain")], "hello").await;
    let evil = enqueue(
        &gw,
        "flaky",
        &[("x-evil", EVIL_HEADER), ("content-type", "text/html")],
        EVIL_BODY,
    )
    .await;
    wait_state(&gw, &flaky, "dead").await;
    wait_state(&gw, &evil, "dead").await;

    // Dead letters: the hostile one is inspected; its markup shows as text and nothing runs.
    browser
        .open(&format!("{ui}#/dead-letters?function=flaky"))
        .await
        .unwrap();
    browser
        .wait_text("#dl-summary", T, |t| t == "2 dead letters")
        .await;
    let evil_letter = letter_of(&browser, &evil).await;
    let flaky_letter = letter_of(&browser, &flaky).await;
    browser
        .click(&format!(
            "#dead-letters tr[data-sequence='{evil_letter}'] button.inspect"
        ))
        .await
        .unwrap();
    browser
        .wait_text("#letter-body", T, |t| t == EVIL_BODY)
        .await;
    let headers = browser.text("#letter-headers").await.unwrap().unwrap();
    assert!(headers.contains(EVIL_HEADER), "{headers}");
    let reason = browser.text("#letter-reason").await.unwrap().unwrap();
    assert!(reason.contains("500"), "{reason}");
    let ran = browser
        .run(
            "return [typeof window.pwned, document.querySelectorAll('#letter img, #letter b, #letter script').length];",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(ran, json!(["undefined", 0]), "markup from a call ran");
    browser.resize(1280, 1600).await.unwrap();
    browser
        .run(
            "document.getElementById('letter').scrollIntoView();",
            vec![],
        )
        .await
        .unwrap();
    screenshot(&browser, "dead-letter").await;
    browser.resize(1280, 900).await.unwrap();

    // The other letter, once its function is healed, is inspected and replayed: its call then
    // succeeds, and the function heard it twice.
    healed.store(true, Ordering::SeqCst);
    browser
        .click(&format!(
            "#dead-letters tr[data-sequence='{flaky_letter}'] button.inspect"
        ))
        .await
        .unwrap();
    browser.wait_text("#letter-body", T, |t| t == "hello").await;
    confirmed_click(&browser, "#letter-replay").await;
    browser
        .wait_text("#dl-message", T, |t| t.contains("Replayed 1"))
        .await;
    wait_state(&gw, &flaky, "succeeded").await;
    let heard = function
        .requests()
        .iter()
        .filter(|r| r.header("x-call-id") == flaky)
        .count();
    assert_eq!(heard, 2, "the first attempt and the replay");

    // The hostile letter is deleted.
    browser
        .wait_text("#dl-summary", T, |t| t == "1 dead letter")
        .await;
    confirmed_click(
        &browser,
        &format!("#dead-letters tr[data-sequence='{evil_letter}'] button.delete"),
    )
    .await;
    browser
        .wait_text("#dl-message", T, |t| t.contains("Deleted"))
        .await;
    let (status, page) = api(&gw, Method::GET, "/system/dead-letters").await;
    assert_eq!((status, &page["total"]), (200, &json!(0)), "{page}");

    // A batch with its own callback: its progress reaches done.
    let sink = RecordingServer::answering(200).await;
    let lines: String = (0..20)
        .map(|n| format!("{{\"body\":\"line {n}\"}}\n"))
        .collect();
    let batch_callback = format!("{}/batch", sink.url());
    let a = gw
        .post(
            "/async-batch/echo",
            &[
                ("content-type", "application/x-ndjson"),
                ("x-callback-url", &batch_callback),
            ],
            lines,
        )
        .await
        .unwrap();
    assert_eq!(a.status, 200, "{:?}", a.body);
    let batch_id = a.headers["x-batch-id"].to_str().unwrap().to_owned();
    browser
        .open(&format!("{ui}#/batches/{batch_id}"))
        .await
        .unwrap();
    browser.wait_text("#batch-state", T, |t| t == "done").await;
    let succeeded = browser
        .text("#batch [data-count='succeeded']")
        .await
        .unwrap();
    assert_eq!(succeeded.as_deref(), Some("20"));
    let callback = browser.text("#batch-callback").await.unwrap();
    assert_eq!(callback.as_deref(), Some(batch_callback.as_str()));
    screenshot(&browser, "batch").await;

    // A call delayed for an hour is looked up from the keyboard and cancelled.
    let later = enqueue(&gw, "echo", &[("x-delay", "1h")], "later").await;
    browser.open(&format!("{ui}#/calls")).await.unwrap();
    browser.type_into("#call-id", &later).await.unwrap();
    browser.press("\u{e007}").await.unwrap();
    browser.wait_text("#call-state", T, |t| t == "queued").await;
    confirmed_click(&browser, "#call-cancel").await;
    browser
        .wait_text("#call-state", T, |t| t == "cancelled")
        .await;
    wait_state(&gw, &later, "cancelled").await;

    // A finished call shows its kept result.
    browser.type_into("#call-id", &flaky).await.unwrap();
    browser.press("\u{e007}").await.unwrap();
    browser
        .wait_text("#call-state", T, |t| t == "succeeded")
        .await;
    browser
        .wait_text("#call-result", T, |t| t == "done: hello")
        .await;
    screenshot(&browser, "call").await;

    // At a phone's width nothing overflows the page sideways.
    browser.resize(390, 844).await.unwrap();
    browser.open(&format!("{ui}#/queues")).await.unwrap();
    browser
        .wait_text("#queues-updated", T, |t| t.starts_with("Updated"))
        .await;
    let overflow = browser
        .run(
            "return document.documentElement.scrollWidth - document.documentElement.clientWidth;",
            vec![],
        )
        .await
        .unwrap();
    assert!(
        overflow.as_i64().unwrap() <= 0,
        "page wider than the phone by {overflow} px"
    );
    screenshot(&browser, "queues-phone").await;
    browser.quit().await;
}

/// The queues page with 1,000 functions: every one listed, sorted by any column, filtered by
/// name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_queues_page_sorts_and_filters_a_thousand_functions() {
    let browser = match Browser::start().await {
        Ok(b) => b,
        Err(why) => {
            eprintln!("console browser test skipped: {why}");
            return;
        }
    };
    let nats = Nats::start(2).await;
    let gw = Gateway::start(&["--nats-url", &nats.url()]).await;
    for n in 0..1000 {
        enqueue(&gw, &format!("f-{n:04}"), &[], "x").await;
    }
    for _ in 0..2 {
        enqueue(&gw, "f-0007", &[], "x").await;
    }
    let visible = "return [...document.querySelectorAll('#queues tbody tr')] \
                     .filter(r => r.offsetParent !== null).map(r => r.dataset.function);";
    let rows = || async {
        let v = browser.run(visible, vec![]).await.unwrap();
        serde_json::from_value::<Vec<String>>(v).unwrap()
    };
    browser
        .open(&format!("http://{}/system/ui#/queues", gw.addr))
        .await
        .unwrap();
    wait_until_async(T, "1,000 functions listed", || async {
        rows().await.len() == 1000
    })
    .await;
    // Pending, most first, is the default order.
    assert_eq!(rows().await[0], "f-0007");
    browser.click("button[data-sort='function']").await.unwrap();
    let sorted = rows().await;
    assert_eq!(
        (sorted[0].as_str(), sorted[999].as_str()),
        ("f-0000", "f-0999")
    );
    browser.click("button[data-sort='function']").await.unwrap();
    assert_eq!(rows().await[0], "f-0999", "a second click reverses");
    browser.type_into("#queue-filter", "f-004").await.unwrap();
    wait_until_async(T, "the filter applied", || async {
        rows().await.len() == 10
    })
    .await;
    let pending = browser
        .text("#queues tr[data-function='f-0042'] td[data-field='pending']")
        .await
        .unwrap();
    assert_eq!(pending.as_deref(), Some("1"));
    browser.quit().await;
}
