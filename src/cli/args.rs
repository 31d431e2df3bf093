//! Raw command-line parsing: positionals and `--flag value` / `--switch` pairs, checked
//! against what each command accepts. Values are validated later, in one place per command.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::config::{self, Config, Section};
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
    /// Where values that did not come from the command line came from, for errors.
    origins: BTreeMap<&'static str, String>,
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

    /// Parses `argv` like [`Args::parse`], then fills what it left out from the environment
    /// and the configuration file (`--config FILE`, else `LANPARTY_CONFIG`, else
    /// [`config::DEFAULT_PATH`] if it exists). `commands` lists every command's flags, for
    /// checking the file.
    pub fn load(
        command: &str,
        argv: &[String],
        spec: &Spec,
        commands: &[(&str, &Spec)],
    ) -> Result<Args, Failure> {
        let (config_flag, argv) = take_config_flag(command, argv)?;
        let mut args = Args::parse(command, &argv, spec)?;
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let path = config_flag
            .or_else(|| env("LANPARTY_CONFIG"))
            .map(PathBuf::from)
            .or_else(|| {
                let default = Path::new(config::DEFAULT_PATH);
                default.exists().then(|| default.to_path_buf())
            });
        let config = path
            .map(|p| Config::load(&p, commands).map(|c| (c, p.display().to_string())))
            .transpose()
            .map_err(Failure::Input)?;
        let (section, origin) = match &config {
            Some((c, origin)) => (c.section(command), origin.as_str()),
            None => (None, ""),
        };
        args.layer(spec, env, section, origin)?;
        Ok(args)
    }

    /// Fills every flag the command line left out: from `LANPARTY_<FLAG>` (through `env`),
    /// else from the configuration `section` (read from `origin`).
    pub fn layer(
        &mut self,
        spec: &Spec,
        env: impl Fn(&str) -> Option<String>,
        section: Option<&Section>,
        origin: &str,
    ) -> Result<(), Failure> {
        for name in spec.valued.iter().chain(spec.repeatable) {
            if self.values.contains_key(name) {
                continue;
            }
            let var = env_name(name);
            let found = match env(&var) {
                Some(v) => Some((v, var)),
                None => section
                    .and_then(|s| s.get(*name))
                    .map(|(v, line)| (v.clone(), format!("{origin} line {line}"))),
            };
            if let Some((value, from)) = found {
                // A repeatable flag takes a comma-separated list from these sources.
                let values = if spec.repeatable.contains(name) {
                    value.split(',').map(|v| v.trim().to_string()).collect()
                } else {
                    vec![value]
                };
                self.values.insert(name, values);
                self.origins.insert(name, from);
            }
        }
        for name in spec.switches {
            if self.switches.contains(name) {
                continue;
            }
            let var = env_name(name);
            let on = match env(&var) {
                Some(v) => config::parse_bool(&v).ok_or_else(|| {
                    Failure::Input(format!("{var}: must be true or false, not {v:?}"))
                })?,
                None => section
                    .and_then(|s| s.get(*name))
                    .and_then(|(v, _)| config::parse_bool(v))
                    .unwrap_or(false),
            };
            if on {
                self.switches.push(name);
            }
        }
        Ok(())
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
                v.parse().map_err(|_| {
                    let from = self
                        .origins
                        .get(name)
                        .map(|o| format!(" (from {o})"))
                        .unwrap_or_default();
                    Failure::Input(format!("--{name}{from}: invalid value {v:?}"))
                })
            })
            .transpose()
    }
}

/// The environment variable for a flag: `--broadcast-rate` → `LANPARTY_BROADCAST_RATE`.
pub fn env_name(flag: &str) -> String {
    format!("LANPARTY_{}", flag.to_ascii_uppercase().replace('-', "_"))
}

/// Takes `--config FILE` (or `--config=FILE`) out of `argv`; every command accepts it.
fn take_config_flag(
    command: &str,
    argv: &[String],
) -> Result<(Option<String>, Vec<String>), Failure> {
    let mut path = None;
    let mut rest = Vec::with_capacity(argv.len());
    let mut iter = argv.iter();
    while let Some(arg) = iter.next() {
        let value = if arg == "--config" {
            Some(
                iter.next()
                    .cloned()
                    .ok_or_else(|| Failure::Usage(format!("{command}: --config needs a value")))?,
            )
        } else {
            arg.strip_prefix("--config=").map(String::from)
        };
        match value {
            Some(v) if path.is_some() => {
                return Err(Failure::Usage(format!(
                    "{command}: --config given twice ({v})"
                )))
            }
            Some(v) => path = Some(v),
            None => rest.push(arg.clone()),
        }
    }
    Ok((path, rest))
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

    #[test]
    fn flags_win_over_the_environment_which_wins_over_the_file() {
        let text = "[join]\nname = from-file\nmtu = 1300\njson = true\n";
        let config = Config::parse("f.conf", text, &[("join", &SPEC)]).unwrap();
        let env = |var: &str| (var == "LANPARTY_MTU").then(|| "1350".to_string());
        let mut a = Args::parse("join", &argv(&["c", "--name", "flag"]), &SPEC).unwrap();
        a.layer(&SPEC, env, config.section("join"), "f.conf")
            .unwrap();
        assert_eq!(a.value("name"), Some("flag"));
        assert_eq!(a.parsed::<u16>("mtu").unwrap(), Some(1350));
        assert!(a.switch("json"), "from the file");

        let off = |var: &str| (var == "LANPARTY_JSON").then(|| "no".to_string());
        let mut b = Args::parse("join", &argv(&["c"]), &SPEC).unwrap();
        b.layer(&SPEC, off, config.section("join"), "f.conf")
            .unwrap();
        assert!(
            !b.switch("json"),
            "the environment turns the file's switch off"
        );
        assert_eq!(b.value("name"), Some("from-file"));
    }

    #[test]
    fn a_bad_value_from_the_file_or_environment_says_where_it_came_from() {
        let config = Config::parse("f.conf", "[join]\nmtu = big\n", &[("join", &SPEC)]).unwrap();
        let mut a = Args::parse("join", &argv(&["c"]), &SPEC).unwrap();
        a.layer(&SPEC, |_| None, config.section("join"), "f.conf")
            .unwrap();
        let err = a.parsed::<u16>("mtu").unwrap_err().to_string();
        assert_eq!(err, "--mtu (from f.conf line 2): invalid value \"big\"");
        let mut b = Args::parse("join", &argv(&["c"]), &SPEC).unwrap();
        let bad = |var: &str| (var == "LANPARTY_JSON").then(|| "maybe".to_string());
        let err = b.layer(&SPEC, bad, None, "").unwrap_err();
        assert_eq!(err.exit_code(), 3);
        assert!(err.to_string().contains("LANPARTY_JSON"), "{err}");
    }

    #[test]
    fn config_flag_is_taken_out_of_any_command_line() {
        let (path, rest) =
            take_config_flag("join", &argv(&["c", "--config", "/x", "--mtu", "1"])).unwrap();
        assert_eq!(path.as_deref(), Some("/x"));
        assert_eq!(rest, argv(&["c", "--mtu", "1"]));
        let (path, _) = take_config_flag("join", &argv(&["--config=/y"])).unwrap();
        assert_eq!(path.as_deref(), Some("/y"));
        assert!(take_config_flag("join", &argv(&["--config"])).is_err());
        assert!(take_config_flag("join", &argv(&["--config=/a", "--config=/b"])).is_err());
        assert_eq!(env_name("broadcast-rate"), "LANPARTY_BROADCAST_RATE");
    }
}
