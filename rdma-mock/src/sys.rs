//! The operating-system layer: shared mappings, eventfds, fd passing, epoll, CPU affinity.
//!
//! Every `unsafe` call into libc in this crate lives here, each with its SAFETY note, so the
//! rest of the crate deals in owned, typed handles.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::ptr::NonNull;
use std::time::Duration;

/// Converts a libc return value into `io::Result`, reading `errno` on `-1`.
fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// A `MAP_SHARED` mapping of a memfd (or of a memfd received from a peer).
///
/// The mapping is page aligned and lives until drop. Its contents may be changed at any time
/// by other processes that map the same file, so it only hands out raw pointers; typed access
/// goes through atomics or explicit copies.
#[derive(Debug)]
pub(crate) struct SharedMapping {
    ptr: NonNull<u8>,
    len: usize,
    fd: OwnedFd,
}

// SAFETY: the mapping is plain shared memory; every access to its bytes goes through raw
// pointers and atomics, whose synchronization the callers establish.
unsafe impl Send for SharedMapping {}
// SAFETY: as above; `&SharedMapping` only exposes the base pointer and the fd.
unsafe impl Sync for SharedMapping {}

impl SharedMapping {
    /// Creates an anonymous memfd of `len` bytes (sparse: pages are allocated when touched)
    /// and maps it. `len` is rounded up to whole pages.
    pub(crate) fn create(name: &str, len: usize) -> io::Result<Self> {
        let len = round_up(len.max(1), page_size());
        let cname = CString::new(name).map_err(|_| io::Error::other("memfd name has a NUL"))?;
        // SAFETY: `cname` is a valid NUL-terminated string for the duration of the call.
        let raw = check(unsafe { libc::memfd_create(cname.as_ptr(), libc::MFD_CLOEXEC) })?;
        // SAFETY: memfd_create returned a fresh fd that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: `fd` is a valid memfd; ftruncate only sets its size.
        check(unsafe { libc::ftruncate(fd.as_raw_fd(), len as libc::off_t) })?;
        Self::map(fd, len)
    }

    /// Maps `len` bytes of a memfd received from a peer.
    pub(crate) fn map(fd: OwnedFd, len: usize) -> io::Result<Self> {
        let size = file_size(fd.as_fd())?;
        if size < len {
            return Err(io::Error::other(format!(
                "shared file holds {size} bytes, peer announced {len}"
            )));
        }
        // SAFETY: we ask the kernel for a fresh shared mapping of a file we own; no existing
        // Rust object aliases the returned range. MAP_NORESERVE keeps large sparse arenas cheap.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_NORESERVE,
                fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr =
            NonNull::new(ptr.cast::<u8>()).ok_or_else(|| io::Error::other("mmap gave null"))?;
        Ok(Self { ptr, len, fd })
    }

    pub(crate) fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Releases the pages of `[offset, offset + len)` back to the system; they read as zero
    /// afterwards, in every process that maps the file.
    pub(crate) fn discard(&self, offset: usize, len: usize) {
        debug_assert!(offset + len <= self.len);
        // SAFETY: the range lies inside our mapping (checked by the caller, asserted above);
        // MADV_REMOVE on shmem frees the backing pages and never unmaps anything.
        let _ =
            unsafe { libc::madvise(self.ptr.as_ptr().add(offset).cast(), len, libc::MADV_REMOVE) };
    }
}

impl Drop for SharedMapping {
    fn drop(&mut self) {
        // SAFETY: we unmap exactly the range `map` created; nothing borrows it past drop
        // because every user holds the mapping through an `Arc` that is being dropped.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

fn file_size(fd: std::os::fd::BorrowedFd<'_>) -> io::Result<usize> {
    let file = std::fs::File::from(fd.try_clone_to_owned()?);
    Ok(file.metadata()?.len() as usize)
}

pub(crate) fn page_size() -> usize {
    4096
}

pub(crate) const fn round_up(n: usize, align: usize) -> usize {
    (n + align - 1) & !(align - 1)
}

/// A Linux eventfd: the wake-up line of a completion channel, which peers may hold too.
#[derive(Debug)]
pub(crate) struct EventFd(OwnedFd);

impl EventFd {
    pub(crate) fn new() -> io::Result<Self> {
        // SAFETY: plain syscall with constant flags; returns a new fd or -1.
        let raw = check(unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) })?;
        // SAFETY: the fd is fresh and owned by nobody else.
        Ok(Self(unsafe { OwnedFd::from_raw_fd(raw) }))
    }

    pub(crate) fn from_owned(fd: OwnedFd) -> Self {
        Self(fd)
    }

