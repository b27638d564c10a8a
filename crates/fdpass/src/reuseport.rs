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
    check_indexes(indexes)?;
    attach_classic(socket, steering_program(indexes))
}

/// One classic BPF instruction.
pub(crate) fn op(code: u32, jt: u8, jf: u8, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code: u16::try_from(code).expect("BPF opcodes fit 16 bits"),
        jt,
        jf,
        k,
    }
}

/// Attaches a classic BPF program to the group `socket` belongs to.
pub(crate) fn attach_classic(
    socket: impl AsFd,
    mut program: Vec<libc::sock_filter>,
) -> io::Result<()> {
    let fprog = libc::sock_fprog {
        len: u16::try_from(program.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "program too long"))?,
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
    match set_int_option(socket, libc::SO_DETACH_REUSEPORT_BPF, 0) {
        // ENOENT: no program was attached.
        Err(error) if error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        other => other,
    }
}

/// `setsockopt(SOL_SOCKET, option, &value)` for an option that takes an int.
fn set_int_option(socket: impl AsFd, option: libc::c_int, value: libc::c_int) -> io::Result<()> {
    // SAFETY: the pointer and size describe `value`, an int that lives for the call; the
    // kernel copies it.
    #[allow(unsafe_code)]
    let result = unsafe {
        libc::setsockopt(
            socket.as_fd().as_raw_fd(),
            libc::SOL_SOCKET,
            option,
            (&raw const value).cast(),
            libc::socklen_t::try_from(size_of::<libc::c_int>()).expect("small"),
        )
    };
    if result == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Refuses an empty list, or one too long for a program.
pub(crate) fn check_indexes(indexes: &[u32]) -> io::Result<()> {
    if indexes.is_empty() || indexes.len() > MAX_STEERED {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "a reuseport program steers to 1 to {MAX_STEERED} sockets, not {}",
                indexes.len()
            ),
        ));
    }
    Ok(())
}

/// `random % indexes.len()`, then a jump table onto `indexes`.
pub(crate) fn steering_program(indexes: &[u32]) -> Vec<libc::sock_filter> {
    #[allow(clippy::cast_sign_loss)] // SKF_AD_OFF is negative by definition: the kernel's u32
    let random = (libc::SKF_AD_OFF + libc::SKF_AD_RANDOM) as u32;
    let count = u32::try_from(indexes.len()).expect("bounded by MAX_STEERED");
    let mut program = Vec::with_capacity(3 + 2 * indexes.len());
    program.push(op(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, 0, 0, random));
    program.push(op(libc::BPF_ALU | libc::BPF_MOD | libc::BPF_K, 0, 0, count));
    for (choice, &index) in (0u32..).zip(indexes) {
        // A == choice ? return index : fall through to the next test.
        program.push(op(
            libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K,
            0,
            1,
            choice,
        ));
        program.push(op(libc::BPF_RET | libc::BPF_K, 0, 0, index));
    }
    // Not reached; an index past the group's end would fall back to the hash anyway.
    program.push(op(libc::BPF_RET | libc::BPF_K, 0, 0, u32::MAX));
    program
}

/// Exact round-robin over a `SO_REUSEPORT` group: an eBPF program that counts the group's
/// new connections in a one-slot array map and sends connection *k* to the
/// `k % indexes.len()`-th of the chosen members. Loading eBPF needs `CAP_BPF` (or root) on
/// most machines (`kernel.unprivileged_bpf_disabled`); [`new`](Self::new) says so with
/// `EPERM`, and the caller falls back to [`steer_reuseport`] (random) or the kernel's hash.
///
/// The counter lives as long as this value, so reprogramming the group (a slot goes down,
/// comes back) carries on the rotation instead of restarting it.
#[derive(Debug)]
pub struct RoundRobinSteering {
    counter: std::os::fd::OwnedFd,
}

/// `bpf(2)` commands, map and program types used here.
const BPF_MAP_CREATE: libc::c_int = 0;
const BPF_PROG_LOAD: libc::c_int = 5;
const BPF_MAP_TYPE_ARRAY: u32 = 2;
const BPF_PROG_TYPE_SOCKET_FILTER: u32 = 1;

/// The leading fields of `union bpf_attr` for `BPF_MAP_CREATE`, zero-padded to the size
/// the kernel reads (it insists the tail is zero).
#[repr(C)]
struct MapCreate {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    rest: [u8; 112],
}

/// The leading fields of `union bpf_attr` for `BPF_PROG_LOAD`.
#[repr(C)]
struct ProgLoad {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    rest: [u8; 88],
}

/// One eBPF instruction: opcode, registers (destination in the low nibble), offset, immediate.
#[repr(C)]
#[derive(Clone, Copy)]
struct Insn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: (src << 4) | (dst & 0x0f),
        off,
        imm,
    }
}

fn bpf<T>(command: libc::c_int, attr: &mut T) -> io::Result<std::os::fd::OwnedFd> {
    // SAFETY: `attr` is a `#[repr(C)]` prefix of `union bpf_attr` for `command`, zero
    // wherever this code sets nothing, and lives for the call; the kernel copies it.
    #[allow(unsafe_code)]
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            command,
            std::ptr::from_mut(attr).cast::<libc::c_void>(),
            size_of::<T>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = i32::try_from(fd).map_err(|_| io::Error::other("bpf returned a bad descriptor"))?;
    // SAFETY: the kernel just returned this descriptor to us and nothing else owns it (the
    // bpf syscall's descriptors are close-on-exec).
    #[allow(unsafe_code)]
    Ok(unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) })
}

