//! Residents, generated household by household: names from real surname frequencies,
//! valid ID numbers consistent with the address, phones, family links.

use std::collections::HashSet;

use hutong_cn::{division, idcard, phone};

use crate::region::{Kind, Region};
use crate::rng::Rng;
use crate::tables::{
    names, Chronic, Cohort, Surname, ALLERGIES, BLOOD_GROUPS, ROADS, STREETS, TOWNS,
};
use crate::time::{self, age};
use crate::Config;

pub struct Person {
    pub idx: u64,
    pub surname: &'static Surname,
    pub given: String,
    pub male: bool,
    pub birth: i32,
    pub death: Option<i32>,
    pub id_number: String,
    pub phone: Option<String>,
    /// A number given up during the history window, and the day it changed.
    pub old_phone: Option<(String, i32)>,
    pub county: u32,
    pub street: String,
    pub line: String,
    pub household: u64,
    pub relation: &'static str,
    pub mother: Option<u64>,
    pub guardian: Option<u64>,
    pub twin_of: Option<u64>,
    pub health_card: Option<String>,
    pub chronic: Vec<(Chronic, i32)>,
    pub allergy: Option<usize>,
    pub blood_group: usize,
    pub home: usize,
    pub donor: bool,
    /// Children born during the window whose mother this is: (person number, birth day).
    pub births: Vec<(u64, i32)>,
    /// Name, phone of the guardian (children) for Patient.contact.
    pub contact: Option<(String, Option<String>)>,
}

impl Person {
    pub fn person_id(&self) -> String {
        format!("R{:07}", self.idx)
    }

    pub fn name(&self) -> String {
        format!("{}{}", self.surname.text, self.given)
    }

    pub fn address_text(&self) -> String {
        match division::path(self.county) {
            Some((p, c, d)) if p == c => format!("{p}{d}{}{}", self.street, self.line),
            Some((p, c, d)) => format!("{p}{c}{d}{}{}", self.street, self.line),
            None => self.line.clone(),
        }
    }
}

/// Draws households until `count` people exist; keeps ID numbers unique region-wide.
pub struct People<'a> {
    cfg: &'a Config,
    region: &'a Region,
    rng: Rng,
    next: u64,
    household: u64,
    ids: HashSet<u64>,
    county_cum: Vec<u32>,
}

