//! The region: its counties and institutions, each with a unified social credit code and
//! its practitioners.

use hutong_cn::{division, uscc};
use serde_json::{json, Value};

use crate::rng::Rng;
use crate::tables::{names, Cohort};
use crate::Config;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Tertiary,
    District,
    Community,
    Township,
    Cdc,
    BloodCentre,
    ExamCentre,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Tertiary => "tertiary-hospital",
            Kind::District => "district-hospital",
            Kind::Community => "community-health-centre",
            Kind::Township => "township-clinic",
            Kind::Cdc => "cdc-vaccination",
            Kind::BloodCentre => "blood-centre",
            Kind::ExamCentre => "physical-exam-centre",
        }
    }

    fn prefix(self) -> &'static str {
        match self {
            Kind::Tertiary => "t",
            Kind::District => "d",
            Kind::Community => "c",
            Kind::Township => "x",
            Kind::Cdc => "cdc",
            Kind::BloodCentre => "bc",
            Kind::ExamCentre => "pe",
        }
    }

    pub fn is_hospital(self) -> bool {
        matches!(self, Kind::Tertiary | Kind::District)
    }

    pub fn is_primary(self) -> bool {
        matches!(self, Kind::Community | Kind::Township)
    }

    fn staff(self) -> usize {
        match self {
            Kind::Tertiary => 30,
            Kind::District => 15,
            Kind::Community => 6,
            Kind::Township => 3,
            Kind::Cdc => 4,
            Kind::BloodCentre => 3,
            Kind::ExamCentre => 5,
        }
    }

    /// Shares of submissions sent in real time, in daily batches, and late.
    pub fn lag_profile(self) -> (f64, f64) {
        match self {
            Kind::Tertiary => (0.80, 0.18),
            Kind::District => (0.60, 0.35),
            Kind::Community => (0.40, 0.50),
            Kind::Township => (0.20, 0.60),
            Kind::Cdc => (0.70, 0.28),
            Kind::BloodCentre => (0.90, 0.10),
            Kind::ExamCentre => (0.30, 0.65),
        }
    }

    /// How often this kind of institution registers a patient without an ID number.
    pub fn missing_id_rate(self) -> f64 {
        match self {
            Kind::Tertiary => 0.03,
            Kind::District => 0.06,
            Kind::Community => 0.15,
            Kind::Township => 0.30,
            Kind::Cdc => 0.25,
            Kind::BloodCentre => 0.0,
            Kind::ExamCentre => 0.02,
        }
    }
}

pub struct Practitioner {
    pub id: String,
    pub name: String,
    pub male: bool,
    pub role: &'static str,
    pub specialty: &'static str,
}

pub struct Institution {
    pub idx: usize,
    pub code: String,
    pub kind: Kind,
    pub name: String,
    pub uscc: String,
    pub county: u32,
    pub staff: Vec<Practitioner>,
    /// Odd multiplier and mask that turn a person number into this institution's opaque
    /// patient number (a bijection, so numbers never collide).
    mult: u32,
    mask: u32,
}

impl Institution {
    /// The provenance every submission of this institution carries (`meta.source`).
    pub fn source(&self) -> String {
        format!("urn:hutong:org:{}", self.uscc)
    }

    pub fn mrn_system(&self) -> String {
        format!("https://hutong.dev/sid/{}/mrn", self.uscc)
    }

    pub fn patient_number(&self, person: u64) -> u32 {
        ((person as u32).wrapping_mul(self.mult) ^ self.mask).wrapping_mul(0x9E37_79B1)
    }

    pub fn patient_id(&self, person: u64) -> String {
        format!("{}-{:08x}", self.code, self.patient_number(person))
    }

    pub fn org_ref(&self) -> Value {
        json!({"reference": format!("Organization/{}", self.code), "display": self.name})
    }
}

pub struct County {
    pub code: u32,
    pub name: &'static str,
    pub urban: bool,
}

pub struct Region {
    pub city: u32,
    pub city_name: &'static str,
    pub counties: Vec<County>,
    pub institutions: Vec<Institution>,
}

const SPECIALTIES: &[&str] = &[
    "内科",
    "外科",
    "儿科",
    "妇产科",
    "全科医学科",
    "检验科",
    "放射科",
    "急诊科",
];

