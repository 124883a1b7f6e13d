//! The dead-letter API: `GET /system/dead-letters` lists the letters in `FLOTILLA_DEAD` a page at
//! a time, and `POST /system/dead-letters/replay` puts selected calls back on their function's
//! shard with a fresh retry budget, then removes the letters. Operator routes, behind the
//! `/system` auth; they speak JSON and may allocate, but a page never reads more of the stream
//! than it shows, and one replay request does bounded work.
//!
//! Invariant: a letter is deleted only after JetStream acknowledged its replayed call, and the
//! replayed call carries a `Nats-Msg-Id` derived from the letter, so a retried or concurrent
//! replay of the same letter enqueues the call once (within the shard's duplicate window).
//!
//! `GET /system/dead-letters/<sequence>` shows one letter with its headers and a body preview,
//! and `DELETE` on it removes the letter for good.
//!
//! This file routes and holds what the routes share; `list` shows a page, `letter` one letter,
//! `replay` replays, and `scan` reads letters without their bodies for the list and replay.

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
