//! Contexts: named sets of connection settings (bootstrap brokers, TLS files, a token file) kept in the
//! CLI's config file, so `ferry --context prod topic list` (or a current context) needs no flags.
//!
//! The file is TOML: `$FERRY_CLI_CONFIG`, else `$XDG_CONFIG_HOME/ferry/cli.toml`, else
//! `$HOME/.config/ferry/cli.toml`. A context never holds a token itself, only the file it is read from:
//! the config file is not a secret store. Settings given as flags or `FERRY_*` variables win over the
//! context's; the context's win over the defaults. The current context does not apply at all when the
//! brokers are named by `--bootstrap` or `FERRY_BOOTSTRAP` (its token and certificate are for its own
//! brokers), unless `--context` names it for the command. docs/cli.md ("Contexts") shows the format.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _, Result};
use serde::{Deserialize, Serialize};

use crate::args::{ContextCommand, OutputFormat, TlsArgs};
use std::io::Write as _;

use crate::output;

/// Largest config file read (bytes): a few contexts take a few KiB.
const CONFIG_BYTES_MAX: u64 = 1024 * 1024;
/// Most contexts in one file.
const CONTEXTS_MAX: usize = 256;
/// Longest context name (bytes).
const CONTEXT_NAME_BYTES_MAX: usize = 64;

/// The CLI's config file.
#[derive(Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CliConfig {
    /// The context used when neither `--context` nor `FERRY_CONTEXT` names one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<String>,
    #[serde(default)]
    pub contexts: BTreeMap<String, Context>,
}

/// One context's connection settings; every field optional.
#[derive(Debug, Default, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Context {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bootstrap: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_ca: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_server_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
}

/// Where the config file is, from the environment.
pub fn config_path() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("FERRY_CLI_CONFIG").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    if let Some(x) = std::env::var_os("XDG_CONFIG_HOME").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(x).join("ferry").join("cli.toml"));
    }
    match std::env::var_os("HOME").filter(|p| !p.is_empty()) {
        Some(h) => Ok(PathBuf::from(h)
            .join(".config")
            .join("ferry")
            .join("cli.toml")),
        None => bail!("no config file: set FERRY_CLI_CONFIG, XDG_CONFIG_HOME or HOME"),
    }
}

/// Reads the config file at `path`; a missing file is an empty config.
pub fn load(path: &Path) -> Result<CliConfig> {
    use std::io::Read;
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(CliConfig::default()),
        Err(e) => return Err(e).with_context(|| format!("config file {}", path.display())),
    };
    let mut text = String::new();
    file.take(CONFIG_BYTES_MAX + 1)
        .read_to_string(&mut text)
        .with_context(|| format!("config file {}", path.display()))?;
    if text.len() as u64 > CONFIG_BYTES_MAX {
        bail!(
            "config file {} is over {CONFIG_BYTES_MAX} bytes",
            path.display()
        );
    }
    let config: CliConfig = toml::from_str(&text).map_err(|e| {
        // toml's message spans several lines; one is enough here.
        let first = e.message().lines().next().unwrap_or_default().to_owned();
        anyhow::anyhow!("config file {}: {first}", path.display())
    })?;
    if config.contexts.len() > CONTEXTS_MAX {
        bail!(
            "config file {} has {} contexts; the limit is {CONTEXTS_MAX}",
            path.display(),
            config.contexts.len()
        );
    }
    Ok(config)
}

/// Writes `config` to `path` whole (a temporary file renamed into place), readable by its owner only.
fn save(path: &Path, config: &CliConfig) -> Result<()> {
    use std::io::Write;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let text = toml::to_string_pretty(config).context("encoding the config file")?;
    let tmp = path.with_extension("toml.tmp");
    // A leftover from an interrupted save would keep its old mode: start afresh.
    let _ = std::fs::remove_file(&tmp);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut f = options
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= CONTEXT_NAME_BYTES_MAX
        && name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"._-".contains(&c));
    if !ok {
        bail!("context name `{name}`: 1-{CONTEXT_NAME_BYTES_MAX} of a-z A-Z 0-9 . _ -");
    }
    Ok(())
}

/// The context in force: `named` (from `--context` or `FERRY_CONTEXT`), else the file's current one, else
/// none. A name that the file does not hold is an error.
pub fn selected(named: Option<&str>) -> Result<Option<Context>> {
    let path = config_path();
    let name = match (named, &path) {
        (Some(n), _) => n.to_owned(),
        (None, Err(_)) => return Ok(None),
        (None, Ok(p)) => match load(p)?.current {
            Some(c) => c,
            None => return Ok(None),
        },
    };
    let path = path?;
    let config = load(&path)?;
    match config.contexts.get(&name) {
        Some(c) => Ok(Some(c.clone())),
        None => bail!(
            "no context `{name}` in {} (`ferry context list` shows them)",
            path.display()
        ),
    }
}

/// Fills in what neither a flag nor a variable gave from `context`.
pub fn apply(context: &Context, bootstrap: &mut Option<Vec<String>>, tls: &mut TlsArgs) {
    if bootstrap.is_none() && !context.bootstrap.is_empty() {
        *bootstrap = Some(context.bootstrap.clone());
    }
    if tls.tls_ca.is_none() {
        tls.tls_ca.clone_from(&context.tls_ca);
    }
    if tls.tls_cert.is_none() && tls.tls_key.is_none() {
        tls.tls_cert.clone_from(&context.tls_cert);
        tls.tls_key.clone_from(&context.tls_key);
    }
    if tls.tls_server_name.is_none() {
        tls.tls_server_name.clone_from(&context.tls_server_name);
    }
    if tls.token.is_none() && tls.token_file.is_none() {
        tls.token_file.clone_from(&context.token_file);
    }
}

