//! Ports for tests that need an address nothing answers on.

/// A local port with nothing listening on it (bound by the OS, then released).
pub fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}
