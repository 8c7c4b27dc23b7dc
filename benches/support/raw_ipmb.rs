//! Raw ipmb, used by both sides of the raw transport of the `ipc` and `pinned` benches: a bus of
//! plain ipmb endpoints whose every message carries a duplicate of an eventfd (without an fd,
//! ipmb 0.8.5 drops messages between two non-controller endpoints), as hsipc's transport does.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

/// `BytesMessage::format` of the raw ipmb messages.
const RAW_FORMAT: u16 = 0xBE;

/// The raw ipmb identifier of bus `bus`.
fn raw_identifier(bus: &str) -> String {
    format!("hsipc-bench-raw.{bus}")
}

/// Joins the raw ipmb bus `bus` as `label`.
pub(crate) fn raw_join(
    bus: &str,
    label: &str,
) -> (ipmb::EndpointSender<ipmb::BytesMessage>, ipmb::EndpointReceiver<ipmb::BytesMessage>) {
    let options = ipmb::Options::new(raw_identifier(bus), ipmb::label!(label), "");
    ipmb::join::<ipmb::BytesMessage, ipmb::BytesMessage>(options, Some(Duration::from_secs(10)))
        .unwrap_or_else(|e| panic!("raw ipmb join of {label}: {e}"))
}

/// A new eventfd, to be the carrier of [`raw_send`].
pub(crate) fn new_eventfd() -> OwnedFd {
    // SAFETY: eventfd takes an initial value and flags and returns a new fd or -1.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    assert!(fd >= 0, "eventfd: {}", std::io::Error::last_os_error());
    // SAFETY: a fresh fd owned by nothing else.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Sends `data` to label `to` with a duplicate of `carrier` attached (without an fd, ipmb 0.8.5
/// drops messages between two non-controller endpoints), as hsipc's transport does.
pub(crate) fn raw_send(tx: &ipmb::EndpointSender<ipmb::BytesMessage>, carrier: &OwnedFd, to: &str, data: Vec<u8>) {
    let mut msg = ipmb::Message::new(ipmb::Selector::unicast(to), ipmb::BytesMessage { format: RAW_FORMAT, data });
    // SAFETY: fcntl duplicates a valid fd we own; the result is a new fd or -1.
    let dup = unsafe { libc::fcntl(carrier.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) };
    assert!(dup >= 0, "dup: {}", std::io::Error::last_os_error());
    // SAFETY: `dup` is a new fd; ipmb's Object takes ownership and closes it.
    msg.objects.push(unsafe { ipmb::Object::from_raw(dup) });
    tx.send(msg).expect("raw ipmb send");
}
