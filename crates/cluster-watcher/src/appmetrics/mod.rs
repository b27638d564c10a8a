//! Application metrics across workers: each worker's last exposition ([`AppMetrics::update`],
//! sent by `cluster-worker` programs with their heartbeats and once more after their last
//! request), and what the workers that are gone counted ([`AppMetrics::retire`]), rendered
//! next to the supervisor's own series ([`AppMetrics::render`]).
//!
//! Every series appears per worker (`worker="SLOT"`, the slot's newest process) and merged
//! (`worker="all"`): counters, histograms and summaries' sums and counts are the sum over
//! the live workers plus everything retired workers had counted, so a merged counter never
//! goes back at a restart, a recycling or a scale-down; gauges (and untyped series) are the
//! sum over the live workers. A family whose type differs between workers is not merged
//! (`cluster_app_metric_conflicts{family=…}` says which). A worker that crashes loses what it
//! counted since its last report (one heartbeat interval).

mod parse;
mod scrape;

pub(crate) use self::scrape::{
    MetricsPorts, SCRAPE_PATIENCE, follow_until_gone, keep_reading, scrape_all, scrape_one,
};

use std::collections::BTreeMap;
use std::fmt::Write as _;

use self::parse::{Family, Kind, Sample, parse};
use crate::WorkerId;

/// A series: its sample name and labels.
type SeriesKey = (String, Vec<(String, String)>);

/// What the retired workers of one family counted.
#[derive(Debug, Default)]
struct Retired {
    kind: Option<Kind>,
    help: String,
    sums: Vec<(SeriesKey, f64)>,
}

/// Every worker's application metrics: the merged store, and where each program given
/// listeners serves its own.
#[derive(Debug, Default)]
pub(crate) struct Collection {
    pub(crate) store: parking_lot::Mutex<AppMetrics>,
    pub(crate) ports: MetricsPorts,
    /// Workers whose last read outlasted a scrape's patience: read in the background, not
    /// waited for, until one of their reads is quick again.
    pub(crate) slow: parking_lot::Mutex<std::collections::HashSet<WorkerId>>,
}

/// The store. See the module docs.
#[derive(Debug, Default)]
pub(crate) struct AppMetrics {
    live: BTreeMap<WorkerId, Vec<Family>>,
    retired: BTreeMap<String, Retired>,
    /// Expositions that could not be read.
    pub(crate) rejected: u64,
}

impl AppMetrics {
    /// `id`'s exposition now.
    ///
    /// # Errors
    /// When it cannot be read (the worker's previous one is kept).
    pub(crate) fn update(&mut self, id: WorkerId, text: &str) -> Result<(), String> {
        match parse(text) {
            Ok(families) => {
                self.live.insert(id, families);
                Ok(())
            }
            Err(why) => {
                self.rejected += 1;
                Err(why)
            }
        }
    }

    /// `id` is gone: what it counted joins the retired workers'.
    pub(crate) fn retire(&mut self, id: WorkerId) {
        let Some(families) = self.live.remove(&id) else {
            return;
        };
        for family in families {
            if !summed_for_ever(family.kind) {
                continue;
            }
            let retired = self.retired.entry(family.name.clone()).or_default();
            if retired.kind.is_some_and(|k| k != family.kind) {
                continue;
            }
            retired.kind = Some(family.kind);
            retired.help = family.help;
            for sample in family.samples.iter().filter(|s| summable(family.kind, s)) {
                add(&mut retired.sums, key(sample), sample.value);
            }
        }
    }

    /// Whether there is nothing to show.
    pub(crate) fn is_empty(&self) -> bool {
        self.live.values().all(Vec::is_empty) && self.retired.is_empty()
    }

    /// The families in the OpenMetrics text format (without `# EOF`), and the names of those
    /// not merged because their type differs between workers.
    pub(crate) fn render(&self) -> (String, Vec<String>) {
        let mut out = String::new();
        let mut conflicts = Vec::new();
        let mut names: Vec<&String> = self
            .live
            .values()
            .flatten()
            .map(|f| &f.name)
            .chain(self.retired.keys())
            .collect();
        names.sort();
        names.dedup();
        // Creation times (prometheus_client's text format gives them families of their own)
        // mean nothing summed.
        names.retain(|name| !name.ends_with("_created"));
        for name in names {
            match self.family(name) {
                Some(text) => out.push_str(&text),
                None => conflicts.push(name.clone()),
            }
        }
        (out, conflicts)
    }

