//! Reference content the generator draws from: names (data/*.tsv) and the clinical
//! catalogue (codes, units, reference ranges, plausible distributions).
//!
//! One file past the ~800 lines we keep to, because data: the catalogue's rows are tables to
//! read side by side, not logic to split.

use std::collections::HashMap;
use std::sync::OnceLock;

use crate::rng::{cumulative, Rng};

const SURNAMES: &str = hutong_cn::names::SURNAMES_TSV;
const GIVEN: &str = include_str!("../data/given.tsv");
const GIVEN_CHARS: &str = include_str!("../data/given-chars.tsv");

pub const ICD10: &str = "http://hl7.org/fhir/sid/icd-10";
pub const ICD9CM: &str = "http://hl7.org/fhir/sid/icd-9-cm";
pub const LOINC: &str = "http://loinc.org";
pub const ATC: &str = "http://www.whocc.no/atc";
pub const UCUM: &str = "http://unitsofmeasure.org";
pub const DICOM: &str = "http://dicom.nema.org/resources/ontology/DCM";
pub const LOCAL: &str = "https://hutong.dev/fhir/CodeSystem";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Cohort {
    Old,
    Mid,
    New,
}

impl Cohort {
    pub fn of_birth_year(y: i32) -> Cohort {
        match y {
            ..1970 => Cohort::Old,
            1970..2000 => Cohort::Mid,
            _ => Cohort::New,
        }
    }
}

pub struct Surname {
    pub text: &'static str,
    pub reading: String,
}

/// Names with their cumulative weights.
type Weighted = (Vec<&'static str>, Vec<u32>);

pub struct Names {
    surnames: Vec<Surname>,
    surname_cum: Vec<u32>,
    /// (male, cohort) → (names, cumulative weights)
    given: HashMap<(bool, u8), Weighted>,
    chars: HashMap<(bool, u8), Vec<char>>,
    /// reading → characters with that reading, among name characters
    homophones: HashMap<String, Vec<char>>,
}

fn cohort_key(c: &str) -> u8 {
    match c {
        "old" => 0,
        "mid" => 1,
        _ => 2,
    }
}

fn ck(c: Cohort) -> u8 {
    c as u8
}

fn data_lines(s: &'static str) -> impl Iterator<Item = Vec<&'static str>> {
    s.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| l.split('\t').collect())
}

pub fn names() -> &'static Names {
    static N: OnceLock<Names> = OnceLock::new();
    N.get_or_init(|| {
        let mut surnames = Vec::new();
        let mut weights = Vec::new();
        for f in data_lines(SURNAMES) {
            let reading = match f.get(2).copied().filter(|r| !r.is_empty()) {
                Some(r) => r.to_string(),
                None => f[0].chars().filter_map(hutong_cn::hanzi::reading).collect(),
            };
            surnames.push(Surname {
                text: f[0],
                reading,
            });
            weights.push(f[1].parse().expect("weight"));
        }
        let mut given: HashMap<(bool, u8), Weighted> = HashMap::new();
        for f in data_lines(GIVEN) {
            let e = given.entry((f[0] == "M", cohort_key(f[1]))).or_default();
            e.0.push(f[2]);
            e.1.push(f[3].parse().expect("weight"));
        }
        for (_, (_, w)) in given.iter_mut() {
            *w = cumulative(w.iter().copied());
        }
        let mut chars = HashMap::new();
        for f in data_lines(GIVEN_CHARS) {
            chars.insert((f[0] == "M", cohort_key(f[1])), f[2].chars().collect());
        }
        let mut homophones: HashMap<String, Vec<char>> = HashMap::new();
        let mut pool: Vec<char> = surnames
            .iter()
            .flat_map(|s| s.text.chars())
            .chain(chars.values().flatten().copied())
            .chain(
                given
                    .values()
                    .flat_map(|(n, _)| n.iter().flat_map(|s| s.chars())),
            )
            .collect();
        pool.sort_unstable();
        pool.dedup();
        for c in pool {
            if let Some(r) = hutong_cn::hanzi::reading(c) {
                homophones.entry(r.to_string()).or_default().push(c);
            }
        }
        Names {
            surname_cum: cumulative(weights),
            surnames,
            given,
            chars,
            homophones,
        }
    })
}

