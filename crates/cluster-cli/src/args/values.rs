//! The parsers of the command line's values: durations, sizes, signals, listeners, log
//! filters.

use std::time::Duration;

/// The longest duration any option takes: a day. Far beyond any sensible timeout, and it keeps
/// every deadline the watcher computes from it clear of overflow.
pub(super) const MAX_DURATION: Duration = Duration::from_secs(86_400);

/// Parses a duration: plain seconds (`10`, `0.5`, as `-t` always took) or a number with a
/// unit, `ms`, `s`, `m` or `h` (`500ms`, `10s`, `2m`, `1.5h`).
///
/// Hand-written rather than a crate: it is a dozen lines, and it must keep accepting the bare
/// seconds that `humantime` and friends reject.
pub(super) fn parse_duration(text: &str) -> Result<Duration, String> {
    let invalid = || {
        format!(
            "{text:?} is not a duration: use seconds (10, 0.5) or a number with ms, s, m or h \
             (500ms, 2m), at most a day"
        )
    };
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(split);
    let scale = match unit.trim_start() {
        "" | "s" => 1.0,
        "ms" => 0.001,
        "m" => 60.0,
        "h" => 3600.0,
        _ => return Err(invalid()),
    };
    // Digits with at most one point and at least one digit: `f64::from_str` alone would also
    // take `inf`, `1e3` and `-0`.
    if number.matches('.').count() > 1 || !number.contains(|c: char| c.is_ascii_digit()) {
        return Err(invalid());
    }
    let seconds = number.parse::<f64>().map_err(|_| invalid())? * scale;
    match Duration::try_from_secs_f64(seconds) {
        Ok(duration) if duration <= MAX_DURATION => Ok(duration),
        _ => Err(invalid()),
    }
}

/// `--env NAME=VALUE`: a name (not empty, no `=`, no NUL) and
/// its value.
pub(super) fn parse_env_entry(text: &str) -> Result<(String, String), String> {
    let (name, value) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?} is not NAME=VALUE"))?;
    if name.is_empty() || name.contains('\0') || value.contains('\0') {
        return Err(format!(
            "{text:?}: a name must not be empty, nor contain NUL"
        ));
    }
    Ok((name.to_owned(), value.to_owned()))
}

/// `512M`, `2G`, `64k`, `1048576`: bytes (powers of 1024).
pub(super) fn parse_size(text: &str) -> Result<u64, String> {
    let bad = || format!("{text:?} is not a size (bytes, or a number with k, M or G)");
    let (number, factor) = match text.char_indices().last() {
        Some((i, 'k' | 'K')) => (&text[..i], 1u64 << 10),
        Some((i, 'm' | 'M')) => (&text[..i], 1 << 20),
        Some((i, 'g' | 'G')) => (&text[..i], 1 << 30),
        _ => (text, 1),
    };
    let number: u64 = number.trim().parse().map_err(|_| bad())?;
    number
        .checked_mul(factor)
        .filter(|bytes| *bytes >= 1 << 20)
        .ok_or_else(|| format!("{text:?}: at least 1M"))
}

/// `--ready-after`: a duration, or `off`.
#[derive(Debug, Clone, Copy)]
pub(super) struct ReadyAfter(pub(super) Option<Duration>);

pub(super) fn parse_ready_after(text: &str) -> Result<ReadyAfter, String> {
    match text {
        "off" | "none" => Ok(ReadyAfter(None)),
        _ => parse_duration(text).map(|d| ReadyAfter(Some(d))),
    }
}

/// `TERM`, `SIGTERM`, `sigint`, `15`, …: the signals a server may be stopped with.
pub(super) fn parse_signal(text: &str) -> Result<i32, String> {
    use rustix::process::Signal;
    if let Ok(number) = text.parse::<i32>() {
        return Signal::from_named_raw(number)
            .map(Signal::as_raw)
            .ok_or_else(|| format!("{number} is not a signal number"));
    }
    let name = text.to_ascii_uppercase();
    let name = name.strip_prefix("SIG").unwrap_or(&name);
    let signal = match name {
        "TERM" => Signal::TERM,
        "INT" => Signal::INT,
        "QUIT" => Signal::QUIT,
        "HUP" => Signal::HUP,
        "USR1" => Signal::USR1,
        "USR2" => Signal::USR2,
        "WINCH" => Signal::WINCH,
        "KILL" => Signal::KILL,
        _ => {
            return Err(format!(
                "{text:?} is not a signal name (TERM, INT, QUIT, HUP, USR1, USR2, WINCH, KILL) or number"
            ));
        }
    };
    Ok(signal.as_raw())
}

