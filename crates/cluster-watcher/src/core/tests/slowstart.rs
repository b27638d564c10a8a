//! Slow start: a newly ready worker's share ramps over the window, published as weights.

use super::*;

/// The weights published so far, in order.
fn published(h: &Harness) -> Vec<BTreeMap<WorkerId, u16>> {
    h.log
        .iter()
        .filter_map(|a| match a {
            Action::Weights(w) => Some(w.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn a_replacement_ramps_from_a_tenth_to_full_and_then_nothing_more_is_published() {
    let mut config = config();
    config.slow_start = Duration::from_secs(2);
    let mut h = Harness::with(config, 2);
    // The first workers ramped together and are past their window now.
    h.serve_for(Duration::from_secs(3));
    assert_eq!(published(&h).last(), Some(&BTreeMap::new()));
    h.log.clear();

    h.exit(id(2, 1), ExitKind::Signal(9));
    let replacement = h.current(2).unwrap();
    h.ready(replacement);
    assert_eq!(published(&h), vec![BTreeMap::from([(replacement, 100)])]);
    h.run_for(Duration::from_secs(1));
    let halfway = published(&h).last().unwrap()[&replacement];
    assert!((500..=600).contains(&halfway), "{halfway}");
    // Every step a little more, never less.
    let ramp: Vec<u16> = published(&h).iter().map(|w| w[&replacement]).collect();
    assert!(ramp.windows(2).all(|w| w[0] < w[1]), "{ramp:?}");
    h.serve_for(Duration::from_millis(1500));
    assert_eq!(published(&h).last(), Some(&BTreeMap::new()));
    // Done: nothing more is published, and no timer is left for it.
    let count = published(&h).len();
    h.serve_for(Duration::from_secs(2));
    assert_eq!(published(&h).len(), count);
}

#[test]
fn without_slow_start_no_weights_are_published() {
    let mut h = Harness::running(2);
    h.exit(id(1, 1), ExitKind::Signal(9));
    let replacement = h.current(1).unwrap();
    h.ready(replacement);
    h.serve_for(Duration::from_secs(2));
    assert!(published(&h).is_empty());
}
