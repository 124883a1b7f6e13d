//! Bodies larger than one NATS message, kept in the object store: read whole before a call runs,
//! removed once it is settled.

use std::time::Duration;

use bytes::Bytes;

use crate::Shared;

/// How long a call whose body could not be read waits before it is tried again.
pub(super) const BODY_RETRY_AFTER: Duration = Duration::from_secs(1);

/// Why a large body was not read.
pub(super) enum BodyMissing {
    /// The object is gone: the call can never run.
    Gone,
    /// NATS did not answer; trying again may help.
    Unreadable(Box<dyn std::error::Error + Send + Sync>),
}

/// Reads a body kept in the object store, whole (it is held once, in this buffer, for every
/// attempt of this delivery).
pub(super) async fn fetch_body(shared: &Shared, object: &str) -> Result<Bytes, BodyMissing> {
    use async_nats::jetstream::object_store::GetErrorKind;
    use tokio::io::AsyncReadExt;
    let mut reader = match shared.nats.bodies.get(object).await {
        Ok(r) => r,
        Err(e) if e.kind() == GetErrorKind::NotFound => return Err(BodyMissing::Gone),
        Err(e) => return Err(BodyMissing::Unreadable(e.into())),
    };
    let mut body = Vec::new();
    reader
        .read_to_end(&mut body)
        .await
        .map_err(|e| BodyMissing::Unreadable(e.into()))?;
    Ok(Bytes::from(body))
}

/// Removes a settled call's body from the object store; a failure leaves it until the bucket's
/// maximum age.
pub(super) async fn forget_body(shared: &Shared, object: &str) {
    if let Err(error) = shared.nats.bodies.delete(object).await {
        tracing::debug!(%error, object, "body of a settled call left in the object store until it expires");
    }
}
