//! Linkage on the independent evaluation set (`tests/fixtures/independent`): another
//! generator, another name model and error model, built without our code. It measures; no
//! threshold is set on it.

use std::collections::HashMap;

fn load() -> hutong_mpi::eval::Labelled {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/independent/identities.csv");
    hutong_mpi::eval::read_labelled(std::fs::File::open(path).unwrap()).unwrap()
}

fn kinds<'a>(
    set: &'a hutong_mpi::eval::Labelled,
    pairs: &[(usize, usize)],
) -> Vec<(&'a str, usize)> {
    let mut c: HashMap<&str, usize> = HashMap::new();
    for &(a, b) in pairs {
        for i in [a, b] {
            for k in set.errors[i].split(';').filter(|k| !k.is_empty()) {
                *c.entry(k).or_default() += 1;
            }
        }
    }
    let mut v: Vec<_> = c.into_iter().collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    v
}

#[test]
fn the_independent_set_links_with_high_precision_and_recall() {
    let set = load();
    assert!(set.records.len() > 18_000);
    let linked = hutong_mpi::link(&set.records, None);
    let c = hutong_mpi::eval::pairwise(&linked.clustering.cluster, &set.truth);
    let review = linked.clustering.review.len();
    let wrong = hutong_mpi::eval::false_links(&linked.clustering.cluster, &set.truth, 10_000);
    let missed = hutong_mpi::eval::missed_links(&linked.clustering.cluster, &set.truth, 10_000);
    eprintln!(
        "independent: precision {:.4} recall {:.4} ({c:?}); review pairs {review}; wrong {} missed {}",
        c.precision(),
        c.recall(),
        wrong.len(),
        missed.len()
    );
    eprintln!("wrong links by kind: {:?}", kinds(&set, &wrong));
    eprintln!("missed links by kind: {:?}", kinds(&set, &missed));
    for &(a, b) in wrong.iter().take(12) {
        eprintln!(
            "  WRONG {:?} {:?} | {:?} {:?}",
            set.ids[a], set.errors[a], set.ids[b], set.errors[b]
        );
    }
    assert!(c.precision() >= 0.998, "precision {}", c.precision());
    assert!(c.recall() >= 0.99, "recall {}", c.recall());
    // The review queue holds what is ambiguous, not everything.
    let mut in_review = std::collections::HashSet::new();
    for p in &linked.clustering.review {
        in_review.insert(p.a);
        in_review.insert(p.b);
    }
    let share = in_review.len() as f64 / set.records.len() as f64;
    eprintln!(
        "records in review: {} ({:.2} %)",
        in_review.len(),
        share * 100.0
    );
    assert!(share < 0.02, "review share {share}");
}
