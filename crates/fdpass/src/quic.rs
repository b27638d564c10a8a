//! Steering QUIC in a `SO_REUSEPORT` group of UDP sockets: every packet of a connection
//! reaches the socket of the process that holds the connection's keys, and new connections
//! go to the members chosen to take them.
//!
//! A QUIC connection has no kernel state: the only thing in a packet that names it is the
//! *destination connection ID*, which the server chose. So each process puts its member's
//! position in the group into every connection ID it issues, as a three-byte prefix
//! ([`quic_cid_prefix`]: the position and two check bytes derived from it), and a classic
//! BPF program ([`steer_quic`]) reads it back:
//!
//! * a short-header packet (the bulk of a connection) has the connection ID at byte 1; a
//!   long-header packet at byte 6 (after the flags, the version and the ID's length);
//! * a prefix whose check bytes match and whose position is in the group goes to that
//!   member: the old process of a rolling restart keeps getting its connections' packets;
//! * anything else (a client's first Initial, whose ID the client picked at random) goes to
//!   one of the *accepting* members, chosen by the first four bytes of the ID, so the
//!   retransmissions of one handshake stay together while the accepting members do not
//!   change; a packet too short to be QUIC goes to the first accepting member.
//!
//! Limits: the ID's length byte of a long header is not read (an ID shorter than the
//! prefix is read with the bytes after it, and rarely passes the check bytes); and UDP
//! generic receive offload, which merges a flow's datagrams before the lookup, would hand
//! packets of two connections sharing one client address and port to one member (on the
//! loopback there is no such offload).
//!
//! Positions must not move, so the watcher never lets a member leave the group while it
//! steers (a closed socket would move the last member into its place): a member whose
//! process ended is kept and given to a later process. The check bytes make a client's
//! random ID look like a prefix once in 65,536 Initials. This is what udpgrm (Cloudflare)
//! does with eBPF and a map; classic BPF suffices here because one process owns the group,
//! and it needs no privilege.

use std::io;
use std::os::fd::AsFd;

use crate::reuseport::{attach_classic, op};

/// The most members [`steer_quic`] can name: a position is one byte.
pub const MAX_QUIC_MEMBERS: usize = 256;

/// The length of the prefix [`quic_cid_prefix`] makes; connection IDs must be longer (QUIC
/// allows up to 20 bytes; 8 is usual).
pub const QUIC_CID_PREFIX_LEN: usize = 3;

/// XORed with the position to make the check bytes.
const CHECK: [u8; 2] = [0xC7, 0x5A];

/// The shortest packet read as QUIC: a long header's connection ID starts at byte 6, and
/// four bytes of it are read.
const SHORTEST: u32 = 10;

/// The first bytes of every connection ID issued by the process that reads member
/// `position` of the group.
#[must_use]
pub fn quic_cid_prefix(position: u8) -> [u8; QUIC_CID_PREFIX_LEN] {
    [position, position ^ CHECK[0], position ^ CHECK[1]]
}

/// The member a connection ID names, when it starts with a [`quic_cid_prefix`].
#[must_use]
pub fn quic_cid_member(cid: &[u8]) -> Option<u8> {
    match cid {
        [position, a, b, ..] if quic_cid_prefix(*position)[1..] == [*a, *b] => Some(*position),
        _ => None,
    }
}

/// Attaches the connection-ID program to the group `socket` belongs to: packets whose
/// connection ID carries a prefix go to that member (a position below `members`, the
/// group's size); the others to one of `accepting` (positions), by the ID's first bytes.
///
/// # Errors
/// `accepting` empty, a position not below `members`, more than [`MAX_QUIC_MEMBERS`]
/// (`InvalidInput`); the kernel's refusal.
pub fn steer_quic(socket: impl AsFd, members: u32, accepting: &[u32]) -> io::Result<()> {
    let fits = usize::try_from(members).is_ok_and(|m| m <= MAX_QUIC_MEMBERS);
    if accepting.is_empty() || !fits || accepting.iter().any(|&a| a >= members) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "QUIC steering takes 1 to {MAX_QUIC_MEMBERS} members and accepting positions below it"
            ),
        ));
    }
    attach_classic(socket, program(members, accepting))
}

/// Scratch words of the program.
const OFFSET: u32 = 0;
const POSITION: u32 = 1;
const FIRST_CHECK: u32 = 2;

