//! The bench process's hub in the `ipc` and `pinned` benches, of one kind (`blocking`, `tokio`
//! or `smol`), calling `bench.echo` and publishing to `bench/t`.

use std::time::Duration;

use bytes::Bytes;
use hsipc::SyncProcessHub;

/// The bench process's hub, of one kind. An async hub's calls are awaited on a current-thread
/// runtime in this thread, as an application's task would.
pub(crate) enum Client {
    Blocking(SyncProcessHub),
    Tokio(tokio::runtime::Runtime, hsipc::tokio::ProcessHub),
    Smol(hsipc::smol::ProcessHub),
}

impl Client {
    /// Joins `bus` as hub `"bench"` of kind `kind`, with calls timing out after
    /// `default_timeout` if given (else after hsipc's default).
    pub(crate) fn join(kind: &str, bus: &str, default_timeout: Option<Duration>) -> Client {
        match kind {
            "blocking" => {
                let mut b = SyncProcessHub::builder("bench").bus(bus);
                if let Some(t) = default_timeout {
                    b = b.default_timeout(t);
                }
                Client::Blocking(b.build().expect("bench hub joins"))
            }
            "tokio" => {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
                let hub = rt.block_on(async {
                    let mut b = hsipc::tokio::ProcessHub::builder("bench").bus(bus);
                    if let Some(t) = default_timeout {
                        b = b.default_timeout(t);
                    }
                    b.build()
                });
                Client::Tokio(rt, hub.expect("bench hub joins"))
            }
            _ => {
                let mut b = hsipc::smol::ProcessHub::builder("bench").bus(bus);
                if let Some(t) = default_timeout {
                    b = b.default_timeout(t);
                }
                Client::Smol(b.build().expect("bench hub joins"))
            }
        }
    }

    pub(crate) fn wait_for_service(&self, service: &str, timeout: Duration) -> hsipc::Result<()> {
        match self {
            Client::Blocking(h) => h.wait_for_service(service, timeout),
            Client::Tokio(rt, h) => rt.block_on(h.wait_for_service(service, timeout)),
            Client::Smol(h) => smol::block_on(h.wait_for_service(service, timeout)),
        }
    }

    pub(crate) fn echo(&self, payload: &Bytes) -> Bytes {
        let r: hsipc::Result<Bytes> = match self {
            Client::Blocking(h) => h.call("bench.echo", payload),
            Client::Tokio(rt, h) => rt.block_on(h.call("bench.echo", payload)),
            Client::Smol(h) => smol::block_on(h.call("bench.echo", payload)),
        };
        r.expect("bench.echo failed")
    }

    pub(crate) fn publish(&self, event: &Bytes) {
        let r = match self {
            Client::Blocking(h) => h.publish("bench/t", event),
            Client::Tokio(rt, h) => rt.block_on(h.publish("bench/t", event)),
            Client::Smol(h) => smol::block_on(h.publish("bench/t", event)),
        };
        r.expect("publish");
    }
}
