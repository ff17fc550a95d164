//! A resident's records: the events of their life in the window (births, vaccinations,
//! chronic-disease follow-ups, outpatient visits, admissions, exams, donations, death), each
//! written as the resources the institution concerned would submit, with that institution's
//! own Patient (and its intake variations), provenance and a realistic collection lag.
//!
//! One file past the ~800 lines we keep to, because one generator of clinical stories whose
//! events share the person's timeline state; each story is its own function.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use crate::people::Person;
use crate::region::{Institution, Kind, Region};
use crate::rng::Rng;
use crate::tables::*;
use crate::time::{age, At};
use crate::Config;

pub use hutong_fhir::vocab::{COLLECTED_URL, HEALTH_CARD_SYSTEM, ID_SYSTEM};

/// One generated resource.
pub struct Out {
    pub inst: usize,
    pub rtype: &'static str,
    pub id: String,
    pub patient: String,
    /// Clinical day (for the manifest).
    pub day: i32,
    pub json: Value,
}

/// A recorded deviation: `identity` (intake variation of a Patient) or `quality` (defect).
pub struct Defect {
    pub inst: usize,
    pub rtype: &'static str,
    pub id: String,
    pub class: &'static str,
    pub kind: &'static str,
    pub detail: String,
}

/// What the generator of one chunk remembers across its residents.
#[derive(Default)]
pub struct ChunkState {
    /// Patient ids seen per institution (to file a record under the wrong patient).
    pub seen: BTreeMap<usize, Vec<String>>,
}

#[derive(Clone, Copy)]
enum Ev {
    Born,
    Delivery { child: u64 },
    Vaccine(usize),
    Flu,
    FollowUp,
    Acute,
    Admit { adm: usize, death: bool },
    Exam { elderly: bool },
    Donation,
}

struct Event {
    at: At,
    inst: usize,
    ev: Ev,
}

pub struct Generated {
    pub out: Vec<Out>,
    pub defects: Vec<Defect>,
    /// (institution, patient id) for every Patient written, duplicates included.
    pub patients: Vec<(usize, String)>,
}

pub fn generate(cfg: &Config, region: &Region, p: &Person, state: &mut ChunkState) -> Generated {
    let mut g = Gen {
        cfg,
        region,
        p,
        rng: Rng::new(cfg.seed, 1_000_000_000 + p.idx),
        views: BTreeMap::new(),
        state,
        res: Generated {
            out: Vec::new(),
            defects: Vec::new(),
            patients: Vec::new(),
        },
        seq: 0,
        base: Baselines::default(),
        allergy_done: false,
        death_inst: None,
    };
    g.base = g.baselines();
    let mut events = g.events();
    g.death_inst = events
        .iter()
        .find(|e| matches!(e.ev, Ev::Admit { death: true, .. }))
        .map(|e| e.inst);
    events.sort_by_key(|e| e.at);
    for e in events {
        g.emit_event(&e);
    }
    g.inject_defects();
    g.contract();
    g.res
}

pub fn birth_hospital(cfg: &Config, region: &Region, child: u64) -> Option<usize> {
    let h = region.hospitals();
    (!h.is_empty()).then(|| h[Rng::new(cfg.seed, 3_000_000_000 + child).below(h.len())])
}

#[derive(Default)]
struct Baselines {
    sbp: f64,
    dbp: f64,
    glucose: f64,
    hba1c: f64,
    chol: f64,
    height: f64,
    bmi: f64,
}

struct Gen<'a> {
    cfg: &'a Config,
    region: &'a Region,
    p: &'a Person,
    rng: Rng,
    /// institution → patient id there
    views: BTreeMap<usize, String>,
    state: &'a mut ChunkState,
    res: Generated,
    seq: u32,
    base: Baselines,
    allergy_done: bool,
    death_inst: Option<usize>,
}

fn round(v: f64, decimals: u32) -> f64 {
    let f = 10f64.powi(decimals as i32);
    (v * f).round() / f
}

fn coding(system: &str, code: &str, display: &str) -> Value {
    if display.is_empty() {
        json!({"system": system, "code": code})
    } else {
        json!({"system": system, "code": code, "display": display})
    }
}

fn concept(system: &str, code: &str, display: &str, text: &str) -> Value {
    if text.is_empty() {
        json!({"coding": [coding(system, code, display)]})
    } else {
        json!({"coding": [coding(system, code, display)], "text": text})
    }
}

fn category(system: &str, code: &str) -> Value {
    json!([{"coding": [{"system": system, "code": code}]}])
}

const OBS_CAT: &str = "http://terminology.hl7.org/CodeSystem/observation-category";
const V2_0074: &str = "http://terminology.hl7.org/CodeSystem/v2-0074";

