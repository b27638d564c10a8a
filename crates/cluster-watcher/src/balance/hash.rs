//! `hash` mode: every connection with the same key goes to the same slot (sticky sessions).
//!
//! The key is the client's address, or a header, cookie or query parameter of the first
//! request on the connection ([`HashKey`]). For the latter the watcher reads the request head
//! ([`read_head`], bounded by [`MAX_HEAD`] bytes and [`HEAD_TIMEOUT`]) and hands the
//! connection over with the bytes it read, so the worker parses the request as if it had read
//! it itself; a head that does not come, is too long, or lacks the key falls back to the
//! client's address (counted in the balancer's `hash_fallbacks`).
//!
//! The slot is chosen by rendezvous hashing ([`owner`]): the live slot with the highest
//! [`fdpass::rendezvous_weight`] for the key. A slot's replacement keeps the slot's keys, a
//! slot without a ready worker lends its keys to the others until it has one again, and a
//! scale change moves only the keys of the slots that came or went. The weight function is
//! the same as the one `reuseport` mode's kernel program runs for `hash=ip` (programs given
//! listeners), so an address lands on the same slot number in both.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::OwnedFd;
use std::str::FromStr;
use std::time::Duration;

use tokio::io::AsyncReadExt;

use crate::WorkerId;

/// The largest request head read for a key.
pub(crate) const MAX_HEAD: usize = 8 * 1024;

/// How long the head may take to arrive, from the connection's hand-off.
pub(crate) const HEAD_TIMEOUT: Duration = Duration::from_secs(2);

/// What a connection's slot is chosen by (`--balance hash=...`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum HashKey {
    /// The client's IP address (`hash=ip`): no reading, and also available to programs
    /// given listeners (in `reuseport` mode the kernel program hashes it).
    #[default]
    Ip,
    /// A request header, by name (`hash=header:NAME`, case-insensitive).
    Header(String),
    /// A cookie, by name (`hash=cookie:NAME`).
    Cookie(String),
    /// A query-string parameter of the request target, by name (`hash=query:NAME`).
    Query(String),
}

/// A `hash=` key that is not one of the forms.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a hash key: use ip, header:NAME, cookie:NAME or query:NAME")]
pub struct HashKeyError(String);

impl FromStr for HashKey {
    type Err = HashKeyError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let named = |name: &str| {
            let ok = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_graphic() && !b"=;,".contains(&b));
            ok.then(|| name.to_owned())
                .ok_or_else(|| HashKeyError(text.to_owned()))
        };
        match text.split_once(':') {
            None if text == "ip" => Ok(Self::Ip),
            Some(("header", name)) => Ok(Self::Header(named(name)?.to_ascii_lowercase())),
            Some(("cookie", name)) => Ok(Self::Cookie(named(name)?)),
            Some(("query", name)) => Ok(Self::Query(named(name)?)),
            _ => Err(HashKeyError(text.to_owned())),
        }
    }
}

impl fmt::Display for HashKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ip => f.write_str("ip"),
            Self::Header(name) => write!(f, "header:{name}"),
            Self::Cookie(name) => write!(f, "cookie:{name}"),
            Self::Query(name) => write!(f, "query:{name}"),
        }
    }
}

impl HashKey {
    /// Whether the key is in the request (the watcher reads the head), not the address.
    pub(crate) fn in_request(&self) -> bool {
        !matches!(self, Self::Ip)
    }