/// `ferry context ...`: needs no broker.
pub fn run(
    command: ContextCommand,
    bootstrap: Option<Vec<String>>,
    tls: &TlsArgs,
    format: OutputFormat,
) -> Result<()> {
    let path = config_path()?;
    let mut config = load(&path)?;
    let mut out = output::stdout();
    match command {
        ContextCommand::List => {
            for (name, c) in &config.contexts {
                let current = config.current.as_deref() == Some(name.as_str());
                match format {
                    OutputFormat::Json => output::json_line(
                        &mut out,
                        &serde_json::json!({
                            "name": name, "current": current, "bootstrap": c.bootstrap,
                        }),
                    )?,
                    OutputFormat::Text => writeln!(
                        out,
                        "{} {name}\t{}",
                        if current { "*" } else { " " },
                        c.bootstrap.join(",")
                    )?,
                }
            }
        }
        ContextCommand::Show { name } => {
            let name = name.or(config.current.clone()).context(
                "no context named and none is current (`ferry context use NAME` sets one)",
            )?;
            let c = config
                .contexts
                .get(&name)
                .with_context(|| format!("no context `{name}` in {}", path.display()))?;
            match format {
                OutputFormat::Json => {
                    let mut v = serde_json::to_value(c)?;
                    v["name"] = name.into();
                    output::json_line(&mut out, &v)?;
                }
                OutputFormat::Text => {
                    writeln!(out, "context {name}")?;
                    for line in toml::to_string_pretty(c)?.lines() {
                        writeln!(out, "{line}")?;
                    }
                }
            }
        }
        ContextCommand::Set { name } => {
            check_name(&name)?;
            if tls.token.is_some() {
                bail!(
                    "a context keeps a token file (--token-file), never the token itself (given by \
                     --token or FERRY_TOKEN)"
                );
            }
            let absolute = |p: &Option<PathBuf>| -> Result<Option<PathBuf>> {
                p.as_deref()
                    .map(|p| std::path::absolute(p).with_context(|| p.display().to_string()))
                    .transpose()
            };
            let c = Context {
                bootstrap: bootstrap.unwrap_or_default(),
                tls_ca: absolute(&tls.tls_ca)?,
                tls_cert: absolute(&tls.tls_cert)?,
                tls_key: absolute(&tls.tls_key)?,
                tls_server_name: tls.tls_server_name.clone(),
                token_file: absolute(&tls.token_file)?,
            };
            if config.contexts.len() >= CONTEXTS_MAX && !config.contexts.contains_key(&name) {
                bail!("the config file holds {CONTEXTS_MAX} contexts already");
            }
            config.contexts.insert(name.clone(), c);
            config.current.get_or_insert(name.clone());
            save(&path, &config)?;
            writeln!(out, "context {name} saved in {}", path.display())?;
        }
        ContextCommand::Use { name } => {
            if !config.contexts.contains_key(&name) {
                bail!("no context `{name}` in {}", path.display());
            }
            config.current = Some(name.clone());
            save(&path, &config)?;
            writeln!(out, "using context {name}")?;
        }
        ContextCommand::Delete { name } => {
            if config.contexts.remove(&name).is_none() {
                bail!("no context `{name}` in {}", path.display());
            }
            if config.current.as_deref() == Some(name.as_str()) {
                config.current = None;
            }
            save(&path, &config)?;
            writeln!(out, "context {name} deleted")?;
        }
    }
    out.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_over_the_context_and_the_context_over_defaults() {
        let c = Context {
            bootstrap: vec!["a:1".into()],
            tls_ca: Some("/ca.pem".into()),
            tls_cert: Some("/c.pem".into()),
            tls_key: Some("/c.key".into()),
            tls_server_name: Some("ferry".into()),
            token_file: Some("/token".into()),
        };
        let mut bootstrap = None;
        let mut tls = TlsArgs::default();
        apply(&c, &mut bootstrap, &mut tls);
        assert_eq!(bootstrap, Some(vec!["a:1".to_owned()]));
        assert_eq!(tls.token_file.as_deref(), Some(Path::new("/token")));
        let mut bootstrap = Some(vec!["b:2".into()]);
        let mut tls = TlsArgs {
            token: Some("t".into()),
            tls_cert: Some("/mine.pem".into()),
            tls_key: Some("/mine.key".into()),
            ..TlsArgs::default()
        };
        apply(&c, &mut bootstrap, &mut tls);
        assert_eq!(bootstrap, Some(vec!["b:2".to_owned()]));
        assert_eq!(tls.token_file, None, "a token given wins over the file");
        assert_eq!(tls.tls_cert.as_deref(), Some(Path::new("/mine.pem")));
        assert_eq!(tls.tls_ca.as_deref(), Some(Path::new("/ca.pem")));
    }

    #[test]
    fn the_file_round_trips_and_bad_files_are_one_line_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("cli.toml");
        assert_eq!(load(&path).unwrap(), CliConfig::default(), "missing: empty");
        let mut config = CliConfig::default();
        config.contexts.insert(
            "prod".into(),
            Context {
                bootstrap: vec!["ferry-0:7400".into()],
                token_file: Some("/run/token".into()),
                ..Context::default()
            },
        );
        config.current = Some("prod".into());
        save(&path, &config).unwrap();
        assert_eq!(load(&path).unwrap(), config);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "readable by its owner only");
        }
        std::fs::write(&path, "[contexts.x]\ntoken = \"secret\"\n").unwrap();
        let e = load(&path).unwrap_err().to_string();
        assert!(e.contains("unknown field") && !e.contains('\n'), "{e}");
        assert!(check_name("prod-1.eu").is_ok());
        assert!(check_name("a/b").is_err() && check_name("").is_err());
    }
}
