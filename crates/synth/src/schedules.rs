//! The region's appointment offer for the slot pool (号源池): each institution publishes its
//! clinics as `Schedule`s and their `Slot`s for the days after the generation date.
//! Hospitals run specialist clinics (a doctor sits two or three half-days a week, 20-minute
//! slots); community health centres and township clinics run general practice every
//! weekday morning and afternoon (15-minute slots); the CDC's vaccination clinic and the
//! physical-examination centre offer their service on weekday mornings. Nurses hold no
//! clinics.
//!
//! Truth (`truth/schedules.csv`): each schedule with its institution, practitioner,
//! specialty and how many slots it published — what the pool's family-doctor share must be
//! computed from.

use serde_json::{json, Value};

use crate::region::{Kind, Region};
use crate::rng::Rng;
use crate::time::At;
use crate::Config;

/// One published schedule and its slots.
pub struct Published {
    pub institution: usize,
    pub schedule: Value,
    pub slots: Vec<Value>,
}

/// A clinic session: the weekday (0 Monday) and the half-day it takes.
type Session = (i32, (i32, i32));

/// Half-days: (start second of the day, end second).
const MORNING: (i32, i32) = (8 * 3600, 12 * 3600);
const AFTERNOON: (i32, i32) = (14 * 3600, 17 * 3600);

/// The service type of a clinic of this kind of institution.
fn service(kind: Kind) -> &'static str {
    match kind {
        Kind::Cdc => "预防接种",
        Kind::ExamCentre => "健康体检",
        Kind::Community | Kind::Township => "全科门诊",
        _ => "专科门诊",
    }
}

/// Every institution's schedules for `cfg.schedule_days` days after `cfg.as_of`.
pub fn publish(cfg: &Config, region: &Region) -> Vec<Published> {
    let mut out = Vec::new();
    let first = cfg.schedule_from.unwrap_or(cfg.as_of + 1);
    for inst in &region.institutions {
        if inst.kind == Kind::BloodCentre {
            continue;
        }
        let mut rng = Rng::new(cfg.seed, 0x5C4E_D000 + inst.idx as u64);
        let clinicians: Vec<_> = inst.staff.iter().filter(|p| p.role == "doctor").collect();
        let lead: Vec<_> = match inst.kind {
            // One clinic for the service, run by its first doctor (or nurse).
            Kind::Cdc | Kind::ExamCentre => inst.staff.iter().take(1).collect(),
            _ => clinicians,
        };
        for p in lead {
            let (minutes, sessions): (i32, Vec<Session>) = match inst.kind {
                Kind::Tertiary | Kind::District => {
                    // Two or three half-days a week, on weekdays the doctor keeps.
                    let n = 2 + rng.below(2);
                    let mut s = Vec::new();
                    while s.len() < n {
                        let wd = rng.below(5) as i32;
                        let half = if rng.chance(0.5) { MORNING } else { AFTERNOON };
                        if !s.contains(&(wd, half)) {
                            s.push((wd, half));
                        }
                    }
                    (20, s)
                }
                Kind::Community | Kind::Township => (
                    15,
                    (0..5)
                        .flat_map(|wd| [(wd, MORNING), (wd, AFTERNOON)])
                        .collect(),
                ),
                _ => (30, (0..5).map(|wd| (wd, MORNING)).collect()),
            };
            let id = format!("{}-sch", p.id);
            let schedule = json!({
                "resourceType": "Schedule",
                "id": id,
                "active": true,
                "serviceType": [{"text": service(inst.kind)}],
                "specialty": [{"text": p.specialty}],
                "actor": [
                    {"reference": format!("PractitionerRole/{}-role", p.id), "display": p.name},
                    inst.org_ref()
                ],
                "planningHorizon": {
                    "start": At::new(first, 0).dt(),
                    "end": At::new(first + cfg.schedule_days as i32, 0).dt()
                },
                "comment": format!("{} {}门诊", inst.name, p.specialty)
            });
            let mut slots = Vec::new();
            for day in first..first + cfg.schedule_days as i32 {
                // 1970-01-01 was a Thursday: weekday 0 is Monday.
                let wd = (day + 3).rem_euclid(7);
                for (_, (from, to)) in sessions.iter().filter(|(d, _)| *d == wd) {
                    let mut t = *from;
                    while t + minutes * 60 <= *to {
                        let start = At::new(day, t);
                        slots.push(json!({
                            "resourceType": "Slot",
                            "id": format!("{id}-{day}-{:04}", t / 60),
                            "schedule": {"reference": format!("Schedule/{id}")},
                            "serviceType": [{"text": service(inst.kind)}],
                            "specialty": [{"text": p.specialty}],
                            "status": "free",
                            "start": start.dt(),
                            "end": start.plus_secs(i64::from(minutes) * 60).dt()
                        }));
                        t += minutes * 60;
                    }
                }
            }
            out.push(Published {
                institution: inst.idx,
                schedule,
                slots,
            });
        }
    }
    out
}

