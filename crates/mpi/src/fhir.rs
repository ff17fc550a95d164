//! Demographics of a FHIR Patient, as the matcher reads them.

use serde_json::Value;

use crate::normalize::Raw;

pub use hutong_fhir::vocab::{HEALTH_CARD_SYSTEM, ID_SYSTEM};

/// The identifier system of an institution's medical record numbers (病历号), from its source
/// URI (`urn:hutong:org:{unified social credit code}`).
pub fn mrn_system(source: &str) -> Option<String> {
    let uscc = source.strip_prefix("urn:hutong:org:")?;
    Some(format!("https://hutong.dev/sid/{uscc}/mrn"))
}

fn s(v: &Value) -> Option<String> {
    v.as_str()
        .map(str::to_string)
        .filter(|s| !s.trim().is_empty())
}

/// Reads the fields the matcher uses: the official (else first) name, gender, birth date,
/// the resident ID number, the first phone, and the home (else first) address.
pub fn raw_from_patient(p: &Value) -> Raw {
    let names = p["name"].as_array().cloned().unwrap_or_default();
    let name = names
        .iter()
        .find(|n| n["use"] == "official")
        .or(names.first())
        .cloned()
        .unwrap_or(Value::Null);
    let given = name["given"]
        .as_array()
        .map(|g| {
            g.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join("")
        })
        .filter(|g| !g.is_empty());
    let id_number = p["identifier"]
        .as_array()
        .and_then(|ids| ids.iter().find(|i| i["system"] == ID_SYSTEM))
        .and_then(|i| s(&i["value"]));
    let phone = p["telecom"]
        .as_array()
        .and_then(|t| t.iter().find(|c| c["system"] == "phone"))
        .and_then(|c| s(&c["value"]));
    let addrs = p["address"].as_array().cloned().unwrap_or_default();
    let addr = addrs
        .iter()
        .find(|a| a["use"] == "home")
        .or(addrs.first())
        .cloned()
        .unwrap_or(Value::Null);
    let line = addr["line"]
        .as_array()
        .map(|l| {
            l.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join("")
        })
        .filter(|l| !l.is_empty());
    Raw {
        name: s(&name["text"]),
        family: s(&name["family"]),
        given,
        sex: s(&p["gender"]),
        birth_date: s(&p["birthDate"]),
        id_number,
        phone,
        address_line: line,
        district: s(&addr["district"]),
        city: s(&addr["city"]),
        state: s(&addr["state"]),
        postcode: s(&addr["postalCode"]),
    }
}