    /// The key of a request head, `None` when it is not there.
    pub(crate) fn of_head(&self, head: &[u8]) -> Option<u32> {
        let head = std::str::from_utf8(head).ok()?;
        let mut lines = head.split("\r\n");
        let target = lines.next()?.split(' ').nth(1)?;
        let headers = lines
            .take_while(|line| !line.is_empty())
            .filter_map(|line| {
                let (name, value) = line.split_once(':')?;
                Some((name.trim(), value.trim()))
            });
        let value = match self {
            Self::Ip => return None,
            Self::Header(wanted) => headers
                .filter(|(name, _)| name.eq_ignore_ascii_case(wanted))
                .map(|(_, value)| value)
                .next(),
            Self::Cookie(wanted) => headers
                .filter(|(name, _)| name.eq_ignore_ascii_case("cookie"))
                .flat_map(|(_, value)| value.split(';'))
                .filter_map(|pair| pair.trim().split_once('='))
                .find(|(name, _)| name == wanted)
                .map(|(_, value)| value),
            Self::Query(wanted) => target
                .split_once('?')
                .map(|(_, query)| query.split('#').next().unwrap_or_default())
                .into_iter()
                .flat_map(|query| query.split('&'))
                .filter_map(|pair| pair.split_once('='))
                .find(|(name, _)| name == wanted)
                .map(|(_, value)| value),
        }?;
        (!value.is_empty()).then(|| fnv1a(value.as_bytes()))
    }
}

/// The key of a client address: IPv4 as its big-endian number, IPv6 as its first and last
/// 32 bits XORed (what the kernel program of `reuseport` mode reads).
pub(crate) fn of_address(peer: Option<SocketAddr>) -> u32 {
    match peer.map(|p| p.ip()) {
        Some(IpAddr::V4(v4)) => u32::from(v4),
        Some(IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
            Some(v4) => u32::from(v4),
            None => {
                let bits = u128::from(v6);
                #[allow(clippy::cast_possible_truncation)] // the two words, on purpose
                let (first, last) = ((bits >> 96) as u32, bits as u32);
                first ^ last
            }
        },
        None => 0,
    }
}

/// FNV-1a on 32 bits: stable across builds and versions (a successor watcher after an
/// upgrade hashes a key as its predecessor did), unlike `std`'s hasher.
fn fnv1a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5, |hash, byte| {
        (hash ^ u32::from(*byte)).wrapping_mul(0x0100_0193)
    })
}

/// Among the candidates (index, worker), the one whose slot has the highest weight for
/// `key`; between two workers of the same slot (a replacement and the worker it replaces,
/// both ready for a moment), the newer.
pub(crate) fn owner(
    key: u32,
    candidates: impl Iterator<Item = (usize, WorkerId)>,
) -> Option<usize> {
    candidates
        .max_by_key(|(_, id)| {
            (
                fdpass::rendezvous_weight(key, id.slot),
                std::cmp::Reverse(id.slot),
                id.generation,
            )
        })
        .map(|(index, _)| index)
}

/// Reads the head of the first request on `socket` (adding to `read`, the bytes already
/// read), up to its blank line, [`MAX_HEAD`] bytes or [`HEAD_TIMEOUT`], through a duplicate of
/// the descriptor: `socket` itself is never given up, so the connection goes on to a worker
/// whatever happened here.
pub(crate) async fn read_head(socket: &OwnedFd, read: &mut Vec<u8>) {
    if has_head(read) {
        return;
    }
    let Ok(duplicate) = socket.try_clone() else {
        return; // out of descriptors: the address is the key
    };
    let stream = std::net::TcpStream::from(duplicate);
    // Every connection the watcher hands on is non-blocking already (it vouches for that to
    // its workers); this only keeps a broken promise from blocking the watcher's runtime.
    if stream.set_nonblocking(true).is_err() {
        return;
    }
    if let Ok(mut stream) = tokio::net::TcpStream::from_std(stream) {
        let reading = async {
            let mut buffer = [0u8; 2048];
            while read.len() < MAX_HEAD && !has_head(read) {
                match stream.read(&mut buffer).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => read.extend_from_slice(&buffer[..n]),
                }
            }
        };
        let _ = tokio::time::timeout(HEAD_TIMEOUT, reading).await;
    }
}