/// The family doctor teams (家庭医生团队) of a primary-care centre: its doctors two by two.
pub fn teams(region: &Region) -> Vec<(usize, Value)> {
    let mut out = Vec::new();
    for inst in region.institutions.iter().filter(|i| i.kind.is_primary()) {
        let doctors: Vec<_> = inst.staff.iter().filter(|p| p.role == "doctor").collect();
        for (k, pair) in doctors.chunks(2).enumerate() {
            out.push((
                inst.idx,
                json!({
                    "resourceType": "CareTeam",
                    "id": format!("{}-team{}", inst.code, k + 1),
                    "status": "active",
                    "name": format!("{}家庭医生团队{}", inst.name, k + 1),
                    "category": [{"coding": [{"system": "http://loinc.org", "code": "LA28865-6", "display": "Longitudinal care-coordination focused care team"}], "text": "家庭医生团队"}],
                    "managingOrganization": [inst.org_ref()],
                    "participant": pair.iter().map(|p| json!({
                        "role": [{"text": "家庭医生"}],
                        "member": {"reference": format!("Practitioner/{}", p.id), "display": p.name}
                    })).collect::<Vec<_>>()
                }),
            ));
        }
    }
    out
}

/// The team a resident's contract with `inst` names.
pub fn team_of(inst: &crate::region::Institution, person: u64) -> String {
    let doctors = inst
        .staff
        .iter()
        .filter(|p| p.role == "doctor")
        .count()
        .max(1);
    let teams = doctors.div_ceil(2) as u64;
    format!("{}-team{}", inst.code, person % teams + 1)
}

/// A service package's name.
pub fn package_zh(code: &str) -> &'static str {
    match code {
        "hypertension" => "高血压个性化服务包",
        "diabetes" => "糖尿病个性化服务包",
        "elderly" => "老年人服务包",
        "maternal-child" => "孕产妇及儿童服务包",
        _ => "基础服务包",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_clinic_publishes_slots_in_working_hours_after_the_generation_date() {
        let cfg = Config {
            schedule_days: 14,
            ..Config::default()
        };
        let region = Region::build(&cfg).unwrap();
        let all = publish(&cfg, &region);
        assert!(all.len() > 20, "{} schedules", all.len());
        for p in &all {
            let kind = region.institutions[p.institution].kind;
            assert!(
                !p.slots.is_empty(),
                "{} publishes nothing",
                p.schedule["id"]
            );
            for s in &p.slots {
                let start = s["start"].as_str().unwrap();
                assert!(start > At::new(cfg.as_of + 1, 0).dt().as_str());
                let hour: u32 = start[11..13].parse().unwrap();
                assert!((8..17).contains(&hour), "{start}");
                assert_eq!(
                    s["schedule"]["reference"],
                    format!("Schedule/{}", p.schedule["id"].as_str().unwrap())
                );
            }
            if kind.is_primary() {
                // Ten half-days a fortnight-week, 16 + 12 slots a day: general practice
                // every weekday.
                assert_eq!(p.slots.len(), 10 * 28, "{}", p.schedule["id"]);
            }
        }
    }
}
