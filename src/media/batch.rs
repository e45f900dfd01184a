//! Batched UDP receive (`recvmmsg`, Linux): every datagram waiting on a socket in one system
//! call; and [`disconnect`], which the standard library lacks. The relay's sockets each carry one call leg (50 packets a second), so a batch is
//! usually a single packet; what the call saves is the second system call an
//! edge-triggered reader otherwise needs to learn that the socket is empty: fewer datagrams
//! than asked for means it is.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::RawFd;

/// Datagrams one call may return.
pub const BATCH: usize = 16;
/// The largest datagram kept whole (RTP of 20-60 ms G.711 is 172-492 bytes).
pub const DATAGRAM: usize = 2048;

/// Buffers for one batch, reused for every call (no allocation per packet).
pub struct Batch {
    bufs: Box<[[u8; DATAGRAM]; BATCH]>,
    addrs: [libc::sockaddr_storage; BATCH],
    iovecs: [libc::iovec; BATCH],
    headers: [libc::mmsghdr; BATCH],
    lens: [usize; BATCH],
}

// SAFETY: the raw pointers inside are only set and read during `recv`, which borrows the
// batch mutably; between calls they point nowhere the batch does not own.
unsafe impl Send for Batch {}

impl Default for Batch {
    fn default() -> Self {
        Self::new()
    }
}

impl Batch {
    pub fn new() -> Batch {
        // SAFETY: all-zero is a valid value of these plain C structs.
        let zeroed = unsafe { std::mem::zeroed::<libc::mmsghdr>() };
        Batch {
            bufs: Box::new([[0; DATAGRAM]; BATCH]),
            // SAFETY: as above.
            addrs: unsafe { std::mem::zeroed() },
            iovecs: [libc::iovec {
                iov_base: std::ptr::null_mut(),
                iov_len: 0,
            }; BATCH],
            headers: [zeroed; BATCH],
            lens: [0; BATCH],
        }
    }

    /// Receives what the socket holds, up to [`BATCH`] datagrams, without blocking.
    /// Ok(0) when it holds nothing.
    pub fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        for i in 0..BATCH {
            self.iovecs[i] = libc::iovec {
                iov_base: self.bufs[i].as_mut_ptr().cast(),
                iov_len: DATAGRAM,
            };
            let h = &mut self.headers[i].msg_hdr;
            h.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_storage).cast();
            h.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_iov = &mut self.iovecs[i];
            h.msg_iovlen = 1;
            h.msg_control = std::ptr::null_mut();
            h.msg_controllen = 0;
            h.msg_flags = 0;
            self.headers[i].msg_len = 0;
        }
        // SAFETY: every header points into buffers owned by `self`, valid for this call;
        // the kernel writes at most `iov_len` bytes and `msg_namelen` address bytes.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                self.headers.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock => Ok(0),
                _ => Err(e),
            };
        }
        let n = n as usize;
        for i in 0..n {
            self.lens[i] = self.headers[i].msg_len as usize;
        }
        Ok(n)
    }

    /// Datagram `i` of the last batch and its source.
    pub fn get(&self, i: usize) -> (&[u8], Option<SocketAddr>) {
        (
            &self.bufs[i][..self.lens[i]],
            to_socket_addr(&self.addrs[i]),
        )
    }
}

/// Dissolves a UDP socket's association with its peer (`connect` to `AF_UNSPEC`), so it
/// receives from anyone again. The socket must have been bound to an explicit port (the
/// relay's are): Linux gives up a port it chose itself when the association ends.
pub fn disconnect(fd: RawFd) -> io::Result<()> {
    // SAFETY: an all-zero sockaddr with family AF_UNSPEC is what connect(2) documents for
    // dissolving a datagram socket's association; the pointer is valid for the call.
    let rc = unsafe {
        let mut addr: libc::sockaddr = std::mem::zeroed();
        addr.sa_family = libc::AF_UNSPEC as libc::sa_family_t;
        libc::connect(
            fd,
            &addr,
            std::mem::size_of::<libc::sockaddr>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn to_socket_addr(s: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match s.ss_family as libc::c_int {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in.
            let a = unsafe { &*(s as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            let ip = Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
            Some(SocketAddr::V4(SocketAddrV4::new(
                ip,
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a sockaddr_in6.
            let a = unsafe { &*(s as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            let ip = Ipv6Addr::from(a.sin6_addr.s6_addr);
            Some(SocketAddr::V6(SocketAddrV6::new(
                ip,
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn receives_every_waiting_datagram_with_its_source_in_one_call() {
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut batch = Batch::new();
        assert_eq!(batch.recv(rx.as_raw_fd()).unwrap(), 0, "empty socket");
        for i in 0..20u8 {
            tx.send_to(&[i; 172], rx.local_addr().unwrap()).unwrap();
        }
        // Loopback delivery is synchronous: all 20 are queued now.
        assert_eq!(batch.recv(rx.as_raw_fd()).unwrap(), BATCH);
        for i in 0..BATCH {
            let (data, from) = batch.get(i);
            assert_eq!(data, &[i as u8; 172][..]);
            assert_eq!(from, Some(tx.local_addr().unwrap()));
        }
        assert_eq!(
            batch.recv(rx.as_raw_fd()).unwrap(),
            4,
            "the rest, fewer than a batch"
        );
        assert_eq!(batch.get(3).0[0], 19);
        assert_eq!(batch.recv(rx.as_raw_fd()).unwrap(), 0);
    }

    #[test]
    fn a_connected_socket_hears_only_its_peer_until_disconnected() {
        // An explicit port, as the relay binds (a port the kernel chose is given up when
        // the association ends).
        let port = std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let rx = std::net::UdpSocket::bind(("127.0.0.1", port)).unwrap();
        let peer = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let other = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.connect(peer.local_addr().unwrap()).unwrap();
        let to = rx.local_addr().unwrap();
        other.send_to(b"stranger", to).unwrap();
        peer.send_to(b"peer", to).unwrap();
        let mut batch = Batch::new();
        rx.set_nonblocking(false).unwrap();
        let mut probe = [0u8; 16];
        // Wait (blocking) until the peer's datagram is there, then read it as a batch.
        let (n, _) = rx.peek_from(&mut probe).unwrap();
        assert_eq!(&probe[..n], b"peer", "the stranger's datagram was refused");
        assert_eq!(batch.recv(rx.as_raw_fd()).unwrap(), 1);
        assert_eq!(batch.get(0).0, b"peer");
        disconnect(rx.as_raw_fd()).unwrap();
        other.send_to(b"stranger", to).unwrap();
        // Loopback delivery may be deferred to the softirq thread: poll briefly.
        let mut got = 0;
        for _ in 0..100 {
            got = batch.recv(rx.as_raw_fd()).unwrap();
            if got > 0 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(got, 1);
        assert_eq!(batch.get(0).0, b"stranger");
    }
}
