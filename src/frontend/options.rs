//! The `options` startup parameter (`-c name=value`, `--name=value`), turned into
//! settings that follow the client like any other startup parameter.

/// Splits on unescaped whitespace; `\` escapes the next character, as PostgreSQL does.
fn words(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            c if c.is_whitespace() => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// The `name=value` settings in an options string; anything else is returned as an
/// error message for the client.
pub fn settings(options: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    let mut it = words(options).into_iter();
    while let Some(w) = it.next() {
        let setting = if w == "-c" {
            it.next().ok_or("missing setting after -c in options")?
        } else if let Some(rest) = w.strip_prefix("--") {
            rest.to_string()
        } else if let Some(rest) = w.strip_prefix("-c") {
            rest.to_string()
        } else {
            return Err(format!("unsupported command-line option in options: {w}"));
        };
        let (name, value) = setting
            .split_once('=')
            .ok_or_else(|| format!("invalid setting in options: {setting}"))?;
        out.push((name.replace('-', "_"), value.to_string()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::settings;

    #[test]
    fn parses_the_forms_libpq_sends() {
        assert_eq!(
            settings("-c TimeZone=Asia/Kolkata --search-path=a,b -cstatement_timeout=5s").unwrap(),
            vec![
                ("TimeZone".into(), "Asia/Kolkata".into()),
                ("search_path".into(), "a,b".into()),
                ("statement_timeout".into(), "5s".into()),
            ]
        );
        assert_eq!(
            settings(r"-c application_name=a\ b").unwrap(),
            vec![("application_name".into(), "a b".into())]
        );
        assert!(settings("-x").is_err());
        assert!(settings("-c").is_err());
        assert_eq!(settings("").unwrap(), vec![]);
    }
}
