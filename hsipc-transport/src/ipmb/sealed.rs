//! Large frames in sealed memfds: written once by the sender, mapped read-only by the receiver.
//!
//! A frame of [`SEALED_MIN`] bytes or more that does not go through the lane's pool (it is over
//! the pool's limit, the pool is full, or the reader takes no pooled frames) need not travel
//! through the lane in 60 KiB chunks (copied into the kernel and out again, then glued
//! together): the sender writes it into a new memfd, seals it (no write, no shrink, no grow: nobody can change it any more, and it
//! cannot shrink under the receiver's mapping, which would raise `SIGBUS`), and passes the fd
//! through the lane. The receiver checks the seals and the size, maps it read-only and hands
//! the mapping on as the frame's `Bytes`: the payload is decoded from the mapping, and a
//! `Bytes` payload *is* a slice of it, until the last reference drops and it is unmapped.
//!
//! A memfd is made only when the frame's turn to be written comes and the reader has little
//! left unread (see `large`): a reader that stops reading pins a handful of memfds; beyond
//! them frames go in chunks, which the socket's buffer bounds. A reader says first that it
//! takes sealed frames at all, so a lane to a hub that does not know them keeps to chunks. A
//! memfd this process cannot map (out of address space or mappings) is read into memory
//! instead.

use std::ffi::c_void;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use bytes::Bytes;
use proto::frame::WireFrame;

use super::shm::{self, Mapping};

/// Frames at least this large go sealed (smaller ones cost less in chunks: a memfd costs
/// about ten system calls on both sides).
pub(super) const SEALED_MIN: usize = 256 * 1024;

/// The seals a frame's memfd must carry before it is read.
const REQUIRED_SEALS: libc::c_int = libc::F_SEAL_SHRINK | libc::F_SEAL_WRITE;

/// Writes `frame` into a new memfd and seals it.
pub(super) fn seal(frame: &WireFrame) -> io::Result<OwnedFd> {
    let fd = shm::memfd(c"hsipc-frame")?;
    for piece in frame.pieces().get() {
        write_all(&fd, piece)?;
    }
    shm::add_seals(&fd, REQUIRED_SEALS | libc::F_SEAL_GROW | libc::F_SEAL_SEAL)?;
    Ok(fd)
}

/// Writes all of `data` at the end of the file `fd`.
fn write_all(fd: &OwnedFd, data: &[u8]) -> io::Result<()> {
    let mut done = 0;
    while done < data.len() {
        let rest = &data[done..];
        // SAFETY: `rest` is valid for reads of its length; the fd is open.
        let n = unsafe { libc::write(fd.as_raw_fd(), rest.as_ptr() as *const c_void, rest.len()) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::WriteZero, "memfd took no bytes"));
        }
        done += n as usize;
    }
    Ok(())
}

