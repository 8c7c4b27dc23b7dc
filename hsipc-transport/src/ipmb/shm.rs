//! Shared memory for lanes: memfds, their mappings, and the checks a reader makes before it maps
//! one a peer sent (used by `sealed` and `pool`).

use std::ffi::{CStr, c_void};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// A new empty memfd that can be sealed.
pub(super) fn memfd(name: &CStr) -> io::Result<OwnedFd> {
    // SAFETY: a valid NUL-terminated name; the flags are valid for memfd_create.
    let raw = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new fd, owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// Adds `seals` to the memfd `fd`.
pub(super) fn add_seals(fd: &OwnedFd, seals: libc::c_int) -> io::Result<()> {
    // SAFETY: fcntl on an open fd, with an integer argument.
    if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, seals) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The seals of `fd`, if it is a memfd (anything else cannot be sealed).
pub(super) fn seals(fd: &OwnedFd) -> Option<libc::c_int> {
    // SAFETY: fcntl on an open fd with no argument; it fails on anything not sealable.
    let seals = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS) };
    (seals >= 0).then_some(seals)
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

/// Whether `fd` is a file in shared memory (a memfd of tmpfs), not one of hugetlbfs: pages of a
/// huge-page file can be punched out by its writer, and the reader's next touch of one would
/// raise `SIGBUS` once the system has no huge page to give.
pub(super) fn is_shmem(fd: &OwnedFd) -> io::Result<bool> {
    const TMPFS_MAGIC: i64 = 0x0102_1994;
    // SAFETY: an all-zero statfs is valid; fstatfs fills it.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is valid for writes; the fd is open.
    if unsafe { libc::fstatfs(fd.as_raw_fd(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st.f_type as i64 == TMPFS_MAGIC)
}

/// A shared mapping of the start of a file, unmapped on drop. What may be done through it (and
/// whether its bytes may be read as a slice) is up to its owner.
pub(super) struct Mapping {
    base: *mut u8,
    len: usize,
}

// SAFETY: a plain address range; its owners say what is done through it.
unsafe impl Send for Mapping {}
// SAFETY: as above.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps the first `len` bytes of `fd` with `prot` (and extra `flags` besides `MAP_SHARED`).
    /// The caller makes sure the file cannot shrink below `len` while mapped.
    pub(super) fn new(fd: &OwnedFd, len: usize, prot: libc::c_int, flags: libc::c_int) -> io::Result<Mapping> {
        // SAFETY: a new shared mapping of `len` bytes of an open fd.
        let base = unsafe { libc::mmap(std::ptr::null_mut(), len, prot, libc::MAP_SHARED | flags, fd.as_raw_fd(), 0) };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Mapping { base: base as *mut u8, len })
    }

    /// Its first byte.
    pub(super) fn base(&self) -> *mut u8 {
        self.base
    }

    /// Its length.
    pub(super) fn len(&self) -> usize {
        self.len
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly this mapping; nothing refers to it any more.
        unsafe { libc::munmap(self.base as *mut c_void, self.len) };
    }
}

/// A new memfd of `len` bytes sealed against shrinking and growing (and, with `last`, against
/// further seals).
pub(super) fn sized_memfd(name: &std::ffi::CStr, len: usize, last: bool) -> io::Result<OwnedFd> {
    let fd = memfd(name)?;
    // SAFETY: sizes a memfd we own.
    if unsafe { libc::ftruncate(fd.as_raw_fd(), len as libc::off_t) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let seal = if last { libc::F_SEAL_SEAL } else { 0 };
    add_seals(&fd, libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | seal)?;
    Ok(fd)
}
