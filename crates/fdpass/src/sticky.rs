//! Sticky steering of a `SO_REUSEPORT` group: every connection from one client address goes
//! to the same member, chosen by rendezvous (highest random weight) hashing over the live
//! members, so a member coming or going moves only its own clients.
//!
//! The weight of a client for a member is [`rendezvous_weight`] of the client's key and the
//! member's *slot* (a name that outlives the socket's position in the group), so the watcher
//! can compute in user space the same choice the kernel makes. The key is the IPv4 source
//! address as a big-endian number; for IPv6 the first and last 32 bits of the source address,
//! XORed. A classic BPF program computes it: it reads the network header through the
//! kernel's `SKF_NET_OFF` window, which needs no privilege, and unrolls the loop over the
//! members (about 14 instructions each; the kernel takes at most 4096).

use std::io;
use std::os::fd::AsFd;

use crate::reuseport::{attach_classic, check_indexes, op};

/// The most members [`steer_reuseport_by_source`] takes.
pub const MAX_STICKY: usize = 256;

/// Constants of the mixing function (murmur3's finaliser, on 32 bits: every input bit moves
/// every output bit, and classic BPF has the multiply, shift and XOR it needs).
const SEED: u32 = 0x9e37_79b9;
const MIX_1: u32 = 0x85eb_ca6b;
const MIX_2: u32 = 0xc2b2_ae35;

/// The weight of `key` for `slot`: the member with the highest weight among the live ones
/// gets the key (ties: the first in the order given). The same function as the kernel
/// program's, bit for bit.
#[must_use]
pub fn rendezvous_weight(key: u32, slot: u32) -> u32 {
    let mut h = key ^ slot.wrapping_mul(SEED);
    h ^= h >> 16;
    h = h.wrapping_mul(MIX_1);
    h ^= h >> 13;
    h = h.wrapping_mul(MIX_2);
    h ^= h >> 16;
    h
}

/// Makes the group `socket` belongs to send each new connection to the member, among
/// `members` (`(slot, position in the group in listen() order)`), with the highest
/// [`rendezvous_weight`] for the connection's source address. Connections already queued
/// stay where they are.
///
/// # Errors
/// `members` empty or longer than [`MAX_STICKY`] (`InvalidInput`); the kernel's refusal.
pub fn steer_reuseport_by_source(socket: impl AsFd, members: &[(u32, u32)]) -> io::Result<()> {
    if members.len() > MAX_STICKY {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("sticky steering takes at most {MAX_STICKY} sockets"),
        ));
    }
    let positions: Vec<u32> = members.iter().map(|(_, position)| *position).collect();
    check_indexes(&positions)?;
    attach_classic(socket, program(members))
}

/// Scratch words of the program.
const KEY: u32 = 0;
const BEST_WEIGHT: u32 = 1;
const BEST_POSITION: u32 = 2;