impl Names {
    pub fn surname(&self, rng: &mut Rng) -> &Surname {
        &self.surnames[rng.weighted(&self.surname_cum)]
    }

    pub fn given(&self, rng: &mut Rng, male: bool, cohort: Cohort) -> String {
        let key = (male, ck(cohort));
        if rng.chance(0.45) {
            let (names, cum) = &self.given[&key];
            return names[rng.weighted(cum)].to_string();
        }
        let pool = &self.chars[&key];
        // Single-character given names were common in the mid cohort, rarer since.
        let single = match cohort {
            Cohort::Old => 0.15,
            Cohort::Mid => 0.3,
            Cohort::New => 0.08,
        };
        let n = if rng.chance(single) { 1 } else { 2 };
        (0..n).map(|_| *rng.pick(pool)).collect()
    }

    /// Another common name character that sounds the same (张 → 章), if there is one.
    pub fn homophone(&self, c: char, rng: &mut Rng) -> Option<char> {
        let r = hutong_cn::hanzi::reading(c)?;
        let others: Vec<char> = self
            .homophones
            .get(r)?
            .iter()
            .copied()
            .filter(|&x| x != c)
            .collect();
        (!others.is_empty()).then(|| *rng.pick(&others))
    }
}

/// A laboratory or vital-sign measurement.
pub struct Test {
    pub loinc: &'static str,
    pub display: &'static str,
    pub zh: &'static str,
    pub unit: &'static str,
    /// Reference range (male, female may differ: see `range`).
    pub low: f64,
    pub high: f64,
    pub mean: f64,
    pub sd: f64,
    pub decimals: u32,
}

macro_rules! test {
    ($loinc:expr, $display:expr, $zh:expr, $unit:expr, $low:expr, $high:expr, $mean:expr, $sd:expr, $dec:expr) => {
        Test {
            loinc: $loinc,
            display: $display,
            zh: $zh,
            unit: $unit,
            low: $low,
            high: $high,
            mean: $mean,
            sd: $sd,
            decimals: $dec,
        }
    };
}

