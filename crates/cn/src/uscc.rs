//! Unified social credit codes (统一社会信用代码, GB 32100-2015): registration authority,
//! organisation kind, six-digit division, the nine-character organisation code (GB 11714,
//! with its own check character), and a final MOD 31 check character.

const CHARSET: &[u8; 31] = b"0123456789ABCDEFGHJKLMNPQRTUWXY";
const WEIGHTS: [u32; 17] = [
    1, 3, 9, 27, 19, 26, 16, 17, 20, 29, 25, 13, 8, 24, 10, 30, 28,
];
const ORG_WEIGHTS: [u32; 8] = [3, 7, 9, 10, 5, 8, 4, 2];

fn value(c: u8) -> Option<u32> {
    CHARSET.iter().position(|&x| x == c).map(|p| p as u32)
}

/// The final check character over the first 17 characters, or `None` if one of them is
/// outside the code's alphabet.
pub fn check_char(first17: &[u8]) -> Option<char> {
    let mut sum = 0;
    for (c, w) in first17.iter().zip(WEIGHTS) {
        sum += value(*c)? * w;
    }
    Some(CHARSET[((31 - sum % 31) % 31) as usize] as char)
}

/// The GB 11714 check character over an eight-character organisation code body.
pub fn org_check_char(body: &[u8]) -> Option<char> {
    let mut sum = 0;
    for (c, w) in body.iter().zip(ORG_WEIGHTS) {
        let v = match c {
            b'0'..=b'9' => u32::from(c - b'0'),
            b'A'..=b'Z' => u32::from(c - b'A') + 10,
            _ => return None,
        };
        sum += v * w;
    }
    Some(match 11 - sum % 11 {
        10 => 'X',
        11 => '0',
        n => char::from_digit(n, 10).expect("below 10"),
    })
}

/// Whether `code` is a well-formed code with both check characters right.
pub fn is_valid(code: &str) -> bool {
    let b = code.as_bytes();
    b.len() == 18
        && b[2..8].iter().all(u8::is_ascii_digit)
        && check_char(&b[..17]) == Some(b[17] as char)
        && org_check_char(&b[8..16]) == Some(b[16] as char)
}

/// Builds a valid code: `authority` and `kind` are the first two characters (e.g. `1` and
/// `2` for a public institution, 事业单位), `org_body` eight digits of the organisation code.
pub fn make(authority: char, kind: char, division: u32, org_body: u32) -> String {
    let body = format!("{org_body:08}");
    let oc = org_check_char(body.as_bytes()).expect("digits");
    let first = format!("{authority}{kind}{division:06}{body}{oc}");
    let c = check_char(first.as_bytes()).expect("alphabet");
    format!("{first}{c}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_published_code_validates() {
        // Huawei Technologies Co., Ltd., as printed on its business licence.
        assert!(is_valid("914403001922038216"));
        assert!(!is_valid("914403001922038217"));
    }

    proptest! {
        #[test]
        fn made_codes_validate_and_one_changed_character_does_not(
            div in 110000u32..660000, body in 0u32..100_000_000, pos in 0usize..18, d in 1u32..31
        ) {
            let c = make('1', '2', div, body);
            prop_assert!(is_valid(&c));
            let mut b = c.into_bytes();
            let v = value(b[pos]).unwrap();
            b[pos] = CHARSET[((v + d) % 31) as usize];
            prop_assert!(!is_valid(&String::from_utf8(b).unwrap()));
        }
    }
}
