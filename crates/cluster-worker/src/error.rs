/// Why a worker-side call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WorkerError {
    /// The call needs a cluster, and this program runs standalone.
    #[error("not running as a cluster worker")]
    NotAWorker,
    /// The watcher's socket for this purpose is missing (never inherited, or already taken).
    #[error("the watcher's {0} socket is not available")]
    MissingSocket(&'static str),
    /// Talking to the watcher failed.
    #[error("channel to the watcher failed")]
    Channel(#[from] cluster_ipc::ChannelError),
    /// Getting a listening socket failed.
    #[error("cannot listen")]
    Listen(#[from] cluster_ipc::ServerSocketError),
    /// The watcher's environment breaks the bootstrap contract (a variable missing or
    /// invalid): the worker refuses to guess.
    #[error("invalid worker environment: {0}")]
    Bootstrap(#[from] cluster_ipc::protocol::BootstrapError),
    /// A socket could not be set up.
    #[error("socket setup failed")]
    Io(#[from] std::io::Error),
}
