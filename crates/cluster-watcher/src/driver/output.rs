//! Workers' standard output and error, re-emitted line by line in the watcher's log stream,
//! tagged with the worker's slot, pid and the stream: one log stream for every worker,
//! whether it links `cluster-worker` or not.
//!
//! Lines are cut at [`MAX_LINE`](crate::logs::MAX_LINE) bytes (the rest of the line is
//! skipped and counted) and sanitized (no forged lines), so a worker that floods its output
//! holds at most one line's worth of the watcher's memory.

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

use crate::WorkerId;
use crate::sanitize::{MAX_LINE, sanitize};

/// Reads `stream` until its end, emitting each line.
pub(crate) async fn forward_output(
    stream: impl AsyncRead + Unpin,
    id: WorkerId,
    pid: u32,
    name: &'static str,
) {
    read_lines(stream, |text| {
        tracing::info!(target: "worker", worker = id.slot, pid, stream = name, "{text}");
    })
    .await;
}

/// Reads `stream` until its end and calls `on_line` with each line, sanitized (no line
/// breaks or control characters: nothing it prints can forge a log line) and cut at
/// 16 KiB, the cut marked with how many bytes were left out. Holds at most one
/// line's worth of memory, however the writer floods: for the output of child processes
/// (a build command, say) in a log stream.
pub async fn read_lines(stream: impl AsyncRead + Unpin, mut on_line: impl FnMut(&str)) {
    let mut reader = BufReader::with_capacity(16 * 1024, stream);
    let mut line: Vec<u8> = Vec::new();
    // Bytes of the current line past MAX_LINE, skipped.
    let mut skipped = 0usize;
    loop {
        let buf = match reader.fill_buf().await {
            Ok([]) | Err(_) => break,
            Ok(buf) => buf,
        };
        let (chunk, end_of_line) = match buf.iter().position(|b| *b == b'\n') {
            Some(newline) => (&buf[..newline], true),
            None => (buf, false),
        };
        let room = MAX_LINE.saturating_sub(line.len());
        let kept = chunk.len().min(room);
        line.extend_from_slice(&chunk[..kept]);
        skipped += chunk.len() - kept;
        let consumed = chunk.len() + usize::from(end_of_line);
        reader.consume(consumed);
        if end_of_line {
            on_line(&text_of(&line, skipped));
            line.clear();
            skipped = 0;
        }
    }
    if !line.is_empty() || skipped > 0 {
        on_line(&text_of(&line, skipped));
    }
}

fn text_of(line: &[u8], skipped: usize) -> String {
    let text = String::from_utf8_lossy(line);
    let text = sanitize(text.trim_end_matches('\r'), MAX_LINE);
    if skipped > 0 {
        format!("{text}… ({skipped} more bytes)")
    } else {
        text.into_owned()
    }
}