impl Region {
    pub fn build(cfg: &Config) -> Result<Region, crate::SynthError> {
        let city_name = division::name(cfg.city).ok_or(crate::SynthError::UnknownCity(cfg.city))?;
        let counties: Vec<County> = division::counties_of(cfg.city)
            .into_iter()
            .filter(|(_, n)| *n != "市辖区")
            .map(|(code, name)| County {
                code,
                name,
                urban: name.ends_with('区'),
            })
            .collect();
        if counties.is_empty() || !cfg.city.is_multiple_of(100) || cfg.city.is_multiple_of(10000) {
            return Err(crate::SynthError::UnknownCity(cfg.city));
        }
        let mut rng = Rng::new(cfg.seed, 0);
        let m = cfg.institutions.max(1);
        let mut kinds = vec![Kind::Tertiary];
        for (min, k) in [
            (2, Kind::Community),
            (3, Kind::Cdc),
            (4, Kind::District),
            (5, Kind::Township),
            (6, Kind::ExamCentre),
            (7, Kind::BloodCentre),
        ] {
            if m >= min {
                kinds.push(k);
            }
        }
        let cycle = [
            Kind::Community,
            Kind::Township,
            Kind::District,
            Kind::Community,
            Kind::Township,
            Kind::Community,
            Kind::Tertiary,
            Kind::District,
            Kind::Township,
        ];
        let mut i = 0;
        while kinds.len() < m {
            kinds.push(cycle[i % cycle.len()]);
            i += 1;
        }
        kinds.sort_by_key(|k| *k as u8);

        let urban: Vec<&County> = counties.iter().filter(|c| c.urban).collect();
        let rural: Vec<&County> = counties.iter().filter(|c| !c.urban).collect();
        let urban = if urban.is_empty() {
            rural.clone()
        } else {
            urban
        };
        let rural = if rural.is_empty() {
            urban.clone()
        } else {
            rural
        };
        let short = city_name.trim_end_matches('市');
        let mut per_kind = std::collections::HashMap::new();
        let mut used_names = std::collections::HashSet::new();
        let mut institutions = Vec::new();
        for (idx, kind) in kinds.into_iter().enumerate() {
            let n = per_kind.entry(kind).or_insert(0usize);
            *n += 1;
            let k = *n;
            let (county, name) = match kind {
                Kind::Tertiary => {
                    let names = [
                        "第一人民医院",
                        "中医院",
                        "第二人民医院",
                        "中心医院",
                        "第三人民医院",
                    ];
                    let c = urban[0];
                    (c, format!("{short}市{}", names[(k - 1) % names.len()]))
                }
                Kind::District => {
                    let c = counties[(k - 1) % counties.len()].code;
                    let c = counties.iter().find(|x| x.code == c).expect("listed");
                    let suffix = if k > counties.len() {
                        "第二人民医院"
                    } else {
                        "人民医院"
                    };
                    (c, format!("{}{}", c.name, suffix))
                }
                Kind::Community => {
                    let c = urban[(k - 1) % urban.len()];
                    let street = crate::tables::STREETS[(k - 1) % crate::tables::STREETS.len()];
                    (c, format!("{}{street}街道社区卫生服务中心", c.name))
                }
                Kind::Township => {
                    let c = rural[(k - 1) % rural.len()];
                    let town = crate::tables::TOWNS[(k - 1) % crate::tables::TOWNS.len()];
                    (c, format!("{}{town}镇卫生院", c.name))
                }
                Kind::Cdc => (urban[0], format!("{short}市疾病预防控制中心")),
                Kind::BloodCentre => (urban[0], format!("{short}市中心血站")),
                Kind::ExamCentre => (urban[0], format!("{short}市健康体检中心")),
            };
            let name = if used_names.insert(name.clone()) {
                name
            } else {
                format!("{name}（{k}）")
            };
            let code = format!("{}{:02}", kind.prefix(), k);
            // Public institutions: registration authority 1 (机构编制), kind 2 (事业单位).
            let credit = uscc::make(
                '1',
                '2',
                county.code,
                rng.range(10_000_000, 99_999_999) as u32,
            );
            let staff = (0..kind.staff())
                .map(|s| {
                    let male = rng.chance(0.45);
                    let by = rng.range(1960, 1998) as i32;
                    let surname = names().surname(&mut rng).text;
                    let given = names().given(&mut rng, male, Cohort::of_birth_year(by));
                    let (role, specialty) = match kind {
                        Kind::Cdc => ("nurse", "预防保健科"),
                        Kind::BloodCentre => ("nurse", "采供血科"),
                        Kind::ExamCentre if s % 2 == 1 => ("doctor", "体检科"),
                        Kind::Community | Kind::Township => ("doctor", "全科医学科"),
                        _ if s % 5 == 4 => ("nurse", "护理部"),
                        _ => ("doctor", SPECIALTIES[s % SPECIALTIES.len()]),
                    };
                    Practitioner {
                        id: format!("{code}-dr{:03}", s + 1),
                        name: format!("{surname}{given}"),
                        male,
                        role,
                        specialty,
                    }
                })
                .collect();
            institutions.push(Institution {
                idx,
                code,
                kind,
                name,
                uscc: credit,
                county: county.code,
                staff,
                mult: (rng.range(0, i64::from(u32::MAX)) as u32) | 1,
                mask: rng.range(0, i64::from(u32::MAX)) as u32,
            });
        }
        Ok(Region {
            city: cfg.city,
            city_name,
            counties,
            institutions,
        })
    }