impl RoundRobinSteering {
    /// Creates the counter (a one-entry BPF array map).
    ///
    /// # Errors
    /// `EPERM` without the privilege to use eBPF; `ENOSYS` on a kernel without it.
    pub fn new() -> io::Result<Self> {
        let mut attr = MapCreate {
            map_type: BPF_MAP_TYPE_ARRAY,
            key_size: 4,
            value_size: 8,
            max_entries: 1,
            rest: [0; 112],
        };
        let counter = bpf(BPF_MAP_CREATE, &mut attr)?;
        Ok(Self { counter })
    }

    /// Sends the group's new connections in turn to `indexes` (positions in the group, in
    /// `listen()` order).
    ///
    /// # Errors
    /// As [`steer_reuseport`]; the verifier's refusal (a kernel without atomic fetch-add,
    /// before 5.12).
    pub fn steer(&self, socket: impl AsFd, indexes: &[u32]) -> io::Result<()> {
        check_indexes(indexes)?;
        let program = self.program(indexes);
        let license = c"Dual MIT/GPL";
        let mut attr = ProgLoad {
            prog_type: BPF_PROG_TYPE_SOCKET_FILTER,
            insn_cnt: u32::try_from(program.len()).expect("bounded by MAX_STEERED"),
            insns: program.as_ptr() as u64,
            license: license.as_ptr() as u64,
            log_level: 0,
            log_size: 0,
            log_buf: 0,
            rest: [0; 88],
        };
        let loaded = bpf(BPF_PROG_LOAD, &mut attr)?;
        // The kernel takes its own reference to the program: ours may close after this.
        set_int_option(socket, libc::SO_ATTACH_REUSEPORT_EBPF, loaded.as_raw_fd())
    }

    /// `n = counter++ % len; return indexes[n]`, the lookup as a jump table.
    fn program(&self, indexes: &[u32]) -> Vec<Insn> {
        const R0: u8 = 0;
        const R1: u8 = 1;
        const R2: u8 = 2;
        const R10: u8 = 10;
        let count = i32::try_from(indexes.len()).expect("bounded by MAX_STEERED");
        let mut p = vec![
            insn(0x62, R10, 0, -4, 0), // *(u32 *)(r10 - 4) = 0: the key
            insn(0xbf, R2, R10, 0, 0), // r2 = r10
            insn(0x07, R2, 0, 0, -4),  // r2 += -4
            insn(0x18, R1, 1, 0, self.counter.as_raw_fd()), // r1 = the map (pseudo map fd)
            insn(0x00, 0, 0, 0, 0),    // (the second half of the load)
            insn(0x85, 0, 0, 0, 1),    // r0 = bpf_map_lookup_elem(r1, r2)
            insn(
                0x15,
                R0,
                0,
                i16::try_from(4 + 3 * count).expect("bounded"),
                0,
            ), // if !r0: hash
            insn(0xb7, R1, 0, 0, 1),   // r1 = 1
            insn(0xdb, R0, R1, 0, 0x01), // r1 = atomic_fetch_add(*(u64 *)r0, r1)
            insn(0xbf, R0, R1, 0, 0),  // r0 = r1
            insn(0x97, R0, 0, 0, count), // r0 %= count
        ];
        for (choice, &index) in (0i32..).zip(indexes) {
            p.push(insn(0x55, R0, 0, 2, choice)); // if r0 != choice: next entry
            p.push(insn(0xb7, R0, 0, 0, index as i32)); // r0 = index
            p.push(insn(0x95, 0, 0, 0, 0)); // return
        }
        p.push(insn(0xb7, R0, 0, 0, -1)); // past the group's end: the kernel's hash
        p.push(insn(0x95, 0, 0, 0, 0));
        p
    }
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
        let queues: Vec<u32> = group
            .iter()
            .map(|s| listen_queue(s).unwrap().queued)
            .collect();
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
    fn exact_round_robin_where_ebpf_is_allowed() {
        let steering = match RoundRobinSteering::new() {
            Ok(steering) => steering,
            // Unprivileged: the caller falls back; nothing more to check here.
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => return,
            Err(e) => panic!("creating the counter: {e}"),
        };
        let first = reuseport_listener(0);
        let port = port_of(&first);
        let group = [
            first,
            reuseport_listener(port),
            reuseport_listener(port),
            reuseport_listener(port),
        ];
        steering.steer(&group[0], &[0, 1, 2, 3]).unwrap();
        let clients: Vec<TcpStream> = (0..48)
            .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
            .collect();
        std::thread::sleep(std::time::Duration::from_millis(50));
        let counts: Vec<usize> = group.iter().map(drain).collect();
        assert_eq!(counts, [12, 12, 12, 12]);
        // Two live members: alternate between them.
        steering.steer(&group[3], &[1, 3]).unwrap();
        let more: Vec<TcpStream> = (0..20)
            .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
            .collect();
        std::thread::sleep(std::time::Duration::from_millis(50));
        let counts: Vec<usize> = group.iter().map(drain).collect();
        assert_eq!(counts, [0, 10, 0, 10]);
        drop((clients, more));
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
