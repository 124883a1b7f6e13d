//! Wall-clock stamps as they travel in headers (`X-Start-Time` is Unix nanoseconds, as in
//! OpenFaaS).

use std::time::{SystemTime, UNIX_EPOCH};

pub fn unix_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}
