//! Steering a `SO_REUSEPORT` group of listening sockets with classic BPF, and reading a
//! listener's accept queue: the two kernel calls a supervisor that keeps one listening socket
//! per worker needs and that rustix does not wrap.
//!
//! The kernel numbers a group's TCP sockets in the order they called `listen()`; a program
//! attached to any member replaces the program of the whole group, atomically; an index the
//! program returns that is not below the group's size falls back to the 4-tuple hash.
//! Classic BPF needs no privilege (eBPF does, on most machines).

use std::io;
use std::os::fd::{AsFd, AsRawFd};

/// The most indexes [`steer_reuseport`] takes: the program has two instructions per index and
/// the kernel takes at most 4096.
pub const MAX_STEERED: usize = 2000;

/// Makes the `SO_REUSEPORT` group `socket` belongs to send each new connection to one of
/// `indexes` (positions in the group, in `listen()` order), picked at random. Connections
/// already queued on any member stay where they are.
///
/// # Errors
/// `indexes` empty or longer than [`MAX_STEERED`] (`InvalidInput`); the kernel's refusal
/// (not a reuseport socket, say).
pub fn steer_reuseport(socket: impl AsFd, indexes: &[u32]) -> io::Result<()> {
    if indexes.is_empty() || indexes.len() > MAX_STEERED {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "a reuseport program steers to 1 to {MAX_STEERED} sockets, not {}",
                indexes.len()
            ),
        ));
    }
    let mut program = steering_program(indexes);
    let fprog = libc::sock_fprog {
        len: u16::try_from(program.len()).expect("bounded by MAX_STEERED"),
        filter: program.as_mut_ptr(),
    };
    let size = libc::socklen_t::try_from(size_of::<libc::sock_fprog>()).expect("small");
    // SAFETY: `fprog` points at `program`, which lives until the call returns; the kernel
    // copies the program and keeps no pointer to it.
    #[allow(unsafe_code)]
    let result = unsafe {
        libc::setsockopt(
            socket.as_fd().as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_REUSEPORT_CBPF,
            (&raw const fprog).cast(),
            size,
        )
    };
    if result == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Removes the group's program: new connections are spread by the kernel's hash again.
/// A group without a program is not an error.
///
/// # Errors
/// The kernel's refusal.
pub fn unsteer_reuseport(socket: impl AsFd) -> io::Result<()> {
    let unused: libc::c_int = 0;
    // SAFETY: the option takes no value; the pointer and size describe a valid int anyway.
    #[allow(unsafe_code)]
    let result = unsafe {
        libc::setsockopt(
            socket.as_fd().as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_DETACH_REUSEPORT_BPF,
            (&raw const unused).cast(),
            libc::socklen_t::try_from(size_of::<libc::c_int>()).expect("small"),
        )
    };
    match result {
        0 => Ok(()),
        _ => {
            let error = io::Error::last_os_error();
            // ENOENT: no program was attached.
            if error.raw_os_error() == Some(libc::ENOENT) {
                Ok(())
            } else {
                Err(error)
            }
        }
    }
}

/// `random % indexes.len()`, then a jump table onto `indexes`.
fn steering_program(indexes: &[u32]) -> Vec<libc::sock_filter> {
    let op = |code: u32, jt: u8, jf: u8, k: u32| libc::sock_filter {
        code: u16::try_from(code).expect("BPF opcodes fit 16 bits"),
        jt,
        jf,
        k,
    };
    #[allow(clippy::cast_sign_loss)] // SKF_AD_OFF is negative by definition: the kernel's u32
    let random = (libc::SKF_AD_OFF + libc::SKF_AD_RANDOM) as u32;
    let count = u32::try_from(indexes.len()).expect("bounded by MAX_STEERED");
    let mut program = Vec::with_capacity(3 + 2 * indexes.len());
    program.push(op(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, 0, 0, random));
    program.push(op(libc::BPF_ALU | libc::BPF_MOD | libc::BPF_K, 0, 0, count));
    for (choice, &index) in (0u32..).zip(indexes) {
        // A == choice ? return index : fall through to the next test.
        program.push(op(libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K, 0, 1, choice));
        program.push(op(libc::BPF_RET | libc::BPF_K, 0, 0, index));
    }
    // Not reached; an index past the group's end would fall back to the hash anyway.
    program.push(op(libc::BPF_RET | libc::BPF_K, 0, 0, u32::MAX));
    program
}

