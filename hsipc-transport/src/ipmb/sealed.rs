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
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use bytes::Bytes;
use proto::frame::WireFrame;

/// Frames at least this large go sealed (smaller ones cost less in chunks: a memfd costs
/// about ten system calls on both sides).
pub(super) const SEALED_MIN: usize = 256 * 1024;

/// The seals a frame's memfd must carry before it is read.
const REQUIRED_SEALS: libc::c_int = libc::F_SEAL_SHRINK | libc::F_SEAL_WRITE;

/// Writes `frame` into a new memfd and seals it.
pub(super) fn seal(frame: &WireFrame) -> io::Result<OwnedFd> {
    // SAFETY: a valid NUL-terminated name; the flags are valid for memfd_create.
    let raw = unsafe { libc::memfd_create(c"hsipc-frame".as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new fd, owned by nothing else.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    for piece in frame.pieces() {
        write_all(&fd, piece)?;
    }
    let seals = REQUIRED_SEALS | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;
    // SAFETY: fcntl on an fd we own, with an integer argument.
    if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, seals) } != 0 {
        return Err(io::Error::last_os_error());
    }
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
    // SAFETY: fcntl on an open fd with no argument; it fails on anything not sealable.
    let seals = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS) };
    if seals < 0 || seals & REQUIRED_SEALS != REQUIRED_SEALS {
        return Err(MapError::NotSealed);
    }
    check_shmem(fd)?;
    let size = file_size(fd)?;
    if size < len as u64 || len == 0 {
        return Err(MapError::TooSmall { size, len });
    }
    // SAFETY: a new read-only shared mapping of `len` bytes of an open fd, which cannot shrink
    // (sealed) below `len` (checked): every page of the mapping stays backed.
    let ptr = unsafe {
        libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ, libc::MAP_SHARED | libc::MAP_POPULATE, fd.as_raw_fd(), 0)
    };
    if ptr == libc::MAP_FAILED {
        tracing::debug!(error = %io::Error::last_os_error(), "cannot map a sealed frame; reading it");
        return read_whole(fd, len);
    }
    Ok(Bytes::from_owner(Mapping { ptr: ptr as *const u8, len }))
}

/// The first `len` bytes of the file `fd`, read into memory.
fn read_whole(fd: &OwnedFd, len: usize) -> Result<Bytes, MapError> {
    let mut buf = bytes::BytesMut::zeroed(len);
    let mut done = 0;
    while done < len {
        let rest = &mut buf[done..];
        // SAFETY: `rest` is valid for writes of its length; the fd is open.
        let n =
            unsafe { libc::pread(fd.as_raw_fd(), rest.as_mut_ptr() as *mut c_void, rest.len(), done as libc::off_t) };
        match n {
            n if n > 0 => done += n as usize,
            0 => return Err(MapError::TooSmall { size: done as u64, len }),
            _ if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted => {}
            _ => return Err(io::Error::last_os_error().into()),
        }
    }
    Ok(buf.freeze())
}

/// Checks that `fd` is a file in shared memory (a memfd of tmpfs), not one of hugetlbfs: pages
/// of a huge-page file can be punched out by its writer, and the reader's next touch of one
/// would raise `SIGBUS` once the system has no huge page to give.
pub(super) fn check_shmem(fd: &OwnedFd) -> Result<(), MapError> {
    const TMPFS_MAGIC: i64 = 0x0102_1994;
    // SAFETY: an all-zero statfs is valid; fstatfs fills it.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is valid for writes; the fd is open.
    if unsafe { libc::fstatfs(fd.as_raw_fd(), &mut st) } != 0 {
        return Err(io::Error::last_os_error().into());
    }
    if st.f_type as i64 != TMPFS_MAGIC {
        return Err(MapError::NotSealed);
    }
    Ok(())
}

/// The size of the file behind `fd`.
pub(super) fn file_size(fd: &OwnedFd) -> io::Result<u64> {
    // SAFETY: an all-zero stat is valid; fstat fills it.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is valid for writes; the fd is open.
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st.st_size.max(0) as u64)
}

/// A read-only mapping of a sealed memfd, unmapped on drop.
struct Mapping {
    ptr: *const u8,
    len: usize,
}

// SAFETY: the mapping is read-only and its contents cannot change (the memfd is sealed against
// writes), so sharing and sending it between threads is sound.
unsafe impl Send for Mapping {}
// SAFETY: as above.
unsafe impl Sync for Mapping {}

impl AsRef<[u8]> for Mapping {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: `ptr` is a live mapping of `len` readable bytes until drop, and nothing
        // writes to it.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `map`; no reference to it outlives this.
        unsafe { libc::munmap(self.ptr as *mut c_void, self.len) };
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
        // SAFETY: a new memfd without sealing, owned below.
        let raw = unsafe { libc::memfd_create(c"t".as_ptr(), libc::MFD_CLOEXEC) };
        // SAFETY: a new fd, owned by nothing else.
        let plain = unsafe { OwnedFd::from_raw_fd(raw) };
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
