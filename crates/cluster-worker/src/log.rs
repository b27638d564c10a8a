//! Forwarding `tracing` events to the watcher.

use std::fmt::Write as _;
use std::sync::{Arc, Mutex, OnceLock};

use cluster_ipc::protocol::LogRecord;
use fdpass::FdSocket;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::env::{Endpoint, worker_env};

/// A `tracing` layer that sends every event (level, target, message, fields) to the watcher,
/// which re-emits it through its own subscriber tagged with this worker's id and pid.
///
/// Sending is synchronous on a socket of its own: an event logged just before the process
/// exits has already left when `exit` runs, and log traffic never waits behind control
/// messages.
#[derive(Debug, Clone)]
pub struct ForwardingLayer {
    socket: Arc<Mutex<FdSocket>>,
}

/// The log socket, adopted once and shared by every layer made.
static LOG_SOCKET: OnceLock<Option<Arc<Mutex<FdSocket>>>> = OnceLock::new();

/// Records are cut to this many bytes of message before they are sent (the watcher skips
/// larger records).
const MAX_MESSAGE: usize = 64 * 1024;

impl ForwardingLayer {
    /// The layer, when running as a worker; `None` standalone. Can be called any number of
    /// times: every layer sends on the same socket.
    pub fn new() -> Option<Self> {
        let socket = LOG_SOCKET.get_or_init(|| {
            let fd = worker_env()?.take(Endpoint::Log)?;
            Some(Arc::new(Mutex::new(FdSocket::from_fd(fd).ok()?)))
        });
        Some(Self {
            socket: socket.clone()?,
        })
    }
}

#[derive(Default)]
struct Fields {
    message: String,
    others: Vec<(String, String)>,
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            self.others
                .push((field.name().to_owned(), format!("{value:?}")));
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            self.others
                .push((field.name().to_owned(), value.to_owned()));
        }
    }
}

pub(crate) fn level_number(level: &Level) -> u8 {
    match *level {
        Level::TRACE => 0,
        Level::DEBUG => 1,
        Level::INFO => 2,
        Level::WARN => 3,
        Level::ERROR => 4,
    }
}

impl<S: Subscriber> Layer<S> for ForwardingLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let mut message = fields.message;
        if message.len() > MAX_MESSAGE {
            let mut cut = MAX_MESSAGE;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
            message.push_str("… (cut)");
        }
        let record = LogRecord {
            level: level_number(event.metadata().level()),
            target: event.metadata().target().to_owned(),
            message,
            fields: fields.others,
        };
        // A watcher that is gone cannot be told; the event is dropped, not retried.
        if let (Ok(bytes), Ok(socket)) = (postcard::to_stdvec(&record), self.socket.lock()) {
            let _ = socket.send(&bytes, &[]);
        }
    }
}

/// Sets up `tracing` for a program that may run in a cluster: in a cluster, events go to the
/// watcher through [`ForwardingLayer`]; standalone, to a console formatter on stderr. The
/// level comes from `RUST_LOG` (default `info`). Panics are logged as errors first, so the
/// watcher shows the panic message next to the exit status.
///
/// Does nothing if a global subscriber is already set.
pub fn init_tracing() {
    let filter = || EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let installed = match ForwardingLayer::new() {
        Some(layer) => tracing_subscriber::registry()
            .with(layer.with_filter(filter()))
            .try_init(),
        None => tracing_subscriber::fmt()
            .with_env_filter(filter())
            .with_writer(std::io::stderr)
            .finish()
            .try_init(),
    };
    if installed.is_ok() {
        let default_hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            tracing::error!(target: "panic", "{info}");
            default_hook(info);
        }));
    }
}