/// Whether `read` holds a whole request head.
fn has_head(read: &[u8]) -> bool {
    read.windows(4).any(|w| w == b"\r\n\r\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(slot: u32, generation: u32) -> WorkerId {
        WorkerId { slot, generation }
    }

    #[test]
    fn keys_parse_print_and_refuse_what_they_cannot_be() {
        for text in ["ip", "header:x-user", "cookie:sid", "query:room"] {
            assert_eq!(text.parse::<HashKey>().unwrap().to_string(), text);
        }
        assert_eq!(
            "header:X-User".parse(),
            Ok(HashKey::Header("x-user".into()))
        );
        for bad in ["", "ip:x", "cookie:", "cookie:a;b", "url:x", "header"] {
            assert!(bad.parse::<HashKey>().is_err(), "{bad}");
        }
    }

    #[test]
    fn the_key_is_found_in_the_head_and_missing_is_none() {
        let head = b"GET /socket.io/?EIO=4&sid=abc&t=1 HTTP/1.1\r\nHost: x\r\nX-User: 42\r\n\
            Cookie: theme=dark; sid=s1; other=2\r\n\r\n";
        let of = |key: &str| key.parse::<HashKey>().unwrap().of_head(head);
        assert_eq!(of("header:x-user"), Some(fnv1a(b"42")));
        assert_eq!(of("cookie:sid"), Some(fnv1a(b"s1")));
        assert_eq!(of("query:sid"), Some(fnv1a(b"abc")));
        assert_eq!(of("query:EIO"), Some(fnv1a(b"4")));
        assert_eq!(of("cookie:none"), None);
        assert_eq!(of("query:none"), None);
        assert_eq!(of("header:none"), None);
        assert_eq!(HashKey::Cookie("sid".into()).of_head(b"\xff\xfe"), None);
    }

    #[test]
    fn a_slot_keeps_its_keys_and_a_scale_change_moves_only_its_own() {
        let four: Vec<WorkerId> = (1..=4).map(|s| id(s, 1)).collect();
        let slot_of = |key: u32, workers: &[WorkerId]| {
            owner(key, workers.iter().copied().enumerate()).map(|i| workers[i].slot)
        };
        let mut counts = [0u32; 4];
        let mut moved = 0;
        for n in 0..10_000u32 {
            let key = fnv1a(format!("session-{n}").as_bytes());
            let before = slot_of(key, &four).unwrap();
            counts[before as usize - 1] += 1;
            // Slot 2 replaced by generation 2: nothing moves.
            let replaced = [id(1, 1), id(2, 2), id(3, 1), id(4, 1)];
            assert_eq!(slot_of(key, &replaced), Some(before));
            // Both of slot 2's workers ready at once: the newer takes them.
            let both = [id(2, 1), id(1, 1), id(2, 2), id(3, 1), id(4, 1)];
            let index = owner(key, both.iter().copied().enumerate()).unwrap();
            if before == 2 {
                assert_eq!(both[index], id(2, 2));
            }
            // A fifth slot: only keys that go to it move.
            let five: Vec<WorkerId> = (1..=5).map(|s| id(s, 1)).collect();
            let after = slot_of(key, &five).unwrap();
            if after != before {
                assert_eq!(after, 5);
                moved += 1;
            }
        }
        // 10,000 keys within a quarter of even; about a fifth move to the new slot.
        assert!(
            counts.iter().all(|n| (1875..=3125).contains(n)),
            "{counts:?}"
        );
        assert!((1500..=2500).contains(&moved), "{moved}");
        assert_eq!(owner(1, std::iter::empty()), None);
    }

    #[test]
    fn addresses_are_keyed_as_the_kernel_program_keys_them() {
        let v4: SocketAddr = "127.0.0.7:9".parse().unwrap();
        assert_eq!(of_address(Some(v4)), 0x7f00_0007);
        let mapped: SocketAddr = "[::ffff:127.0.0.7]:9".parse().unwrap();
        assert_eq!(of_address(Some(mapped)), 0x7f00_0007);
        let v6: SocketAddr = "[2001:db8::1]:9".parse().unwrap();
        assert_eq!(of_address(Some(v6)), 0x2001_0db8 ^ 1);
    }
}
