//! A headless Chromium driven over WebDriver (Debian's `chromium` and `chromedriver`, which
//! `scripts/setup --for-tests` installs), for the console's tests. Chromedriver listens on
//! 127.0.0.1 only; Chromium runs with a profile of its own in a temporary folder and with every
//! background service that would reach the network turned off, so the only traffic is to the
//! addresses the test opens. Both stop in `Drop`, with every process they started.
//!
//! `CHROMIUM_BIN` and `CHROMEDRIVER_BIN` name other binaries; when none is found,
//! [`Browser::start`] says why, and the test skips with that one line.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{Value, json};

/// How long one WebDriver command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
/// How long chromedriver may take to listen.
const DRIVER_START: Duration = Duration::from_secs(20);
/// The W3C key of an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// Why no browser could be started: the test skips, saying this.
#[derive(Debug, thiserror::Error)]
pub enum NoBrowser {
    #[error("no {what} found ({hint}); scripts/setup --for-tests installs it")]
    Missing { what: &'static str, hint: String },
    #[error("chromedriver did not start: {0}")]
    Driver(#[source] std::io::Error),
    #[error("chromedriver did not answer within {0:?}")]
    NotListening(Duration),
    #[error("the browser did not start: {0}")]
    Session(String),
}

/// A WebDriver command that failed.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error("WebDriver request failed: {0}")]
    Transport(String),
    #[error("WebDriver {command} answered {status}: {body}")]
    Refused {
        command: String,
        status: u16,
        body: String,
    },
    #[error("WebDriver command {0} timed out")]
    Timeout(String),
}

/// A browser session; the browser and its driver stop when it is dropped.
pub struct Browser {
    driver: tokio::process::Child,
    base: String,
    session: String,
    client: Client<HttpConnector, Full<Bytes>>,
    /// The browser's profile, removed with the session.
    profile: tempfile::TempDir,
}

fn find_binary(env: &str, names: &[&str]) -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(env) {
        return Some(PathBuf::from(path));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([
            PathBuf::from("/usr/bin"),
            PathBuf::from("/usr/lib/chromium"),
        ])
        .flat_map(|dir| names.iter().map(move |n| dir.join(n)))
        .find(|p| p.is_file())
}

fn free_port() -> std::io::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

impl Browser {
    /// Starts chromedriver and a headless Chromium with a window of 1280 x 900.
    pub async fn start() -> Result<Self, NoBrowser> {
        let chromium = find_binary("CHROMIUM_BIN", &["chromium", "chromium-browser"]).ok_or(
            NoBrowser::Missing {
                what: "chromium",
                hint: "set CHROMIUM_BIN".into(),
            },
        )?;
        let driver_bin =
            find_binary("CHROMEDRIVER_BIN", &["chromedriver"]).ok_or(NoBrowser::Missing {
                what: "chromedriver",
                hint: "set CHROMEDRIVER_BIN".into(),
            })?;
        let port = free_port().map_err(NoBrowser::Driver)?;
        let driver = tokio::process::Command::new(&driver_bin)
            .arg(format!("--port={port}"))
            .arg("--log-level=OFF")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            // Its own process group, so that `Drop` stops the browser with it.
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .map_err(NoBrowser::Driver)?;
        let profile = tempfile::tempdir().map_err(NoBrowser::Driver)?;
        let client = Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
        let mut browser = Self {
            driver,
            base: format!("http://127.0.0.1:{port}"),
            session: String::new(),
            client,
            profile,
        };
        browser.wait_listening().await?;
        browser.session = browser
            .new_session(&chromium)
            .await
            .map_err(|e| NoBrowser::Session(e.to_string()))?;
        Ok(browser)
    }