/// A listening TCP socket's accept queue, as `TCP_INFO` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenQueue {
    /// Connections established and waiting for `accept`.
    pub queued: u32,
    /// The queue's capacity (the `listen()` backlog, capped by `somaxconn`).
    pub backlog: u32,
}

/// The accept queue of a listening TCP socket (the kernel reports it in `tcpi_unacked` and
/// `tcpi_sacked` for listeners).
///
/// # Errors
/// Not a TCP socket; not listening (`InvalidInput`).
pub fn listen_queue(socket: impl AsFd) -> io::Result<ListenQueue> {
    if !rustix::net::sockopt::socket_acceptconn(&socket)? {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a listening socket",
        ));
    }
    // SAFETY: all-zero is a valid `tcp_info` (plain integers).
    #[allow(unsafe_code)]
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut size = libc::socklen_t::try_from(size_of::<libc::tcp_info>()).expect("small");
    // SAFETY: `info` and `size` describe a writable buffer of that size; the kernel writes at
    // most `size` bytes and updates `size`.
    #[allow(unsafe_code)]
    let result = unsafe {
        libc::getsockopt(
            socket.as_fd().as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&raw mut info).cast(),
            &raw mut size,
        )
    };
    if result != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(ListenQueue {
        queued: info.tcpi_unacked,
        backlog: info.tcpi_sacked,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::OwnedFd;

    fn reuseport_listener(port: u16) -> OwnedFd {
        use rustix::net::{AddressFamily, SocketFlags, SocketType, sockopt};
        let fd = rustix::net::socket_with(
            AddressFamily::INET,
            SocketType::STREAM,
            SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
            None,
        )
        .unwrap();
        sockopt::set_socket_reuseport(&fd, true).unwrap();
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        rustix::net::bind(&fd, &addr).unwrap();
        rustix::net::listen(&fd, 64).unwrap();
        fd
    }

    fn port_of(fd: &OwnedFd) -> u16 {
        let addr = rustix::net::getsockname(fd).unwrap();
        std::net::SocketAddr::try_from(addr).unwrap().port()
    }

    fn drain(fd: &OwnedFd) -> usize {
        let mut count = 0;
        while rustix::net::accept(fd).is_ok() {
            count += 1;
        }
        count
    }

    #[test]
    fn a_program_steers_every_connection_to_the_live_sockets_and_the_queue_shows_them() {
        let first = reuseport_listener(0);
        let port = port_of(&first);
        let group = [first, reuseport_listener(port), reuseport_listener(port)];
        steer_reuseport(&group[1], &[0, 2]).unwrap();
        let clients: Vec<TcpStream> = (0..30)
            .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
            .collect();
        std::thread::sleep(std::time::Duration::from_millis(50));
        let queues: Vec<u32> = group.iter().map(|s| listen_queue(s).unwrap().queued).collect();
        assert_eq!(queues[1], 0, "{queues:?}");
        assert_eq!(queues.iter().sum::<u32>(), 30, "{queues:?}");
        assert_eq!(listen_queue(&group[0]).unwrap().backlog, 64);
        let counts: Vec<usize> = group.iter().map(drain).collect();
        assert_eq!(counts[1], 0);
        assert!(counts[0] > 0 && counts[2] > 0, "{counts:?}");
        unsteer_reuseport(&group[0]).unwrap();
        let more: Vec<TcpStream> = (0..60)
            .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
            .collect();
        std::thread::sleep(std::time::Duration::from_millis(50));
        let counts: Vec<usize> = group.iter().map(drain).collect();
        assert!(counts.iter().all(|&c| c > 0), "hashing again: {counts:?}");
        drop((clients, more));
        // Detaching twice is fine.
        unsteer_reuseport(&group[0]).unwrap();
    }

    #[test]
    fn bad_input_is_an_error() {
        let plain = TcpListener::bind("127.0.0.1:0").unwrap();
        assert!(steer_reuseport(&plain, &[]).is_err());
        let too_many = vec![0; MAX_STEERED + 1];
        assert!(steer_reuseport(&plain, &too_many).is_err());
        let client = TcpStream::connect(plain.local_addr().unwrap()).unwrap();
        assert_eq!(
            listen_queue(&client).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
        assert_eq!(listen_queue(&plain).unwrap().queued, 1);
    }
}