    pub fn of_kind(&self, kind: Kind) -> Vec<usize> {
        self.institutions
            .iter()
            .filter(|i| i.kind == kind)
            .map(|i| i.idx)
            .collect()
    }

    pub fn hospitals(&self) -> Vec<usize> {
        self.institutions
            .iter()
            .filter(|i| i.kind.is_hospital())
            .map(|i| i.idx)
            .collect()
    }

    /// The registry resources: Organization, Practitioner and PractitionerRole.
    pub fn registry(&self) -> Vec<(&'static str, Value)> {
        let mut out = Vec::new();
        let (province, city, _) = division::path(self.counties[0].code).unwrap_or(("", "", ""));
        for inst in &self.institutions {
            let district = division::name(inst.county).unwrap_or("");
            let mut org = json!({
                    "resourceType": "Organization",
                    "id": inst.code,
                    "identifier": [{
                        "system": hutong_fhir::vocab::USCC_SYSTEM,
                        "type": {"text": "统一社会信用代码"},
                        "value": inst.uscc
                    }],
                    "active": true,
                    "type": [{"coding": [{"system": hutong_fhir::vocab::INSTITUTION_KIND_SYSTEM, "code": inst.kind.as_str()}]}],
                    "name": inst.name,
                    "address": [{"state": province, "city": city, "district": district, "country": "CN"}]
            });
            // The hospitals and the examination centre passed the province's external
            // quality assessment: their results are recognized across the region (互认).
            if inst.kind.is_hospital() || inst.kind == Kind::ExamCentre {
                org["extension"] = json!([{"url": hutong_fhir::vocab::RECOGNITION_QUALIFIED_URL, "valueBoolean": true}]);
            }
            out.push(("Organization", org));
            for p in &inst.staff {
                out.push((
                    "Practitioner",
                    json!({
                        "resourceType": "Practitioner",
                        "id": p.id,
                        "identifier": [{"system": "https://hutong.dev/sid/practitioner-licence", "value": format!("{}{}", inst.uscc.get(2..8).unwrap_or(""), &p.id[p.id.len() - 3..])}],
                        "active": true,
                        "name": [{"text": p.name}],
                        "gender": if p.male { "male" } else { "female" }
                    }),
                ));
                out.push((
                    "PractitionerRole",
                    json!({
                        "resourceType": "PractitionerRole",
                        "id": format!("{}-role", p.id),
                        "active": true,
                        "practitioner": {"reference": format!("Practitioner/{}", p.id), "display": p.name},
                        "organization": inst.org_ref(),
                        "code": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/practitioner-role", "code": p.role}]}],
                        "specialty": [{"text": p.specialty}]
                    }),
                ));
            }
        }
        out
    }
}