/// `[NAME=]ADDR[,mode=OCTAL]`.
pub(super) fn parse_listen(text: &str) -> Result<cluster_watcher::InheritedListener, String> {
    let (name, rest) = match text.split_once('=') {
        // A name has no ':' or '/', unlike every address.
        Some((name, rest)) if !name.is_empty() && !name.contains([':', '/', ',']) => {
            (name.to_owned(), rest)
        }
        _ => ("listener".to_owned(), text),
    };
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    {
        return Err(format!("{name:?} is not a name (letters, digits, _ - .)"));
    }
    let (address, mode) = match rest.rsplit_once(",mode=") {
        Some((address, mode)) => {
            let mode = u32::from_str_radix(mode, 8)
                .ok()
                .filter(|m| *m <= 0o777)
                .ok_or_else(|| format!("{mode:?} is not an octal file mode"))?;
            (address, Some(mode))
        }
        None => (rest, None),
    };
    let address: cluster_ipc::ListenAddress = address.parse().map_err(|e| format!("{e}"))?;
    if mode.is_some() && !matches!(address, cluster_ipc::ListenAddress::Unix(_)) {
        return Err("a mode is for unix: addresses only".into());
    }
    Ok(cluster_watcher::InheritedListener {
        name,
        address,
        mode,
    })
}

/// Checks a `--log-level` at parse time, so a bad filter is a bad argument (status 2).
pub(super) fn parse_log_filter(text: &str) -> Result<String, String> {
    tracing_subscriber::EnvFilter::try_new(text)
        .map(|_| text.to_owned())
        .map_err(|e| format!("{text:?} is not a log level or tracing filter: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_plain_seconds_and_units() {
        let ok = |text: &str, expected: Duration| {
            assert_eq!(parse_duration(text), Ok(expected), "{text}");
        };
        ok("10", Duration::from_secs(10));
        ok("0.5", Duration::from_millis(500));
        ok(".25", Duration::from_millis(250));
        ok("0", Duration::ZERO);
        ok("500ms", Duration::from_millis(500));
        ok("10s", Duration::from_secs(10));
        ok("2m", Duration::from_secs(120));
        ok("1.5h", Duration::from_secs(5400));
        ok(" 3 s ", Duration::from_secs(3));
        ok("86400", MAX_DURATION);
        for bad in [
            "", "soon", "s", "-1", "1e3", "inf", "NaN", "1.2.3", "10 sec", "5d", "86401", "25h",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} accepted");
        }
    }
}

/// `--balance`: a mode, or `hash=KEY` (`hash` alone hashes the client's address).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BalanceChoice {
    pub(crate) mode: cluster_watcher::Balance,
    pub(crate) key: Option<cluster_watcher::HashKey>,
}

impl std::fmt::Display for BalanceChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.key {
            Some(key) => write!(f, "hash={key}"),
            None => f.write_str(self.mode.as_str()),
        }
    }
}

/// Parses `--balance`, and lists its values (with their help) for `--help`, the man page and
/// the completions.
#[derive(Debug, Clone, Copy)]
pub(super) struct BalanceParser;

impl clap::builder::TypedValueParser for BalanceParser {
    type Value = BalanceChoice;

    fn parse_ref(
        &self,
        command: &clap::Command,
        argument: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<BalanceChoice, clap::Error> {
        use cluster_watcher::{Balance, HashKey};
        let text = value.to_string_lossy();
        let choice = match text.split_once('=') {
            Some(("hash", key)) => key
                .parse::<HashKey>()
                .map(|key| BalanceChoice {
                    mode: Balance::Hash,
                    key: Some(key),
                })
                .map_err(|e| e.to_string()),
            _ => Balance::parse(&text)
                .map(|mode| BalanceChoice {
                    mode,
                    key: (mode == Balance::Hash).then_some(HashKey::Ip),
                })
                .ok_or_else(|| format!("use {}", modes_listed())),
        };
        choice.map_err(|why| {
            let name = argument.map_or_else(|| "--balance".to_owned(), ToString::to_string);
            clap::Error::raw(
                clap::error::ErrorKind::InvalidValue,
                format!("invalid value '{text}' for '{name}': {why}\n"),
            )
            .with_cmd(command)
        })
    }

    fn possible_values(
        &self,
    ) -> Option<Box<dyn Iterator<Item = clap::builder::PossibleValue> + '_>> {
        use clap::ValueEnum;
        use clap::builder::PossibleValue;
        let modes = cluster_watcher::Balance::ALL
            .into_iter()
            .filter(|mode| *mode != cluster_watcher::Balance::Hash)
            .filter_map(|mode| mode.to_possible_value());
        let keyed = [
            ("hash=ip", "Every connection from one client address to the same worker slot (sticky sessions; also for programs given listeners, steered by the kernel)"),
            ("hash=header:NAME", "Every request with the same value of header NAME to the same slot (the watcher reads the request head; cluster-worker programs)"),
            ("hash=cookie:NAME", "Every request with the same cookie NAME to the same slot (cluster-worker programs)"),
            ("hash=query:NAME", "Every request with the same query parameter NAME to the same slot (cluster-worker programs)"),
        ]
        .map(|(name, help)| PossibleValue::new(name).help(help));
        Some(Box::new(modes.chain(keyed)))
    }
}

/// Every mode the command line takes, from `Balance::ALL`, the hash forms spelled out.
fn modes_listed() -> String {
    use cluster_watcher::Balance;
    let modes: Vec<String> = Balance::ALL
        .iter()
        .map(|mode| match mode {
            Balance::Hash => "hash=ip|header:NAME|cookie:NAME|query:NAME".to_owned(),
            other => other.as_str().to_owned(),
        })
        .collect();
    match modes.split_last() {
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
        None => String::new(),
    }
}
