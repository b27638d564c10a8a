//! Logging that can never stall supervision.
//!
//! The cluster runs on one thread. If that thread wrote its log lines itself, a log reader
//! that stops reading (a full pipe, a stuck terminal, a hung log shipper) would block it in
//! `write`: no connection handed out, no worker respawned, no signal handled. So lines go
//! through `tracing-appender`'s non-blocking writer: a bounded queue emptied by a thread of
//! its own, which drops (and counts) lines when the queue is full instead of waiting.

use std::cell::Cell;
use std::io::{IsTerminal, Write};
use std::time::Duration;

use anyhow::Context;
use cluster_watcher::LogFeed;
use tracing_appender::non_blocking::{ErrorCounter, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::fmt::writer::{MakeWriter, MakeWriterExt};
use tracing_subscriber::layer::{Context as LayerContext, Layer, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;

use crate::args::{Args, LogFormat};
use crate::logfile::LogFile;

/// Lines queued for the writer thread before new ones are dropped. Enough for any burst a
/// reader that keeps up can see (start-up, a rolling restart of many workers), few enough
/// that a reader that stopped costs a few megabytes, not the machine's memory.
const BUFFERED_LINES: usize = 8192;

/// How often the count of dropped lines is checked and, if it grew, reported.
const REPORT_EVERY: Duration = Duration::from_secs(5);

/// How long exiting waits for queued lines to be written. `WorkerGuard`'s own drop waits at
/// most 1.1 s, except that when its queue is full it `println!`s a complaint, which blocks
/// for ever on the very stdout that is not being read; so it is dropped on a thread of its
/// own, and the process exits after this long whatever that thread is doing.
const FLUSH_LIMIT: Duration = Duration::from_secs(2);

/// The installed log pipeline: keeps the writer thread alive, counts dropped lines, and
/// flushes what is queued when dropped (at exit).
#[derive(Debug)]
pub(crate) struct Logging {
    guard: Option<WorkerGuard>,
    dropped: ErrorCounter,
    /// With `--log-file`: asks it to be opened again (logrotate's create mode).
    reopen: Option<crate::logfile::Reopen>,
    /// Every line also goes here, for `cluster logs` over the control socket.
    pub(crate) feed: LogFeed,
}

/// Tees each formatted event into the [`LogFeed`] (without colours), with the slot of the
/// worker it is about.
#[derive(Debug, Clone)]
struct FeedWriter(LogFeed);

/// One event's bytes, pushed to the feed when the formatter is done with it.
struct FeedLine(LogFeed, Vec<u8>);

thread_local! {
    /// The `worker` field of the event being formatted on this thread, set by
    /// [`SlotCapture`] just before the formatter runs.
    static EVENT_SLOT: Cell<Option<u32>> = const { Cell::new(None) };
}

/// Notes each event's `worker` field (a slot number) for [`FeedLine`]: the feed keeps it as
/// data, so `cluster logs --worker N` never has to search the formatted text.
struct SlotCapture;

impl<S: tracing::Subscriber> Layer<S> for SlotCapture {
    fn on_event(&self, event: &tracing::Event<'_>, _: LayerContext<'_, S>) {
        let mut slot = SlotField(None);
        event.record(&mut slot);
        EVENT_SLOT.set(slot.0);
    }
}

/// Reads the `worker` field of an event.
struct SlotField(Option<u32>);

impl tracing::field::Visit for SlotField {
    fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
        if field.name() == "worker" {
            self.0 = u32::try_from(value).ok();
        }
    }

    fn record_i64(&mut self, field: &tracing::field::Field, value: i64) {
        if field.name() == "worker" {
            self.0 = u32::try_from(value).ok();
        }
    }

    fn record_debug(&mut self, _: &tracing::field::Field, _: &dyn std::fmt::Debug) {}
}

impl<'a> MakeWriter<'a> for FeedWriter {
    type Writer = FeedLine;

    fn make_writer(&'a self) -> FeedLine {
        FeedLine(self.0.clone(), Vec::new())
    }
}

impl Write for FeedLine {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.1.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for FeedLine {
    fn drop(&mut self) {
        let slot = EVENT_SLOT.get();
        for line in String::from_utf8_lossy(&self.1).lines() {
            self.0.push(&strip_ansi(line), slot);
        }
    }
}

/// `text` without ANSI escape sequences (a terminal's colours).
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // ESC [ ... final byte in @..~
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// Installs the global subscriber as `args` say: level, format, standard output or a file.
///
/// # Errors
/// When the log file cannot be opened.
pub(crate) fn init(args: &Args) -> anyhow::Result<Logging> {
    // The level was checked when the arguments were parsed.
    let filter = tracing_subscriber::EnvFilter::try_new(&args.log_level)
        .with_context(|| format!("invalid log level {:?}", args.log_level))?;
    let mut reopen = None;
    let (sink, ansi): (Box<dyn Write + Send>, bool) = match &args.log_file {
        Some(path) => {
            let file = LogFile::open(path, args.log_max_size, args.log_keep, args.log_compress)
                .with_context(|| format!("cannot open log file {}", path.display()))?;
            reopen = Some(file.reopen_handle());
            (Box::new(file), false)
        }
        None => (Box::new(std::io::stdout()), std::io::stdout().is_terminal()),
    };
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(BUFFERED_LINES)
        .thread_name("cluster-log")
        .finish(sink);
    let dropped = writer.error_counter();
    let feed = LogFeed::new();
    let format = tracing_subscriber::fmt::layer()
        .with_target(false)
        .with_ansi(ansi)
        .with_writer(writer.and(FeedWriter(feed.clone())));
    // The slot is captured before the formatter runs (layers nearer the registry go first).
    let subscriber = tracing_subscriber::registry()
        .with(filter)
        .with(SlotCapture);
    match args.log_format {
        LogFormat::Pretty => subscriber.with(format).init(),
        LogFormat::Json => subscriber.with(format.json()).init(),
    }
    Ok(Logging {
        guard: Some(guard),
        dropped,
        reopen,
        feed,
    })
}

impl Logging {
    /// The count of lines dropped so far, for status and metrics.
    pub(crate) fn dropped_counter(&self) -> impl Fn() -> u64 + Send + Sync + 'static {
        let counter = self.dropped.clone();
        move || counter.dropped_lines() as u64
    }

    /// Opens the log file again (after logrotate renamed it); the line saying so is the new
    /// file's first. An error when the log goes to standard output.
    pub(crate) fn reopen(&self, asked_by: &str) -> Result<(), String> {
        let Some(reopen) = &self.reopen else {
            return Err("the log goes to standard output: there is no file to reopen".into());
        };
        reopen.request();
        tracing::info!(asked_by, "log file reopened");
        Ok(())
    }

    /// A task that, every few seconds, logs one warning if lines were dropped since the last
    /// look. Run it for as long as the cluster runs.
    pub(crate) fn report_drops(&self) -> impl Future<Output = ()> + Send + 'static {
        let counter = self.dropped.clone();
        async move {
            let mut seen = 0;
            let mut ticks = tokio::time::interval(REPORT_EVERY);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let total = counter.dropped_lines();
                if total > seen {
                    // This warning may itself be dropped while nobody reads; the total keeps
                    // the count exact for whichever warning gets through.
                    tracing::warn!(
                        total,
                        "{} log lines dropped in the last {}s because the log output was not read",
                        total - seen,
                        REPORT_EVERY.as_secs()
                    );
                    seen = total;
                }
            }
        }
    }
}

impl Drop for Logging {
    fn drop(&mut self) {
        let Some(guard) = self.guard.take() else {
            return;
        };
        let (done, flushed) = std::sync::mpsc::channel();
        let flusher = std::thread::Builder::new()
            .name("cluster-log-flush".into())
            .spawn(move || {
                drop(guard);
                let _ = done.send(());
            });
        if flusher.is_ok() {
            let _ = flushed.recv_timeout(FLUSH_LIMIT);
        }
    }
}