impl<'a> People<'a> {
    pub fn new(cfg: &'a Config, region: &'a Region) -> People<'a> {
        let county_cum =
            crate::rng::cumulative(region.counties.iter().map(|c| if c.urban { 3 } else { 1 }));
        People {
            cfg,
            region,
            rng: Rng::new(cfg.seed, 1),
            next: 0,
            household: 0,
            ids: HashSet::new(),
            county_cum,
        }
    }

    pub fn done(&self) -> bool {
        self.next >= self.cfg.residents
    }

    /// The next chunk: whole households of at least `min` people (fewer at the end).
    pub fn chunk(&mut self, min: usize) -> Vec<Person> {
        let mut out = Vec::new();
        while out.len() < min && !self.done() {
            self.household(&mut out);
        }
        // A household drawn last may overshoot the requested number of residents.
        let n = self.cfg.residents;
        if self.next > n {
            out.retain(|p| p.idx < n);
            for p in &mut out {
                p.births.retain(|(c, _)| *c < n);
            }
            self.next = n;
        }
        out
    }

    fn day_of_age(&mut self, years: i32) -> i32 {
        self.cfg.as_of - years * 365 - self.rng.range(0, 365) as i32
    }

    fn household(&mut self, out: &mut Vec<Person>) {
        let start = out.len();
        let hh = self.household;
        self.household += 1;
        let county = &self.region.counties[self.rng.weighted(&self.county_cum)];
        let street = if county.urban {
            *self.rng.pick(STREETS)
        } else {
            *self.rng.pick(TOWNS)
        };
        let street = if county.urban {
            format!("{street}街道")
        } else {
            format!("{street}镇")
        };
        let line = format!(
            "{}{}号{}幢{}单元{}室",
            self.rng.pick(ROADS),
            self.rng.range(1, 400),
            self.rng.range(1, 30),
            self.rng.range(1, 4),
            self.rng.range(1, 20) * 100 + self.rng.range(1, 5)
        );
        let kind = self.rng.f();
        let home_phone = self.mobile();
        let ctx = (county.code, street, line);
        if kind < 0.12 {
            let a = self.rng.range(20, 86) as i32;
            let male = self.rng.chance(0.5);
            self.person(out, &ctx, hh, "head", a, male, None, None);
        } else if kind < 0.32 {
            let a = self.rng.range(60, 90) as i32;
            self.person(out, &ctx, hh, "head", a, true, None, None);
            let b = (a + self.rng.range(-5, 2) as i32).max(58);
            self.person(out, &ctx, hh, "spouse", b, false, None, None);
        } else {
            let a = self.rng.range(24, 56) as i32;
            let head_male = self.rng.chance(0.8);
            let head = self.person(out, &ctx, hh, "head", a, head_male, None, None);
            let with_kids = kind < 0.87;
            let spouse_age = (a + self.rng.range(-3, 4) as i32).max(20);
            let spouse = self.person(out, &ctx, hh, "spouse", spouse_age, !head_male, None, None);
            let (mother, mother_age) = if head_male {
                (spouse, spouse_age)
            } else {
                (head, a)
            };
            if with_kids {
                let n = match self.rng.f() {
                    x if x < 0.55 => 1,
                    x if x < 0.95 => 2,
                    _ => 3,
                };
                let father = if head_male { head } else { spouse };
                let guardian = if self.rng.chance(0.6) { mother } else { father };
                for _ in 0..n {
                    let gap = self.rng.range(22, 37) as i32;
                    let ka = mother_age - gap;
                    if ka < 0 {
                        continue;
                    }
                    let male = self.rng.chance(0.52);
                    let k = self.person(
                        out,
                        &ctx,
                        hh,
                        "child",
                        ka,
                        male,
                        Some(mother),
                        Some(guardian),
                    );
                    if self.rng.chance(0.015) && !self.done() {
                        // Twins: same birth date, same family, their own name and ID number.
                        let birth = out[k].birth;
                        let male2 = self.rng.chance(0.5);
                        let t = self.person(
                            out,
                            &ctx,
                            hh,
                            "child",
                            ka,
                            male2,
                            Some(mother),
                            Some(guardian),
                        );
                        out[t].birth = birth;
                        out[t].twin_of = Some(out[k].idx);
                        let id = self.id_number(county.code, birth, male2);
                        out[t].id_number = id;
                    }
                }
            }
            if self.rng.chance(0.25) {
                // Elderly parent(s) living with the family.
                let pa = (a + self.rng.range(24, 33) as i32).min(98);
                let male = self.rng.chance(0.4);
                let p = self.person(out, &ctx, hh, "parent", pa, male, None, None);
                if pa >= 75 && self.rng.chance(0.5) {
                    out[p].phone = out[head].phone.clone();
                }
            }
        }
        // Children share their guardian's phone; mothers learn of births in the window.
        let window_start = self.cfg.window_start();
        for i in start..out.len() {
            if let Some(g) = out[i].guardian {
                let gi = (g - out[start].idx) as usize + start;
                let (gname, gphone) = (
                    out[gi].name(),
                    out[gi].phone.clone().or(Some(home_phone.clone())),
                );
                let child = &mut out[i];
                if age(child.birth, self.cfg.as_of) < 16 {
                    child.phone = gphone.clone();
                    child.old_phone = None;
                }
                child.contact = Some((gname, gphone));
            }
            if let Some(m) = out[i].mother {
                let (idx, birth) = (out[i].idx, out[i].birth);
                if birth >= window_start {
                    let mi = (m - out[start].idx) as usize + start;
                    out[mi].births.push((idx, birth));
                }
            }
        }
    }

    fn mobile(&mut self) -> String {
        let seg = self.rng.pick(phone::MOBILE_SEGMENTS);
        format!("{seg}{:08}", self.rng.range(0, 100_000_000))
    }

    fn id_number(&mut self, county: u32, birth: i32, male: bool) -> String {
        let (y, m, d) = time::civil(birth);
        loop {
            let seq = (self.rng.range(0, 500) * 2 + i64::from(male)) as u32;
            let s = idcard::make(county, y as u32, m, d, seq);
            let key: u64 = s[..17].parse().expect("digits");
            if self.ids.insert(key) {
                return s;
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn person(
        &mut self,
        out: &mut Vec<Person>,
        ctx: &(u32, String, String),
        household: u64,
        relation: &'static str,
        age_years: i32,
        male: bool,
        mother: Option<usize>,
        guardian: Option<usize>,
    ) -> usize {
        let idx = self.next;
        self.next += 1;
        let birth = self.day_of_age(age_years);
        let (by, _, _) = time::civil(birth);
        let surname = match (relation, mother) {
            // Children mostly take the father's surname; the mother is not the head here.
            ("child", Some(_)) => {
                let father = out
                    .iter()
                    .rev()
                    .find(|p| p.household == household && p.male && p.relation != "child");
                match father {
                    Some(f) if self.rng.chance(0.92) => f.surname,
                    _ => names().surname(&mut self.rng),
                }
            }
            _ => names().surname(&mut self.rng),
        };
        let given = names().given(&mut self.rng, male, Cohort::of_birth_year(by));
        let id_number = self.id_number(ctx.0, birth, male);
        let a = age(birth, self.cfg.as_of);
        let phone = (a >= 16 && (a < 80 || self.rng.chance(0.5))).then(|| self.mobile());
        let old_phone = (phone.is_some() && self.rng.chance(0.12)).then(|| {
            let changed = self.cfg.window_start()
                + self.rng.range(30, i64::from(self.cfg.years) * 365) as i32;
            (self.mobile(), changed)
        });
        let mut chronic = Vec::new();
        for c in Chronic::ALL {
            if self.rng.chance(c.prevalence(a)) {
                let earliest = (birth + 30 * 365).max(self.cfg.as_of - 20 * 365);
                let onset = self
                    .rng
                    .range(i64::from(earliest), i64::from(self.cfg.as_of))
                    as i32;
                chronic.push((c, onset));
            }
        }
        let death = if a >= 60
            && self.rng.chance(
                1.0 - (1.0 - 0.003 * f64::from((a - 60) / 5 + 1).powi(2))
                    .max(0.0)
                    .powi(self.cfg.years as i32),
            ) {
            Some(self.rng.range(
                i64::from(self.cfg.window_start().max(birth + 1)),
                i64::from(self.cfg.as_of),
            ) as i32)
        } else {
            None
        };
        let home = self.home(ctx.0);
        let health_card = self.rng.chance(0.6).then(|| {
            format!(
                "{}{:010}",
                self.region.city / 100,
                idx * 7919 % 10_000_000_000
            )
        });
        let p = Person {
            idx,
            surname,
            given,
            male,
            birth,
            death,
            id_number,
            phone,
            old_phone,
            county: ctx.0,
            street: ctx.1.clone(),
            line: ctx.2.clone(),
            household,
            relation,
            mother: mother.map(|i| out[i].idx),
            guardian: None,
            twin_of: None,
            health_card,
            chronic,
            allergy: self
                .rng
                .chance(0.06)
                .then(|| self.rng.below(ALLERGIES.len())),
            blood_group: self
                .rng
                .weighted(&crate::rng::cumulative(BLOOD_GROUPS.iter().map(|b| b.1))),
            home,
            donor: (18..=55).contains(&a) && self.rng.chance(0.08),
            births: Vec::new(),
            contact: None,
        };
        out.push(p);
        let pos = out.len() - 1;
        if let Some(g) = guardian {
            let gidx = out[g].idx;
            out[pos].guardian = Some(gidx);
        }
        pos
    }

    /// The primary-care institution a resident belongs to: one in their county if any.
    fn home(&mut self, county: u32) -> usize {
        let primary: Vec<usize> = self
            .region
            .institutions
            .iter()
            .filter(|i| i.kind.is_primary())
            .map(|i| i.idx)
            .collect();
        let local: Vec<usize> = primary
            .iter()
            .copied()
            .filter(|i| self.region.institutions[*i].county == county)
            .collect();
        if !local.is_empty() {
            *self.rng.pick(&local)
        } else if !primary.is_empty() {
            *self.rng.pick(&primary)
        } else {
            let any: Vec<usize> = self
                .region
                .institutions
                .iter()
                .filter(|i| !matches!(i.kind, Kind::BloodCentre))
                .map(|i| i.idx)
                .collect();
            *self.rng.pick(&any)
        }
    }
}