    async fn wait_listening(&self) -> Result<(), NoBrowser> {
        let deadline = tokio::time::Instant::now() + DRIVER_START;
        loop {
            if let Ok(status) = self.request(http::Method::GET, "/status", None).await
                && status["ready"] == true
            {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(NoBrowser::NotListening(DRIVER_START));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn new_session(&self, chromium: &Path) -> Result<String, DriverError> {
        let profile = self.profile.path().display().to_string();
        let args = [
            "--headless=new".to_owned(),
            // Tests run as root on the development machines and in CI.
            "--no-sandbox".to_owned(),
            "--disable-gpu".to_owned(),
            "--disable-dev-shm-usage".to_owned(),
            format!("--user-data-dir={profile}"),
            "--window-size=1280,900".to_owned(),
            "--lang=en-US".to_owned(),
            // Nothing but the pages the test opens: no updates, sync, safe browsing, metrics.
            "--no-first-run".to_owned(),
            "--no-default-browser-check".to_owned(),
            "--disable-background-networking".to_owned(),
            "--disable-component-update".to_owned(),
            "--disable-sync".to_owned(),
            "--disable-default-apps".to_owned(),
            "--disable-extensions".to_owned(),
            "--disable-domain-reliability".to_owned(),
            "--disable-client-side-phishing-detection".to_owned(),
            "--safebrowsing-disable-auto-update".to_owned(),
            "--metrics-recording-only".to_owned(),
            "--password-store=basic".to_owned(),
            "--disable-features=Translate,OptimizationHints,MediaRouter,DialMediaRouteProvider,AutofillServerCommunication".to_owned(),
            // Names resolve to nothing: the test only opens 127.0.0.1 addresses.
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1".to_owned(),
        ];
        let caps = json!({
            "capabilities": { "alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {
                    "binary": chromium.display().to_string(),
                    "args": args,
                },
            }},
        });
        let v = self
            .request(http::Method::POST, "/session", Some(caps))
            .await?;
        v["sessionId"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| DriverError::Transport(format!("no session id in {v}")))
    }

    /// One WebDriver command: its `value`, or why it failed.
    async fn request(
        &self,
        method: http::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, DriverError> {
        let command = format!("{method} {path}");
        let body = body.map_or_else(Bytes::new, |b| Bytes::from(b.to_string()));
        let req = http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(Full::new(body))
            .map_err(|e| DriverError::Transport(e.to_string()))?;
        let exchange = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| DriverError::Transport(e.to_string()))?;
            let status = resp.status().as_u16();
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| DriverError::Transport(e.to_string()))?
                .to_bytes();
            Ok::<_, DriverError>((status, bytes))
        };
        let (status, bytes) = tokio::time::timeout(COMMAND_TIMEOUT, exchange)
            .await
            .map_err(|_| DriverError::Timeout(command.clone()))??;
        if status != 200 {
            return Err(DriverError::Refused {
                command,
                status,
                body: String::from_utf8_lossy(&bytes).into_owned(),
            });
        }
        let mut v: Value = serde_json::from_slice(&bytes)
            .map_err(|e| DriverError::Transport(format!("{command}: {e}")))?;
        Ok(v["value"].take())
    }

    async fn session_command(
        &self,
        method: http::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, DriverError> {
        let path = format!("/session/{}{path}", self.session);
        self.request(method, &path, body).await
    }

    /// Sends `headers` with every request the browser makes from now on (through the DevTools
    /// protocol): how a test gives the console the operator's basic auth.
    pub async fn send_headers_with_every_request(
        &self,
        headers: &[(&str, &str)],
    ) -> Result<(), DriverError> {
        let cdp = |cmd: &str, params: Value| json!({ "cmd": cmd, "params": params });
        self.session_command(
            http::Method::POST,
            "/goog/cdp/execute",
            Some(cdp("Network.enable", json!({}))),
        )
        .await?;
        let headers: serde_json::Map<String, Value> = headers
            .iter()
            .map(|(k, v)| ((*k).to_owned(), Value::from(*v)))
            .collect();
        self.session_command(
            http::Method::POST,
            "/goog/cdp/execute",
            Some(cdp(
                "Network.setExtraHTTPHeaders",
                json!({ "headers": headers }),
            )),
        )
        .await
        .map(drop)
    }

    /// Opens `url` and waits for the page to load.
    pub async fn open(&self, url: &str) -> Result<(), DriverError> {
        self.session_command(http::Method::POST, "/url", Some(json!({ "url": url })))
            .await
            .map(drop)
    }

    /// Sets the window's size (the layout at a phone's width, for instance).
    pub async fn resize(&self, width: u32, height: u32) -> Result<(), DriverError> {
        self.session_command(
            http::Method::POST,
            "/window/rect",
            Some(json!({ "width": width, "height": height })),
        )
        .await
        .map(drop)
    }

    /// Runs `script` (a function body; `arguments` holds `args`) in the page and returns its
    /// value.
    pub async fn run(&self, script: &str, args: Vec<Value>) -> Result<Value, DriverError> {
        self.session_command(
            http::Method::POST,
            "/execute/sync",
            Some(json!({ "script": script, "args": args })),
        )
        .await
    }

    /// The text of the first element matching `css`, `None` when there is none.
    pub async fn text(&self, css: &str) -> Result<Option<String>, DriverError> {
        let v = self
            .run(
                "const e = document.querySelector(arguments[0]); return e ? e.textContent : null;",
                vec![css.into()],
            )
            .await?;
        Ok(v.as_str().map(str::to_owned))
    }

    /// The WebDriver reference of the first element matching `css`.
    async fn element(&self, css: &str) -> Result<String, DriverError> {
        let v = self
            .session_command(
                http::Method::POST,
                "/element",
                Some(json!({ "using": "css selector", "value": css })),
            )
            .await?;
        v[ELEMENT]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| DriverError::Transport(format!("no element reference in {v}")))
    }