    /// One family, per worker and merged; `None` when its type differs between workers.
    fn family(&self, name: &str) -> Option<String> {
        let retired = self.retired.get(name);
        // The newest process of each slot shows per worker; every live one counts in "all".
        let mut newest: BTreeMap<u32, (WorkerId, &Family)> = BTreeMap::new();
        let mut all: Vec<&Family> = Vec::new();
        for (id, families) in &self.live {
            if let Some(family) = families.iter().find(|f| f.name == name) {
                newest.insert(id.slot, (*id, family));
                all.push(family);
            }
        }
        let kind = all
            .first()
            .map(|f| f.kind)
            .or_else(|| retired.and_then(|r| r.kind))?;
        if all.iter().any(|f| f.kind != kind)
            || retired.and_then(|r| r.kind).is_some_and(|k| k != kind)
        {
            return None;
        }
        let help = all.first().map_or_else(
            || retired.map_or("", |r| r.help.as_str()),
            |f| f.help.as_str(),
        );
        let mut text = String::new();
        let _ = writeln!(text, "# HELP {name} {}", help.replace('\n', " "));
        let _ = writeln!(text, "# TYPE {name} {}", kind.as_str());
        for (slot, (_, family)) in &newest {
            for sample in family
                .samples
                .iter()
                .filter(|s| !s.name.ends_with("_created"))
            {
                write_sample(&mut text, sample, &slot.to_string(), sample.value);
            }
        }
        let mut merged: Vec<(SeriesKey, f64)> = retired.map(|r| r.sums.clone()).unwrap_or_default();
        for family in &all {
            for sample in family.samples.iter().filter(|s| summable(kind, s)) {
                add(&mut merged, key(sample), sample.value);
            }
        }
        for ((sample_name, labels), value) in merged {
            let sample = Sample {
                name: sample_name,
                labels,
                value,
            };
            write_sample(&mut text, &sample, "all", value);
        }
        Some(text)
    }
}

/// Whether what a family counted outlives its worker.
fn summed_for_ever(kind: Kind) -> bool {
    matches!(kind, Kind::Counter | Kind::Histogram | Kind::Summary)
}

/// Whether a sample is summed into `worker="all"`: not a creation time, not a quantile.
fn summable(kind: Kind, sample: &Sample) -> bool {
    let quantile = kind == Kind::Summary && sample.labels.iter().any(|(k, _)| k == "quantile");
    !(sample.name.ends_with("_created") || quantile)
}

fn key(sample: &Sample) -> SeriesKey {
    (sample.name.clone(), sample.labels.clone())
}

/// Adds `value` to the series `key`, kept in the order series first appeared.
fn add(sums: &mut Vec<(SeriesKey, f64)>, key: SeriesKey, value: f64) {
    match sums.iter_mut().find(|(k, _)| *k == key) {
        Some((_, sum)) => *sum += value,
        None => sums.push((key, value)),
    }
}

/// A sample line with `worker` first (an application's own `worker` label becomes
/// `exported_worker`, as Prometheus does).
fn write_sample(out: &mut String, sample: &Sample, worker: &str, value: f64) {
    let _ = write!(out, "{}{{worker=\"{worker}\"", sample.name);
    for (name, label) in &sample.labels {
        let name = if name == "worker" {
            "exported_worker"
        } else {
            name
        };
        let escaped = label
            .replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n");
        let _ = write!(out, ",{name}=\"{escaped}\"");
    }
    let _ = writeln!(out, "}} {}", number(value));
}

