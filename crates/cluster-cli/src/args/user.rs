//! `--user USER[:GROUP]`, `--group GROUP` and `--cpu-affinity`: names and lists turned into
//! ids and CPU numbers.
//!
//! Users and groups are looked up in `/etc/passwd` and `/etc/group` (numbers are taken as
//! they are): the watcher resolves them once, as root, before any worker starts; directory
//! services behind NSS (LDAP, systemd-userdb) are not consulted, give numeric ids for those.

use std::path::Path;

/// A user as `--user` names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct User {
    pub(crate) uid: u32,
    /// Its primary group, unless `:GROUP` or `--group` says another.
    pub(crate) gid: u32,
    pub(crate) name: String,
    pub(crate) home: Option<String>,
}

/// `USER[:GROUP]`, by name or number.
pub(super) fn parse_user(text: &str) -> Result<(User, Option<u32>), String> {
    let (user, group) = match text.split_once(':') {
        Some((user, group)) => (user, Some(parse_group(group)?)),
        None => (text, None),
    };
    let user = lookup_user(Path::new("/etc/passwd"), user)?;
    Ok((user, group))
}

/// A group, by name or number.
pub(super) fn parse_group(text: &str) -> Result<u32, String> {
    if let Ok(gid) = text.parse::<u32>() {
        return Ok(gid);
    }
    let groups = std::fs::read_to_string("/etc/group").map_err(|e| format!("/etc/group: {e}"))?;
    groups
        .lines()
        .filter_map(|line| {
            let mut fields = line.split(':');
            Some((fields.next()?, fields.nth(1)?))
        })
        .find(|(name, _)| *name == text)
        .and_then(|(_, gid)| gid.parse().ok())
        .ok_or_else(|| format!("no group {text:?} in /etc/group"))
}

fn lookup_user(passwd: &Path, text: &str) -> Result<User, String> {
    let table =
        std::fs::read_to_string(passwd).map_err(|e| format!("{}: {e}", passwd.display()))?;
    let numeric = text.parse::<u32>().ok();
    for line in table.lines() {
        let fields: Vec<&str> = line.split(':').collect();
        let [name, _, uid, gid, _, home, ..] = fields[..] else {
            continue;
        };
        let (Ok(uid), Ok(gid)) = (uid.parse::<u32>(), gid.parse::<u32>()) else {
            continue;
        };
        if name == text || numeric == Some(uid) {
            return Ok(User {
                uid,
                gid,
                name: name.to_owned(),
                home: Some(home.to_owned()),
            });
        }
    }
    match numeric {
        // A number not in the table: that id, its own group number.
        Some(uid) => Ok(User {
            uid,
            gid: uid,
            name: uid.to_string(),
            home: None,
        }),
        None => Err(format!("no user {text:?} in {}", passwd.display())),
    }
}

/// `--cpu-affinity`: `auto` (the CPUs this process may run on, in order) or a list such as
/// `0,2,4-7`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CpuAffinity {
    Auto,
    List(Vec<usize>),
}

impl CpuAffinity {
    /// The CPUs, in the order slots take them.
    pub(crate) fn cpus(&self) -> Vec<usize> {
        match self {
            Self::List(cpus) => cpus.clone(),
            Self::Auto => {
                let allowed = rustix::thread::sched_getaffinity(None).ok();
                (0..rustix::thread::CpuSet::MAX_CPU)
                    .filter(|cpu| allowed.as_ref().is_some_and(|set| set.is_set(*cpu)))
                    .collect()
            }
        }
    }
}

pub(super) fn parse_cpu_affinity(text: &str) -> Result<CpuAffinity, String> {
    if text == "auto" {
        return Ok(CpuAffinity::Auto);
    }
    let mut cpus = Vec::new();
    for part in text.split(',') {
        let bad = || format!("{text:?}: expected auto or CPU numbers such as 0,2,4-7");
        let (first, last) = match part.split_once('-') {
            Some((a, b)) => (a.trim().parse::<usize>(), b.trim().parse::<usize>()),
            None => (part.trim().parse(), part.trim().parse()),
        };
        let (Ok(first), Ok(last)) = (first, last) else {
            return Err(bad());
        };
        if first > last || last >= rustix::thread::CpuSet::MAX_CPU {
            return Err(bad());
        }
        cpus.extend(first..=last);
    }
    Ok(CpuAffinity::List(cpus))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_are_found_by_name_or_number() {
        let dir = std::env::temp_dir().join(format!("cluster-passwd-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let passwd = dir.join("passwd");
        std::fs::write(
            &passwd,
            "root:x:0:0:root:/root:/bin/sh\nweb:x:33:34:web:/var/www:/usr/sbin/nologin\n",
        )
        .unwrap();
        let web = lookup_user(&passwd, "web").unwrap();
        assert_eq!(
            (web.uid, web.gid, web.home.as_deref()),
            (33, 34, Some("/var/www"))
        );
        assert_eq!(lookup_user(&passwd, "33").unwrap().name, "web");
        assert_eq!(lookup_user(&passwd, "4242").unwrap().gid, 4242);
        assert!(lookup_user(&passwd, "nobody-here").is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn cpu_lists_read_as_taskset_writes_them() {
        assert_eq!(
            parse_cpu_affinity("0,2,4-6"),
            Ok(CpuAffinity::List(vec![0, 2, 4, 5, 6]))
        );
        assert_eq!(parse_cpu_affinity("auto"), Ok(CpuAffinity::Auto));
        assert!(parse_cpu_affinity("3-1").is_err());
        assert!(parse_cpu_affinity("x").is_err());
        assert!(!CpuAffinity::Auto.cpus().is_empty());
    }
}