impl Gen<'_> {
    fn inst(&self, i: usize) -> &Institution {
        &self.region.institutions[i]
    }

    fn has(&self, c: Chronic) -> Option<i32> {
        self.p
            .chronic
            .iter()
            .find(|(x, _)| *x == c)
            .map(|(_, d)| *d)
    }

    fn lo(&self) -> i32 {
        self.cfg.window_start().max(self.p.birth)
    }

    fn hi(&self) -> i32 {
        self.p.death.unwrap_or(self.cfg.as_of).min(self.cfg.as_of)
    }

    fn baselines(&mut self) -> Baselines {
        let a = f64::from(age(self.p.birth, self.cfg.as_of));
        let r = &mut self.rng;
        let htn = self.p.chronic.iter().any(|c| c.0 == Chronic::Hypertension);
        let dm = self.p.chronic.iter().any(|c| c.0 == Chronic::Diabetes);
        let hld = self
            .p
            .chronic
            .iter()
            .any(|c| c.0 == Chronic::Hyperlipidaemia);
        Baselines {
            sbp: if htn {
                r.normal(152.0, 10.0)
            } else {
                r.normal(112.0 + 0.3 * (a - 20.0).max(0.0), 9.0)
            },
            dbp: if htn {
                r.normal(94.0, 7.0)
            } else {
                r.normal(72.0 + 0.1 * (a - 20.0).max(0.0), 6.0)
            },
            glucose: if dm {
                r.normal(8.6, 1.2)
            } else {
                r.normal(5.0, 0.35)
            },
            hba1c: if dm {
                r.normal(8.4, 0.8)
            } else {
                r.normal(5.4, 0.25)
            },
            chol: if hld {
                r.normal(6.3, 0.6)
            } else {
                r.normal(4.6, 0.6)
            },
            height: if self.p.male {
                r.normal(170.0, 6.0)
            } else {
                r.normal(159.0, 5.5)
            },
            bmi: r.normal(23.5, 3.0).clamp(16.0, 38.0),
        }
    }

    /// Treated chronic values improve over the first year after diagnosis.
    fn treated(&self, base: f64, target: f64, c: Chronic, day: i32) -> f64 {
        match self.has(c) {
            Some(onset) if day >= onset => {
                let k = (f64::from(day - onset) / 365.0).min(1.0);
                base + (target.min(base) - base) * k
            }
            _ => base,
        }
    }

    // ---- events -----------------------------------------------------------------

    /// A family-doctor contract (家庭医生签约) with the resident's own primary-care centre,
    /// active at the generation date (signed in the 150 days before it, for a year): most
    /// residents with hypertension or diabetes have one and many of the elderly and young
    /// children (the key groups the national targets name), a few others.
    fn contract(&mut self) {
        let home = self.p.home;
        let as_of = self.cfg.as_of;
        if !self.inst(home).kind.is_primary()
            || self.p.death.is_some_and(|d| d <= as_of)
            || self.p.birth > as_of
        {
            return;
        }
        let chronic = |c: Chronic| self.has(c).is_some_and(|d| d <= as_of);
        let (htn, dm) = (chronic(Chronic::Hypertension), chronic(Chronic::Diabetes));
        let years = age(self.p.birth, as_of);
        let p = match (htn || dm, years) {
            (true, _) => 0.75,
            (_, 65..) => 0.6,
            (_, ..7) => 0.3,
            _ => 0.15,
        };
        if !self.rng.chance(p) {
            return;
        }
        let package = match (htn, dm, years) {
            (_, true, _) => "diabetes",
            (true, _, _) => "hypertension",
            (_, _, 65..) => "elderly",
            (_, _, ..7) => "maternal-child",
            _ => "basic",
        };
        let zh = crate::schedules::package_zh(package);
        let start = At::new(
            as_of - self.rng.range(0, 150) as i32,
            self.time_of_day(8, 17),
        );
        let pid = self.patient(home, start);
        let id = self.next_id(&pid);
        let team = crate::schedules::team_of(self.inst(home), self.p.idx);
        let json = json!({
            "resourceType": "EpisodeOfCare",
            "id": id,
            "meta": self.meta(home, start),
            "status": "active",
            "type": [{"coding": [{"system": hutong_fhir::vocab::CONTRACT_SYSTEM, "code": package, "display": zh}], "text": format!("家庭医生签约：{zh}")}],
            "patient": {"reference": format!("Patient/{pid}")},
            "managingOrganization": self.inst(home).org_ref(),
            "team": [{"reference": format!("CareTeam/{team}")}],
            "period": {"start": start.dt(), "end": At::new(start.day + 365, start.sec).dt()}
        });
        self.push(home, "EpisodeOfCare", id, pid, start.day, json);
    }

    fn time_of_day(&mut self, from_h: i64, to_h: i64) -> i32 {
        (self.rng.range(from_h * 3600, to_h * 3600) / 60 * 60) as i32
    }

    fn pick_hospital(&mut self, tertiary_share: f64) -> Option<usize> {
        let t = self.region.of_kind(Kind::Tertiary);
        let d: Vec<usize> = self.region.of_kind(Kind::District);
        let local: Vec<usize> = d
            .iter()
            .copied()
            .filter(|i| self.inst(*i).county == self.p.county)
            .collect();
        let d = if local.is_empty() { d } else { local };
        if (!t.is_empty() && self.rng.chance(tertiary_share)) || d.is_empty() {
            (!t.is_empty()).then(|| *self.rng.pick(&t))
        } else {
            Some(*self.rng.pick(&d))
        }
    }

    fn events(&mut self) -> Vec<Event> {
        let (lo, hi) = (self.lo(), self.hi());
        let mut ev = Vec::new();
        if hi < lo {
            return ev;
        }
        let years = f64::from(hi - lo) / 365.0;
        let a_end = age(self.p.birth, hi);
        let home = self.p.home;

        if self.p.birth >= self.cfg.window_start() {
            if let Some(h) = birth_hospital(self.cfg, self.region, self.p.idx) {
                ev.push(Event {
                    at: At::new(self.p.birth, self.time_of_day(0, 24)),
                    inst: h,
                    ev: Ev::Born,
                });
            }
        }
        for &(child, birth) in &self.p.births {
            if let Some(h) = birth_hospital(self.cfg, self.region, child) {
                if birth >= lo && birth <= hi {
                    ev.push(Event {
                        at: At::new(birth - 1, self.time_of_day(0, 24)),
                        inst: h,
                        ev: Ev::Delivery { child },
                    });
                }
            }
        }
        // Vaccinations follow the national schedule at the CDC vaccination service.
        let cdc = self
            .region
            .of_kind(Kind::Cdc)
            .first()
            .copied()
            .unwrap_or(home);
        for (i, dose) in NIP_SCHEDULE.iter().enumerate() {
            let due = self.p.birth + dose.2 + self.rng.range(0, 21) as i32;
            if due >= lo && due <= hi && !self.rng.chance(0.03) {
                ev.push(Event {
                    at: At::new(due, self.time_of_day(8, 16)),
                    inst: cdc,
                    ev: Ev::Vaccine(i),
                });
            }
        }
        if a_end >= 60 {
            let mut y = lo;
            while y <= hi {
                if self.rng.chance(0.3) {
                    let d = y + self.rng.range(0, 60) as i32;
                    if d <= hi {
                        ev.push(Event {
                            at: At::new(d, self.time_of_day(8, 16)),
                            inst: cdc,
                            ev: Ev::Flu,
                        });
                    }
                }
                y += 365;
            }
        }
        // Chronic-disease follow-up at the resident's own primary-care institution, quarterly.
        let managed: Vec<i32> = self
            .p
            .chronic
            .iter()
            .filter(|(c, _)| matches!(c, Chronic::Hypertension | Chronic::Diabetes))
            .map(|(_, d)| *d)
            .collect();
        if let Some(first) = managed.iter().min() {
            let mut d = (*first).max(lo) + self.rng.range(0, 30) as i32;
            while d <= hi {
                ev.push(Event {
                    at: At::new(d, self.time_of_day(8, 12)),
                    inst: home,
                    ev: Ev::FollowUp,
                });
                d += self.rng.range(80, 100) as i32;
            }
        }
        // Outpatient visits.
        let rate = match a_end {
            ..7 => 3.0,
            7..18 => 1.2,
            18..45 => 1.0,
            45..65 => 1.6,
            _ => 2.4,
        };
        for _ in 0..self.rng.poisson(rate * years) {
            let d = self.rng.range(i64::from(lo), i64::from(hi) + 1) as i32;
            let child = age(self.p.birth, d) < 14;
            let inst = match self.rng.f() {
                x if x < (if child { 0.35 } else { 0.55 }) => Some(home),
                _ => self.pick_hospital(if child { 0.6 } else { 0.4 }),
            };
            if let Some(inst) = inst {
                ev.push(Event {
                    at: At::new(d, self.time_of_day(8, 17)),
                    inst,
                    ev: Ev::Acute,
                });
            }
        }
        // Admissions.
        let mut adm_rate = match a_end {
            ..45 => 0.03,
            45..65 => 0.06,
            _ => 0.14,
        };
        if self.has(Chronic::Copd).is_some() || self.has(Chronic::Chd).is_some() {
            adm_rate += 0.1;
        }
        for _ in 0..self.rng.poisson(adm_rate * years) {
            let d = self.rng.range(i64::from(lo), i64::from(hi) + 1) as i32;
            let elderly = age(self.p.birth, d) >= 60;
            let pool: Vec<usize> = ADMISSIONS
                .iter()
                .enumerate()
                .filter(|(_, a)| a.elderly == (elderly && self.rng.chance(0.7)))
                .map(|(i, _)| i)
                .collect();
            if let (Some(h), false) = (self.pick_hospital(0.5), pool.is_empty()) {
                let adm = *self.rng.pick(&pool);
                let stay = ADMISSIONS[adm].stay;
                // An admission ends before the window does.
                if i64::from(d) + stay.1 < i64::from(hi) {
                    ev.push(Event {
                        at: At::new(d, self.time_of_day(0, 24)),
                        inst: h,
                        ev: Ev::Admit { adm, death: false },
                    });
                }
            }
        }
        if let Some(death) = self.p.death.filter(|d| *d >= lo && *d <= self.cfg.as_of) {
            if let Some(h) = self.pick_hospital(0.5) {
                let adm = [4usize, 5, 7, 8][self.rng.below(4)];
                ev.push(Event {
                    at: At::new(
                        death - self.rng.range(3, 12) as i32,
                        self.time_of_day(0, 24),
                    ),
                    inst: h,
                    ev: Ev::Admit { adm, death: true },
                });
            }
        }
        // Health checks: employer exams at the exam centre; free annual checks for over-65s.
        let exam = self.region.of_kind(Kind::ExamCentre).first().copied();
        let mut y = lo;
        while y + 30 <= hi {
            let a = age(self.p.birth, y);
            let d = y + self.rng.range(0, 300) as i32;
            if d <= hi {
                if (18..65).contains(&a) && self.rng.chance(0.3) {
                    if let Some(e) = exam {
                        ev.push(Event {
                            at: At::new(d, self.time_of_day(7, 10)),
                            inst: e,
                            ev: Ev::Exam { elderly: false },
                        });
                    }
                } else if a >= 65 && self.rng.chance(0.6) {
                    ev.push(Event {
                        at: At::new(d, self.time_of_day(7, 10)),
                        inst: home,
                        ev: Ev::Exam { elderly: true },
                    });
                }
            }
            y += 365;
        }
        if self.p.donor {
            if let Some(b) = self.region.of_kind(Kind::BloodCentre).first().copied() {
                let mut d = lo + self.rng.range(0, 200) as i32;
                while d <= hi {
                    if (18..=55).contains(&age(self.p.birth, d)) {
                        ev.push(Event {
                            at: At::new(d, self.time_of_day(9, 18)),
                            inst: b,
                            ev: Ev::Donation,
                        });
                    }
                    d += self.rng.range(180, 500) as i32;
                }
            }
        }
        ev
    }

    // ---- resources ----------------------------------------------------------------

    fn next_id(&mut self, pid: &str) -> String {
        self.seq += 1;
        format!("{pid}-{}", self.seq)
    }

    fn practitioner(&mut self, inst: usize) -> Value {
        let staff = &self.region.institutions[inst].staff;
        let p = &staff[self.rng.below(staff.len())];
        json!({"reference": format!("Practitioner/{}", p.id), "display": p.name})
    }

    /// When the institution's submission reached the platform.
    fn collected(&mut self, inst: usize, at: At) -> At {
        let (rt, batch) = self.inst(inst).kind.lag_profile();
        let x = self.rng.f();
        let secs = if x < rt {
            self.rng.range(30, 3600)
        } else if x < rt + batch {
            self.rng.range(2 * 3600, 3 * 86_400)
        } else {
            self.rng.range(7 * 86_400, 60 * 86_400)
        };
        let c = at.plus_secs(secs);
        // Nothing is collected after the generation date.
        let end = At::new(self.cfg.as_of, 23 * 3600);
        if c > end && at <= end {
            end
        } else {
            c
        }
    }

    fn meta(&mut self, inst: usize, at: At) -> Value {
        let c = self.collected(inst, at);
        json!({
            "source": self.inst(inst).source(),
            "extension": [{"url": COLLECTED_URL, "valueInstant": c.dt()}]
        })
    }

    fn patient(&mut self, inst: usize, at: At) -> String {
        if let Some(id) = self.views.get(&inst) {
            return id.clone();
        }
        let id = self.inst(inst).patient_id(self.p.idx);
        self.views.insert(inst, id.clone());
        let json = self.patient_resource(inst, &id, at);
        self.res.patients.push((inst, id.clone()));
        self.push(inst, "Patient", id.clone(), id.clone(), at.day, json);
        self.state.seen.entry(inst).or_default().push(id.clone());
        id
    }

    fn vary(&mut self, inst: usize, id: &str, kind: &'static str, detail: String, p: f64) -> bool {
        let p = match self.cfg.rates.get(kind) {
            Some(r) => *r,
            None => p * self.cfg.variation_scale,
        };
        if self.rng.chance(p) {
            self.res.defects.push(Defect {
                inst,
                rtype: "Patient",
                id: id.to_string(),
                class: "identity",
                kind,
                detail,
            });
            true
        } else {
            false
        }
    }

    fn patient_resource(&mut self, inst: usize, id: &str, at: At) -> Value {
        let p = self.p;
        let k = self.inst(inst).kind;
        let a = age(p.birth, at.day);
        let mut r = Map::new();
        r.insert("resourceType".into(), json!("Patient"));
        r.insert("id".into(), json!(id));
        r.insert("meta".into(), self.meta(inst, at));
        let mrn = format!("{:010}", self.inst(inst).patient_number(p.idx));
        let mut ids = vec![json!({
            "use": "usual",
            "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]},
            "system": self.inst(inst).mrn_system(),
            "value": mrn
        })];
        // The ID number, as this institution recorded it.
        let missing_rate = if a < 6 && k == Kind::Cdc {
            0.6
        } else {
            k.missing_id_rate()
        };
        let mut idn = Some(p.id_number.clone());
        if self.vary(inst, id, "id-missing", String::new(), missing_rate) {
            idn = None;
        }
        if let Some(s) = idn.take() {
            let mut s = s;
            let born_1900s = s[6..8] == *"19";
            if self.vary(inst, id, "id-typo", String::new(), 0.012) {
                let pos = self.rng.below(17);
                let b = s.as_bytes()[pos] - b'0';
                let nb = (b + 1 + self.rng.below(9) as u8) % 10;
                s.replace_range(pos..pos + 1, &nb.to_string());
            } else if self.vary(inst, id, "id-transposed", String::new(), 0.008) {
                let pos = 6 + self.rng.below(10);
                let mut b = s.into_bytes();
                b.swap(pos, pos + 1);
                s = String::from_utf8(b).expect("ascii");
            } else if born_1900s
                && self.vary(
                    inst,
                    id,
                    "id-legacy-15",
                    String::new(),
                    if k.is_primary() { 0.06 } else { 0.01 },
                )
            {
                s = format!("{}{}", &s[..6], &s[8..17]);
            } else if s.ends_with('X') && self.vary(inst, id, "id-lowercase-x", String::new(), 0.4)
            {
                s = s.to_lowercase();
            } else if self.vary(inst, id, "id-fullwidth", String::new(), 0.01) {
                s = s
                    .chars()
                    .map(|c| {
                        c.to_digit(10)
                            .map_or(c, |d| char::from_u32(0xFF10 + d).unwrap_or(c))
                    })
                    .collect();
            }
            idn = Some(s);
        }
        if let Some(s) = idn {
            ids.push(json!({
                "use": "official",
                "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "NI"}], "text": "居民身份证"},
                "system": ID_SYSTEM,
                "value": s
            }));
        }
        if let Some(hc) = &p.health_card {
            if k.is_hospital() && self.rng.chance(0.5) {
                ids.push(json!({"type": {"text": "居民健康卡"}, "system": HEALTH_CARD_SYSTEM, "value": hc}));
            }
        }
        r.insert("identifier".into(), Value::Array(ids));
        r.insert("active".into(), json!(true));

        // Name.
        let names = names();
        let mut family = p.surname.text.to_string();
        let mut given = p.given.clone();
        let mut pinyin = false;
        if self.vary(inst, id, "name-homophone", String::new(), 0.02) {
            let chars: Vec<char> = format!("{family}{given}").chars().collect();
            let pos = self.rng.below(chars.len());
            if let Some(h) = names.homophone(chars[pos], &mut self.rng) {
                let fl = family.chars().count();
                let mut c = chars.clone();
                c[pos] = h;
                family = c[..fl].iter().collect();
                given = c[fl..].iter().collect();
            }
            if let Some(d) = self.res.defects.last_mut() {
                d.detail = format!("{family}{given}");
            }
        } else if self.vary(inst, id, "name-traditional", String::new(), 0.01) {
            family = hutong_cn::hanzi::to_traditional(&family);
            given = hutong_cn::hanzi::to_traditional(&given);
        } else if given.chars().count() == 2
            && self.vary(inst, id, "name-swapped", String::new(), 0.006)
        {
            given = given.chars().rev().collect();
        } else if given.chars().count() == 2
            && self.vary(inst, id, "name-dropped", String::new(), 0.006)
        {
            given = given.chars().take(1).collect();
        } else if self.vary(inst, id, "name-pinyin", String::new(), 0.01) {
            pinyin = true;
        }
        let name = if pinyin {
            let cap = |s: &str| {
                let mut c = s.chars();
                c.next()
                    .map(|f| f.to_uppercase().chain(c).collect::<String>())
                    .unwrap_or_default()
            };
            let g: String = given
                .chars()
                .filter_map(hutong_cn::hanzi::reading)
                .collect();
            let f = cap(&p.surname.reading);
            json!({"use": "official", "text": format!("{f} {}", cap(&g)), "family": f, "given": [cap(&g)]})
        } else {
            json!({"use": "official", "text": format!("{family}{given}"), "family": family, "given": [given]})
        };
        r.insert("name".into(), json!([name]));

        // Phone: what the resident had when they first came.
        let mut phone = p.phone.clone();
        if let Some((old, changed)) = &p.old_phone {
            if at.day < *changed {
                phone = Some(old.clone());
                self.res.defects.push(Defect {
                    inst,
                    rtype: "Patient",
                    id: id.to_string(),
                    class: "identity",
                    kind: "phone-old",
                    detail: old.clone(),
                });
            }
        }
        if phone.is_some() && self.vary(inst, id, "phone-missing", String::new(), 0.08) {
            phone = None;
        }
        if let Some(ph) = phone {
            r.insert(
                "telecom".into(),
                json!([{"system": "phone", "value": ph, "use": "mobile"}]),
            );
        }
        if !self.vary(inst, id, "sex-missing", String::new(), 0.02) {
            r.insert(
                "gender".into(),
                json!(if p.male { "male" } else { "female" }),
            );
        }
        let (y, m, d) = crate::time::civil(p.birth);
        let birth = if d <= 12
            && d != m
            && self.vary(inst, id, "birthdate-day-month-swap", String::new(), 0.008)
        {
            format!("{y:04}-{d:02}-{m:02}")
        } else {
            crate::time::date(p.birth)
        };
        r.insert("birthDate".into(), json!(birth));
        if let Some(death) = p.death {
            let dies_here = self.death_inst == Some(inst);
            if dies_here {
                r.insert(
                    "deceasedDateTime".into(),
                    json!(At::new(death, 4 * 3600).dt()),
                );
            }
        }
        let (prov, city, district) = hutong_cn::division::path(p.county).unwrap_or(("", "", ""));
        let addr = if self.vary(inst, id, "address-partial", String::new(), 0.10) {
            json!({"use": "home", "text": format!("{city}{district}"), "city": city, "district": district, "country": "CN"})
        } else {
            json!({"use": "home", "text": p.address_text(), "line": [format!("{}{}", p.street, p.line)],
                   "city": city, "district": district, "state": prov, "country": "CN"})
        };
        r.insert("address".into(), json!([addr]));
        if let Some(t) = p.twin_of {
            r.insert(
                "multipleBirthInteger".into(),
                json!(if t < p.idx { 2 } else { 1 }),
            );
        }
        if let Some((gname, gphone)) = &p.contact {
            if a < 18 {
                let mut c = json!({
                    "relationship": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0131", "code": "N"}], "text": "监护人"}],
                    "name": {"text": gname}
                });
                if let Some(ph) = gphone {
                    c["telecom"] = json!([{"system": "phone", "value": ph}]);
                }
                r.insert("contact".into(), json!([c]));
            }
        }
        r.insert("managingOrganization".into(), self.inst(inst).org_ref());
        Value::Object(r)
    }
}

