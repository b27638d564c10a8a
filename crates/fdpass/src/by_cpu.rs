//! Steering a `SO_REUSEPORT` group by CPU: a new connection goes to a member whose worker is
//! pinned to the CPU the kernel processes the connection's first packet on (the receive
//! queue's CPU with a multi-queue network card; the sending CPU on loopback), so that its
//! packets and its worker stay on one CPU and its cache. With several members on one CPU, one
//! of them at random; a connection on a CPU no member is pinned to goes to one of `fallback`
//! at random.
//!
//! A classic BPF program (no privilege needed): `SKF_AD_CPU` is the current CPU, then one
//! test per CPU that has members.

use std::collections::BTreeMap;
use std::io;
use std::os::fd::AsFd;

use crate::reuseport::{MAX_STEERED, attach_classic, check_indexes, op, steering_program};

/// The most members one CPU may have in [`steer_reuseport_by_cpu`] (a jump in classic BPF
/// skips at most 255 instructions).
pub const MAX_PER_CPU: usize = 120;

/// Makes the `SO_REUSEPORT` group `socket` belongs to send each new connection to a member
/// pinned to the CPU it arrives on: `by_cpu` pairs a CPU with a member's position in the group
/// (`listen()` order; a CPU may appear several times), `fallback` lists the positions for a
/// CPU that has none.
///
/// # Errors
/// `fallback` empty, too many positions (over [`MAX_STEERED`] in all, or [`MAX_PER_CPU`] on
/// one CPU; `InvalidInput`); the kernel's refusal.
pub fn steer_reuseport_by_cpu(
    socket: impl AsFd,
    by_cpu: &[(u32, u32)],
    fallback: &[u32],
) -> io::Result<()> {
    check_indexes(fallback)?;
    let mut groups: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    for &(cpu, position) in by_cpu {
        groups.entry(cpu).or_default().push(position);
    }
    if by_cpu.len() + fallback.len() > MAX_STEERED
        || groups.values().any(|members| members.len() > MAX_PER_CPU)
    {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "a CPU steering program takes at most {MAX_STEERED} positions and {MAX_PER_CPU} per CPU"
            ),
        ));
    }
    attach_classic(socket, cpu_program(&groups, fallback))
}

/// `A = cpu`; per CPU with members: `A == cpu ? (its member, or one of them at random)`;
/// then the random program over `fallback`.
fn cpu_program(groups: &BTreeMap<u32, Vec<u32>>, fallback: &[u32]) -> Vec<libc::sock_filter> {
    #[allow(clippy::cast_sign_loss)] // SKF_AD_OFF is negative by definition: the kernel's u32
    let cpu = (libc::SKF_AD_OFF + libc::SKF_AD_CPU) as u32;
    let mut program = vec![op(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, 0, 0, cpu)];
    for (&cpu, members) in groups {
        let block = match members.as_slice() {
            [only] => vec![op(libc::BPF_RET | libc::BPF_K, 0, 0, *only)],
            several => steering_program(several),
        };
        let skip = u8::try_from(block.len()).expect("bounded by MAX_PER_CPU");
        program.push(op(
            libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K,
            0,
            skip,
            cpu,
        ));
        program.extend(block);
    }
    program.extend(steering_program(fallback));
    program
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, TcpStream};
    use std::os::fd::OwnedFd;

    use super::*;
    use crate::test_support::{group, landed_on, reuseport_listener};

    /// Connects from a thread pinned to `cpu` and says which of `listeners` accepted.
    fn accepted_by(listeners: &[OwnedFd], port: u16, cpu: usize) -> usize {
        std::thread::spawn(move || {
            let mut set = rustix::thread::CpuSet::new();
            set.set(cpu);
            rustix::thread::sched_setaffinity(None, &set).unwrap();
            TcpStream::connect((Ipv4Addr::LOCALHOST, port)).unwrap()
        })
        .join()
        .unwrap();
        landed_on(listeners)
    }

    #[test]
    fn a_connection_goes_to_the_member_pinned_to_its_cpu() {
        let online = std::thread::available_parallelism().map_or(1, usize::from);
        if online < 2 {
            eprintln!("one CPU: nothing to steer between");
            return;
        }
        let (listeners, port) = group(3);
        // Position 2 on CPU 0, position 0 on CPU 1; position 1 for any other CPU.
        steer_reuseport_by_cpu(&listeners[0], &[(0, 2), (1, 0)], &[1]).unwrap();
        for _ in 0..20 {
            assert_eq!(accepted_by(&listeners, port, 0), 2);
            assert_eq!(accepted_by(&listeners, port, 1), 0);
        }
        // Two members on CPU 0: both get some.
        steer_reuseport_by_cpu(&listeners[0], &[(0, 2), (0, 1), (1, 0)], &[1]).unwrap();
        let mut seen = [0; 3];
        for _ in 0..60 {
            seen[accepted_by(&listeners, port, 0)] += 1;
        }
        assert!(seen[0] == 0 && seen[1] > 0 && seen[2] > 0, "{seen:?}");
    }

    #[test]
    fn no_fallback_or_too_many_members_is_an_error() {
        let listener = reuseport_listener(0);
        assert!(steer_reuseport_by_cpu(&listener, &[(0, 0)], &[]).is_err());
        let crowded: Vec<(u32, u32)> = (0..=MAX_PER_CPU as u32).map(|i| (0, i)).collect();
        assert!(steer_reuseport_by_cpu(&listener, &crowded, &[0]).is_err());
    }
}