    /// Clicks the first element matching `css` as a user would (it must be visible).
    pub async fn click(&self, css: &str) -> Result<(), DriverError> {
        let el = self.element(css).await?;
        self.session_command(
            http::Method::POST,
            &format!("/element/{el}/click"),
            Some(json!({})),
        )
        .await
        .map(drop)
    }

    /// Clears the input matching `css` and types `text` into it, key by key.
    pub async fn type_into(&self, css: &str, text: &str) -> Result<(), DriverError> {
        let el = self.element(css).await?;
        self.session_command(
            http::Method::POST,
            &format!("/element/{el}/clear"),
            Some(json!({})),
        )
        .await?;
        self.session_command(
            http::Method::POST,
            &format!("/element/{el}/value"),
            Some(json!({ "text": text })),
        )
        .await
        .map(drop)
    }

    /// Presses keys in the focused element (`"\u{e007}"` is Enter, `"\u{e004}"` Tab).
    pub async fn press(&self, keys: &str) -> Result<(), DriverError> {
        let actions = json!({ "actions": [{
            "type": "key", "id": "keyboard",
            "actions": keys.chars().flat_map(|c| [
                json!({ "type": "keyDown", "value": c.to_string() }),
                json!({ "type": "keyUp", "value": c.to_string() }),
            ]).collect::<Vec<_>>(),
        }]});
        self.session_command(http::Method::POST, "/actions", Some(actions))
            .await
            .map(drop)
    }

    /// Waits until the text of `css` satisfies `ok`, and returns it; panics after `timeout`
    /// with the last text seen, as a test failure.
    pub async fn wait_text(
        &self,
        css: &str,
        timeout: Duration,
        ok: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let text = self.text(css).await.expect("WebDriver answers");
            if let Some(t) = &text
                && ok(t)
            {
                return t.clone();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out after {timeout:?} waiting for {css}; its text is {text:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Saves a PNG of the window to `path`.
    pub async fn screenshot(&self, path: &Path) -> Result<(), DriverError> {
        use base64::Engine;
        let v = self
            .session_command(http::Method::GET, "/screenshot", None)
            .await?;
        let png = base64::engine::general_purpose::STANDARD
            .decode(v.as_str().unwrap_or_default())
            .map_err(|e| DriverError::Transport(format!("screenshot: {e}")))?;
        std::fs::write(path, png).map_err(|e| DriverError::Transport(format!("screenshot: {e}")))
    }

    /// Ends the session (the browser exits), then the driver.
    pub async fn quit(mut self) {
        let _ = self.session_command(http::Method::DELETE, "", None).await;
        let _ = self.driver.kill().await;
    }
}

impl std::fmt::Debug for Browser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Browser")
            .field("driver", &self.base)
            .field("session", &self.session)
            .finish_non_exhaustive()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The browser's processes are in the driver's group: stop them all.
        if let Some(pid) = self
            .driver
            .id()
            .and_then(|id| rustix::process::Pid::from_raw(id as i32))
        {
            let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
        }
    }
}
