//! The router: one match on the path prefix sends a request to the asynchronous path, the
//! synchronous path or the operator's routes, and turns every `CallError` into its response,
//! its log line and its metric in one place.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use http::{Request, Response};
use hyper::body::Incoming;

use crate::body::Body;
use crate::error::Side;
use crate::state::State;
use crate::{batch, enqueue, forward, status, system};

pub async fn handle(
    state: Arc<State>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let started = Instant::now();
    let path = req.uri().path();
    let result = if path.starts_with(enqueue::PREFIX) {
        enqueue::enqueue(&state, req, started).await
    } else if path.starts_with(forward::PREFIX) {
        forward::forward(&state, req, started).await
    } else if path.starts_with(batch::PREFIX) {
        batch::route(state.clone(), req).await
    } else if path.starts_with(status::PREFIX) {
        status::route(&state, req).await
    } else {
        system::route(&state, req).await
    };
    Ok(match result {
        Ok(resp) => resp,
        Err(error) => {
            let status = error.status().as_u16();
            match error.side() {
                Side::Downstream => tracing::debug!(status, %error, "request refused"),
                Side::Upstream => tracing::warn!(status, %error, "request failed upstream"),
                Side::Internal => tracing::error!(status, %error, "request failed in the gateway"),
            }
            state.metrics.error(status, error.reason());
            error.into_response(&state.admission.retry_after)
        }
    })
}