impl Gen<'_> {
    fn subject(pid: &str) -> Value {
        json!({"reference": format!("Patient/{pid}")})
    }

    fn encounter(
        &mut self,
        inst: usize,
        pid: &str,
        at: At,
        class: &str,
        etype: (&str, &str),
        end: Option<At>,
    ) -> String {
        let id = self.next_id(pid);
        let e = json!({
            "resourceType": "Encounter",
            "id": id,
            "meta": self.meta(inst, end.unwrap_or(at)),
            "status": "finished",
            "class": coding("http://terminology.hl7.org/CodeSystem/v3-ActCode", class, ""),
            "type": [concept(&format!("{LOCAL}/encounter-type"), etype.0, "", etype.1)],
            "subject": Self::subject(pid),
            "participant": [{"individual": self.practitioner(inst)}],
            "period": {"start": at.dt(), "end": end.unwrap_or(at.plus_secs(self.rng.range(600, 3600))).dt()},
            "serviceProvider": self.inst(inst).org_ref()
        });
        self.push(inst, "Encounter", id.clone(), pid.to_string(), at.day, e);
        id
    }

    #[allow(clippy::too_many_arguments)]
    fn observation(
        &mut self,
        inst: usize,
        pid: &str,
        enc: Option<&str>,
        at: At,
        cat: &str,
        t: &Test,
        value: f64,
    ) -> String {
        let id = self.next_id(pid);
        let v = round(value.max(0.0), t.decimals);
        let q = |v: f64| json!({"value": v, "unit": t.unit, "system": UCUM, "code": t.unit});
        let mut o = json!({
            "resourceType": "Observation",
            "id": id,
            "meta": self.meta(inst, at.plus_secs(3600)),
            "status": "final",
            "category": category(OBS_CAT, cat),
            "code": concept(LOINC, t.loinc, t.display, t.zh),
            "subject": Self::subject(pid),
            "effectiveDateTime": at.dt(),
            "issued": format!("{}", at.plus_secs(self.rng.range(1800, 7200)).dt()),
            "performer": [self.practitioner(inst)],
            "valueQuantity": q(v)
        });
        if let Some(e) = enc {
            o["encounter"] = json!({"reference": format!("Encounter/{e}")});
        }
        if t.high > 0.0 {
            o["referenceRange"] = json!([{"low": q(t.low), "high": q(t.high)}]);
            let flag = if v > t.high {
                "H"
            } else if v < t.low {
                "L"
            } else {
                "N"
            };
            o["interpretation"] = json!([{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation", "code": flag}]}]);
        }
        self.push(inst, "Observation", id.clone(), pid.to_string(), at.day, o);
        id
    }

    fn blood_pressure(&mut self, inst: usize, pid: &str, enc: &str, at: At) -> String {
        let htn_sbp = self.treated(self.base.sbp, 134.0, Chronic::Hypertension, at.day);
        let htn_dbp = self.treated(self.base.dbp, 84.0, Chronic::Hypertension, at.day);
        let sbp = self.rng.normal(htn_sbp, 6.0).round();
        let dbp = self.rng.normal(htn_dbp, 4.0).round().min(sbp - 20.0);
        let id = self.next_id(pid);
        let comp = |t: &Test, v: f64| {
            json!({"code": concept(LOINC, t.loinc, t.display, t.zh),
                   "valueQuantity": {"value": v, "unit": t.unit, "system": UCUM, "code": t.unit}})
        };
        let o = json!({
            "resourceType": "Observation",
            "id": id,
            "meta": self.meta(inst, at),
            "status": "final",
            "category": category(OBS_CAT, "vital-signs"),
            "code": concept(LOINC, "85354-9", "Blood pressure panel with all children optional", "血压"),
            "subject": Self::subject(pid),
            "encounter": {"reference": format!("Encounter/{enc}")},
            "effectiveDateTime": at.dt(),
            "performer": [self.practitioner(inst)],
            "component": [comp(&SBP, sbp), comp(&DBP, dbp)]
        });
        self.push(inst, "Observation", id.clone(), pid.to_string(), at.day, o);
        id
    }

    #[allow(clippy::too_many_arguments)]
    fn report(
        &mut self,
        inst: usize,
        pid: &str,
        enc: Option<&str>,
        at: At,
        cat: &str,
        code: Value,
        results: &[String],
        conclusion: Option<&str>,
    ) -> String {
        let id = self.next_id(pid);
        let issued = at.plus_secs(self.rng.range(3600, 6 * 3600));
        let mut r = json!({
            "resourceType": "DiagnosticReport",
            "id": id,
            "meta": self.meta(inst, issued),
            "status": "final",
            "category": category(V2_0074, cat),
            "code": code,
            "subject": Self::subject(pid),
            "effectiveDateTime": at.dt(),
            "issued": issued.dt(),
            "performer": [self.inst(inst).org_ref()]
        });
        if let Some(e) = enc {
            r["encounter"] = json!({"reference": format!("Encounter/{e}")});
        }
        if !results.is_empty() {
            r["result"] = Value::Array(
                results
                    .iter()
                    .map(|o| json!({"reference": format!("Observation/{o}")}))
                    .collect(),
            );
        }
        if let Some(c) = conclusion {
            r["conclusion"] = json!(c);
        }
        self.push(
            inst,
            "DiagnosticReport",
            id.clone(),
            pid.to_string(),
            at.day,
            r,
        );
        id
    }

    fn lab_panel(
        &mut self,
        inst: usize,
        pid: &str,
        enc: Option<&str>,
        at: At,
        panel: (&str, &str, &str),
        tests: &[(&Test, f64)],
    ) {
        let results: Vec<String> = tests
            .iter()
            .map(|(t, v)| self.observation(inst, pid, enc, at, "laboratory", t, *v))
            .collect();
        self.report(
            inst,
            pid,
            enc,
            at,
            "LAB",
            concept(LOINC, panel.0, panel.1, panel.2),
            &results,
            None,
        );
    }

    fn cbc(&mut self, inst: usize, pid: &str, enc: Option<&str>, at: At, infection: bool) {
        let wbc = if infection {
            self.rng.normal(11.5, 2.0)
        } else {
            self.rng.normal(WBC.mean, WBC.sd)
        };
        let hgb = if self.p.male { &HGB_M } else { &HGB_F };
        let tests = [
            (&WBC, wbc),
            (hgb, self.rng.normal(hgb.mean, hgb.sd)),
            (&PLT, self.rng.normal(PLT.mean, PLT.sd)),
        ];
        self.lab_panel(
            inst,
            pid,
            enc,
            at,
            ("58410-2", "CBC panel - Blood by Automated count", "血常规"),
            &tests,
        );
    }

    fn chemistry(&mut self, inst: usize, pid: &str, enc: Option<&str>, at: At) {
        let crea = if self.p.male { &CREA_M } else { &CREA_F };
        let glu = self.treated(self.base.glucose, 7.0, Chronic::Diabetes, at.day);
        let tests = [
            (&ALT, self.rng.normal(ALT.mean, ALT.sd).max(5.0)),
            (crea, self.rng.normal(crea.mean, crea.sd)),
            (&GLU, self.rng.normal(glu, 0.4)),
        ];
        self.lab_panel(
            inst,
            pid,
            enc,
            at,
            (
                "24323-8",
                "Comprehensive metabolic 2000 panel - Serum or Plasma",
                "生化全项",
            ),
            &tests,
        );
    }

    fn lipids(&mut self, inst: usize, pid: &str, enc: Option<&str>, at: At) {
        let chol = self.treated(self.base.chol, 4.8, Chronic::Hyperlipidaemia, at.day);
        let tests = [
            (&CHOL, self.rng.normal(chol, 0.3)),
            (&TG, self.rng.normal(TG.mean, TG.sd).max(0.3)),
            (&HDL, self.rng.normal(HDL.mean, HDL.sd).max(0.5)),
            (&LDL, self.rng.normal(chol * 0.6, 0.3).max(0.8)),
        ];
        self.lab_panel(
            inst,
            pid,
            enc,
            at,
            (
                "57698-3",
                "Lipid panel with direct LDL - Serum or Plasma",
                "血脂四项",
            ),
            &tests,
        );
    }

    fn imaging(
        &mut self,
        inst: usize,
        pid: &str,
        enc: Option<&str>,
        at: At,
        which: usize,
        abnormal: bool,
    ) {
        let (loinc, display, zh, modality, normal, finding) = IMAGING[which];
        let id = self.next_id(pid);
        let n = self.rng.range(1, 4);
        let uid = format!(
            "2.25.{}{:08}{:04}",
            1 + self.p.idx % 9,
            self.p.idx,
            self.seq
        );
        let study = json!({
            "resourceType": "ImagingStudy",
            "id": id,
            "meta": self.meta(inst, at),
            "identifier": [{"system": "urn:dicom:uid", "value": format!("urn:oid:{uid}")}],
            "status": "available",
            "modality": [coding(DICOM, modality, "")],
            "subject": Self::subject(pid),
            "started": at.dt(),
            "numberOfSeries": 1,
            "numberOfInstances": n * 20,
            "description": zh,
            "series": [{"uid": format!("{uid}.1"), "modality": coding(DICOM, modality, ""), "numberOfInstances": n * 20}]
        });
        let mut study = study;
        if let Some(e) = enc {
            study["encounter"] = json!({"reference": format!("Encounter/{e}")});
        }
        self.push(
            inst,
            "ImagingStudy",
            id.clone(),
            pid.to_string(),
            at.day,
            study,
        );
        let conclusion = if abnormal { finding } else { normal };
        let rid = self.report(
            inst,
            pid,
            enc,
            at,
            "RAD",
            concept(LOINC, loinc, display, zh),
            &[],
            Some(conclusion),
        );
        if let Some(r) = self.res.out.iter_mut().rev().find(|o| o.id == rid) {
            r.json["imagingStudy"] = json!([{"reference": format!("ImagingStudy/{id}")}]);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn condition(
        &mut self,
        inst: usize,
        pid: &str,
        enc: Option<&str>,
        at: At,
        code: (&str, &str),
        chronic: bool,
        onset: i32,
    ) -> String {
        let id = self.next_id(pid);
        let mut c = json!({
            "resourceType": "Condition",
            "id": id,
            "meta": self.meta(inst, at),
            "clinicalStatus": concept("http://terminology.hl7.org/CodeSystem/condition-clinical", if chronic { "active" } else { "resolved" }, "", ""),
            "verificationStatus": concept("http://terminology.hl7.org/CodeSystem/condition-ver-status", "confirmed", "", ""),
            "category": category("http://terminology.hl7.org/CodeSystem/condition-category", if chronic { "problem-list-item" } else { "encounter-diagnosis" }),
            "code": concept(ICD10, code.0, "", code.1),
            "subject": Self::subject(pid),
            "onsetDateTime": At::new(onset, 9 * 3600).dt(),
            "recordedDate": at.dt(),
            "recorder": self.practitioner(inst)
        });
        if !chronic {
            c["abatementDateTime"] =
                json!(At::new(at.day + self.rng.range(5, 15) as i32, 9 * 3600).dt());
        }
        if let Some(e) = enc {
            c["encounter"] = json!({"reference": format!("Encounter/{e}")});
        }
        self.push(inst, "Condition", id.clone(), pid.to_string(), at.day, c);
        id
    }

    fn medication(
        &mut self,
        inst: usize,
        pid: &str,
        enc: &str,
        at: At,
        m: &Medicine,
        long_term: bool,
    ) {
        let id = self.next_id(pid);
        let days = if long_term { 90 } else { self.rng.range(3, 8) };
        let end = At::new(at.day + days as i32, at.sec);
        let status = if end.day < self.cfg.as_of {
            "completed"
        } else {
            "active"
        };
        let r = json!({
            "resourceType": "MedicationRequest",
            "id": id,
            "meta": self.meta(inst, at),
            "status": status,
            "intent": "order",
            "medicationCodeableConcept": concept(ATC, m.atc, "", m.zh),
            "subject": Self::subject(pid),
            "encounter": {"reference": format!("Encounter/{enc}")},
            "authoredOn": at.dt(),
            "requester": self.practitioner(inst),
            "dosageInstruction": [{"text": m.dose}],
            "dispenseRequest": {"validityPeriod": {"start": at.dt(), "end": end.dt()}, "expectedSupplyDuration": {"value": days, "unit": "d", "system": UCUM, "code": "d"}}
        });
        self.push(inst, "MedicationRequest", id, pid.to_string(), at.day, r);
    }

    fn procedure(&mut self, inst: usize, pid: &str, enc: &str, at: At, code: Value) {
        let id = self.next_id(pid);
        let r = json!({
            "resourceType": "Procedure",
            "id": id,
            "meta": self.meta(inst, at),
            "status": "completed",
            "code": code,
            "subject": Self::subject(pid),
            "encounter": {"reference": format!("Encounter/{enc}")},
            "performedDateTime": at.dt(),
            "performer": [{"actor": self.practitioner(inst)}]
        });
        self.push(inst, "Procedure", id, pid.to_string(), at.day, r);
    }

    fn allergy(&mut self, inst: usize, pid: &str, at: At) {
        if self.allergy_done {
            return;
        }
        let Some(a) = self.p.allergy else { return };
        self.allergy_done = true;
        let (substance, cat) = ALLERGIES[a];
        let id = self.next_id(pid);
        let r = json!({
            "resourceType": "AllergyIntolerance",
            "id": id,
            "meta": self.meta(inst, at),
            "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical", "code": "active"}]},
            "verificationStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/allergyintolerance-verification", "code": "confirmed"}]},
            "category": [cat],
            "criticality": if cat == "medication" { "high" } else { "low" },
            "code": {"text": substance},
            "patient": Self::subject(pid),
            "recordedDate": at.dt(),
            "recorder": self.practitioner(inst),
            "reaction": [{"manifestation": [{"text": if cat == "food" { "荨麻疹" } else { "皮疹" }}]}]
        });
        self.push(inst, "AllergyIntolerance", id, pid.to_string(), at.day, r);
    }

    fn immunization(&mut self, inst: usize, pid: &str, at: At, code: &str, zh: &str, dose: u32) {
        let id = self.next_id(pid);
        let r = json!({
            "resourceType": "Immunization",
            "id": id,
            "meta": self.meta(inst, at),
            "status": "completed",
            "vaccineCode": concept(&format!("{LOCAL}/cn-nip-vaccine"), code, "", zh),
            "patient": Self::subject(pid),
            "occurrenceDateTime": at.dt(),
            "primarySource": true,
            "lotNumber": format!("{}{}", 2020 + self.rng.range(0, 7), self.rng.range(100_000, 999_999)),
            "performer": [{"actor": self.practitioner(inst)}],
            "protocolApplied": [{"doseNumberPositiveInt": dose}]
        });
        self.push(inst, "Immunization", id, pid.to_string(), at.day, r);
    }

    fn vitals(&mut self, inst: usize, pid: &str, enc: &str, at: At, fever: bool) {
        let t = if fever {
            self.rng.normal(38.3, 0.5)
        } else {
            self.rng.normal(TEMP.mean, TEMP.sd)
        };
        self.observation(inst, pid, Some(enc), at, "vital-signs", &TEMP, t);
        let hr = self
            .rng
            .normal(HR.mean + if fever { 12.0 } else { 0.0 }, HR.sd);
        self.observation(inst, pid, Some(enc), at, "vital-signs", &HR, hr);
        if age(self.p.birth, at.day) >= 18 {
            self.blood_pressure(inst, pid, enc, at);
        }
    }

    fn body(&mut self, inst: usize, pid: &str, enc: &str, at: At) {
        let a = age(self.p.birth, at.day);
        let (h, w) = if a < 18 {
            let months = f64::from(at.day - self.p.birth) / 30.4;
            let h = if months < 24.0 {
                50.0 + 1.6 * months
            } else {
                88.0 + 6.0 * (months / 12.0 - 2.0)
            };
            let h = self.rng.normal(h.min(self.base.height), 2.0);
            (h, (h / 100.0).powi(2) * self.rng.normal(16.0, 1.5))
        } else {
            let h = self.base.height;
            (
                self.rng.normal(h, 0.5),
                (h / 100.0).powi(2) * self.rng.normal(self.base.bmi, 0.5),
            )
        };
        self.observation(inst, pid, Some(enc), at, "vital-signs", &HEIGHT, h);
        self.observation(inst, pid, Some(enc), at, "vital-signs", &WEIGHT, w);
        if a >= 18 {
            self.observation(
                inst,
                pid,
                Some(enc),
                at,
                "vital-signs",
                &BMI,
                w / (h / 100.0).powi(2),
            );
        }
    }

    fn emit_event(&mut self, e: &Event) {
        let (inst, at) = (e.inst, e.at);
        match e.ev {
            Ev::Born => {
                let pid = self.patient(inst, at);
                let enc = self.encounter(
                    inst,
                    &pid,
                    at,
                    "IMP",
                    ("newborn", "新生儿"),
                    Some(At::new(at.day + 3, 10 * 3600)),
                );
                self.body(inst, &pid, &enc, at.plus_secs(1800));
            }
            Ev::Delivery { child } => {
                let pid = self.patient(inst, at);
                let end = At::new(at.day + self.rng.range(3, 6) as i32, 10 * 3600);
                let caesarean = Rng::new(self.cfg.seed, 4_000_000_000 + child).chance(0.4);
                let enc = self.encounter(inst, &pid, at, "IMP", ("inpatient", "住院"), Some(end));
                let dx = if caesarean { CAESAREAN } else { DELIVERY };
                let cid = self.condition(inst, &pid, Some(&enc), at, dx, false, at.day);
                self.hospitalization(&enc, &[cid], "home");
                if caesarean {
                    self.procedure(
                        inst,
                        &pid,
                        &enc,
                        at.plus_secs(4 * 3600),
                        concept(ICD9CM, CAESAREAN_PROC.0, "", CAESAREAN_PROC.1),
                    );
                }
                self.cbc(inst, &pid, Some(&enc), at.plus_secs(1800), false);
                self.allergy(inst, &pid, at);
            }
            Ev::Vaccine(i) => {
                let pid = self.patient(inst, at);
                let (code, zh, _, dose) = NIP_SCHEDULE[i];
                self.immunization(inst, &pid, at, code, zh, dose);
            }
            Ev::Flu => {
                let pid = self.patient(inst, at);
                self.immunization(inst, &pid, at, "Flu", "流感疫苗", 1);
            }
            Ev::FollowUp => {
                let pid = self.patient(inst, at);
                let enc = self.encounter(
                    inst,
                    &pid,
                    at,
                    "AMB",
                    ("chronic-followup", "慢病随访"),
                    None,
                );
                let first = !self.res.out.iter().any(|o| {
                    o.rtype == "Condition"
                        && o.inst == inst
                        && o.json["category"][0]["coding"][0]["code"] == "problem-list-item"
                });
                if first {
                    let chronic = self.p.chronic.clone();
                    for (c, onset) in chronic {
                        if onset <= at.day {
                            self.condition(inst, &pid, Some(&enc), at, c.code(), true, onset);
                        }
                    }
                }
                self.blood_pressure(inst, &pid, &enc, at);
                let hr = self.base_hr();
                self.observation(inst, &pid, Some(&enc), at, "vital-signs", &HR, hr);
                if self.has(Chronic::Diabetes).is_some_and(|d| d <= at.day) {
                    let g = self.treated(self.base.glucose, 7.0, Chronic::Diabetes, at.day);
                    let v = self.rng.normal(g, 0.5);
                    self.observation(inst, &pid, Some(&enc), at, "laboratory", &GLU, v);
                    if self.rng.chance(0.5) {
                        let h = self.treated(self.base.hba1c, 6.8, Chronic::Diabetes, at.day);
                        let v = self.rng.normal(h, 0.2);
                        let o =
                            self.observation(inst, &pid, Some(&enc), at, "laboratory", &HBA1C, v);
                        self.report(
                            inst,
                            &pid,
                            Some(&enc),
                            at,
                            "LAB",
                            concept(LOINC, HBA1C.loinc, HBA1C.display, HBA1C.zh),
                            &[o],
                            None,
                        );
                    }
                }
                let chronic = self.p.chronic.clone();
                for (c, onset) in chronic {
                    if onset <= at.day {
                        self.medication(inst, &pid, &enc, at, c.medicine(), true);
                    }
                }
            }
            Ev::Acute => {
                let pid = self.patient(inst, at);
                let child = age(self.p.birth, at.day) < 14;
                let pool: Vec<&Dx> = ACUTE
                    .iter()
                    .filter(|d| !child || !matches!(d.code, "M54.5" | "K21.9"))
                    .collect();
                let dx = *self.rng.pick(&pool);
                let emergency = self.inst(inst).kind.is_hospital() && self.rng.chance(0.1);
                let (class, et) = if emergency {
                    ("EMER", ("emergency", "急诊"))
                } else {
                    ("AMB", ("outpatient", "门诊"))
                };
                let enc = self.encounter(inst, &pid, at, class, et, None);
                let onset = at.day - self.rng.range(0, 4) as i32;
                self.condition(inst, &pid, Some(&enc), at, (dx.code, dx.zh), false, onset);
                let fever = dx.fever && self.rng.chance(0.6);
                self.vitals(inst, &pid, &enc, at, fever);
                if self.rng.chance(0.35) {
                    self.cbc(inst, &pid, Some(&enc), at.plus_secs(1200), fever);
                }
                if dx.code.starts_with('J') && self.rng.chance(0.15) {
                    self.imaging(inst, &pid, Some(&enc), at.plus_secs(2400), 0, fever);
                }
                if self.rng.chance(0.7) {
                    let m = if fever && matches!(dx.code, "J02.9" | "J20.9" | "N39.0") {
                        &MEDICINES[5 + self.rng.below(2)]
                    } else if dx.code.starts_with('K') {
                        &MEDICINES[8]
                    } else if dx.code.starts_with('J') {
                        &MEDICINES[9 + self.rng.below(2)]
                    } else {
                        &MEDICINES[7]
                    };
                    self.medication(inst, &pid, &enc, at, m, false);
                }
                self.allergy(inst, &pid, at);
            }
            Ev::Admit { adm, death } => {
                let a = &ADMISSIONS[adm];
                let pid = self.patient(inst, at);
                let end = if death {
                    At::new(self.p.death.unwrap_or(at.day + 5), 4 * 3600)
                } else {
                    At::new(
                        at.day + self.rng.range(a.stay.0, a.stay.1 + 1) as i32,
                        self.time_of_day(9, 12),
                    )
                };
                let enc = self.encounter(inst, &pid, at, "IMP", ("inpatient", "住院"), Some(end));
                let mut conds = vec![self.condition(
                    inst,
                    &pid,
                    Some(&enc),
                    at,
                    (a.dx.code, a.dx.zh),
                    false,
                    at.day,
                )];
                let chronic = self.p.chronic.clone();
                for (c, onset) in chronic {
                    if onset <= at.day {
                        conds.push(self.condition(
                            inst,
                            &pid,
                            Some(&enc),
                            at,
                            c.code(),
                            true,
                            onset,
                        ));
                    }
                }
                self.hospitalization(&enc, &conds, if death { "exp" } else { "home" });
                self.vitals(inst, &pid, &enc, at, a.dx.fever);
                self.cbc(inst, &pid, Some(&enc), at.plus_secs(3600), a.dx.fever);
                self.chemistry(inst, &pid, Some(&enc), at.plus_secs(3600));
                match a.dx.code {
                    "I63.9" => self.imaging(inst, &pid, Some(&enc), at.plus_secs(1800), 2, true),
                    "J18.9" | "J44.1" => self.imaging(
                        inst,
                        &pid,
                        Some(&enc),
                        at.plus_secs(1800),
                        1,
                        a.dx.code == "J18.9",
                    ),
                    _ if self.rng.chance(0.4) => {
                        self.imaging(inst, &pid, Some(&enc), at.plus_secs(1800), 0, false)
                    }
                    _ => {}
                }
                if let Some((code, zh)) = a.procedure {
                    self.procedure(
                        inst,
                        &pid,
                        &enc,
                        At::new(at.day + 1, 10 * 3600),
                        concept(ICD9CM, code, "", zh),
                    );
                }
                let meds: Vec<&Medicine> = match a.dx.code {
                    "J18.9" | "J44.1" | "K35.8" => vec![&MEDICINES[6]],
                    "I63.9" | "I21.9" => vec![&MEDICINES[4], &MEDICINES[3]],
                    _ => vec![&MEDICINES[10]],
                };
                for m in meds {
                    self.medication(inst, &pid, &enc, at, m, false);
                }
                self.allergy(inst, &pid, at);
            }
            Ev::Exam { elderly } => {
                let pid = self.patient(inst, at);
                let enc = self.encounter(inst, &pid, at, "AMB", ("health-exam", "健康体检"), None);
                self.body(inst, &pid, &enc, at);
                self.blood_pressure(inst, &pid, &enc, at);
                self.cbc(inst, &pid, Some(&enc), at.plus_secs(900), false);
                self.lipids(inst, &pid, Some(&enc), at.plus_secs(900));
                self.chemistry(inst, &pid, Some(&enc), at.plus_secs(900));
                if !elderly {
                    let abnormal = self.rng.chance(0.05);
                    self.imaging(inst, &pid, Some(&enc), at.plus_secs(1800), 0, abnormal);
                }
                let findings = self.exam_findings(inst);
                let code = concept(
                    &format!("{LOCAL}/report-type"),
                    "health-exam",
                    "",
                    "健康体检报告",
                );
                let results: Vec<String> = self
                    .res
                    .out
                    .iter()
                    .filter(|o| {
                        o.rtype == "Observation"
                            && o.json["encounter"]["reference"] == format!("Encounter/{enc}")
                    })
                    .map(|o| o.id.clone())
                    .collect();
                let issued = At::new(at.day + self.rng.range(2, 8) as i32, 10 * 3600);
                self.report(
                    inst,
                    &pid,
                    Some(&enc),
                    issued,
                    "OTH",
                    code,
                    &results,
                    Some(&findings),
                );
            }
            Ev::Donation => {
                let pid = self.patient(inst, at);
                let enc = self.encounter(inst, &pid, at, "AMB", ("blood-donation", "献血"), None);
                let hgb = if self.p.male { &HGB_M } else { &HGB_F };
                let v = self.rng.normal(hgb.mean, hgb.sd * 0.6).max(hgb.low);
                self.observation(inst, &pid, Some(&enc), at, "laboratory", hgb, v);
                let id = self.next_id(&pid);
                let bg = json!({
                    "resourceType": "Observation",
                    "id": id,
                    "meta": self.meta(inst, at),
                    "status": "final",
                    "category": category(OBS_CAT, "laboratory"),
                    "code": concept(LOINC, "882-1", "ABO and Rh group [Type] in Blood", "ABO及RhD血型"),
                    "subject": Self::subject(&pid),
                    "encounter": {"reference": format!("Encounter/{enc}")},
                    "effectiveDateTime": at.dt(),
                    "valueCodeableConcept": {"text": BLOOD_GROUPS[self.p.blood_group].0}
                });
                self.push(inst, "Observation", id, pid.clone(), at.day, bg);
                let volume = if self.rng.chance(0.6) {
                    "400ml"
                } else {
                    "200ml"
                };
                self.procedure(
                    inst,
                    &pid,
                    &enc,
                    at.plus_secs(900),
                    concept(
                        &format!("{LOCAL}/blood-service"),
                        "whole-blood-donation",
                        "",
                        &format!("全血捐献 {volume}"),
                    ),
                );
            }
        }
    }

    fn base_hr(&mut self) -> f64 {
        self.rng.normal(HR.mean, HR.sd)
    }

    fn exam_findings(&self, inst: usize) -> String {
        let mut f: Vec<&str> = Vec::new();
        for (c, s) in [
            (Chronic::Hypertension, "血压偏高，建议心内科随诊"),
            (Chronic::Diabetes, "空腹血糖升高，建议内分泌科随诊"),
            (Chronic::Hyperlipidaemia, "血脂异常，建议低脂饮食并复查"),
        ] {
            if self.has(c).is_some() {
                f.push(s);
            }
        }
        if self.base.bmi >= 28.0 {
            f.push("肥胖，建议控制体重");
        } else if self.base.bmi >= 24.0 {
            f.push("超重，建议加强运动");
        }
        let _ = inst;
        if f.is_empty() {
            "本次体检未见明显异常。".to_string()
        } else {
            format!("{}。", f.join("；"))
        }
    }

    /// Case front page content (病案首页) of an admission: diagnoses with their roles, and
    /// how the stay ended.
    fn hospitalization(&mut self, enc: &str, conditions: &[String], disposition: &str) {
        let Some(e) = self.res.out.iter_mut().rev().find(|o| o.id == enc) else {
            return;
        };
        let role = "http://terminology.hl7.org/CodeSystem/diagnosis-role";
        let mut diagnosis = Vec::new();
        for (i, c) in conditions.iter().enumerate() {
            let r = json!({"reference": format!("Condition/{c}")});
            if i == 0 {
                diagnosis.push(json!({"condition": r, "use": {"coding": [{"system": role, "code": "AD"}]}, "rank": 1}));
                diagnosis.push(json!({"condition": {"reference": format!("Condition/{c}")}, "use": {"coding": [{"system": role, "code": "DD"}]}, "rank": 1}));
            } else {
                diagnosis.push(json!({"condition": r, "use": {"coding": [{"system": role, "code": "CM"}]}, "rank": i + 1}));
            }
        }
        e.json["diagnosis"] = Value::Array(diagnosis);
        e.json["hospitalization"] = json!({
            "admitSource": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/admit-source", "code": if disposition == "exp" { "emd" } else { "outp" }}]},
            "dischargeDisposition": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/discharge-disposition", "code": disposition}]}
        });
    }
}

