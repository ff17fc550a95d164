//! The invariants of a generated region, checked on real output: determinism, truth files
//! that match the data, valid ID numbers and valid FHIR unless a recorded defect says
//! otherwise, and references that resolve unless recorded as dangling.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use hutong_cn::idcard::IdNumber;
use hutong_synth::{generate, Config, ID_SYSTEM};
use serde_json::Value;

static N: AtomicUsize = AtomicUsize::new(0);

struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        let p = std::env::temp_dir().join(format!(
            "hutong-synth-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&p);
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn config(residents: u64, seed: u64) -> Config {
    Config {
        residents,
        seed,
        years: 4,
        // A higher defect rate than the default so that every kind shows up in a small region.
        defect_rate: 0.03,
        ..Config::default()
    }
}

fn region(cfg: &Config) -> TempDir {
    let d = TempDir::new();
    generate(cfg, &d.0, &|_, _| {}).expect("generation succeeds");
    d
}

fn files(root: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                out.insert(
                    p.strip_prefix(root).unwrap().to_path_buf(),
                    std::fs::read(&p).unwrap(),
                );
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn csv(path: &Path) -> Vec<HashMap<String, String>> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = text.lines();
    let header: Vec<String> = lines.next().unwrap().split(',').map(String::from).collect();
    lines
        .map(|l| {
            assert!(!l.contains('"'), "no quoting expected in {l}");
            header
                .iter()
                .cloned()
                .zip(l.split(',').map(String::from))
                .collect()
        })
        .collect()
}

/// Every resource an institution submitted: (institution, type, id) → JSON.
fn resources(root: &Path) -> BTreeMap<(String, String, String), Value> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(root.join("institutions")).unwrap() {
        let dir = e.unwrap().path();
        let inst = dir.file_name().unwrap().to_string_lossy().to_string();
        for f in std::fs::read_dir(&dir).unwrap() {
            let f = f.unwrap().path();
            if f.extension().and_then(|x| x.to_str()) != Some("ndjson") {
                continue;
            }
            let t = f.file_stem().unwrap().to_string_lossy().to_string();
            for line in std::fs::read_to_string(&f).unwrap().lines() {
                let v: Value = serde_json::from_str(line).unwrap();
                assert_eq!(v["resourceType"], t.as_str());
                let id = v["id"].as_str().unwrap().to_string();
                let prev = out.insert((inst.clone(), t.clone(), id.clone()), v);
                assert!(prev.is_none(), "{t}/{id} written twice");
            }
        }
    }
    out
}

#[test]
fn the_same_seed_gives_byte_identical_output_whatever_the_threads() {
    let a = region(&Config {
        threads: 1,
        ..config(700, 42)
    });
    let b = region(&Config {
        threads: 3,
        ..config(700, 42)
    });
    let c = region(&Config {
        threads: 2,
        ..config(700, 43)
    });
    let (fa, fb, fc) = (files(&a.0), files(&b.0), files(&c.0));
    assert!(fa.len() > 20, "{} files", fa.len());
    assert_eq!(fa.keys().collect::<Vec<_>>(), fb.keys().collect::<Vec<_>>());
    for (k, v) in &fa {
        assert!(v == &fb[k], "{} differs between runs", k.display());
    }
    assert_ne!(
        fa[Path::new("truth/residents.csv")],
        fc[Path::new("truth/residents.csv")]
    );
}

#[test]
fn truth_ids_validity_and_references_hold() {
    let cfg = config(1200, 7);
    let dir = region(&cfg);
    let root = &dir.0;
    let all = resources(root);
    let residents = csv(&root.join("truth/residents.csv"));
    let persons = csv(&root.join("truth/persons.csv"));
    let defects = csv(&root.join("truth/defects.csv"));
    let manifest = csv(&root.join("truth/manifest.csv"));
    assert_eq!(residents.len(), 1200);

    // Residents: valid, unique ID numbers consistent with address, birth date and sex.
    let mut seen = HashSet::new();
    let by_person: HashMap<&str, &HashMap<String, String>> = residents
        .iter()
        .map(|r| (r["person_id"].as_str(), r))
        .collect();
    for r in &residents {
        let id =
            IdNumber::parse(&r["id_number"]).unwrap_or_else(|e| panic!("{}: {e}", r["id_number"]));
        assert!(
            seen.insert(r["id_number"].clone()),
            "duplicate ID {}",
            r["id_number"]
        );
        assert_eq!(id.division().to_string(), r["county"]);
        let (y, m, d) = id.birth_date();
        assert_eq!(format!("{y:04}-{m:02}-{d:02}"), r["birth_date"]);
        assert_eq!(id.is_male(), r["sex"] == "male");
        if !r["phone"].is_empty() {
            assert!(hutong_cn::phone::is_valid_mobile(&r["phone"]));
        }
        if !r["guardian"].is_empty() {
            let g = by_person[r["guardian"].as_str()];
            assert_eq!(
                g["address"], r["address"],
                "children live with their guardian"
            );
        }
        if !r["twin_of"].is_empty() {
            assert_eq!(
                by_person[r["twin_of"].as_str()]["birth_date"],
                r["birth_date"]
            );
        }
    }

    // persons.csv lists exactly the Patients written.
    let patients: HashSet<(String, String)> = all
        .keys()
        .filter(|(_, t, _)| t == "Patient")
        .map(|(i, _, id)| (i.clone(), id.clone()))
        .collect();
    let linked: HashSet<(String, String)> = persons
        .iter()
        .map(|p| (p["institution"].clone(), p["patient_id"].clone()))
        .collect();
    assert_eq!(patients, linked);
    assert!(persons
        .iter()
        .all(|p| by_person.contains_key(p["person_id"].as_str())));
    let person_of: HashMap<(String, String), String> = persons
        .iter()
        .map(|p| {
            (
                (p["institution"].clone(), p["patient_id"].clone()),
                p["person_id"].clone(),
            )
        })
        .collect();

    // Every defect names a resource that exists; kinds cover what the issue lists.
    let mut kinds_of: HashMap<(String, String, String), Vec<String>> = HashMap::new();
    for d in &defects {
        let key = (
            d["institution"].clone(),
            d["resource_type"].clone(),
            d["resource_id"].clone(),
        );
        assert!(
            all.contains_key(&key),
            "defect on a missing resource: {key:?}"
        );
        kinds_of.entry(key).or_default().push(d["kind"].clone());
    }
    let kinds: HashSet<&str> = defects.iter().map(|d| d["kind"].as_str()).collect();
    for k in [
        "missing-required",
        "invalid-code",
        "impossible-date",
        "unit-error",
        "invalid-id-check",
        "dangling-reference",
        "duplicate",
        "wrong-patient",
        "id-missing",
        "id-typo",
        "id-transposed",
        "id-legacy-15",
        "id-lowercase-x",
        "name-homophone",
        "name-traditional",
        "name-pinyin",
        "phone-old",
        "address-partial",
        "sex-missing",
    ] {
        assert!(kinds.contains(k), "no '{k}' in a region of 1,200 residents");
    }
    let has = |key: &(String, String, String), k: &[&str]| {
        kinds_of
            .get(key)
            .is_some_and(|v| v.iter().any(|x| k.contains(&x.as_str())))
    };

    // ID numbers: valid unless a recorded variation or defect says otherwise, and the
    // person's own number when untouched.
    let mut checked = 0;
    for (key, v) in all.iter().filter(|(k, _)| k.1 == "Patient") {
        for ident in v["identifier"].as_array().unwrap() {
            if ident["system"] != ID_SYSTEM {
                continue;
            }
            let raw = ident["value"].as_str().unwrap();
            match IdNumber::parse(raw) {
                Ok(id) => {
                    if !has(key, &["id-typo", "id-transposed", "invalid-id-check"]) {
                        let person = &person_of[&(key.0.clone(), key.2.clone())];
                        assert_eq!(
                            id.as_str(),
                            by_person[person.as_str()]["id_number"],
                            "{key:?}"
                        );
                        checked += 1;
                    }
                }
                Err(e) => assert!(
                    has(key, &["id-typo", "id-transposed", "invalid-id-check"]),
                    "{key:?}: invalid ID {raw} ({e}) without a recorded defect"
                ),
            }
        }
    }
    assert!(checked > 1000, "{checked} ID numbers checked");

    // Valid FHIR R4 unless a required element was removed on purpose, and then invalid.
    for (key, v) in &all {
        let findings = hutong_fhir::validate::validate(v);
        if has(key, &["missing-required"]) {
            assert!(
                !findings.is_empty(),
                "{key:?} lost a required element yet validates"
            );
        } else {
            assert!(findings.is_empty(), "{key:?}: {findings:?}\n{v}");
        }
    }
    let registry = std::fs::read_to_string(root.join("registry/Organization.ndjson")).unwrap();
    let mut registry_ids = HashSet::new();
    for f in ["Organization", "Practitioner", "PractitionerRole"] {
        for line in std::fs::read_to_string(root.join(format!("registry/{f}.ndjson")))
            .unwrap()
            .lines()
        {
            let v: Value = serde_json::from_str(line).unwrap();
            assert_eq!(hutong_fhir::validate::validate(&v), vec![], "{v}");
            registry_ids.insert(format!("{f}/{}", v["id"].as_str().unwrap()));
        }
    }
    for line in registry.lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        let code = v["identifier"][0]["value"].as_str().unwrap();
        assert!(hutong_cn::uscc::is_valid(code), "{code}");
    }

    // References resolve within the submitting institution (or to the registry) unless
    // recorded as dangling.
    let local: HashSet<(String, String)> = all
        .keys()
        .map(|(i, t, id)| (i.clone(), format!("{t}/{id}")))
        .collect();
    fn refs(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                for (k, x) in m {
                    match (k.as_str(), x) {
                        ("reference", Value::String(s)) => out.push(s.clone()),
                        _ => refs(x, out),
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
            _ => {}
        }
    }
    for (key, v) in &all {
        let mut rs = Vec::new();
        refs(v, &mut rs);
        for r in rs {
            let ok = local.contains(&(key.0.clone(), r.clone())) || registry_ids.contains(&r);
            assert!(
                ok || has(key, &["dangling-reference"]),
                "{key:?} → {r} does not resolve"
            );
        }
    }

    // The manifest counts what was written.
    let mut counted: BTreeMap<(String, String), u64> = BTreeMap::new();
    for m in &manifest {
        assert_eq!(m["day"].len(), 10);
        *counted
            .entry((m["institution"].clone(), m["resource_type"].clone()))
            .or_default() += m["count"].parse::<u64>().unwrap();
    }
    // The clinics' schedules are not dated records: the truth lists them instead.
    let mut actual: BTreeMap<(String, String), u64> = BTreeMap::new();
    let mut slots: BTreeMap<String, u64> = BTreeMap::new();
    for (i, t, _) in all.keys() {
        match t.as_str() {
            "Slot" => *slots.entry(i.clone()).or_default() += 1,
            "Schedule" | "CareTeam" => {}
            _ => *actual.entry((i.clone(), t.clone())).or_default() += 1,
        }
    }
    assert_eq!(counted, actual);
    let mut listed: BTreeMap<String, u64> = BTreeMap::new();
    for s in csv(&root.join("truth/schedules.csv")) {
        assert!(
            all.contains_key(&(
                s["institution"].clone(),
                "Schedule".to_string(),
                s["schedule"].clone()
            )),
            "{s:?}"
        );
        *listed.entry(s["institution"].clone()).or_default() += s["slots"].parse::<u64>().unwrap();
    }
    assert_eq!(listed, slots);
    assert!(!slots.is_empty());
}

#[test]
fn names_follow_real_frequencies_and_namesakes_occur() {
    let dir = region(&Config {
        defect_rate: 0.0,
        ..config(3000, 3)
    });
    let residents = csv(&dir.0.join("truth/residents.csv"));
    let mut surnames: HashMap<String, usize> = HashMap::new();
    let mut names: HashMap<&str, usize> = HashMap::new();
    for r in &residents {
        *surnames
            .entry(r["name"].chars().next().unwrap().to_string())
            .or_default() += 1;
        *names.entry(r["name"].as_str()).or_default() += 1;
    }
    let mut top: Vec<(&String, &usize)> = surnames.iter().collect();
    top.sort_by(|a, b| b.1.cmp(a.1));
    let top3: HashSet<&str> = top.iter().take(5).map(|(s, _)| s.as_str()).collect();
    for s in ["王", "李", "张"] {
        assert!(
            top3.contains(s),
            "{s} among the five most common surnames: {top:?}"
        );
    }
    let shared = names.values().filter(|n| **n > 1).count();
    assert!(shared > 30, "only {shared} names are shared");
    let defects = csv(&dir.0.join("truth/defects.csv"));
    assert!(
        defects.iter().all(|d| d["class"] == "identity"),
        "no quality defects at rate 0"
    );
}

#[test]
fn bad_configuration_is_refused_with_a_reason() {
    let d = TempDir::new();
    let e = generate(
        &Config {
            residents: 0,
            ..Config::default()
        },
        &d.0,
        &|_, _| {},
    )
    .unwrap_err();
    assert!(e.to_string().contains("--residents"), "{e}");
    let e = generate(
        &Config {
            city: 330000,
            ..Config::default()
        },
        &d.0,
        &|_, _| {},
    )
    .unwrap_err();
    assert!(e.to_string().contains("330000"), "{e}");
    std::fs::create_dir_all(d.0.join("x")).unwrap();
    let e = generate(&config(5, 1), &d.0, &|_, _| {}).unwrap_err();
    assert!(e.to_string().contains("already holds files"), "{e}");
    assert!(Config::parse_date("2026-02-30").is_err());
}

#[test]
fn per_kind_rates_override_the_defaults() {
    let mut rates = std::collections::BTreeMap::new();
    rates.insert("name-pinyin".to_string(), 0.5);
    rates.insert("id-missing".to_string(), 0.0);
    rates.insert("duplicate".to_string(), 0.0);
    rates.insert("unit-error".to_string(), 5.0);
    let dir = region(&Config {
        rates,
        defect_rate: 0.05,
        ..config(300, 8)
    });
    let defects = csv(&dir.0.join("truth/defects.csv"));
    let patients = csv(&dir.0.join("truth/persons.csv")).len();
    let count = |k: &str| defects.iter().filter(|d| d["kind"] == k).count();
    assert!(
        count("name-pinyin") * 3 > patients,
        "{} of {patients}",
        count("name-pinyin")
    );
    assert_eq!(count("id-missing"), 0);
    assert_eq!(count("duplicate"), 0);
    assert!(
        count("unit-error") > count("dangling-reference"),
        "weights shift the mix"
    );

    let d = TempDir::new();
    let mut bad = std::collections::BTreeMap::new();
    bad.insert("teleportation".to_string(), 0.1);
    let e = generate(
        &Config {
            rates: bad,
            ..config(5, 1)
        },
        &d.0,
        &|_, _| {},
    )
    .unwrap_err();
    assert!(
        e.to_string().contains("unknown kind 'teleportation'"),
        "{e}"
    );
}
