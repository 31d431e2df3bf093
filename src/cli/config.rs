//! The optional configuration file: one section per command, `flag = value` lines.
//!
//! ```text
//! # /etc/lanparty-lite.conf
//! [join]
//! name = attic-router
//! broadcast-rate = 100
//! background = true
//!
//! [server]
//! listen = 0.0.0.0:7777
//! ```
//!
//! Keys are the command's long flags without `--`; switches take `true`/`false` (also
//! `yes`/`no`, `on`/`off`, `1`/`0`). `#` starts a comment line. Every mistake is reported with
//! the file and line, never ignored. Precedence: flag, then `LANPARTY_<FLAG>` environment
//! variable, then this file, then the built-in default.

use std::collections::BTreeMap;
use std::path::Path;

use super::args::Spec;

/// Used when neither `--config` nor `LANPARTY_CONFIG` names a file, if it exists.
pub const DEFAULT_PATH: &str = "/etc/lanparty-lite.conf";
/// Largest configuration file read.
const MAX_BYTES: u64 = 64 * 1024;

/// The settings of one command's section: flag name → (value, line number).
pub type Section = BTreeMap<String, (String, usize)>;

/// A parsed configuration file.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Config {
    sections: BTreeMap<String, Section>,
}

impl Config {
    /// Parses `text` (named `origin` in errors). `commands` lists each command that may have a
    /// section, with the flags it accepts.
    pub fn parse(origin: &str, text: &str, commands: &[(&str, &Spec)]) -> Result<Config, String> {
        let mut config = Config::default();
        let mut current: Option<(&str, &Spec)> = None;
        for (index, raw) in text.lines().enumerate() {
            let line_no = index + 1;
            let at = |what: String| format!("{origin} line {line_no}: {what}");
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                let name = name.trim();
                let Some(found) = commands.iter().find(|(c, _)| *c == name) else {
                    let known: Vec<&str> = commands.iter().map(|(c, _)| *c).collect();
                    return Err(at(format!(
                        "unknown section [{name}] (sections: {})",
                        known.join(", ")
                    )));
                };
                if config.sections.contains_key(name) {
                    return Err(at(format!("section [{name}] appears twice")));
                }
                config.sections.insert(name.to_string(), Section::new());
                current = Some(*found);
                continue;
            }
            let Some((key, value)) = line.split_once('=') else {
                return Err(at(format!(
                    "expected `flag = value` or [section], got {line:?}"
                )));
            };
            let (key, value) = (key.trim(), value.trim());
            let Some((command, spec)) = current else {
                return Err(at(format!(
                    "{key:?} is outside a section; put it under [join], [server], …"
                )));
            };
            let valued = spec.valued.contains(&key) || spec.repeatable.contains(&key);
            let switch = spec.switches.contains(&key);
            if !valued && !switch || key == "config" {
                return Err(at(format!("[{command}] has no setting {key:?}")));
            }
            if switch && parse_bool(value).is_none() {
                return Err(at(format!("{key} must be true or false, not {value:?}")));
            }
            if valued && value.is_empty() {
                return Err(at(format!("{key} has no value")));
            }
            let section = config.sections.entry(command.to_string()).or_default();
            if section
                .insert(key.to_string(), (value.to_string(), line_no))
                .is_some()
            {
                return Err(at(format!("{key} is set twice in [{command}]")));
            }
        }
        Ok(config)
    }

    /// Reads and parses the file at `path`.
    pub fn load(path: &Path, commands: &[(&str, &Spec)]) -> Result<Config, String> {
        use std::io::Read;
        let origin = path.display().to_string();
        let file = std::fs::File::open(path).map_err(|e| format!("config file {origin}: {e}"))?;
        let mut text = String::new();
        file.take(MAX_BYTES + 1)
            .read_to_string(&mut text)
            .map_err(|e| format!("config file {origin}: {e}"))?;
        if text.len() as u64 > MAX_BYTES {
            return Err(format!(
                "config file {origin}: larger than {} KiB",
                MAX_BYTES / 1024
            ));
        }
        Config::parse(&origin, &text, commands)
    }

    /// The section of `command`, if the file has one.
    pub fn section(&self, command: &str) -> Option<&Section> {
        self.sections.get(command)
    }
}

/// `true`/`yes`/`on`/`1` or `false`/`no`/`off`/`0`, any case.
pub fn parse_bool(value: &str) -> Option<bool> {
    match value.to_ascii_lowercase().as_str() {
        "true" | "yes" | "on" | "1" => Some(true),
        "false" | "no" | "off" | "0" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const JOIN: Spec = Spec {
        valued: &["name", "mtu"],
        repeatable: &[],
        switches: &["background"],
        positionals: 1,
        positional_names: &["CODE"],
    };
    const SERVER: Spec = Spec {
        valued: &["listen"],
        repeatable: &[],
        switches: &[],
        positionals: 0,
        positional_names: &[],
    };
    const COMMANDS: &[(&str, &Spec)] = &[("join", &JOIN), ("server", &SERVER)];

    #[test]
    fn sections_hold_each_commands_settings_with_their_lines() {
        let text =
            "# router\n[join]\nname = attic\n background=yes \n\n[server]\nlisten = 0.0.0.0:7777\n";
        let config = Config::parse("c", text, COMMANDS).unwrap();
        let join = config.section("join").unwrap();
        assert_eq!(join["name"], ("attic".to_string(), 3));
        assert_eq!(join["background"], ("yes".to_string(), 4));
        assert_eq!(
            config.section("server").unwrap()["listen"].0,
            "0.0.0.0:7777"
        );
        assert!(config.section("status").is_none());
    }

    #[test]
    fn every_mistake_names_the_file_and_line() {
        for (text, needle) in [
            ("name = x\n", "c line 1: \"name\" is outside a section"),
            (
                "[join]\nnmae = x\n",
                "c line 2: [join] has no setting \"nmae\"",
            ),
            ("[join]\nlisten = x\n", "[join] has no setting \"listen\""),
            ("[party]\n", "c line 1: unknown section [party]"),
            (
                "[join]\nbackground = maybe\n",
                "background must be true or false",
            ),
            ("[join]\nname\n", "expected `flag = value`"),
            ("[join]\nname =\n", "name has no value"),
            (
                "[join]\nname = a\nname = b\n",
                "c line 3: name is set twice",
            ),
            ("[join]\n[join]\n", "section [join] appears twice"),
            ("[join]\nconfig = /x\n", "has no setting \"config\""),
        ] {
            let err = Config::parse("c", text, COMMANDS).unwrap_err();
            assert!(err.contains(needle), "{text:?}: {err}");
        }
    }

    #[test]
    fn booleans_accept_the_usual_spellings_only() {
        for yes in ["true", "YES", "on", "1"] {
            assert_eq!(parse_bool(yes), Some(true));
        }
        for no in ["false", "No", "off", "0"] {
            assert_eq!(parse_bool(no), Some(false));
        }
        assert_eq!(parse_bool("2"), None);
    }
}
