//! The terminal view of `cluster top`: a table redrawn every refresh and at every resize,
//! and the keys.

use std::path::Path;
use std::time::{Duration, Instant};

use cluster_ipc::control::{Request, ScaleTo};
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, Paragraph, Row as TableRow, Table};

use super::{Frame, Rates, send_in_background, status};

const KEYS: &str = "q quit   r rolling restart   + add a worker   - remove a worker";

/// Runs the view until `q`, Esc or Ctrl-C; the terminal is restored whatever happens.
pub(super) fn run(path: &Path, every: Duration) -> anyhow::Result<()> {
    let mut terminal = ratatui::try_init()?;
    let result = event_loop(&mut terminal, path, every);
    ratatui::restore();
    result
}

fn event_loop(
    terminal: &mut ratatui::DefaultTerminal,
    path: &Path,
    every: Duration,
) -> anyhow::Result<()> {
    let mut rates = Rates::default();
    let mut frame = rates.frame(&status(path)?, Instant::now());
    let mut message = String::new();
    let mut next = Instant::now() + every;
    loop {
        terminal.draw(|f| draw(f, &frame, &message))?;
        let wait = next.saturating_duration_since(Instant::now());
        if event::poll(wait)? {
            match event::read()? {
                Event::Key(key) if key.kind == KeyEventKind::Press => {
                    let ctrl_c = key.code == KeyCode::Char('c')
                        && key.modifiers.contains(KeyModifiers::CONTROL);
                    match key.code {
                        KeyCode::Char('q') | KeyCode::Esc => return Ok(()),
                        _ if ctrl_c => return Ok(()),
                        KeyCode::Char('r') => {
                            send_in_background(path, Request::Restart);
                            message = "rolling restart asked".into();
                        }
                        KeyCode::Char('+') => {
                            send_in_background(path, scale(1));
                            message = "one more worker asked".into();
                        }
                        KeyCode::Char('-') => {
                            send_in_background(path, scale(-1));
                            message = "one fewer worker asked".into();
                        }
                        _ => {}
                    }
                }
                // Redrawn at the top of the loop at the new size.
                Event::Resize(..) => {}
                _ => {}
            }
            continue;
        }
        next = Instant::now() + every;
        match status(path) {
            Ok(status) => frame = rates.frame(&status, Instant::now()),
            Err(e) => message = format!("no answer: {e:#}"),
        }
    }
}

fn scale(delta: i64) -> Request {
    Request::Scale {
        to: ScaleTo::Delta(delta),
    }
}

fn draw(f: &mut ratatui::Frame<'_>, frame: &Frame, message: &str) {
    let [title, table, footer] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(3),
        Constraint::Length(1),
    ])
    .areas(f.area());
    f.render_widget(
        Paragraph::new(format!(
            "cluster {}: {} of {} workers ready",
            frame.name, frame.ready, frame.wanted
        )),
        title,
    );
    let header = TableRow::new([
        "slot",
        "gen",
        "pid",
        "state",
        "req/s",
        "conn/s",
        "open",
        "cpu %",
        "rss",
        "restarts",
        "last exit",
    ])
    .style(Style::default().add_modifier(Modifier::BOLD));
    let rows = frame.rows.iter().map(|row| {
        let style = match row.current {
            true => Style::default(),
            false => Style::default().add_modifier(Modifier::DIM),
        };
        TableRow::new([
            row.slot.to_string(),
            row.generation.to_string(),
            row.pid.to_string(),
            row.state.to_owned(),
            number(row.requests_per_second, 0),
            number(row.accepted_per_second, 0),
            row.open_connections
                .map_or_else(|| "-".into(), |n| n.to_string()),
            number(row.cpu_percent, 1),
            row.rss_bytes.map_or_else(
                || "-".into(),
                |b| format!("{:.1} MiB", b as f64 / 1048576.0),
            ),
            row.restarts.to_string(),
            row.last_exit.clone().unwrap_or_else(|| "-".into()),
        ])
        .style(style)
    });
    let widths = [
        Constraint::Length(5),
        Constraint::Length(4),
        Constraint::Length(8),
        Constraint::Length(9),
        Constraint::Length(8),
        Constraint::Length(8),
        Constraint::Length(6),
        Constraint::Length(7),
        Constraint::Length(11),
        Constraint::Length(9),
        Constraint::Min(10),
    ];
    f.render_widget(
        Table::new(rows, widths)
            .header(header)
            .block(Block::bordered()),
        table,
    );
    let footer_text = match message.is_empty() {
        true => KEYS.to_owned(),
        false => format!("{KEYS}   ({message})"),
    };
    f.render_widget(Paragraph::new(Line::from(footer_text)), footer);
}

fn number(value: Option<f64>, decimals: usize) -> String {
    value.map_or_else(|| "-".into(), |v| format!("{v:.decimals$}"))
}