fn number(value: f64) -> String {
    match value {
        f64::INFINITY => "+Inf".into(),
        f64::NEG_INFINITY => "-Inf".into(),
        v if v.fract() == 0.0 && v.abs() < 1e15 => format!("{v:.0}"),
        v => v.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(slot: u32, generation: u32) -> WorkerId {
        WorkerId { slot, generation }
    }

    fn counter(value: u64) -> String {
        format!(
            "# HELP requests Requests.\n# TYPE requests counter\nrequests_total{{path=\"/\"}} {value}\n# EOF\n"
        )
    }

    fn merged(metrics: &AppMetrics) -> String {
        metrics
            .render()
            .0
            .lines()
            .find(|l| l.starts_with("requests_total{worker=\"all\""))
            .unwrap_or_default()
            .to_owned()
    }

    #[test]
    fn counters_are_shown_per_worker_and_merged_and_never_go_back() {
        let mut metrics = AppMetrics::default();
        metrics.update(id(1, 1), &counter(10)).unwrap();
        metrics.update(id(2, 1), &counter(5)).unwrap();
        let (text, conflicts) = metrics.render();
        assert!(conflicts.is_empty());
        assert!(text.contains("# TYPE requests counter\n"), "{text}");
        assert!(
            text.contains("requests_total{worker=\"1\",path=\"/\"} 10\n"),
            "{text}"
        );
        assert!(
            text.contains("requests_total{worker=\"2\",path=\"/\"} 5\n"),
            "{text}"
        );
        assert_eq!(
            merged(&metrics),
            "requests_total{worker=\"all\",path=\"/\"} 15"
        );
        // Slot 1 is replaced: its successor starts from 0, the merged count does not.
        metrics.update(id(1, 1), &counter(12)).unwrap();
        metrics.retire(id(1, 1));
        metrics.update(id(1, 2), &counter(0)).unwrap();
        assert_eq!(
            merged(&metrics),
            "requests_total{worker=\"all\",path=\"/\"} 17"
        );
        metrics.update(id(1, 2), &counter(3)).unwrap();
        assert_eq!(
            merged(&metrics),
            "requests_total{worker=\"all\",path=\"/\"} 20"
        );
        // Scaled down to nothing: still there.
        metrics.retire(id(1, 2));
        metrics.retire(id(2, 1));
        assert_eq!(
            merged(&metrics),
            "requests_total{worker=\"all\",path=\"/\"} 20"
        );
    }

    #[test]
    fn gauges_sum_the_live_workers_and_types_that_disagree_are_not_merged() {
        let mut metrics = AppMetrics::default();
        metrics
            .update(
                id(1, 1),
                "# TYPE busy gauge\nbusy 2\n# TYPE x counter\nx_total 1\n",
            )
            .unwrap();
        metrics
            .update(id(2, 1), "# TYPE busy gauge\nbusy 3\n# TYPE x gauge\nx 4\n")
            .unwrap();
        let (text, conflicts) = metrics.render();
        assert!(text.contains("busy{worker=\"all\"} 5\n"), "{text}");
        assert_eq!(conflicts, ["x"]);
        assert!(!text.contains("# TYPE x "), "{text}");
        metrics.retire(id(1, 1));
        assert!(metrics.render().0.contains("busy{worker=\"all\"} 3\n"));
        assert!(metrics.update(id(3, 1), "bad{ 1\n").is_err());
        assert_eq!(metrics.rejected, 1);
    }

    #[test]
    fn histograms_merge_bucket_by_bucket() {
        let mut metrics = AppMetrics::default();
        let histogram = "# TYPE t histogram\nt_bucket{le=\"1\"} 1\nt_bucket{le=\"+Inf\"} 2\nt_sum 1.5\nt_count 2\n";
        metrics.update(id(1, 1), histogram).unwrap();
        metrics.update(id(2, 1), histogram).unwrap();
        metrics.retire(id(2, 1));
        let text = metrics.render().0;
        assert!(
            text.contains("t_bucket{worker=\"all\",le=\"+Inf\"} 4\n"),
            "{text}"
        );
        assert!(text.contains("t_sum{worker=\"all\"} 3\n"), "{text}");
        assert!(text.contains("t_count{worker=\"all\"} 4\n"), "{text}");
    }
}
