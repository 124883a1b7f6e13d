//! The basic auth in front of `/system/*`: the token a client's `Authorization: Basic` must carry,
//! encoded once at start (by the `base64` crate) and compared in constant time, so a request is
//! checked without decoding anything. Invariant: no credentials configured, nothing refused.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use http::{HeaderMap, HeaderValue, header};

use crate::error::CallError;

/// The `/system/*` credentials, as the token they make.
#[derive(Debug, Default)]
pub struct Auth {
    /// The exact `Authorization` token required, when credentials are configured.
    token: Option<String>,
}

impl Auth {
    /// Requires `user` and `password` when given; open otherwise.
    pub fn basic(credentials: Option<(String, String)>) -> Self {
        Self {
            token: credentials.map(|(user, password)| basic_token(&user, &password)),
        }
    }

    /// Refuses a request without the configured credentials.
    pub fn check(&self, headers: &HeaderMap) -> Result<(), CallError> {
        let Some(expected) = &self.token else {
            return Ok(());
        };
        let given = headers.get(header::AUTHORIZATION);
        if given.is_some_and(|g| authorized(g, expected)) {
            Ok(())
        } else {
            Err(CallError::Unauthorized)
        }
    }
}

/// `Authorization: Basic <base64(user:password)>`, compared in constant time.
fn authorized(given: &HeaderValue, expected: &str) -> bool {
    let given = given.as_bytes();
    let Some(token) = given
        .get(..6)
        .filter(|scheme| scheme.eq_ignore_ascii_case(b"basic "))
        .map(|_| given[6..].trim_ascii())
    else {
        return false;
    };
    constant_time_eq(token, expected.as_bytes())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The base64 of `user:password` (standard alphabet, padded) that a client's
/// `Authorization: Basic` must carry.
fn basic_token(user: &str, password: &str) -> String {
    BASE64.encode(format!("{user}:{password}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_padded_standard_base64() {
        assert_eq!(basic_token("admin", "secret"), "YWRtaW46c2VjcmV0");
        assert_eq!(basic_token("a", "b"), "YTpi");
        assert_eq!(basic_token("ab", "c"), "YWI6Yw==");
        assert_eq!(basic_token("u", "p>?"), "dTpwPj8=");
    }

    #[test]
    fn basic_auth_checks() {
        let t = basic_token("admin", "secret");
        let ok = |v: &str| authorized(&HeaderValue::from_str(v).unwrap(), &t);
        assert!(ok("Basic YWRtaW46c2VjcmV0"));
        assert!(ok("basic YWRtaW46c2VjcmV0"));
        assert!(!ok("Basic YWRtaW46c2VjcmV1"));
        assert!(!ok("Bearer YWRtaW46c2VjcmV0"));
        assert!(!ok("Basic"));
    }

    #[test]
    fn open_without_credentials() {
        let mut h = HeaderMap::new();
        assert!(Auth::default().check(&h).is_ok());
        let auth = Auth::basic(Some(("admin".into(), "secret".into())));
        assert!(matches!(auth.check(&h), Err(CallError::Unauthorized)));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Basic YWRtaW46c2VjcmV0"),
        );
        assert!(auth.check(&h).is_ok());
    }
}
