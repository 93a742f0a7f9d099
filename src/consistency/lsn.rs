//! PostgreSQL WAL positions ("16/B374D848") as plain u64s.

pub fn parse(s: &str) -> Option<u64> {
    let (hi, lo) = s.trim().split_once('/')?;
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

pub fn format(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xffff_ffff)
}

#[cfg(test)]
mod tests {
    #[test]
    fn round_trips() {
        assert_eq!(super::parse("16/B374D848"), Some(0x16_B374_D848));
        assert_eq!(super::format(0x16_B374_D848), "16/B374D848");
        assert_eq!(super::parse("0/0"), Some(0));
        assert_eq!(super::parse("zz"), None);
    }
}