const DATE_FIELDS: &[&str] = &[
    "effectiveDateTime",
    "occurrenceDateTime",
    "authoredOn",
    "performedDateTime",
    "onsetDateTime",
    "started",
    "recordedDate",
];

fn required_fields(rtype: &str) -> &'static [&'static str] {
    match rtype {
        "Encounter" => &["status", "class"],
        "Observation" => &["status", "code"],
        "Condition" => &["subject"],
        "MedicationRequest" => &["status", "intent", "subject", "medicationCodeableConcept"],
        "Immunization" => &["status", "vaccineCode", "patient", "occurrenceDateTime"],
        "DiagnosticReport" => &["status", "code"],
        "Procedure" => &["status", "subject"],
        "AllergyIntolerance" => &["patient"],
        "ImagingStudy" => &["status", "subject"],
        _ => &[],
    }
}

impl Gen<'_> {
    fn push(
        &mut self,
        inst: usize,
        rtype: &'static str,
        id: String,
        patient: String,
        day: i32,
        json: Value,
    ) {
        self.res.out.push(Out {
            inst,
            rtype,
            id,
            patient,
            day,
            json,
        });
    }

    /// Injects quality defects at the configured rate, once a resident's records are
    /// complete (so later edits such as the case front page are never lost from a copy).
    fn inject_defects(&mut self) {
        let n = self.res.out.len();
        let mut copies = Vec::new();
        for i in 0..n {
            if !self.rng.chance(self.cfg.defect_rate) {
                continue;
            }
            let kinds: &[&'static str] = match self.res.out[i].rtype {
                "Patient" => &["invalid-id-check", "impossible-date", "duplicate"],
                "Observation" => &[
                    "missing-required",
                    "invalid-code",
                    "unit-error",
                    "impossible-date",
                    "dangling-reference",
                    "wrong-patient",
                    "duplicate",
                ],
                "Condition" => &[
                    "missing-required",
                    "invalid-code",
                    "impossible-date",
                    "wrong-patient",
                    "duplicate",
                ],
                _ => &[
                    "missing-required",
                    "impossible-date",
                    "dangling-reference",
                    "wrong-patient",
                    "duplicate",
                ],
            };
            // Relative weights of the kinds (`--rate KIND=W`; 0 disables a kind).
            let weights: Vec<f64> = kinds
                .iter()
                .map(|k| *self.cfg.rates.get(*k).unwrap_or(&1.0))
                .collect();
            let total: f64 = weights.iter().sum();
            if total <= 0.0 {
                continue;
            }
            let mut x = self.rng.f() * total;
            let mut pick = kinds.len() - 1;
            for (i, w) in weights.iter().enumerate() {
                if x < *w {
                    pick = i;
                    break;
                }
                x -= w;
            }
            let kind = kinds[pick];
            let Some(detail) = self.apply_defect(i, kind) else {
                continue;
            };
            let o = &self.res.out[i];
            let (inst, rtype) = (o.inst, o.rtype);
            let id = if kind == "duplicate" {
                let mut copy = Out {
                    inst,
                    rtype,
                    id: format!("{}-r", o.id),
                    patient: o.patient.clone(),
                    day: o.day,
                    json: o.json.clone(),
                };
                copy.json["id"] = json!(copy.id);
                let id = copy.id.clone();
                if rtype == "Patient" {
                    self.res.patients.push((inst, id.clone()));
                    // The copy carries the original's intake variations too.
                    let inherited: Vec<Defect> = self
                        .res
                        .defects
                        .iter()
                        .filter(|d| d.inst == inst && d.id == o.id)
                        .map(|d| Defect {
                            id: id.clone(),
                            detail: d.detail.clone(),
                            ..*d
                        })
                        .collect();
                    self.res.defects.extend(inherited);
                }
                copies.push(copy);
                id
            } else {
                o.id.clone()
            };
            self.res.defects.push(Defect {
                inst,
                rtype,
                id,
                class: "quality",
                kind,
                detail,
            });
        }
        self.res.out.extend(copies);
    }

    fn apply_defect(&mut self, i: usize, kind: &str) -> Option<String> {
        let future = At::new(self.cfg.as_of + self.rng.range(200, 800) as i32, 10 * 3600);
        let seen: Vec<String> = self
            .state
            .seen
            .get(&self.res.out[i].inst)
            .cloned()
            .unwrap_or_default();
        let pick = self.rng.f();
        let o = &mut self.res.out[i];
        let r = o.json.as_object_mut()?;
        match kind {
            "missing-required" => {
                let fields = required_fields(o.rtype);
                let f = *fields.get((pick * fields.len() as f64) as usize)?;
                r.remove(f)?;
                Some(f.to_string())
            }
            "invalid-code" => {
                let c = r
                    .get_mut("code")?
                    .get_mut("coding")?
                    .get_mut(0)?
                    .get_mut("code")?;
                let old = c.as_str()?.to_string();
                let new = if o.rtype == "Observation" {
                    let (body, check) = old.rsplit_once('-')?;
                    let d = check.parse::<u32>().ok()?;
                    format!("{body}-{}", (d + 1) % 10)
                } else {
                    // The letter O typed for the digit 0, or a digit for a letter.
                    let mut ch: Vec<char> = old.chars().collect();
                    *ch.get_mut(1)? = 'O';
                    ch.into_iter().collect()
                };
                *c = json!(new);
                Some(format!("{old}→{new}"))
            }
            "unit-error" => {
                let q = r.get_mut("valueQuantity")?.as_object_mut()?;
                let v = q.get("value")?.as_f64()?;
                let unit = q.get("unit")?.as_str()?.to_string();
                match unit.as_str() {
                    "mmol/L" => {
                        q.insert("value".into(), json!((v * 18.0).round()));
                        Some("mg/dL value labelled mmol/L".into())
                    }
                    "cm" => {
                        q.insert("value".into(), json!(round(v / 100.0, 2)));
                        Some("metres labelled cm".into())
                    }
                    _ => {
                        q.insert("unit".into(), json!("克/升"));
                        q.insert("code".into(), json!("克/升"));
                        Some(format!("unit {unit} written as 克/升"))
                    }
                }
            }
            "impossible-date" => {
                if o.rtype == "Patient" {
                    r.insert("birthDate".into(), json!(crate::time::date(future.day)));
                    return Some("birthDate in the future".into());
                }
                if let Some(p) = r.get_mut("period").and_then(Value::as_object_mut) {
                    let start = p.get("start")?.as_str()?.to_string();
                    if o.rtype == "Encounter"
                        && start.as_str() < p.get("end")?.as_str()?
                        && pick < 0.6
                    {
                        let (y, m, d) = (
                            start[..4].parse().ok()?,
                            start[5..7].parse().ok()?,
                            start[8..10].parse().ok()?,
                        );
                        let before = At::new(
                            crate::time::days(y, m, d) - 1 - (pick * 3.0) as i32,
                            9 * 3600,
                        );
                        p.insert("end".into(), json!(before.dt()));
                        return Some("period.end before period.start".into());
                    }
                    p.insert("start".into(), json!(future.dt()));
                    p.insert("end".into(), json!(future.plus_secs(3600).dt()));
                    return Some("period in the future".into());
                }
                let f = DATE_FIELDS.iter().find(|f| r.contains_key(**f))?;
                r.insert((*f).into(), json!(future.dt()));
                Some(format!("{f} in the future"))
            }
            "dangling-reference" => {
                let field = ["subject", "patient"]
                    .into_iter()
                    .find(|f| r.contains_key(*f))?;
                let target = format!(
                    "Patient/{}-zz{:06}",
                    o.patient.split('-').next().unwrap_or("x"),
                    (pick * 1e6) as u32
                );
                r.insert(field.into(), json!({"reference": target}));
                Some(target)
            }
            "wrong-patient" => {
                let others: Vec<&String> = seen.iter().filter(|s| **s != o.patient).collect();
                if others.is_empty() {
                    return None;
                }
                let other = others[(pick * others.len() as f64) as usize % others.len()];
                let field = ["subject", "patient"]
                    .into_iter()
                    .find(|f| r.contains_key(*f))?;
                r.insert(
                    field.into(),
                    json!({"reference": format!("Patient/{other}")}),
                );
                Some(format!(
                    "filed under Patient/{other} but belongs to Patient/{}",
                    o.patient
                ))
            }
            "invalid-id-check" => {
                let ids = r.get_mut("identifier")?.as_array_mut()?;
                let id = ids.iter_mut().find(|i| i["system"] == ID_SYSTEM)?;
                let v = id["value"].as_str()?.to_string();
                if v.len() != 18 || !v.is_ascii() {
                    return None;
                }
                let good = v.as_bytes()[17];
                let bad = if good == b'X' {
                    '0'
                } else if good == b'9' {
                    'X'
                } else {
                    (good + 1) as char
                };
                let nv = format!("{}{bad}", &v[..17]);
                id["value"] = json!(nv);
                Some(format!("{v}→{nv}"))
            }
            "duplicate" => Some(format!("copy of {}", o.id)),
            _ => None,
        }
    }
}