    /// Adds one to the counter, waking a waiter.
    pub(crate) fn signal(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to an eventfd we own. A full counter (EAGAIN)
        // already means "wake up", so the result is irrelevant.
        let _ = unsafe { libc::write(self.0.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }

    /// Waits until the counter is non-zero, then reads and resets it. `None` waits forever.
    /// Returns the counter (0 on timeout).
    pub(crate) fn wait(&self, timeout: Option<Duration>) -> io::Result<u64> {
        let deadline = timeout.map(|t| std::time::Instant::now() + t);
        loop {
            let left = deadline.map(|d| d.saturating_duration_since(std::time::Instant::now()));
            if !poll_readable(self.0.as_raw_fd(), left)? {
                return Ok(0);
            }
            let mut value: u64 = 0;
            // SAFETY: reads 8 bytes into a live u64 from an eventfd we own.
            let n = unsafe { libc::read(self.0.as_raw_fd(), (&mut value as *mut u64).cast(), 8) };
            if n == 8 {
                return Ok(value);
            }
            let err = io::Error::last_os_error();
            // Another waiter of the same channel took it first: wait on.
            if !matches!(
                err.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
            ) {
                return Err(err);
            }
        }
    }

    pub(crate) fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

/// `poll(2)` for readability of one fd, retrying on EINTR.
pub(crate) fn poll_readable(fd: RawFd, timeout: Option<Duration>) -> io::Result<bool> {
    let ms = match timeout {
        None => -1,
        // Rounded up: a wait never ends before its timeout (29.9 ms must not become 29).
        Some(t) => t.as_nanos().div_ceil(1_000_000).min(i32::MAX as u128) as libc::c_int,
    };
    loop {
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: `pfd` is a live pollfd array of length 1.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        match n {
            -1 if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted => continue,
            -1 => return Err(io::Error::last_os_error()),
            0 => return Ok(false),
            _ => return Ok(true),
        }
    }
}

/// Makes a dead or partitioned peer of a TCP connection noticed within about 20 s even when
/// nothing is sent (keepalive probes) and when sent data is never acknowledged
/// (TCP_USER_TIMEOUT), so that outstanding requests are failed instead of waiting forever.
pub(crate) fn tcp_detect_dead_peers(sock: &std::net::TcpStream) -> io::Result<()> {
    let set = |level: libc::c_int, name: libc::c_int, value: libc::c_int| -> io::Result<()> {
        // SAFETY: setsockopt reads one c_int that lives for the call.
        check(unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                level,
                name,
                (&value as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        })
        .map(|_| ())
    };
    set(libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1)?;
    set(libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, 10)?;
    set(libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, 2)?;
    set(libc::IPPROTO_TCP, libc::TCP_KEEPCNT, 5)?;
    set(libc::IPPROTO_TCP, libc::TCP_USER_TIMEOUT, 20_000)
}

/// The user id of the process at the other end of a Unix socket (`SO_PEERCRED`).
pub(crate) fn peer_uid(sock: &UnixStream) -> io::Result<u32> {
    // SAFETY: ucred is a plain C struct; all-zero is valid.
    let mut cred: libc::ucred = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cred`, which we own.
    check(unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    })?;
    Ok(cred.uid)
}

/// The effective user id of this process.
pub(crate) fn own_uid() -> u32 {
    // SAFETY: geteuid cannot fail and has no preconditions.
    unsafe { libc::geteuid() }
}

/// Sends what the socket takes of `data` without waiting (`MSG_DONTWAIT`): the number of
/// bytes sent, or `WouldBlock` when its buffer is full.
pub(crate) fn send_nonblocking(fd: RawFd, data: &[u8]) -> io::Result<usize> {
    // SAFETY: sends from a live buffer of data.len() bytes; MSG_NOSIGNAL turns a closed peer
    // into EPIPE instead of a signal.
    let n = unsafe {
        libc::send(
            fd,
            data.as_ptr().cast(),
            data.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Receives what the socket has into `buf` without waiting (`MSG_DONTWAIT`): the number of
/// bytes (0 when the peer closed the stream), or `WouldBlock` when there is nothing.
pub(crate) fn recv_nonblocking(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: receives into a live, writable buffer of buf.len() bytes.
    let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Sends `data` with up to [`MAX_FDS`] file descriptors attached (SCM_RIGHTS).
pub(crate) fn send_with_fds(sock: &UnixStream, data: &[u8], fds: &[RawFd]) -> io::Result<()> {
    assert!(fds.len() <= MAX_FDS);
    let mut cmsg_buf = [0u64; CMSG_WORDS];
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut _,
        iov_len: data.len(),
    };
    // SAFETY: msghdr is a plain C struct; all-zero is a valid empty value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !fds.is_empty() {
        let fd_bytes = std::mem::size_of_val(fds) as u32;
        msg.msg_control = cmsg_buf.as_mut_ptr().cast();
        // SAFETY: CMSG_SPACE is a pure size computation.
        msg.msg_controllen = unsafe { libc::CMSG_SPACE(fd_bytes) } as usize;
        // SAFETY: msg_control points at `cmsg_buf`, which is large enough for MAX_FDS fds
        // (CMSG_WORDS is computed from CMSG_SPACE below), so the first header and its data fit.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(fd_bytes) as usize;
            std::ptr::copy_nonoverlapping(fds.as_ptr(), libc::CMSG_DATA(cmsg).cast(), fds.len());
        }
    }
    // SAFETY: `msg` points at live buffers for the duration of the call.
    let n = unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    if n as usize != data.len() {
        return Err(io::Error::other("short sendmsg on a unix socket"));
    }
    Ok(())
}

/// Receives one message sent by [`send_with_fds`] into `buf`; returns its length and the
/// descriptors that came with it. Length 0 means the peer closed the socket.
pub(crate) fn recv_with_fds(
    sock: &UnixStream,
    buf: &mut [u8],
) -> io::Result<(usize, Vec<OwnedFd>)> {
    let mut cmsg_buf = [0u64; CMSG_WORDS];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: all-zero msghdr is a valid empty value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cmsg_buf.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&cmsg_buf);
    let n = loop {
        // SAFETY: `msg` points at live buffers for the duration of the call.
        let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
            continue;
        }
        break n;
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut fds = Vec::new();
    // SAFETY: the kernel filled msg_control with well-formed cmsg headers; we walk them with
    // the CMSG macros and take ownership of each SCM_RIGHTS descriptor exactly once.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
                let count = ((*cmsg).cmsg_len - libc::CMSG_LEN(0) as usize) / 4;
                for i in 0..count {
                    fds.push(OwnedFd::from_raw_fd(data.add(i).read_unaligned()));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        return Err(io::Error::other(
            "file descriptors were truncated in transit",
        ));
    }
    Ok((n as usize, fds))
}

/// Most descriptors one control message carries.
pub(crate) const MAX_FDS: usize = 8;
const CMSG_WORDS: usize = 8; // 64 bytes: CMSG_SPACE(8 * 4) = 48 on x86-64

/// A minimal epoll set used by the shm connection agent to watch peers hang up.
#[derive(Debug)]
pub(crate) struct Epoll(OwnedFd);

impl Epoll {
    pub(crate) fn new() -> io::Result<Self> {
        // SAFETY: plain syscall; returns a new fd or -1.
        let raw = check(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
        // SAFETY: the fd is fresh and owned by nobody else.
        Ok(Self(unsafe { OwnedFd::from_raw_fd(raw) }))
    }

    /// Watches `fd` for input or hang-up, reporting `token`.
    pub(crate) fn add(&self, fd: RawFd, token: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLHUP) as u32,
            u64: token,
        };
        // SAFETY: `ev` is a live epoll_event; the kernel copies it.
        check(unsafe { libc::epoll_ctl(self.0.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) })?;
        Ok(())
    }

    pub(crate) fn remove(&self, fd: RawFd) {
        // SAFETY: removing an fd needs no event struct on Linux >= 2.6.9.
        let _ = unsafe {
            libc::epoll_ctl(
                self.0.as_raw_fd(),
                libc::EPOLL_CTL_DEL,
                fd,
                std::ptr::null_mut(),
            )
        };
    }

    /// Waits for events; returns the tokens that fired.
    pub(crate) fn wait(&self, out: &mut Vec<u64>) -> io::Result<()> {
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; 32];
        // SAFETY: `events` is a live array of 32 entries.
        let n = unsafe { libc::epoll_wait(self.0.as_raw_fd(), events.as_mut_ptr(), 32, -1) };
        if n < 0 {
            let err = io::Error::last_os_error();
            return if err.kind() == io::ErrorKind::Interrupted {
                Ok(())
            } else {
                Err(err)
            };
        }
        out.extend(events[..n as usize].iter().map(|e| e.u64));
        Ok(())
    }
}

/// Pins the calling thread to one CPU.
///
/// # Errors
/// Fails when the CPU does not exist or is outside this process's allowed set.
pub fn pin_current_thread(cpu: usize) -> io::Result<()> {
    // SAFETY: cpu_set_t is a plain bit array; all-zero is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    if cpu >= 8 * std::mem::size_of::<libc::cpu_set_t>() {
        return Err(io::Error::other(format!("cpu {cpu} is out of range")));
    }
    // SAFETY: `cpu` is within the set's bit range (checked above).
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: `set` is a live cpu_set_t of the size we pass.
    check(unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) })?;
    Ok(())
}

/// The pid of this process (for naming sockets and memfds).
pub(crate) fn pid() -> u32 {
    std::process::id()
}
