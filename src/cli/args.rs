//! Raw command-line parsing: positionals and `--flag value` / `--switch` pairs, checked
//! against what each command accepts. Values are validated later, in one place per command.

use std::collections::BTreeMap;

use crate::failure::Failure;

/// One command's accepted flags.
pub struct Spec {
    /// Flags that take a value, at most once.
    pub valued: &'static [&'static str],
    /// Flags that take a value and may be given several times.
    pub repeatable: &'static [&'static str],
    /// Flags that are on/off.
    pub switches: &'static [&'static str],
    /// Exactly how many positionals.
    pub positionals: usize,
    /// Names of the positionals, for error messages.
    pub positional_names: &'static [&'static str],
}

/// Parsed arguments of one command.
#[derive(Debug, Default)]
pub struct Args {
    /// Positional arguments in order.
    pub positionals: Vec<String>,
    values: BTreeMap<&'static str, Vec<String>>,
    switches: Vec<&'static str>,
}

impl Args {
    /// Parses `argv` (after the command name) against `spec`.
    pub fn parse(command: &str, argv: &[String], spec: &Spec) -> Result<Args, Failure> {
        let mut args = Args::default();
        let mut iter = argv.iter();
        while let Some(arg) = iter.next() {
            if let Some(flag) = arg.strip_prefix("--") {
                let (name, inline) = match flag.split_once('=') {
                    Some((n, v)) => (n, Some(v.to_string())),
                    None => (flag, None),
                };
                let once = spec.valued.iter().find(|v| **v == name);
                let many = spec.repeatable.iter().find(|v| **v == name);
                if let Some(known) = once.or(many) {
                    let value = match inline {
                        Some(v) => v,
                        None => iter.next().cloned().ok_or_else(|| {
                            Failure::Usage(format!("{command}: --{name} needs a value"))
                        })?,
                    };
                    let values = args.values.entry(known).or_default();
                    if once.is_some() && !values.is_empty() {
                        return Err(Failure::Usage(format!("{command}: --{name} given twice")));
                    }
                    values.push(value);
                } else if let Some(known) = spec.switches.iter().find(|s| **s == name) {
                    if inline.is_some() {
                        return Err(Failure::Usage(format!(
                            "{command}: --{name} takes no value"
                        )));
                    }
                    args.switches.push(known);
                } else {
                    return Err(Failure::Usage(format!(
                        "{command}: unknown option --{name} (see `lanparty-lite {command} --help`)"
                    )));
                }
            } else if arg.starts_with('-') && arg.len() > 1 {
                return Err(Failure::Usage(format!("{command}: unknown option {arg}")));
            } else {
                args.positionals.push(arg.clone());
            }
        }
        if args.positionals.len() != spec.positionals {
            let expected = spec.positional_names.join(" ");
            return Err(Failure::Usage(
                if args.positionals.len() < spec.positionals {
                    format!("{command}: missing {expected}")
                } else {
                    format!(
                        "{command}: unexpected argument {:?}",
                        args.positionals[spec.positionals]
                    )
                },
            ));
        }
        Ok(args)
    }

    /// Value of a valued flag (the first, for a repeatable one).
    pub fn value(&self, name: &str) -> Option<&str> {
        self.values.get(name)?.first().map(String::as_str)
    }

    /// Every value of a repeatable flag, in command-line order, each parsed with `FromStr`.
    pub fn parsed_all<T: std::str::FromStr>(&self, name: &str) -> Result<Vec<T>, Failure> {
        self.values
            .get(name)
            .map_or(&[][..], Vec::as_slice)
            .iter()
            .map(|v| {
                v.parse()
                    .map_err(|_| Failure::Input(format!("--{name}: invalid value {v:?}")))
            })
            .collect()
    }

    /// Whether a switch was given.
    pub fn switch(&self, name: &str) -> bool {
        self.switches.contains(&name)
    }

    /// Parses a valued flag with `FromStr`, naming the flag in the error.
    pub fn parsed<T: std::str::FromStr>(&self, name: &str) -> Result<Option<T>, Failure> {
        self.value(name)
            .map(|v| {
                v.parse()
                    .map_err(|_| Failure::Input(format!("--{name}: invalid value {v:?}")))
            })
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: Spec = Spec {
        valued: &["mtu", "name"],
        repeatable: &["stun"],
        switches: &["json"],
        positionals: 1,
        positional_names: &["CODE"],
    };

    fn argv(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn parses_values_switches_and_positionals() {
        let a = Args::parse(
            "join",
            &argv(&["c", "--mtu", "1400", "--name=bob", "--json"]),
            &SPEC,
        )
        .unwrap();
        assert_eq!(a.positionals, vec!["c"]);
        assert_eq!(a.parsed::<u16>("mtu").unwrap(), Some(1400));
        assert_eq!(a.value("name"), Some("bob"));
        assert!(a.switch("json"));
        assert_eq!(a.parsed_all::<u16>("stun").unwrap(), Vec::<u16>::new());
    }

    #[test]
    fn repeatable_flags_keep_every_value_in_order() {
        let a = Args::parse(
            "join",
            &argv(&["c", "--stun", "1", "--stun=2", "--stun", "3"]),
            &SPEC,
        )
        .unwrap();
        assert_eq!(a.parsed_all::<u16>("stun").unwrap(), vec![1, 2, 3]);
        assert_eq!(a.value("stun"), Some("1"));
        let bad = Args::parse("join", &argv(&["c", "--stun", "x"]), &SPEC).unwrap();
        assert_eq!(bad.parsed_all::<u16>("stun").unwrap_err().exit_code(), 3);
    }

    #[test]
    fn rejects_unknown_missing_and_extra() {
        for bad in [
            &["c", "--bogus"][..],
            &["c", "--mtu"],
            &[],
            &["c", "d"],
            &["c", "-x"],
            &["c", "--json=1"],
        ] {
            let err = Args::parse("join", &argv(bad), &SPEC).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{bad:?}: {err}");
        }
        let err = Args::parse("join", &argv(&["c", "--mtu", "big"]), &SPEC)
            .unwrap()
            .parsed::<u16>("mtu");
        assert_eq!(err.unwrap_err().exit_code(), 3);
    }
}
