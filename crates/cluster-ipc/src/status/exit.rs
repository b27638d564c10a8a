//! Who a worker is, and how it ended.

use std::fmt;
use std::process::ExitStatus;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A worker process: its slot (stable across restarts), generation and pid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct WorkerId {
    /// Slot number, from 1.
    pub slot: u32,
    /// Start count of the slot, from 1.
    pub generation: u32,
}

impl fmt::Display for WorkerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.slot)
    }
}

/// How a worker process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitKind {
    /// It exited with this status code.
    Code(i32),
    /// A signal ended it.
    Signal(i32),
}

impl From<ExitStatus> for ExitKind {
    fn from(status: ExitStatus) -> Self {
        use std::os::unix::process::ExitStatusExt;
        match (status.code(), status.signal()) {
            (Some(code), _) => Self::Code(code),
            (None, Some(signal)) => Self::Signal(signal),
            (None, None) => Self::Code(-1),
        }
    }
}

impl fmt::Display for ExitKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Code(code) => write!(f, "exit status {code}"),
            Self::Signal(9) => f.write_str("signal 9 (SIGKILL)"),
            Self::Signal(15) => f.write_str("signal 15 (SIGTERM)"),
            Self::Signal(signal) => write!(f, "signal {signal}"),
        }
    }
}

impl std::str::FromStr for ExitKind {
    type Err = String;

    /// Reads back what [`Display`](fmt::Display) wrote.
    fn from_str(text: &str) -> Result<Self, String> {
        let number = |rest: &str| {
            rest.split_whitespace()
                .next()
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| format!("{text:?} is not an exit status"))
        };
        match (
            text.strip_prefix("exit status "),
            text.strip_prefix("signal "),
        ) {
            (Some(rest), _) => number(rest).map(Self::Code),
            (_, Some(rest)) => number(rest).map(Self::Signal),
            _ => Err(format!("{text:?} is not an exit status")),
        }
    }
}

impl Serialize for ExitKind {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ExitKind {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Why the watcher killed a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum KillReason {
    /// No heartbeat within the heartbeat timeout: its runtime is blocked or it hangs.
    HeartbeatTimeout,
    /// It did not report ready within the ready timeout.
    ReadyTimeout,
    /// It did not finish within the shutdown timeout after being asked to stop (or after it
    /// closed its control socket).
    ShutdownTimeout,
    /// It broke the protocol on its control socket.
    BadTraffic,
    /// Its memory went past the hard ceiling (1.5 times `max_memory`) faster than it could
    /// be recycled.
    MemoryCeiling,
}

impl fmt::Display for KillReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::HeartbeatTimeout => "heartbeat timeout",
            Self::ReadyTimeout => "ready timeout",
            Self::ShutdownTimeout => "shutdown timeout",
            Self::BadTraffic => "bad control traffic",
            Self::MemoryCeiling => "memory past the hard ceiling",
        })
    }
}

/// Why a worker was stopped, if the watcher asked it to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum StopCause {
    /// The cluster is stopping.
    Stop,
    /// A newer generation replaced it (rolling restart).
    Replaced,
    /// The cluster was scaled down.
    ScaledDown,
    /// The worker asked for it (`cluster_worker::shutdown`).
    Requested,
    /// It was replaced for its age or memory (recycling).
    Recycled,
}

impl fmt::Display for StopCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Stop => "stop",
            Self::Replaced => "replaced",
            Self::ScaledDown => "scaled down",
            Self::Requested => "requested",
            Self::Recycled => "recycled",
        })
    }
}

/// How one worker ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerExit {
    /// Which worker.
    #[serde(flatten)]
    pub id: WorkerId,
    /// Its pid.
    pub pid: u32,
    /// How the process ended.
    pub status: ExitKind,
    /// Why the watcher stopped it, if it did; `None` means it exited on its own (a crash).
    pub stopped: Option<StopCause>,
    /// Why the watcher killed it, if it did.
    pub killed: Option<KillReason>,
}

impl WorkerExit {
    /// Why it ended, in a word or three: the kill reason, else the stop cause, else "crash".
    pub fn why(&self) -> String {
        match (self.killed, self.stopped) {
            (Some(reason), _) => reason.to_string(),
            (None, Some(cause)) => cause.to_string(),
            (None, None) => "crash".to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_statuses_read_back_what_they_print() {
        for kind in [
            ExitKind::Code(0),
            ExitKind::Code(-1),
            ExitKind::Signal(9),
            ExitKind::Signal(15),
            ExitKind::Signal(6),
        ] {
            assert_eq!(kind.to_string().parse::<ExitKind>(), Ok(kind));
        }
        assert!("soon".parse::<ExitKind>().is_err());
    }
}
