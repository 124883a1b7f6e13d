//! The operator console at `/system/ui`: one page, script and style sheet embedded at build time
//! (`gateway/console/`), behind `/system`'s auth, and the same-site check ([`check_same_site`])
//! that every state-changing `/system` request passes.
//! Invariant: the page only calls the gateway's own routes and writes values as text, never as
//! HTML; its Content-Security-Policy allows the gateway's own files only (`docs/console.md`).

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode, header};

use crate::body::Body;
use crate::error::CallError;

pub const PREFIX: &str = "/system/ui";

const INDEX: &str = include_str!("../console/index.html");
const SCRIPT: &str = include_str!("../console/console.js");
const STYLE: &str = include_str!("../console/console.css");

/// What the console's pages may load and do: its own script, style and requests only.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
    style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; \
    form-action 'none'; frame-ancestors 'none'";

const ALLOW: &str = "GET, HEAD";

/// Serves `/system/ui` and its two assets (auth already checked).
pub fn serve(method: &Method, path: &str) -> Result<Response<Body>, CallError> {
    let (content, content_type) = match path.strip_prefix(PREFIX) {
        Some("" | "/" | "/index.html") => (INDEX, "text/html; charset=utf-8"),
        Some("/console.js") => (SCRIPT, "text/javascript; charset=utf-8"),
        Some("/console.css") => (STYLE, "text/css; charset=utf-8"),
        _ => return Err(CallError::NotFound),
    };
    if !matches!(*method, Method::GET | Method::HEAD) {
        return Err(CallError::MethodNotAllowed { allow: ALLOW });
    }
    let mut resp = Response::new(Body::full(Bytes::from_static(content.as_bytes())));
    *resp.status_mut() = StatusCode::OK;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    // Assets change with the binary: a browser asks again rather than run an older script.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(resp)
}

/// Refuses a request that a browser sent from another site: `Sec-Fetch-Site` other than
/// `same-origin` (or `none`, typed by the user), or an `Origin` whose host is not the request's
/// `Host`. Browsers send at least one of them on every `POST` and `DELETE`; clients that send
/// neither (curl, scripts) carry no credentials a browser keeps for them, so they pass.
pub fn check_same_site(headers: &HeaderMap) -> Result<(), CallError> {
    if let Some(site) = headers.get("sec-fetch-site")
        && !matches!(site.as_bytes(), b"same-origin" | b"none")
    {
        return Err(CallError::CrossSite("Sec-Fetch-Site is not same-origin"));
    }
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(());
    };
    // The scheme is not compared: a proxy in front may end TLS.
    let origin_host = origin
        .to_str()
        .ok()
        .and_then(|o| o.split_once("://"))
        .map(|(_, host)| host);
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    match (origin_host, host) {
        (Some(o), Some(h)) if o.eq_ignore_ascii_case(h) => Ok(()),
        _ => Err(CallError::CrossSite("Origin is not this gateway")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    http::HeaderName::from_static(k),
                    HeaderValue::from_static(v),
                )
            })
            .collect()
    }

    #[test]
    fn same_site_requests_pass_and_others_are_refused() {
        let ok = |p: &[(&'static str, &'static str)]| check_same_site(&headers(p)).is_ok();
        assert!(ok(&[]), "no browser headers: not a browser");
        assert!(ok(&[
            ("host", "127.0.0.1:8080"),
            ("origin", "http://127.0.0.1:8080")
        ]));
        assert!(ok(&[
            ("host", "gw.example"),
            ("origin", "https://GW.example")
        ]));
        assert!(ok(&[("sec-fetch-site", "same-origin")]));
        assert!(ok(&[("sec-fetch-site", "none")]));
        assert!(!ok(&[("sec-fetch-site", "cross-site")]));
        assert!(!ok(&[("sec-fetch-site", "same-site")]));
        assert!(!ok(&[
            ("host", "127.0.0.1:8080"),
            ("origin", "http://127.0.0.2:8080")
        ]));
        assert!(!ok(&[("host", "127.0.0.1:8080"), ("origin", "null")]));
        assert!(
            !ok(&[("origin", "http://127.0.0.1:8080")]),
            "no Host to compare"
        );
        assert!(!ok(&[
            ("sec-fetch-site", "cross-site"),
            ("host", "a"),
            ("origin", "http://a")
        ]));
    }

    #[test]
    fn assets_carry_the_policy_and_other_paths_are_not_found() {
        for path in [
            "/system/ui",
            "/system/ui/",
            "/system/ui/console.js",
            "/system/ui/console.css",
        ] {
            let resp = serve(&Method::GET, path).unwrap();
            assert_eq!(
                resp.headers()[header::CONTENT_SECURITY_POLICY],
                CONTENT_SECURITY_POLICY,
                "{path}"
            );
            assert_eq!(resp.headers()[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        }
        assert!(CONTENT_SECURITY_POLICY.contains("script-src 'self';"));
        assert!(!CONTENT_SECURITY_POLICY.contains("unsafe"));
        assert!(matches!(
            serve(&Method::GET, "/system/ui/other.js"),
            Err(CallError::NotFound)
        ));
        assert!(matches!(
            serve(&Method::POST, "/system/ui"),
            Err(CallError::MethodNotAllowed { .. })
        ));
    }

    #[test]
    fn the_page_has_no_inline_script_or_style() {
        assert!(INDEX.contains("src=\"/system/ui/console.js\""));
        let lower = INDEX.to_ascii_lowercase();
        assert_eq!(
            lower.matches("<script").count(),
            1,
            "one script, from a file"
        );
        assert!(!lower.contains("<style"));
        assert!(!lower.contains(" style="));
        let handler = lower.match_indices(" on").any(|(i, _)| {
            let rest = &lower[i + 3..];
            let name = rest.bytes().take_while(u8::is_ascii_lowercase).count();
            name > 0 && rest[name..].trim_start().starts_with('=')
        });
        assert!(!handler, "no inline event handler attributes");
        assert!(!SCRIPT.contains("innerHTML") && !SCRIPT.contains("insertAdjacentHTML"));
    }
}
