//! setup.cfg as configparser reads it: [`Ini`], sections of `key = value` with indented
//! continuation lines, for the console scripts and names a setuptools project declares there.

/// A configparser-style INI file: sections of `key = value` (or `key: value`) with indented
/// continuation lines; `#`/`;` comment lines; keys lowercased like configparser does.
#[derive(Debug, Clone, Default)]
pub struct Ini {
    /// (section, key, value, 1-based line of the key)
    entries: Vec<(String, String, String, usize)>,
}

impl Ini {
    /// Parses `text` leniently, like configparser (never fails; odd lines are skipped).
    pub fn parse(text: &str) -> Ini {
        let mut entries: Vec<(String, String, String, usize)> = Vec::new();
        let mut section = String::new();
        let mut in_value = false;
        for (idx, line) in text.lines().enumerate() {
            let trimmed = line.trim();
            let indented = line.starts_with([' ', '\t']);
            if trimmed.starts_with('#') || trimmed.starts_with(';') {
                continue;
            }
            if trimmed.is_empty() {
                // An empty line inside a multi-line value is kept as an empty line.
                if in_value && let Some(last) = entries.last_mut() {
                    last.2.push('\n');
                }
                continue;
            }
            if indented && in_value {
                let last = entries.last_mut().expect("in_value implies an entry");
                last.2.push('\n');
                last.2.push_str(trimmed);
                continue;
            }
            if trimmed.starts_with('[') && trimmed.ends_with(']') {
                section = trimmed[1..trimmed.len() - 1].trim().to_string();
                in_value = false;
                continue;
            }
            let pos = trimmed.find(['=', ':']);
            match pos {
                Some(p) => {
                    let key = trimmed[..p].trim().to_ascii_lowercase();
                    let value = trimmed[p + 1..].trim().to_string();
                    entries.push((section.clone(), key, value, idx + 1));
                    in_value = true;
                }
                None => in_value = false,
            }
        }
        for e in &mut entries {
            let trimmed = e.2.trim_end_matches('\n').len();
            e.2.truncate(trimmed);
        }
        Ini { entries }
    }

    /// The value of `key` in `section` (last one wins) and the line it starts on.
    pub fn get(&self, section: &str, key: &str) -> Option<(&str, usize)> {
        self.entries
            .iter()
            .rev()
            .find(|(s, k, _, _)| s == section && k == key)
            .map(|(_, _, v, l)| (v.as_str(), *l))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ini_multiline_values() {
        let ini = Ini::parse(
            "[metadata]\nname = demo-app\n\n[options.entry_points]\n# comment\nconsole_scripts =\n    first = demo.cli:main\n    second = demo.other:run [x]\ngui_scripts = g = a:b\n",
        );
        assert_eq!(ini.get("metadata", "name"), Some(("demo-app", 2)));
        let (v, line) = ini.get("options.entry_points", "console_scripts").unwrap();
        assert_eq!(line, 6);
        assert_eq!(v, "\nfirst = demo.cli:main\nsecond = demo.other:run [x]");
        assert_eq!(
            ini.get("options.entry_points", "gui_scripts"),
            Some(("g = a:b", 9))
        );
    }
}