pub const WBC: Test = test!(
    "6690-2",
    "Leukocytes [#/volume] in Blood by Automated count",
    "白细胞计数",
    "10*9/L",
    3.5,
    9.5,
    6.5,
    1.4,
    2
);
pub const HGB_M: Test = test!(
    "718-7",
    "Hemoglobin [Mass/volume] in Blood",
    "血红蛋白",
    "g/L",
    130.0,
    175.0,
    148.0,
    10.0,
    0
);
pub const HGB_F: Test = test!(
    "718-7",
    "Hemoglobin [Mass/volume] in Blood",
    "血红蛋白",
    "g/L",
    115.0,
    150.0,
    130.0,
    9.0,
    0
);
pub const PLT: Test = test!(
    "777-3",
    "Platelets [#/volume] in Blood by Automated count",
    "血小板计数",
    "10*9/L",
    125.0,
    350.0,
    230.0,
    45.0,
    0
);
pub const GLU: Test = test!(
    "14771-0",
    "Fasting glucose [Moles/volume] in Serum or Plasma",
    "空腹血糖",
    "mmol/L",
    3.9,
    6.1,
    5.0,
    0.4,
    1
);
pub const HBA1C: Test = test!(
    "4548-4",
    "Hemoglobin A1c/Hemoglobin.total in Blood",
    "糖化血红蛋白",
    "%",
    4.0,
    6.0,
    5.4,
    0.3,
    1
);
pub const CHOL: Test = test!(
    "14647-2",
    "Cholesterol [Moles/volume] in Serum or Plasma",
    "总胆固醇",
    "mmol/L",
    2.8,
    5.2,
    4.7,
    0.7,
    2
);
pub const TG: Test = test!(
    "14927-8",
    "Triglyceride [Moles/volume] in Serum or Plasma",
    "甘油三酯",
    "mmol/L",
    0.4,
    1.7,
    1.4,
    0.5,
    2
);
pub const HDL: Test = test!(
    "14646-4",
    "Cholesterol in HDL [Moles/volume] in Serum or Plasma",
    "高密度脂蛋白胆固醇",
    "mmol/L",
    1.0,
    2.0,
    1.3,
    0.25,
    2
);
pub const LDL: Test = test!(
    "22748-8",
    "Cholesterol in LDL [Moles/volume] in Serum or Plasma",
    "低密度脂蛋白胆固醇",
    "mmol/L",
    1.5,
    3.4,
    2.8,
    0.6,
    2
);
pub const ALT: Test = test!(
    "1742-6",
    "Alanine aminotransferase [Enzymatic activity/volume] in Serum or Plasma",
    "丙氨酸氨基转移酶",
    "U/L",
    9.0,
    50.0,
    24.0,
    9.0,
    0
);
pub const CREA_M: Test = test!(
    "14682-9",
    "Creatinine [Moles/volume] in Serum or Plasma",
    "肌酐",
    "umol/L",
    57.0,
    111.0,
    84.0,
    13.0,
    0
);
pub const CREA_F: Test = test!(
    "14682-9",
    "Creatinine [Moles/volume] in Serum or Plasma",
    "肌酐",
    "umol/L",
    41.0,
    81.0,
    62.0,
    10.0,
    0
);

pub const SBP: Test = test!(
    "8480-6",
    "Systolic blood pressure",
    "收缩压",
    "mm[Hg]",
    90.0,
    140.0,
    118.0,
    10.0,
    0
);
pub const DBP: Test = test!(
    "8462-4",
    "Diastolic blood pressure",
    "舒张压",
    "mm[Hg]",
    60.0,
    90.0,
    76.0,
    7.0,
    0
);
pub const HR: Test = test!(
    "8867-4",
    "Heart rate",
    "心率",
    "/min",
    60.0,
    100.0,
    76.0,
    9.0,
    0
);
pub const TEMP: Test = test!(
    "8310-5",
    "Body temperature",
    "体温",
    "Cel",
    36.0,
    37.3,
    36.6,
    0.25,
    1
);
pub const WEIGHT: Test = test!(
    "29463-7",
    "Body weight",
    "体重",
    "kg",
    0.0,
    0.0,
    0.0,
    0.0,
    1
);
pub const HEIGHT: Test = test!("8302-2", "Body height", "身高", "cm", 0.0, 0.0, 0.0, 0.0, 1);
pub const BMI: Test = test!(
    "39156-5",
    "Body mass index (BMI) [Ratio]",
    "体重指数",
    "kg/m2",
    18.5,
    24.0,
    0.0,
    0.0,
    1
);

/// A diagnosis: ICD-10 code, Chinese name, and for acute problems the tests a clinician
/// would typically order.
pub struct Dx {
    pub code: &'static str,
    pub zh: &'static str,
    pub fever: bool,
}

