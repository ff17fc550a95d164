//! `hutong link` on a CSV: clusters written as `record_id,cluster_id`, precision and recall
//! against a truth column, and clear refusals of bad arguments.

use std::collections::HashMap;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_hutong");

#[test]
fn link_clusters_a_csv_and_scores_it() {
    let dir = std::env::temp_dir().join(format!("hutong-link-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // A synthetic region's people give the model something to learn from; a few
    // hand-made variants of one person and her twin test the cases that matter.
    let region = dir.join("region");
    assert!(Command::new(BIN)
        .args(["synth", "--residents", "400", "--years", "2", "--out"])
        .arg(&region)
        .status()
        .unwrap()
        .success());
    let residents = std::fs::read_to_string(region.join("truth/residents.csv")).unwrap();
    let mut csv = String::from("rid,姓名,性别,出生日期,身份证号,手机,地址,truth\n");
    for (i, l) in residents.lines().skip(1).enumerate() {
        let f: Vec<&str> = l.split(',').collect();
        csv.push_str(&format!(
            "r{i},{},{},{},{},{},{},{}\n",
            f[1],
            f[2],
            f[3].replace('-', "/"),
            f[4],
            f[5],
            f[8],
            f[0]
        ));
    }
    let id = hutong_cn::idcard::make(330106, 1990, 4, 8, 22);
    let twin_id = hutong_cn::idcard::make(330106, 1990, 4, 8, 24);
    for (rid, name, idn) in [
        ("a1", "欧阳雪", id.as_str()),
        ("a2", "歐陽雪", ""),
        ("a3", "Ouyang Xue", id.as_str()),
        ("a4", "欧阳雪", &id[..17]),
        ("t1", "欧阳霜", twin_id.as_str()),
    ] {
        let truth = if rid.starts_with('t') { "TWIN" } else { "ME" };
        let idn = if idn.len() == 17 {
            format!("{idn}0")
        } else {
            idn.to_string()
        };
        csv.push_str(&format!(
            "{rid},{name},女,1990/04/08,{idn},13800001111,浙江省杭州市西湖区文三路1号,{truth}\n"
        ));
    }
    let input = dir.join("people.csv");
    std::fs::write(&input, csv).unwrap();
    let out = dir.join("clusters.csv");
    let o = Command::new(BIN)
        .arg("link")
        .arg(&input)
        .args([
            "--id",
            "rid",
            "--field",
            "name=姓名",
            "--field",
            "sex=性别",
            "--field",
            "birth_date=出生日期",
        ])
        .args([
            "--date-format",
            "%Y/%m/%d",
            "--field",
            "id_number=身份证号",
            "--field",
            "phone=手机",
        ])
        .args(["--field", "address=地址", "--truth", "truth", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(stdout.contains("precision"), "{stdout}");
    let clusters: HashMap<String, String> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| {
            let (a, b) = l.split_once(',').unwrap();
            (a.to_string(), b.to_string())
        })
        .collect();
    assert_eq!(clusters.len(), 405);
    for r in ["a2", "a3", "a4"] {
        assert_eq!(
            clusters[r], clusters["a1"],
            "{r} is the same person as a1\n{stdout}"
        );
    }
    assert_ne!(clusters["t1"], clusters["a1"], "the twin is another person");

    // Bad arguments: a clear message and a failing exit.
    let bad = Command::new(BIN)
        .arg("link")
        .arg(&input)
        .args(["--id", "rid", "--field", "name=nope", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("no column 'nope'"));
    let bad = Command::new(BIN)
        .arg("link")
        .arg(&input)
        .args(["--id", "rid", "--field", "height=姓名", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown kind 'height'"));
    let _ = std::fs::remove_dir_all(&dir);
}
