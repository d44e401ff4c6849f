//! Sizes as Kubernetes quantities (`5Gi`, `512Mi`, `1T`, `1e9`-free) or plain bytes.

/// Default size of a volume created without `--size`.
pub const DEFAULT_SIZE: u64 = 5 << 30;

/// Parses a size and rounds it up to a whole number of sectors.
pub fn parse_size(s: &str, sector_size: u64) -> Result<u64, String> {
    let t = s.trim();
    let digits_end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, suffix) = t.split_at(digits_end);
    if num.is_empty() {
        return Err(format!(
            "size {s:?} is not a quantity (examples: 5Gi, 512Mi, 1T, 1048576)"
        ));
    }
    let mult: u64 = match suffix {
        "" => 1,
        "k" => 1000,
        "M" => 1000u64.pow(2),
        "G" => 1000u64.pow(3),
        "T" => 1000u64.pow(4),
        "P" => 1000u64.pow(5),
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        "Pi" => 1 << 50,
        _ => {
            return Err(format!(
                "size {s:?} has an unknown unit {suffix:?} (use Ki, Mi, Gi, Ti, Pi, k, M, G, T, P or plain bytes)"
            ));
        }
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("size {s:?} is too large"))?;
    let bytes = n
        .checked_mul(mult)
        .ok_or_else(|| format!("size {s:?} is too large"))?;
    if bytes == 0 {
        return Err("size must be greater than zero".into());
    }
    let rounded = bytes
        .div_ceil(sector_size)
        .checked_mul(sector_size)
        .ok_or_else(|| format!("size {s:?} is too large"))?;
    // Linux files and loop devices top out at i64::MAX bytes.
    if rounded > i64::MAX as u64 {
        return Err(format!("size {s:?} is too large"));
    }
    Ok(rounded)
}

/// Human form used in tables: the largest binary unit that divides evenly.
pub fn format_size(bytes: u64) -> String {
    for (unit, shift) in [("Pi", 50), ("Ti", 40), ("Gi", 30), ("Mi", 20), ("Ki", 10)] {
        if bytes >= 1 << shift && bytes.is_multiple_of(1 << shift) {
            return format!("{}{unit}", bytes >> shift);
        }
    }
    format!("{bytes}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities() {
        assert_eq!(parse_size("5Gi", 4096).unwrap(), 5 << 30);
        assert_eq!(parse_size("512Mi", 512).unwrap(), 512 << 20);
        assert_eq!(parse_size("1T", 4096).unwrap(), 1_000_000_000_000);
        assert_eq!(parse_size("1000", 4096).unwrap(), 4096);
        assert_eq!(parse_size("1000", 512).unwrap(), 1024);
    }

    #[test]
    fn refusals() {
        for bad in [
            "0",
            "lots",
            "-1Gi",
            "",
            "1.5Gi",
            "1Xi",
            "99999999999999999999",
            "9Pi0",
            "8000000Pi",
        ] {
            assert!(parse_size(bad, 4096).is_err(), "{bad}");
        }
    }

    #[test]
    fn formatting() {
        assert_eq!(format_size(5 << 30), "5Gi");
        assert_eq!(format_size(4096), "4Ki");
        assert_eq!(format_size(1000), "1000");
    }
}