pub const ACUTE: &[Dx] = &[
    Dx {
        code: "J06.9",
        zh: "急性上呼吸道感染",
        fever: true,
    },
    Dx {
        code: "J02.9",
        zh: "急性咽炎",
        fever: true,
    },
    Dx {
        code: "J20.9",
        zh: "急性支气管炎",
        fever: true,
    },
    Dx {
        code: "K29.7",
        zh: "胃炎",
        fever: false,
    },
    Dx {
        code: "A09",
        zh: "感染性腹泻",
        fever: true,
    },
    Dx {
        code: "M54.5",
        zh: "腰痛",
        fever: false,
    },
    Dx {
        code: "N39.0",
        zh: "泌尿道感染",
        fever: true,
    },
    Dx {
        code: "H10.9",
        zh: "结膜炎",
        fever: false,
    },
    Dx {
        code: "L30.9",
        zh: "皮炎",
        fever: false,
    },
    Dx {
        code: "K21.9",
        zh: "胃食管反流病",
        fever: false,
    },
    Dx {
        code: "S93.4",
        zh: "踝关节扭伤",
        fever: false,
    },
];

/// Reasons for admission, with the procedure (ICD-9-CM-3) that usually follows, and whether
/// they concern the elderly.
pub struct Admission {
    pub dx: Dx,
    pub procedure: Option<(&'static str, &'static str)>,
    pub elderly: bool,
    pub stay: (i64, i64),
}

pub const ADMISSIONS: &[Admission] = &[
    Admission {
        dx: Dx {
            code: "J18.9",
            zh: "肺炎",
            fever: true,
        },
        procedure: None,
        elderly: false,
        stay: (5, 12),
    },
    Admission {
        dx: Dx {
            code: "K35.8",
            zh: "急性阑尾炎",
            fever: true,
        },
        procedure: Some(("47.09", "阑尾切除术")),
        elderly: false,
        stay: (3, 7),
    },
    Admission {
        dx: Dx {
            code: "K80.2",
            zh: "胆囊结石",
            fever: false,
        },
        procedure: Some(("51.23", "腹腔镜胆囊切除术")),
        elderly: false,
        stay: (3, 6),
    },
    Admission {
        dx: Dx {
            code: "N20.0",
            zh: "肾结石",
            fever: false,
        },
        procedure: None,
        elderly: false,
        stay: (2, 5),
    },
    Admission {
        dx: Dx {
            code: "I63.9",
            zh: "脑梗死",
            fever: false,
        },
        procedure: None,
        elderly: true,
        stay: (8, 20),
    },
    Admission {
        dx: Dx {
            code: "I21.9",
            zh: "急性心肌梗死",
            fever: false,
        },
        procedure: Some(("36.07", "药物洗脱冠状动脉支架置入术")),
        elderly: true,
        stay: (6, 14),
    },
    Admission {
        dx: Dx {
            code: "S72.0",
            zh: "股骨颈骨折",
            fever: false,
        },
        procedure: Some(("81.52", "部分髋关节置换术")),
        elderly: true,
        stay: (8, 18),
    },
    Admission {
        dx: Dx {
            code: "J44.1",
            zh: "慢性阻塞性肺病伴急性加重",
            fever: true,
        },
        procedure: None,
        elderly: true,
        stay: (7, 15),
    },
    Admission {
        dx: Dx {
            code: "I50.9",
            zh: "心力衰竭",
            fever: false,
        },
        procedure: None,
        elderly: true,
        stay: (7, 16),
    },
];

pub const DELIVERY: (&str, &str) = ("O80", "单胎顺产");
pub const CAESAREAN: (&str, &str) = ("O82", "经剖宫产术的单胎分娩");
pub const CAESAREAN_PROC: (&str, &str) = ("74.1", "子宫下段剖宫产术");

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Chronic {
    Hypertension,
    Diabetes,
    Hyperlipidaemia,
    Copd,
    Chd,
}

impl Chronic {
    pub const ALL: [Chronic; 5] = [
        Chronic::Hypertension,
        Chronic::Diabetes,
        Chronic::Hyperlipidaemia,
        Chronic::Copd,
        Chronic::Chd,
    ];

    pub fn code(self) -> (&'static str, &'static str) {
        match self {
            Chronic::Hypertension => ("I10", "原发性高血压"),
            Chronic::Diabetes => ("E11.9", "2型糖尿病"),
            Chronic::Hyperlipidaemia => ("E78.5", "高脂血症"),
            Chronic::Copd => ("J44.9", "慢性阻塞性肺病"),
            Chronic::Chd => ("I25.1", "动脉粥样硬化性心脏病"),
        }
    }

