//! The dead-letter API under `/system/dead-letters` (auth checked by `system`): routes to `list`
//! (a page of letters), `letter` (one letter: show, delete) and `replay` (selected calls back on
//! their shard); `scan` reads letters without their bodies, `common` holds what they share.
//! Invariant: a letter is deleted only after JetStream acknowledged its replayed call, whose
//! `Nats-Msg-Id` is derived from the letter, so a repeated replay enqueues the call once.

mod common;
mod letter;
mod list;
mod replay;
mod scan;

use http::{Method, Request, Response};
use hyper::body::Incoming;

use crate::body::Body;
use crate::error::CallError;
use crate::state::State;

pub const LIST_PATH: &str = "/system/dead-letters";
pub const REPLAY_PATH: &str = "/system/dead-letters/replay";

const LIST_ALLOW: &str = "GET, HEAD";
const REPLAY_ALLOW: &str = "POST";

/// Routes a `/system/*` path other than `/system/info` (auth already checked).
pub async fn route(state: &State, req: Request<Incoming>) -> Result<Response<Body>, CallError> {
    match req.uri().path() {
        LIST_PATH => {
            if !matches!(*req.method(), Method::GET | Method::HEAD) {
                return Err(CallError::MethodNotAllowed { allow: LIST_ALLOW });
            }
            list::list(state, req.uri().query()).await
        }
        REPLAY_PATH => {
            if req.method() != Method::POST {
                return Err(CallError::MethodNotAllowed {
                    allow: REPLAY_ALLOW,
                });
            }
            replay::replay(state, req).await
        }
        path => match path
            .strip_prefix(LIST_PATH)
            .and_then(|p| p.strip_prefix('/'))
        {
            Some(rest) => letter::route(state, req.method(), rest).await,
            None => Err(CallError::NotFound),
        },
    }
}
