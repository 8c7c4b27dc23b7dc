//! One hub name per bus, enforced by the kernel.
//!
//! A hub binds an abstract Unix socket named after its bus and name. A second bind of the same
//! name fails at once with `EADDRINUSE`, and the kernel frees the name the moment the holder's
//! process exits, however it exits. No discovery round, no wait, no stale lock files.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener};

use crate::transport::TransportError;

/// Holds a hub name on a bus until dropped.
#[derive(Debug)]
pub(super) struct NameLock {
    _socket: UnixListener,
}

impl NameLock {
    pub(super) fn acquire(bus: &str, name: &str) -> Result<NameLock, TransportError> {
        let full = format!("hsipc.{bus}/hub/{name}");
        // Abstract names are at most 107 bytes; a longer one is replaced by its hash.
        let key = if full.len() <= 100 { full } else { format!("hsipc.{bus}/hub#{:016x}", fnv1a(full.as_bytes())) };
        let addr = SocketAddr::from_abstract_name(key.as_bytes())
            .map_err(|source| TransportError::Io { what: "naming the hub lock socket", source })?;
        match UnixListener::bind_addr(&addr) {
            Ok(socket) => Ok(NameLock { _socket: socket }),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                Err(TransportError::NameTaken { bus: bus.into(), name: name.into() })
            }
            Err(source) => Err(TransportError::Io { what: "binding the hub lock socket", source }),
        }
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_is_held_once_and_freed_on_drop() {
        let bus = format!("lock-test-{}", std::process::id());
        let a = NameLock::acquire(&bus, "svc").unwrap();
        assert!(matches!(NameLock::acquire(&bus, "svc"), Err(TransportError::NameTaken { .. })));
        assert!(NameLock::acquire(&bus, "other").is_ok());
        let long = "x".repeat(200);
        let _l = NameLock::acquire(&bus, &long).unwrap();
        assert!(matches!(NameLock::acquire(&bus, &long), Err(TransportError::NameTaken { .. })));
        drop(a);
        assert!(NameLock::acquire(&bus, "svc").is_ok());
    }
}
