//! The pipeline: one thread draws residents (keeping ID numbers unique), workers turn
//! chunks of residents into records, and this thread writes chunks in order, so output is
//! streamed and identical whatever the thread count.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::sync_channel;
use std::sync::Mutex;

use serde_json::{json, Value};

use crate::people::{People, Person};
use crate::records::{self, ChunkState};
use crate::region::Region;
use crate::{Config, InstitutionSummary, Progress, Summary, SynthError};

const CHUNK: usize = 256;

struct ChunkOut {
    persons: u64,
    residents: Vec<String>,
    links: Vec<String>,
    defects: Vec<(&'static str, String)>,
    resources: Vec<(usize, &'static str, i32, String)>,
    bundles: Vec<(usize, String, String)>,
}

fn csv(fields: &[&str]) -> String {
    let mut s = String::new();
    for (i, f) in fields.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        if f.contains([',', '"', '\n']) {
            s.push('"');
            s.push_str(&f.replace('"', "\"\""));
            s.push('"');
        } else {
            s.push_str(f);
        }
    }
    s.push('\n');
    s
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SynthError + '_ {
    move |source| SynthError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn resident_row(region: &Region, p: &Person) -> String {
    let opt = |o: Option<u64>| o.map(|i| format!("R{i:07}")).unwrap_or_default();
    let chronic: Vec<&str> = p.chronic.iter().map(|(c, _)| c.code().0).collect();
    csv(&[
        &p.person_id(),
        &p.name(),
        if p.male { "male" } else { "female" },
        &crate::time::date(p.birth),
        &p.id_number,
        p.phone.as_deref().unwrap_or(""),
        p.old_phone.as_ref().map(|o| o.0.as_str()).unwrap_or(""),
        &p.county.to_string(),
        &p.address_text(),
        &format!("H{:07}", p.household),
        p.relation,
        &opt(p.mother),
        &opt(p.guardian),
        &opt(p.twin_of),
        &p.death.map(crate::time::date).unwrap_or_default(),
        p.health_card.as_deref().unwrap_or(""),
        &chronic.join(" "),
        &region.institutions[p.home].code,
    ])
}

fn chunk_out(cfg: &Config, region: &Region, persons: Vec<Person>) -> ChunkOut {
    let mut state = ChunkState::default();
    let mut c = ChunkOut {
        persons: persons.len() as u64,
        residents: Vec::with_capacity(persons.len()),
        links: Vec::new(),
        defects: Vec::new(),
        resources: Vec::new(),
        bundles: Vec::new(),
    };
    for p in &persons {
        c.residents.push(resident_row(region, p));
        let g = records::generate(cfg, region, p, &mut state);
        let pid = p.person_id();
        for (inst, patient) in &g.patients {
            c.links
                .push(csv(&[&region.institutions[*inst].code, patient, &pid]));
        }
        for d in &g.defects {
            c.defects.push((
                d.class,
                csv(&[
                    &region.institutions[d.inst].code,
                    d.rtype,
                    &d.id,
                    d.class,
                    d.kind,
                    &d.detail,
                ]),
            ));
        }
        if cfg.bundles {
            // One transaction per patient per institution, in first-appearance order.
            let mut order: Vec<(usize, &str)> = Vec::new();
            let mut entries: HashMap<(usize, &str), Vec<Value>> = HashMap::new();
            for o in &g.out {
                let key = (o.inst, o.patient.as_str());
                if !entries.contains_key(&key) {
                    order.push(key);
                }
                entries.entry(key).or_default().push(json!({
                    "resource": o.json,
                    "request": {"method": "PUT", "url": format!("{}/{}", o.rtype, o.id)}
                }));
            }
            for key in order {
                let b = json!({
                    "resourceType": "Bundle",
                    "type": "transaction",
                    "entry": entries.remove(&key).unwrap_or_default()
                });
                c.bundles.push((key.0, key.1.to_string(), b.to_string()));
            }
        }
        if cfg.ndjson || cfg.bundles {
            for o in g.out {
                let line = if cfg.ndjson {
                    o.json.to_string()
                } else {
                    String::new()
                };
                c.resources.push((o.inst, o.rtype, o.day, line));
            }
        }
    }
    c
}

struct Writer<'a> {
    cfg: &'a Config,
    region: &'a Region,
    root: PathBuf,
    files: HashMap<(usize, &'static str), BufWriter<File>>,
    residents: BufWriter<File>,
    links: BufWriter<File>,
    defects: BufWriter<File>,
    manifest: BTreeMap<(usize, &'static str, i32), u64>,
    summary: Summary,
}

fn create(path: PathBuf, header: &str) -> Result<BufWriter<File>, SynthError> {
    let f = File::create(&path).map_err(io(&path))?;
    let mut w = BufWriter::with_capacity(1 << 18, f);
    w.write_all(header.as_bytes()).map_err(io(&path))?;
    Ok(w)
}

impl<'a> Writer<'a> {
    fn new(cfg: &'a Config, region: &'a Region, root: &Path) -> Result<Writer<'a>, SynthError> {
        for d in ["registry", "institutions", "truth"] {
            let p = root.join(d);
            std::fs::create_dir_all(&p).map_err(io(&p))?;
        }
        for i in &region.institutions {
            let p = root.join("institutions").join(&i.code);
            std::fs::create_dir_all(&p).map_err(io(&p))?;
            if cfg.bundles {
                let b = p.join("bundles");
                std::fs::create_dir_all(&b).map_err(io(&b))?;
            }
        }
        let truth = root.join("truth");
        let mut inst = create(
            truth.join("institutions.csv"),
            "institution,kind,name,uscc,county,source,mrn_system\n",
        )?;
        for i in &region.institutions {
            let row = csv(&[
                &i.code,
                i.kind.as_str(),
                &i.name,
                &i.uscc,
                &i.county.to_string(),
                &i.source(),
                &i.mrn_system(),
            ]);
            inst.write_all(row.as_bytes()).map_err(io(&truth))?;
        }
        inst.flush().map_err(io(&truth))?;
        let mut registry: BTreeMap<&str, BufWriter<File>> = BTreeMap::new();
        for (t, v) in region.registry() {
            let w = match registry.entry(t) {
                std::collections::btree_map::Entry::Occupied(o) => o.into_mut(),
                std::collections::btree_map::Entry::Vacant(e) => e.insert(create(
                    root.join("registry").join(format!("{t}.ndjson")),
                    "",
                )?),
            };
            writeln!(w, "{v}").map_err(io(root))?;
        }
        for (_, mut w) in registry {
            w.flush().map_err(io(root))?;
        }
        Ok(Writer {
            cfg,
            region,
            root: root.to_path_buf(),
            files: HashMap::new(),
            residents: create(
                truth.join("residents.csv"),
                "person_id,name,sex,birth_date,id_number,phone,old_phone,county,address,household,relation,mother,guardian,twin_of,death_date,health_card,chronic,home_institution\n",
            )?,
            links: create(truth.join("persons.csv"), "institution,patient_id,person_id\n")?,
            defects: create(
                truth.join("defects.csv"),
                "institution,resource_type,resource_id,class,kind,detail\n",
            )?,
            manifest: BTreeMap::new(),
            summary: Summary::default(),
        })
    }

    fn chunk(&mut self, c: ChunkOut) -> Result<(), SynthError> {
        let truth = self.root.join("truth");
        for r in &c.residents {
            self.residents.write_all(r.as_bytes()).map_err(io(&truth))?;
        }
        for l in &c.links {
            self.links.write_all(l.as_bytes()).map_err(io(&truth))?;
        }
        for (class, d) in &c.defects {
            self.defects.write_all(d.as_bytes()).map_err(io(&truth))?;
            if *class == "identity" {
                self.summary.identity_variations += 1;
            } else {
                self.summary.quality_defects += 1;
            }
        }
        self.summary.residents += c.persons;
        self.summary.patients += c.links.len() as u64;
        for (inst, rtype, day, line) in c.resources {
            *self.manifest.entry((inst, rtype, day)).or_default() += 1;
            *self.summary.by_type.entry(rtype.to_string()).or_default() += 1;
            self.summary.resources += 1;
            if !self.cfg.ndjson {
                continue;
            }
            let w = match self.files.entry((inst, rtype)) {
                std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => {
                    let p = self
                        .root
                        .join("institutions")
                        .join(&self.region.institutions[inst].code)
                        .join(format!("{rtype}.ndjson"));
                    e.insert(create(p, "")?)
                }
            };
            w.write_all(line.as_bytes()).map_err(io(&self.root))?;
            w.write_all(b"\n").map_err(io(&self.root))?;
        }
        for (inst, patient, body) in c.bundles {
            let p = self
                .root
                .join("institutions")
                .join(&self.region.institutions[inst].code)
                .join("bundles")
                .join(format!("{patient}.json"));
            std::fs::write(&p, body).map_err(io(&p))?;
        }
        Ok(())
    }

    /// The clinics each institution publishes to the slot pool, and their truth.
    fn schedules(&mut self) -> Result<(), SynthError> {
        let truth = self.root.join("truth");
        let mut t = create(
            truth.join("schedules.csv"),
            "schedule,institution,practitioner_role,specialty,slots,first_start\n",
        )?;
        let mut files: HashMap<(usize, &str), BufWriter<File>> = HashMap::new();
        for p in crate::schedules::publish(self.cfg, self.region) {
            let inst = &self.region.institutions[p.institution];
            let row = csv(&[
                p.schedule["id"].as_str().unwrap_or(""),
                &inst.code,
                p.schedule["actor"][0]["reference"].as_str().unwrap_or(""),
                p.schedule["specialty"][0]["text"].as_str().unwrap_or(""),
                &p.slots.len().to_string(),
                p.slots
                    .first()
                    .and_then(|s| s["start"].as_str())
                    .unwrap_or(""),
            ]);
            t.write_all(row.as_bytes()).map_err(io(&truth))?;
            for (rtype, items) in [("Schedule", vec![p.schedule]), ("Slot", p.slots)] {
                if items.is_empty() {
                    continue;
                }
                *self.summary.by_type.entry(rtype.to_string()).or_default() += items.len() as u64;
                self.summary.resources += items.len() as u64;
                if !self.cfg.ndjson {
                    continue;
                }
                let w = match files.entry((p.institution, rtype)) {
                    std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
                    std::collections::hash_map::Entry::Vacant(e) => {
                        let path = self
                            .root
                            .join("institutions")
                            .join(&inst.code)
                            .join(format!("{rtype}.ndjson"));
                        e.insert(create(path, "")?)
                    }
                };
                for v in items {
                    writeln!(w, "{v}").map_err(io(&self.root))?;
                }
            }
        }
        // The centres' family doctor teams, which contracts name.
        for (inst, team) in crate::schedules::teams(self.region) {
            *self
                .summary
                .by_type
                .entry("CareTeam".to_string())
                .or_default() += 1;
            self.summary.resources += 1;
            if !self.cfg.ndjson {
                continue;
            }
            let code = &self.region.institutions[inst].code;
            let w = match files.entry((inst, "CareTeam")) {
                std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => e.insert(create(
                    self.root
                        .join("institutions")
                        .join(code)
                        .join("CareTeam.ndjson"),
                    "",
                )?),
            };
            writeln!(w, "{team}").map_err(io(&self.root))?;
        }
        for w in files.values_mut() {
            w.flush().map_err(io(&self.root))?;
        }
        t.flush().map_err(io(&truth))
    }

    fn finish(mut self) -> Result<Summary, SynthError> {
        let truth = self.root.join("truth");
        for w in self.files.values_mut() {
            w.flush().map_err(io(&self.root))?;
        }
        for w in [&mut self.residents, &mut self.links, &mut self.defects] {
            w.flush().map_err(io(&truth))?;
        }
        let mut m = create(
            truth.join("manifest.csv"),
            "institution,resource_type,day,count\n",
        )?;
        for ((inst, rtype, day), n) in &self.manifest {
            let row = csv(&[
                &self.region.institutions[*inst].code,
                rtype,
                &crate::time::date(*day),
                &n.to_string(),
            ]);
            m.write_all(row.as_bytes()).map_err(io(&truth))?;
        }
        m.flush().map_err(io(&truth))?;
        self.schedules()?;
        self.summary.institutions = self
            .region
            .institutions
            .iter()
            .map(|i| InstitutionSummary {
                code: i.code.clone(),
                name: i.name.clone(),
                kind: i.kind.as_str(),
                uscc: i.uscc.clone(),
                source: i.source(),
                dir: self.root.join("institutions").join(&i.code),
            })
            .collect();
        let region = json!({
            "generator": "hutong synth",
            "seed": self.cfg.seed,
            "residents": self.summary.residents,
            "years": self.cfg.years,
            "asOf": crate::time::date(self.cfg.as_of),
            "city": {"code": self.region.city, "name": self.region.city_name},
            "defectRate": self.cfg.defect_rate,
            "variationScale": self.cfg.variation_scale,
            "institutions": self.region.institutions.iter().map(|i| json!({
                "code": i.code, "name": i.name, "kind": i.kind.as_str(), "uscc": i.uscc,
                "county": i.county, "source": i.source(), "mrnSystem": i.mrn_system()
            })).collect::<Vec<_>>(),
            "patients": self.summary.patients,
            "resources": self.summary.resources,
            "resourcesByType": self.summary.by_type,
            "identityVariations": self.summary.identity_variations,
            "qualityDefects": self.summary.quality_defects
        });
        let p = self.root.join("region.json");
        let text = serde_json::to_string_pretty(&region).expect("json") + "\n";
        std::fs::write(&p, text).map_err(io(&p))?;
        Ok(self.summary)
    }
}

pub fn run(cfg: &Config, root: &Path, progress: Progress) -> Result<Summary, SynthError> {
    if root.exists() {
        let mut entries = std::fs::read_dir(root).map_err(io(root))?;
        if entries.next().is_some() {
            return Err(SynthError::NotEmpty(root.to_path_buf()));
        }
    }
    std::fs::create_dir_all(root).map_err(io(root))?;
    let region = Region::build(cfg)?;
    let mut w = Writer::new(cfg, &region, root)?;
    let threads = if cfg.threads == 0 {
        std::thread::available_parallelism().map_or(2, |n| n.get())
    } else {
        cfg.threads
    };
    let region_ref = &region;
    let mut failure = None;
    let (work_tx, work_rx) = sync_channel::<(usize, Vec<Person>)>(threads * 2);
    let work_rx = Mutex::new(work_rx);
    std::thread::scope(|s| {
        let (done_tx, done_rx) = sync_channel::<(usize, ChunkOut)>(threads * 2);
        s.spawn(move || {
            let mut people = People::new(cfg, region_ref);
            let mut n = 0;
            while !people.done() {
                if work_tx.send((n, people.chunk(CHUNK))).is_err() {
                    break;
                }
                n += 1;
            }
        });
        for _ in 0..threads {
            let rx = &work_rx;
            let tx = done_tx.clone();
            s.spawn(move || loop {
                let job = rx.lock().expect("work queue").recv();
                let Ok((n, persons)) = job else { break };
                if tx.send((n, chunk_out(cfg, region_ref, persons))).is_err() {
                    break;
                }
            });
        }
        drop(done_tx);
        let mut pending = BTreeMap::new();
        let mut next = 0;
        for (n, c) in done_rx {
            if failure.is_some() {
                continue;
            }
            pending.insert(n, c);
            while let Some(c) = pending.remove(&next) {
                if let Err(e) = w.chunk(c) {
                    failure = Some(e);
                    break;
                }
                next += 1;
                progress(w.summary.residents, w.summary.resources);
            }
        }
    });
    if let Some(e) = failure {
        return Err(e);
    }
    w.finish()
}