/// A sealed frame's memfd did not hold what its message said, or could not be mapped.
#[derive(Debug, thiserror::Error)]
pub(super) enum MapError {
    /// The fd is not a memfd (of tmpfs) sealed against shrinking (and, for a frame, writing).
    #[error("the fd passed is not a sealed memfd")]
    NotSealed,
    /// The memfd is smaller than announced, or the size announced is out of bounds.
    #[error("the memfd holds {size} bytes, not the {len} announced (or that size is out of bounds)")]
    TooSmall {
        /// The memfd's size.
        size: u64,
        /// The announced frame length.
        len: usize,
    },
    /// A system call failed.
    #[error("cannot map a sealed frame: {0}")]
    Io(#[from] io::Error),
}

/// Maps the first `len` bytes of a sealed frame's memfd read-only, as `Bytes` that unmap when
/// the last reference drops.
pub(super) fn map(fd: &OwnedFd, len: usize) -> Result<Bytes, MapError> {
    check_offered(fd, REQUIRED_SEALS, len as u64)?;
    // The memfd cannot shrink (sealed) below `len` (checked): every page stays backed.
    match Mapping::new(fd, len, libc::PROT_READ, libc::MAP_POPULATE) {
        Ok(mapping) => Ok(Bytes::from_owner(SealedFrame(mapping))),
        Err(e) => {
            tracing::debug!(error = %e, "cannot map a sealed frame; reading it");
            read_whole(fd, len)
        }
    }
}

/// Checks a memfd a peer offered before it is mapped: of tmpfs, carrying `required` seals (so it
/// cannot shrink under the mapping, say), and at least `len` bytes long (`len` not 0). Returns
/// its size.
pub(super) fn check_offered(fd: &OwnedFd, required: libc::c_int, len: u64) -> Result<u64, MapError> {
    check_sealed(fd, required)?;
    let size = shm::file_size(fd)?;
    if size < len || len == 0 {
        return Err(MapError::TooSmall { size, len: len as usize });
    }
    Ok(size)
}

/// Checks that `fd` is a memfd of tmpfs carrying `required` seals.
pub(super) fn check_sealed(fd: &OwnedFd, required: libc::c_int) -> Result<(), MapError> {
    match shm::seals(fd) {
        Some(seals) if seals & required == required && shm::is_shmem(fd)? => Ok(()),
        _ => Err(MapError::NotSealed),
    }
}

/// The first `len` bytes of the file `fd`, read into memory.
fn read_whole(fd: &OwnedFd, len: usize) -> Result<Bytes, MapError> {
    read_at(fd.as_fd(), 0, len)
}

/// `len` bytes of the file `fd` from `offset`, read into memory (a file shorter than that is
/// an error, not a `SIGBUS` as touching a mapping past its end would be).
pub(super) fn read_at(fd: BorrowedFd<'_>, offset: u64, len: usize) -> Result<Bytes, MapError> {
    let mut buf = bytes::BytesMut::zeroed(len);
    let mut done = 0;
    while done < len {
        let rest = &mut buf[done..];
        let Ok(at) = libc::off_t::try_from(offset + done as u64) else {
            return Err(MapError::TooSmall { size: done as u64, len });
        };
        // SAFETY: `rest` is valid for writes of its length; the fd is open.
        let n = unsafe { libc::pread(fd.as_raw_fd(), rest.as_mut_ptr() as *mut c_void, rest.len(), at) };
        match n {
            n if n > 0 => done += n as usize,
            0 => return Err(MapError::TooSmall { size: done as u64, len }),
            _ if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted => {}
            _ => return Err(io::Error::last_os_error().into()),
        }
    }
    Ok(buf.freeze())
}

/// A sealed frame's read-only mapping, as the frame's bytes.
struct SealedFrame(Mapping);

impl AsRef<[u8]> for SealedFrame {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: a live read-only mapping of `len` bytes until drop, of a memfd sealed against
        // writes: nothing changes them.
        unsafe { std::slice::from_raw_parts(self.0.base(), self.0.len()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_frame_maps_back_whole_and_cannot_be_changed() {
        let frame: Vec<u8> = (0..300_000u32).map(|i| i as u8).collect();
        let fd = seal(&WireFrame::from(Bytes::from(frame.clone()))).unwrap();
        // SAFETY: a write attempt on an fd we own; it must fail (sealed).
        let w = unsafe { libc::pwrite(fd.as_raw_fd(), b"x".as_ptr() as *const c_void, 1, 0) };
        assert!(w < 0, "a sealed memfd took a write");
        // SAFETY: as above, for ftruncate.
        assert!(unsafe { libc::ftruncate(fd.as_raw_fd(), 10) } < 0, "a sealed memfd shrank");
        let mapped = map(&fd, frame.len()).unwrap();
        drop(fd);
        assert_eq!(&mapped[..], &frame[..]);
        let tail = mapped.slice(299_000..);
        drop(mapped);
        assert_eq!(&tail[..], &frame[299_000..], "a slice keeps the mapping");
    }

    #[test]
    fn an_unsealed_or_short_fd_is_refused() {
        let plain = shm::memfd(c"t").unwrap();
        // SAFETY: grows the memfd we own.
        assert_eq!(unsafe { libc::ftruncate(plain.as_raw_fd(), 4096) }, 0);
        assert!(matches!(map(&plain, 100), Err(MapError::NotSealed)));
        let sealed = seal(&WireFrame::from(Bytes::from_static(&[1u8; 100]))).unwrap();
        assert!(matches!(map(&sealed, 101), Err(MapError::TooSmall { size: 100, len: 101 })));
        assert!(matches!(map(&sealed, 0), Err(MapError::TooSmall { .. })));
        let (a, _b) = super::super::lane::pair().unwrap();
        assert!(matches!(map(&a, 10), Err(MapError::NotSealed)));
    }
}
