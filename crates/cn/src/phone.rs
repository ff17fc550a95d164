//! Mainland mobile numbers: eleven digits in the segments the numbering plan allocates.

/// Three-digit segments allocated to mobile operators (MIIT numbering plan), used by the
/// generator to draw plausible numbers and by validation to reject impossible ones.
pub const MOBILE_SEGMENTS: &[u16] = &[
    130, 131, 132, 133, 134, 135, 136, 137, 138, 139, 145, 147, 150, 151, 152, 153, 155, 156, 157,
    158, 159, 162, 165, 166, 167, 170, 171, 172, 173, 175, 176, 177, 178, 180, 181, 182, 183, 184,
    185, 186, 187, 188, 189, 190, 191, 192, 193, 195, 196, 197, 198, 199,
];

/// Digits only, without a `+86`/`0086` country prefix.
pub fn normalize(s: &str) -> String {
    let digits: String = crate::nfkc(s)
        .chars()
        .filter(char::is_ascii_digit)
        .collect();
    let d = digits.strip_prefix("0086").unwrap_or(&digits);
    let d = if d.len() == 13 {
        d.strip_prefix("86").unwrap_or(d)
    } else {
        d
    };
    d.to_string()
}

/// A mobile number as accounts hold it: [`normalize`]d, and when more digits than a mobile
/// number's were written around one (`+86 (0)138…`), the eleven that make one.
pub fn mobile(s: &str) -> String {
    let d = normalize(s);
    if d.len() > 11 {
        let last = &d[d.len() - 11..];
        if is_valid_mobile(last) {
            return last.to_string();
        }
    }
    d
}

pub fn is_valid_mobile(s: &str) -> bool {
    let d = normalize(s);
    d.len() == 11
        && d[..3]
            .parse::<u16>()
            .is_ok_and(|p| MOBILE_SEGMENTS.contains(&p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mobiles_are_found_in_what_people_type() {
        assert_eq!(mobile("+86 (0)138-0013-8000"), "13800138000");
        assert_eq!(mobile("0086 13800138000"), "13800138000");
        assert_eq!(mobile("138 0013 8000"), "13800138000");
        assert_eq!(mobile("020-12345678"), "02012345678");
    }

    #[test]
    fn mobile_numbers() {
        assert!(is_valid_mobile("+86 138-0013-8000"));
        assert!(is_valid_mobile("13800138000"));
        assert!(!is_valid_mobile("12800138000"));
        assert!(!is_valid_mobile("1380013800"));
    }
}