    /// Prevalence at a given age (China, approximate, from national surveys' age curves).
    pub fn prevalence(self, age: i32) -> f64 {
        let a = f64::from(age);
        match self {
            Chronic::Hypertension => ((a - 30.0) * 0.012).clamp(0.0, 0.55),
            Chronic::Diabetes => ((a - 35.0) * 0.005).clamp(0.0, 0.2),
            Chronic::Hyperlipidaemia => ((a - 35.0) * 0.006).clamp(0.0, 0.25),
            Chronic::Copd => ((a - 45.0) * 0.003).clamp(0.0, 0.12),
            Chronic::Chd => ((a - 50.0) * 0.003).clamp(0.0, 0.1),
        }
    }

    /// The long-term medicine for it.
    pub fn medicine(self) -> &'static Medicine {
        match self {
            Chronic::Hypertension => &MEDICINES[0],
            Chronic::Diabetes => &MEDICINES[2],
            Chronic::Hyperlipidaemia => &MEDICINES[3],
            Chronic::Copd => &MEDICINES[11],
            Chronic::Chd => &MEDICINES[4],
        }
    }
}

pub struct Medicine {
    pub atc: &'static str,
    pub zh: &'static str,
    pub dose: &'static str,
}

pub const MEDICINES: &[Medicine] = &[
    Medicine {
        atc: "C08CA01",
        zh: "苯磺酸氨氯地平片",
        dose: "5mg 口服 每日一次",
    },
    Medicine {
        atc: "C09CA01",
        zh: "氯沙坦钾片",
        dose: "50mg 口服 每日一次",
    },
    Medicine {
        atc: "A10BA02",
        zh: "盐酸二甲双胍片",
        dose: "0.5g 口服 每日三次",
    },
    Medicine {
        atc: "C10AA05",
        zh: "阿托伐他汀钙片",
        dose: "20mg 口服 每晚一次",
    },
    Medicine {
        atc: "B01AC06",
        zh: "阿司匹林肠溶片",
        dose: "100mg 口服 每日一次",
    },
    Medicine {
        atc: "J01CA04",
        zh: "阿莫西林胶囊",
        dose: "0.5g 口服 每日三次",
    },
    Medicine {
        atc: "J01DC02",
        zh: "头孢呋辛酯片",
        dose: "0.25g 口服 每日两次",
    },
    Medicine {
        atc: "M01AE01",
        zh: "布洛芬缓释胶囊",
        dose: "0.3g 口服 必要时",
    },
    Medicine {
        atc: "A02BC01",
        zh: "奥美拉唑肠溶胶囊",
        dose: "20mg 口服 每日一次",
    },
    Medicine {
        atc: "R05CB01",
        zh: "乙酰半胱氨酸泡腾片",
        dose: "0.6g 口服 每日一次",
    },
    Medicine {
        atc: "N02BE01",
        zh: "对乙酰氨基酚片",
        dose: "0.5g 口服 必要时",
    },
    Medicine {
        atc: "R03AK06",
        zh: "沙美特罗替卡松吸入粉雾剂",
        dose: "1吸 吸入 每日两次",
    },
    Medicine {
        atc: "A10AE04",
        zh: "甘精胰岛素注射液",
        dose: "10单位 皮下注射 每晚一次",
    },
];