/// `key = source address; for each member: weight = mix(key, slot), keep the highest;
/// return its position`.
fn program(members: &[(u32, u32)]) -> Vec<libc::sock_filter> {
    use libc::{
        BPF_A, BPF_ABS, BPF_ALU, BPF_B, BPF_IMM, BPF_JA, BPF_JEQ, BPF_JGT, BPF_JMP, BPF_K, BPF_LD,
        BPF_LDX, BPF_MEM, BPF_MISC, BPF_MUL, BPF_RET, BPF_RSH, BPF_ST, BPF_TAX, BPF_W, BPF_X,
        BPF_XOR,
    };
    #[allow(clippy::cast_sign_loss)] // SKF_NET_OFF is negative by definition: the kernel's u32
    let net = libc::SKF_NET_OFF as u32;
    let mut p = vec![
        // 0-2: the IP version, the high nibble of the network header's first byte.
        op(BPF_LD | BPF_B | BPF_ABS, 0, 0, net),
        op(BPF_ALU | BPF_RSH | BPF_K, 0, 0, 4),
        op(BPF_JMP | BPF_JEQ | BPF_K, 0, 5, 6),
        // 3-7: IPv6, the source address's first word XOR its last.
        op(BPF_LD | BPF_W | BPF_ABS, 0, 0, net + 8),
        op(BPF_MISC | BPF_TAX, 0, 0, 0),
        op(BPF_LD | BPF_W | BPF_ABS, 0, 0, net + 20),
        op(BPF_ALU | BPF_XOR | BPF_X, 0, 0, 0),
        op(BPF_JMP | BPF_JA, 0, 0, 1),
        // 8: IPv4, the source address.
        op(BPF_LD | BPF_W | BPF_ABS, 0, 0, net + 12),
        // 9: the key, then the best so far: weight 0, the first member.
        op(BPF_ST, 0, 0, KEY),
        op(BPF_LD | BPF_IMM, 0, 0, 0),
        op(BPF_ST, 0, 0, BEST_WEIGHT),
        op(BPF_LD | BPF_IMM, 0, 0, members[0].1),
        op(BPF_ST, 0, 0, BEST_POSITION),
    ];
    // A ^= A >> shift, through X.
    let fold = |p: &mut Vec<libc::sock_filter>, shift: u32| {
        p.push(op(BPF_MISC | BPF_TAX, 0, 0, 0));
        p.push(op(BPF_ALU | BPF_RSH | BPF_K, 0, 0, shift));
        p.push(op(BPF_ALU | BPF_XOR | BPF_X, 0, 0, 0));
    };
    for &(slot, position) in members {
        p.push(op(BPF_LD | BPF_MEM, 0, 0, KEY));
        p.push(op(BPF_ALU | BPF_XOR | BPF_K, 0, 0, slot.wrapping_mul(SEED)));
        fold(&mut p, 16);
        p.push(op(BPF_ALU | BPF_MUL | BPF_K, 0, 0, MIX_1));
        fold(&mut p, 13);
        p.push(op(BPF_ALU | BPF_MUL | BPF_K, 0, 0, MIX_2));
        fold(&mut p, 16);
        // Higher than the best so far: it becomes the best.
        p.push(op(BPF_LDX | BPF_W | BPF_MEM, 0, 0, BEST_WEIGHT));
        p.push(op(BPF_JMP | BPF_JGT | BPF_X, 0, 3, 0));
        p.push(op(BPF_ST, 0, 0, BEST_WEIGHT));
        p.push(op(BPF_LD | BPF_IMM, 0, 0, position));
        p.push(op(BPF_ST, 0, 0, BEST_POSITION));
    }
    p.push(op(BPF_LD | BPF_MEM, 0, 0, BEST_POSITION));
    p.push(op(BPF_RET | BPF_A, 0, 0, 0));
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{group, landed_on, reuseport_listener};
    use std::net::{Ipv4Addr, SocketAddr, TcpStream};
    use std::os::fd::OwnedFd;

    /// Connects from `source` and says which of `listeners` accepted.
    fn accepted_by(listeners: &[OwnedFd], port: u16, source: Ipv4Addr) -> usize {
        use rustix::net::{AddressFamily, SocketType, bind, connect, socket};
        let client = socket(AddressFamily::INET, SocketType::STREAM, None).unwrap();
        bind(&client, &SocketAddr::from((source, 0))).unwrap();
        connect(&client, &SocketAddr::from((Ipv4Addr::LOCALHOST, port))).unwrap();
        let _client = TcpStream::from(client);
        landed_on(listeners)
    }

    /// Where user space says `source` goes among `members` (slot, position).
    fn expected(members: &[(u32, u32)], source: Ipv4Addr) -> usize {
        let key = u32::from(source);
        let mut best = (0, members[0].1);
        for &(slot, position) in members {
            let weight = rendezvous_weight(key, slot);
            if weight > best.0 {
                best = (weight, position);
            }
        }
        best.1 as usize
    }

    #[test]
    fn each_source_address_goes_where_user_space_says_and_only_the_lost_members_keys_move() {
        let (listeners, port) = group(3);
        // Slots 7, 8, 9 at positions 0, 1, 2.
        let all = [(7, 0), (8, 1), (9, 2)];
        steer_reuseport_by_source(&listeners[0], &all).unwrap();
        let sources: Vec<Ipv4Addr> = (2..50).map(|i| Ipv4Addr::new(127, 0, 0, i)).collect();
        let mut seen = [0usize; 3];
        for &source in &sources {
            let at = accepted_by(&listeners, port, source);
            assert_eq!(at, expected(&all, source), "{source}");
            assert_eq!(accepted_by(&listeners, port, source), at, "{source} moved");
            seen[at] += 1;
        }
        assert!(seen.iter().all(|n| *n > 0), "{seen:?}");
        // Slot 8 goes: only its sources move.
        let live = [(7, 0), (9, 2)];
        steer_reuseport_by_source(&listeners[0], &live).unwrap();
        for &source in &sources {
            let before = expected(&all, source);
            let now = accepted_by(&listeners, port, source);
            assert_ne!(now, 1);
            if before != 1 {
                assert_eq!(now, before, "{source} moved though its slot stayed");
            }
        }
    }

    #[test]
    fn ten_thousand_keys_spread_within_a_quarter_of_even_over_four_slots() {
        let mut counts = [0u32; 4];
        for key in 0..10_000u32 {
            let key = key.wrapping_mul(2_654_435_761); // not consecutive
            let slot = (1..=4u32)
                .max_by_key(|slot| (rendezvous_weight(key, *slot), std::cmp::Reverse(*slot)))
                .unwrap();
            counts[slot as usize - 1] += 1;
        }
        assert!(
            counts.iter().all(|n| (1875..=3125).contains(n)),
            "{counts:?}"
        );
    }

    #[test]
    fn too_many_or_no_members_is_an_error() {
        let listener = reuseport_listener(0);
        assert!(steer_reuseport_by_source(&listener, &[]).is_err());
        let many: Vec<(u32, u32)> = (0..=MAX_STICKY as u32).map(|i| (i, i)).collect();
        assert!(steer_reuseport_by_source(&listener, &many).is_err());
    }
}
