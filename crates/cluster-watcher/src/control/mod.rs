//! What the world asks of a running watcher: the control socket (`server.rs`, the protocol
//! of `cluster_ipc::control`), the metrics and health endpoint (`metrics.rs`), the log feed
//! `cluster logs` reads (`logfeed.rs`), and `Remote`, through which all of them, and the
//! [`ClusterWatcher`](crate::ClusterWatcher) handle, ask the driver.

mod exposition;
mod logfeed;
mod metrics;
mod remote;
mod server;

pub use self::exposition::exposition;
pub use self::logfeed::{FeedLine, LogFeed};
pub use self::metrics::{MetricsServer, Readiness};
pub use self::server::{ControlServer, ProgramRequest, Reply, default_control_path};

pub(crate) use self::metrics::serve as serve_metrics;
pub(crate) use self::remote::{Remote, error};
pub(crate) use self::server::serve;