/// `offset = long header ? 6 : 1; if prefix(id) names a member, return it; else return
/// accepting[word(id) % len]`.
fn program(members: u32, accepting: &[u32]) -> Vec<libc::sock_filter> {
    use libc::{
        BPF_A, BPF_ABS, BPF_ALU, BPF_B, BPF_IMM, BPF_IND, BPF_JA, BPF_JEQ, BPF_JGE, BPF_JMP,
        BPF_JSET, BPF_K, BPF_LD, BPF_LDX, BPF_LEN, BPF_MEM, BPF_MISC, BPF_MOD, BPF_RET, BPF_ST,
        BPF_STX, BPF_TXA, BPF_W, BPF_X, BPF_XOR,
    };
    let fallback = accepting[0];
    let mut p = vec![
        // 0-1: too short to be QUIC: the first accepting member (jump to 25).
        op(BPF_LD | BPF_W | BPF_LEN, 0, 0, 0),
        op(BPF_JMP | BPF_JGE | BPF_K, 0, 23, SHORTEST),
        // 2-6: where the connection ID starts.
        op(BPF_LD | BPF_B | BPF_ABS, 0, 0, 0),
        op(BPF_JMP | BPF_JSET | BPF_K, 2, 0, 0x80),
        op(BPF_LDX | BPF_IMM, 0, 0, 1),
        op(BPF_JMP | BPF_JA, 0, 0, 1),
        op(BPF_LDX | BPF_IMM, 0, 0, 6),
        // 7-15: the position and the two check bytes, undone.
        op(BPF_STX, 0, 0, OFFSET),
        op(BPF_LD | BPF_B | BPF_IND, 0, 0, 0),
        op(BPF_ST, 0, 0, POSITION),
        op(BPF_LD | BPF_B | BPF_IND, 0, 0, 1),
        op(BPF_ALU | BPF_XOR | BPF_K, 0, 0, u32::from(CHECK[0])),
        op(BPF_ST, 0, 0, FIRST_CHECK),
        op(BPF_LD | BPF_B | BPF_IND, 0, 0, 2),
        op(BPF_ALU | BPF_XOR | BPF_K, 0, 0, u32::from(CHECK[1])),
        op(BPF_LDX | BPF_W | BPF_MEM, 0, 0, POSITION),
        // 16-20: both checks equal the position, which is in the group: its member.
        op(BPF_JMP | BPF_JEQ | BPF_X, 0, 5, 0),
        op(BPF_LD | BPF_MEM, 0, 0, FIRST_CHECK),
        op(BPF_JMP | BPF_JEQ | BPF_X, 0, 3, 0),
        op(BPF_MISC | BPF_TXA, 0, 0, 0),
        op(BPF_JMP | BPF_JGE | BPF_K, 1, 0, members),
        op(BPF_RET | BPF_A, 0, 0, 0),
        // 22-24: a new connection: the ID's first word picks an accepting member.
        op(BPF_LDX | BPF_W | BPF_MEM, 0, 0, OFFSET),
        op(BPF_LD | BPF_W | BPF_IND, 0, 0, 0),
        op(BPF_JMP | BPF_JA, 0, 0, 1),
        // 25: the short packet's member.
        op(BPF_RET | BPF_K, 0, 0, fallback),
    ];
    let count = u32::try_from(accepting.len()).expect("at most 256");
    p.push(op(BPF_ALU | BPF_MOD | BPF_K, 0, 0, count));
    for (i, &position) in (0u32..).zip(accepting) {
        p.push(op(BPF_JMP | BPF_JEQ | BPF_K, 0, 1, i));
        p.push(op(BPF_RET | BPF_K, 0, 0, position));
    }
    p.push(op(BPF_RET | BPF_K, 0, 0, fallback));
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, SocketAddr, UdpSocket};

    /// `members` UDP sockets in one `SO_REUSEPORT` group on a free port, in group order.
    fn group(members: usize) -> (Vec<UdpSocket>, SocketAddr) {
        use rustix::net::{AddressFamily, SocketType, bind, socket, sockopt};
        let mut sockets: Vec<UdpSocket> = Vec::new();
        let mut address = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        for _ in 0..members {
            let fd = socket(AddressFamily::INET, SocketType::DGRAM, None).unwrap();
            sockopt::set_socket_reuseport(&fd, true).unwrap();
            bind(&fd, &address).unwrap();
            let socket = UdpSocket::from(fd);
            socket.set_nonblocking(true).unwrap();
            address = socket.local_addr().unwrap();
            sockets.push(socket);
        }
        (sockets, address)
    }

    /// Sends `packet` to the group and says which member received it.
    fn lands_on(sockets: &[UdpSocket], to: SocketAddr, packet: &[u8]) -> usize {
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        client.send_to(packet, to).unwrap();
        let mut buffer = [0u8; 64];
        for _ in 0..500 {
            for (i, socket) in sockets.iter().enumerate() {
                if socket.recv_from(&mut buffer).is_ok() {
                    return i;
                }
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        panic!("no member received the packet");
    }

    fn short_header(cid: &[u8]) -> Vec<u8> {
        let mut packet = vec![0x40];
        packet.extend_from_slice(cid);
        packet.extend_from_slice(&[0x11; 20]);
        packet
    }

    /// A long-header packet of `kind` (0 Initial, 2 Handshake) with destination `cid`.
    fn long_header(kind: u8, cid: &[u8]) -> Vec<u8> {
        let mut packet = vec![0xC0 | (kind << 4), 0, 0, 0, 1];
        packet.push(u8::try_from(cid.len()).unwrap());
        packet.extend_from_slice(cid);
        packet.extend_from_slice(&[0x22; 20]);
        packet
    }

    fn cid_of(position: u8) -> Vec<u8> {
        let mut cid = quic_cid_prefix(position).to_vec();
        cid.extend_from_slice(&[9, 8, 7, 6, 5]);
        cid
    }

    #[test]
    fn a_prefix_reads_back_and_one_random_id_in_65536_looks_like_one() {
        for position in 0..=255u8 {
            assert_eq!(quic_cid_member(&cid_of(position)), Some(position));
        }
        assert_eq!(quic_cid_member(&[1, 2]), None);
        // Exactly one pair of check bytes in 65,536 goes with each position.
        for position in [0u8, 7, 255] {
            let matches = (0u32..65_536)
                .filter(|n| {
                    let [_, _, a, b] = n.to_be_bytes();
                    quic_cid_member(&[position, a, b]).is_some()
                })
                .count();
            assert_eq!(matches, 1);
        }
    }

    #[test]
    fn packets_follow_their_connection_id_and_new_connections_go_to_accepting_members() {
        let (sockets, to) = group(4);
        steer_quic(&sockets[0], 4, &[1, 3]).unwrap();
        // A connection's packets reach the member that issued its ID, accepting or not.
        for position in 0..4u8 {
            let expected = usize::from(position);
            assert_eq!(
                lands_on(&sockets, to, &short_header(&cid_of(position))),
                expected
            );
            assert_eq!(
                lands_on(&sockets, to, &long_header(2, &cid_of(position))),
                expected
            );
            assert_eq!(
                lands_on(&sockets, to, &long_header(0, &cid_of(position))),
                expected
            );
        }
        // A client's first Initials (a random ID) go to an accepting member, always the same
        // one for one ID, and the accepting members share them.
        let mut seen = std::collections::BTreeSet::new();
        for n in 0u32..40 {
            let cid = [n.to_be_bytes().as_slice(), &[0xAB; 4]].concat();
            let first = lands_on(&sockets, to, &long_header(0, &cid));
            assert!(first == 1 || first == 3, "landed on {first}");
            assert_eq!(lands_on(&sockets, to, &long_header(0, &cid)), first);
            seen.insert(first);
        }
        assert_eq!(seen.len(), 2, "both accepting members get new connections");
        // A position outside the group, and a runt, go to accepting members too.
        assert!([1, 3].contains(&lands_on(&sockets, to, &short_header(&cid_of(9)))));
        assert_eq!(lands_on(&sockets, to, &[0x40, 1, 2]), 1);
    }

    #[test]
    fn bad_arguments_are_refused() {
        let (sockets, _) = group(2);
        assert!(steer_quic(&sockets[0], 2, &[]).is_err());
        assert!(steer_quic(&sockets[0], 2, &[2]).is_err());
        assert!(steer_quic(&sockets[0], 300, &[0]).is_err());
    }
}
