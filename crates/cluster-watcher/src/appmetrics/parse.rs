//! The Prometheus text format and OpenMetrics, read into families and samples: enough of
//! both to merge what workers expose (`# HELP`, `# TYPE`, samples with labels, `# EOF`);
//! timestamps, exemplars and `# UNIT` are dropped. A line that cannot be read is an error
//! naming it: the worker's exposition is then ignored as a whole, never half-merged.

/// What kind of metric a family is, as `# TYPE` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Counter,
    Gauge,
    Histogram,
    Summary,
    /// No `# TYPE`, or one we do not merge (`info`, `stateset`, `gaugehistogram`).
    Untyped,
}

impl Kind {
    fn of(text: &str) -> Self {
        match text {
            "counter" => Self::Counter,
            "gauge" => Self::Gauge,
            "histogram" => Self::Histogram,
            "summary" => Self::Summary,
            _ => Self::Untyped,
        }
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Counter => "counter",
            Self::Gauge => "gauge",
            Self::Histogram => "histogram",
            Self::Summary => "summary",
            Self::Untyped => "unknown",
        }
    }
}

/// One sample: its full name (`requests_total`, `latency_bucket`), labels, value.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Sample {
    pub(crate) name: String,
    pub(crate) labels: Vec<(String, String)>,
    pub(crate) value: f64,
}

/// A family: its name (as OpenMetrics names it: a counter without `_total`), kind, help.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Family {
    pub(crate) name: String,
    pub(crate) kind: Kind,
    pub(crate) help: String,
    pub(crate) samples: Vec<Sample>,
}

/// Reads an exposition.
///
/// # Errors
/// The first line that is not a comment, a sample or empty, with why.
pub(crate) fn parse(text: &str) -> Result<Vec<Family>, String> {
    let mut families: Vec<Family> = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim_end();
        if line.is_empty() || line == "# EOF" {
            continue;
        }
        let bad = |why: &str| format!("line {}: {why}: {line:.80}", number + 1);
        if let Some(comment) = line.strip_prefix('#') {
            let mut words = comment.trim_start().splitn(3, ' ');
            match (words.next(), words.next(), words.next()) {
                (Some("TYPE"), Some(name), Some(kind)) => {
                    let kind = Kind::of(kind.trim());
                    let family = family_of(&mut families, &counter_family(name, kind));
                    family.kind = kind;
                }
                (Some("HELP"), Some(name), help) => {
                    let name = name.strip_suffix("_total").unwrap_or(name);
                    // HELP may come before TYPE: keyed on the name as written.
                    let existing = families.iter_mut().rev().find(|f| f.name == name);
                    let family = match existing {
                        Some(family) => family,
                        None => family_of(&mut families, name),
                    };
                    family.help = help.unwrap_or_default().to_owned();
                }
                _ => {}
            }
            continue;
        }
        let sample = sample(line).map_err(|why| bad(&why))?;
        let belongs = families
            .last()
            .is_some_and(|f| sample_of(&f.name, f.kind, &sample.name));
        if !belongs {
            family_of(&mut families, &sample.name);
        }
        if let Some(family) = families.last_mut() {
            family.samples.push(sample);
        }
    }
    Ok(families)
}

/// A counter's family name without `_total` (the Prometheus text format keeps it).
fn counter_family(name: &str, kind: Kind) -> String {
    match kind {
        Kind::Counter => name.strip_suffix("_total").unwrap_or(name).to_owned(),
        _ => name.to_owned(),
    }
}

/// The family named `name`, made (untyped) at the end if the last one is not it.
fn family_of<'a>(families: &'a mut Vec<Family>, name: &str) -> &'a mut Family {
    if families.last().is_none_or(|f| f.name != name) {
        families.push(Family {
            name: name.to_owned(),
            kind: Kind::Untyped,
            help: String::new(),
            samples: Vec::new(),
        });
    }
    families.last_mut().expect("pushed above")
}

