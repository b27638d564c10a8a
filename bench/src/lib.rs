//! Shared helpers for the benchmarks: repeated, interleaved measurements reduced to medians,
//! printed as a table with ratios against a reference measured in the same run.
//!
//! Absolute figures on a shared machine swing twofold, so every target is a ratio between
//! configurations that were measured alternately, round after round.

use std::time::{Duration, Instant};

/// Rates (operations per second) of one configuration, one per round.
#[derive(Debug, Clone, Default)]
pub struct Samples {
    /// The configuration's name, as printed.
    pub name: String,
    /// One rate per round.
    pub rates: Vec<f64>,
}

impl Samples {
    /// The median rate.
    pub fn median(&self) -> f64 {
        let mut sorted = self.rates.clone();
        sorted.sort_by(f64::total_cmp);
        match sorted.len() {
            0 => f64::NAN,
            n if n % 2 == 1 => sorted[n / 2],
            n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
        }
    }

    /// The lowest and highest rate.
    pub fn range(&self) -> (f64, f64) {
        let min = self.rates.iter().copied().fold(f64::INFINITY, f64::min);
        let max = self.rates.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        (min, max)
    }
}

/// Runs every configuration once per round, `rounds` times, interleaved, and returns the rates.
/// Each closure performs `ops` operations and the rate is `ops / elapsed`.
pub fn interleaved(
    rounds: usize,
    ops: u64,
    configs: &mut [(&str, &mut dyn FnMut())],
) -> Vec<Samples> {
    let mut samples: Vec<Samples> = configs
        .iter()
        .map(|(name, _)| Samples {
            name: (*name).to_owned(),
            rates: vec![],
        })
        .collect();
    for _ in 0..rounds {
        for ((_, run), s) in configs.iter_mut().zip(&mut samples) {
            let started = Instant::now();
            run();
            s.rates.push(ops as f64 / started.elapsed().as_secs_f64());
        }
    }
    samples
}

/// Times one call.
pub fn time(f: impl FnOnce()) -> Duration {
    let started = Instant::now();
    f();
    started.elapsed()
}

/// Prints a table of medians and min–max ranges.
pub fn print_table(title: &str, unit: &str, samples: &[Samples]) {
    println!("\n## {title}\n");
    println!("| configuration | median {unit} | min–max |");
    println!("|---|---:|---:|");
    for s in samples {
        let (min, max) = s.range();
        println!("| {} | {:.0} | {:.0}–{:.0} |", s.name, s.median(), min, max);
    }
}

/// Prints one target line: `ratio = a / b`, the bound and whether it holds.
pub fn print_ratio(label: &str, ratio: f64, bound: &str, holds: bool) {
    let verdict = if holds { "met" } else { "MISSED" };
    println!("- {label}: {ratio:.2}x (target {bound}): {verdict}");
}