/// (code, Chinese name, age in days when due) — the national immunization programme's
/// childhood schedule (国家免疫规划疫苗儿童免疫程序, 2021 edition).
pub const NIP_SCHEDULE: &[(&str, &str, i32, u32)] = &[
    ("HepB", "乙肝疫苗", 0, 1),
    ("BCG", "卡介苗", 0, 1),
    ("HepB", "乙肝疫苗", 30, 2),
    ("IPV", "脊灰灭活疫苗", 61, 1),
    ("IPV", "脊灰灭活疫苗", 91, 2),
    ("DTaP", "百白破疫苗", 91, 1),
    ("bOPV", "脊灰减毒活疫苗", 122, 3),
    ("DTaP", "百白破疫苗", 122, 2),
    ("DTaP", "百白破疫苗", 152, 3),
    ("HepB", "乙肝疫苗", 183, 3),
    ("MPSV-A", "A群流脑多糖疫苗", 183, 1),
    ("MMR", "麻腮风疫苗", 243, 1),
    ("JE-L", "乙脑减毒活疫苗", 243, 1),
    ("MPSV-A", "A群流脑多糖疫苗", 274, 2),
    ("DTaP", "百白破疫苗", 548, 4),
    ("MMR", "麻腮风疫苗", 548, 2),
    ("HepA-L", "甲肝减毒活疫苗", 548, 1),
    ("JE-L", "乙脑减毒活疫苗", 730, 2),
    ("MPSV-AC", "A群C群流脑多糖疫苗", 1095, 1),
    ("bOPV", "脊灰减毒活疫苗", 1461, 4),
    ("DT", "白破疫苗", 2191, 1),
    ("MPSV-AC", "A群C群流脑多糖疫苗", 2191, 2),
];

/// (LOINC, display, Chinese name, DICOM modality, normal finding, abnormal finding)
pub const IMAGING: &[(&str, &str, &str, &str, &str, &str)] = &[
    (
        "36643-5",
        "XR Chest 2 Views",
        "胸部正侧位X线摄影",
        "DX",
        "双肺纹理清晰，心影大小形态正常，双膈面光整。",
        "右下肺野见斑片状模糊影，考虑炎症。",
    ),
    (
        "24627-2",
        "CT Chest",
        "胸部CT平扫",
        "CT",
        "双肺未见明显实质性病变，纵隔淋巴结未见肿大。",
        "左肺上叶见磨玻璃结节，直径约6mm，建议随访。",
    ),
    (
        "24725-4",
        "CT Head",
        "头颅CT平扫",
        "CT",
        "颅内未见明显异常密度影，脑室系统未见扩大。",
        "左侧基底节区见片状低密度影，考虑腔隙性脑梗死。",
    ),
];

pub const ALLERGIES: &[(&str, &str)] = &[
    ("青霉素", "medication"),
    ("头孢类抗生素", "medication"),
    ("磺胺类药物", "medication"),
    ("海鲜", "food"),
    ("鸡蛋", "food"),
    ("花粉", "environment"),
];

pub const BLOOD_GROUPS: &[(&str, u32)] = &[
    ("A型 RhD阳性", 28),
    ("B型 RhD阳性", 30),
    ("O型 RhD阳性", 33),
    ("AB型 RhD阳性", 9),
];

/// Street and road names for synthetic addresses (invented, not real addresses).
pub const STREETS: &[&str] = &[
    "城东",
    "城西",
    "湖滨",
    "北山",
    "文新",
    "翠苑",
    "新华",
    "解放",
    "和平",
    "长庆",
    "潮鸣",
    "米市巷",
    "清波",
    "南星",
    "望江",
    "闸弄口",
];
pub const TOWNS: &[&str] = &[
    "新桥", "龙门", "石桥", "白沙", "清河", "三江", "临江", "大同", "上塘", "双溪", "青山", "横村",
];
pub const ROADS: &[&str] = &[
    "解放路",
    "延安路",
    "中山路",
    "人民路",
    "建设路",
    "文化路",
    "学院路",
    "新华路",
    "和平路",
    "胜利路",
    "环城北路",
    "体育场路",
    "凤起路",
    "庆春路",
    "湖墅路",
    "文一路",
    "文三路",
    "教工路",
    "莫干山路",
    "古墩路",
];