/// Whether a sample named `sample` belongs to the family `family` of `kind`.
fn sample_of(family: &str, kind: Kind, sample: &str) -> bool {
    let Some(suffix) = sample.strip_prefix(family) else {
        return false;
    };
    match kind {
        Kind::Counter => matches!(suffix, "" | "_total" | "_created"),
        Kind::Histogram => matches!(suffix, "_bucket" | "_sum" | "_count" | "_created"),
        Kind::Summary => matches!(suffix, "" | "_sum" | "_count" | "_created"),
        Kind::Gauge | Kind::Untyped => suffix.is_empty(),
    }
}

/// A sample's labels, in order.
pub(crate) type Labels = Vec<(String, String)>;

/// `name{label="value",…} value [timestamp]`.
fn sample(line: &str) -> Result<Sample, String> {
    let name_end = line
        .find(|c: char| c == '{' || c.is_whitespace())
        .ok_or("a sample without a value")?;
    let name = &line[..name_end];
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    {
        return Err("not a metric name".into());
    }
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(after) = rest.strip_prefix('{') {
        let (read, after) = label_set(after)?;
        labels = read;
        rest = after;
    }
    let value = rest
        .split_whitespace()
        .next()
        .ok_or("a sample without a value")?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        other => other
            .parse::<f64>()
            .map_err(|_| format!("not a number: {other}"))?,
    };
    Ok(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// The labels up to the closing `}`, and what follows it.
fn label_set(mut text: &str) -> Result<(Labels, &str), String> {
    let mut labels = Vec::new();
    loop {
        text = text.trim_start_matches([' ', ',']);
        if let Some(after) = text.strip_prefix('}') {
            return Ok((labels, after));
        }
        let (name, after) = text.split_once('=').ok_or("a label without '='")?;
        let after = after
            .strip_prefix('"')
            .ok_or("a label value not in quotes")?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next() {
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, other)) => value.push(other),
                    None => return Err("a label value that does not end".into()),
                },
                Some((_, c)) => value.push(c),
                None => return Err("a label value that does not end".into()),
            }
        };
        labels.push((name.trim().to_owned(), value));
        text = &after[end + 1..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openmetrics_and_the_text_format_read_alike() {
        let open = "# HELP requests Requests.\n# TYPE requests counter\nrequests_total{path=\"/a\"} 3\nrequests_created{path=\"/a\"} 1.7e9\n# TYPE latency histogram\nlatency_bucket{le=\"0.1\"} 2\nlatency_bucket{le=\"+Inf\"} 3\nlatency_sum 0.25\nlatency_count 3\n# EOF\n";
        let families = parse(open).unwrap();
        assert_eq!(families.len(), 2);
        assert_eq!(
            (families[0].name.as_str(), families[0].kind),
            ("requests", Kind::Counter)
        );
        assert_eq!(families[0].help, "Requests.");
        assert_eq!(
            families[0].samples[0].labels,
            [("path".to_owned(), "/a".to_owned())]
        );
        assert_eq!(families[1].samples.len(), 4);
        assert_eq!(families[1].samples[1].value, 3.0);
        // prometheus_client (Python)'s text format: the counter's family keeps `_total`.
        let text = "# HELP jobs_total Jobs.\n# TYPE jobs_total counter\njobs_total 7.0\n# TYPE temp gauge\ntemp{room=\"a \\\"b\\\", c\"} -1.5 1700000000000\nplain 2\n";
        let families = parse(text).unwrap();
        assert_eq!(
            (families[0].name.as_str(), families[0].samples[0].value),
            ("jobs", 7.0)
        );
        assert_eq!(families[1].samples[0].labels[0].1, "a \"b\", c");
        assert_eq!(
            (families[2].name.as_str(), families[2].kind),
            ("plain", Kind::Untyped)
        );
    }

    #[test]
    fn a_broken_line_is_named() {
        assert!(
            parse("ok 1\nbad{x=1} 2\n")
                .unwrap_err()
                .starts_with("line 2:")
        );
        assert!(parse("x NaNa\n").is_err());
        assert!(parse("x{a=\"open} 1\n").is_err());
    }
}
