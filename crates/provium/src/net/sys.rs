//! The few system calls the switch needs beyond std: an eventfd to wake its thread,
//! `ppoll` with a nanosecond timeout, and `recvmmsg` to read a batch of frames.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

/// Wakes a thread blocked in [`poll`].
#[derive(Debug)]
pub(crate) struct EventFd {
    fd: OwnedFd,
}

impl EventFd {
    pub(crate) fn new() -> io::Result<EventFd> {
        // SAFETY: eventfd(2) takes no pointers; the result is checked before use.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by eventfd and is owned by nobody else.
        Ok(EventFd {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    pub(crate) fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64. A full counter (EAGAIN) means a wake
        // is already pending, which is all a wake is for.
        unsafe { libc::write(self.fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }

    /// Clears pending wakes.
    pub(crate) fn drain(&self) {
        let mut count: u64 = 0;
        // SAFETY: reads at most 8 bytes into a live u64; EAGAIN (nothing pending) is fine.
        unsafe { libc::read(self.fd.as_raw_fd(), (&mut count as *mut u64).cast(), 8) };
    }
}

impl AsRawFd for EventFd {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// `ppoll` on `fds` for at most `timeout`; returns the number of ready descriptors.
pub(crate) fn poll(fds: &mut [libc::pollfd], timeout: Duration) -> io::Result<usize> {
    let spec = libc::timespec {
        tv_sec: timeout.as_secs().min(i64::MAX as u64) as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: `fds` is a live, writable slice of pollfd of the length passed; `spec`
    // outlives the call; a null sigmask leaves the mask unchanged.
    let ready = unsafe {
        libc::ppoll(
            fds.as_mut_ptr(),
            fds.len() as libc::nfds_t,
            &spec,
            std::ptr::null(),
        )
    };
    if ready < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(ready as usize)
}

/// One datagram of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Datagram<'a> {
    Frame(&'a [u8]),
    /// Longer than a slot; its tail was discarded by the kernel.
    Truncated {
        len: usize,
    },
}

/// Buffers for reading up to [`RecvBatch::SLOTS`] datagrams with one `recvmmsg`.
pub(crate) struct RecvBatch {
    buffers: Box<[u8]>,
    lens: [usize; Self::SLOTS],
    truncated: [bool; Self::SLOTS],
    count: usize,
}

impl RecvBatch {
    /// An unconnected unix datagram socket queues at most `max_dgram_qlen` + 1 (11 by
    /// default) datagrams, so larger batches would never fill.
    pub(crate) const SLOTS: usize = 16;
    /// QEMU's own network buffer (`NET_BUFSIZE`): it never sends a longer frame.
    pub(crate) const SLOT_BYTES: usize = 4096 + 65536;

    pub(crate) fn new() -> RecvBatch {
        RecvBatch {
            // Zeroed allocation: pages are only touched when frames land in them.
            buffers: vec![0u8; Self::SLOTS * Self::SLOT_BYTES].into_boxed_slice(),
            lens: [0; Self::SLOTS],
            truncated: [false; Self::SLOTS],
            count: 0,
        }
    }

    /// Reads what `fd` has queued, up to a batch, without blocking. `Ok(0)` when the
    /// queue is empty.
    pub(crate) fn receive(&mut self, fd: RawFd) -> io::Result<usize> {
        self.count = 0;
        let base = self.buffers.as_mut_ptr();
        let mut iovecs: [libc::iovec; Self::SLOTS] = std::array::from_fn(|slot| libc::iovec {
            // SAFETY: slot * SLOT_BYTES is inside `buffers` (SLOTS slots of SLOT_BYTES).
            iov_base: unsafe { base.add(slot * Self::SLOT_BYTES) }.cast(),
            iov_len: Self::SLOT_BYTES,
        });
        // SAFETY: mmsghdr is plain data; zero is a valid initial value.
        let mut headers: [libc::mmsghdr; Self::SLOTS] = unsafe { std::mem::zeroed() };
        for (header, iovec) in headers.iter_mut().zip(iovecs.iter_mut()) {
            header.msg_hdr.msg_iov = iovec;
            header.msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: every header points at one iovec that points into `buffers`; all of
        // them live until the call returns, and the kernel writes only within them.
        let received = unsafe {
            libc::recvmmsg(
                fd,
                headers.as_mut_ptr(),
                Self::SLOTS as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if received < 0 {
            let error = io::Error::last_os_error();
            return match error.kind() {
                io::ErrorKind::WouldBlock => Ok(0),
                _ => Err(error),
            };
        }
        self.count = received as usize;
        for (slot, header) in headers.iter().take(self.count).enumerate() {
            self.lens[slot] = header.msg_len as usize;
            self.truncated[slot] = header.msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
        }
        Ok(self.count)
    }

    /// The `slot`th datagram of the last [`RecvBatch::receive`].
    pub(crate) fn datagram(&self, slot: usize) -> Datagram<'_> {
        debug_assert!(slot < self.count);
        if self.truncated[slot] {
            return Datagram::Truncated {
                len: self.lens[slot],
            };
        }
        let start = slot * Self::SLOT_BYTES;
        Datagram::Frame(&self.buffers[start..start + self.lens[slot]])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixDatagram;

    #[test]
    fn batch_reads_every_queued_datagram_in_order() {
        let (a, b) = UnixDatagram::pair().unwrap();
        for i in 0..5u8 {
            a.send(&[i; 60]).unwrap();
        }
        let mut batch = RecvBatch::new();
        assert_eq!(batch.receive(b.as_raw_fd()).unwrap(), 5);
        for i in 0..5u8 {
            assert_eq!(batch.datagram(i as usize), Datagram::Frame(&[i; 60]));
        }
        assert_eq!(batch.receive(b.as_raw_fd()).unwrap(), 0, "empty queue");
    }

    #[test]
    fn eventfd_wakes_poll_and_drains() {
        let wake = EventFd::new().unwrap();
        let mut fds = [libc::pollfd {
            fd: wake.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        assert_eq!(poll(&mut fds, Duration::ZERO).unwrap(), 0);
        wake.wake();
        wake.wake();
        assert_eq!(poll(&mut fds, Duration::from_secs(1)).unwrap(), 1);
        wake.drain();
        fds[0].revents = 0;
        assert_eq!(poll(&mut fds, Duration::from_millis(1)).unwrap(), 0);
    }
}
