//! Bearer tokens: sent as `authorization: Bearer TOKEN` with every request, from a fixed string, a file
//! (re-read when it changes: a token rotated by a sidecar is picked up without a restart) or a callback
//! (a token minted or refreshed by the application). The current token is cached for [`TOKEN_REFRESH_MS`].

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tonic::metadata::AsciiMetadataValue;

/// How long a token from a file or a callback is used before it is read or asked for again (ms).
pub const TOKEN_REFRESH_MS: u64 = 1_000;
/// Largest token file read (bytes).
const TOKEN_FILE_BYTES_MAX: u64 = 64 * 1024;

/// A callback that returns the current token, or why there is none.
pub type TokenCallback = Arc<dyn Fn() -> Result<String, String> + Send + Sync>;

/// Where the bearer token comes from.
#[derive(Clone)]
pub enum Token {
    /// This token, always.
    Static(String),
    /// The first line of this file, re-read at most every [`TOKEN_REFRESH_MS`].
    File(PathBuf),
    /// What this callback returns, asked at most every [`TOKEN_REFRESH_MS`].
    Callback(TokenCallback),
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the token.
        match self {
            Token::Static(_) => f.write_str("Token::Static(..)"),
            Token::File(p) => write!(f, "Token::File({})", p.display()),
            Token::Callback(_) => f.write_str("Token::Callback(..)"),
        }
    }
}

/// A token source with its cached header value.
#[derive(Debug)]
pub(crate) struct Tokens {
    source: Token,
    cached: Mutex<Option<(Instant, AsciiMetadataValue)>>,
}

impl Tokens {
    pub(crate) fn new(source: Token) -> Self {
        Tokens {
            source,
            cached: Mutex::new(None),
        }
    }

    /// The `authorization` header value now, or why there is none.
    pub(crate) fn header(&self) -> Result<AsciiMetadataValue, String> {
        let mut cached = self.cached.lock();
        if let Some((at, v)) = cached.as_ref() {
            let fixed = matches!(self.source, Token::Static(_));
            if fixed || at.elapsed() < Duration::from_millis(TOKEN_REFRESH_MS) {
                return Ok(v.clone());
            }
        }
        match self.fresh() {
            Ok(v) => {
                *cached = Some((Instant::now(), v.clone()));
                Ok(v)
            }
            // A file caught mid-rotation, a callback failing once: the last good token is still better
            // than none (the broker judges whether it is still valid). Asked again at the next refresh.
            Err(why) => match cached.as_mut() {
                Some((at, v)) => {
                    tracing::warn!("keeping the previous bearer token: {why}");
                    *at = Instant::now();
                    Ok(v.clone())
                }
                None => Err(why),
            },
        }
    }

    /// The header value from the source now.
    fn fresh(&self) -> Result<AsciiMetadataValue, String> {
        let token = match &self.source {
            Token::Static(t) => t.clone(),
            Token::File(path) => read_token(path)?,
            Token::Callback(f) => f()?,
        };
        let token = token.trim();
        if token.is_empty() {
            return Err("the token is empty".into());
        }
        AsciiMetadataValue::try_from(format!("Bearer {token}"))
            .map_err(|_| "the token holds characters a header cannot carry".to_owned())
    }
}

fn read_token(path: &std::path::Path) -> Result<String, String> {
    let bad = |why: String| format!("token file {}: {why}", path.display());
    let len = std::fs::metadata(path)
        .map_err(|e| bad(e.to_string()))?
        .len();
    if len > TOKEN_FILE_BYTES_MAX {
        return Err(bad(format!(
            "{len} bytes, more than {TOKEN_FILE_BYTES_MAX}"
        )));
    }
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    Ok(text.lines().next().unwrap_or_default().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_come_from_strings_files_and_callbacks() {
        let t = Tokens::new(Token::Static("abc".into()));
        assert_eq!(t.header().unwrap(), "Bearer abc");
        let dir = std::env::temp_dir().join(format!("ferry-token-{}", std::process::id()));
        std::fs::write(&dir, "from-file\n").unwrap();
        let f = Tokens::new(Token::File(dir.clone()));
        assert_eq!(f.header().unwrap(), "Bearer from-file");
        std::fs::remove_file(&dir).unwrap();
        let n = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let c = n.clone();
        let cb = Tokens::new(Token::Callback(Arc::new(move || {
            Ok(format!(
                "t{}",
                c.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            ))
        })));
        assert_eq!(cb.header().unwrap(), "Bearer t0");
        assert_eq!(cb.header().unwrap(), "Bearer t0", "cached for a while");
        let bad = Tokens::new(Token::Static("a\nb".into()));
        assert!(bad.header().is_err());
        let missing = Tokens::new(Token::File(dir.clone()));
        assert!(
            missing.header().unwrap_err().contains("token file"),
            "no file and no token before: an error, not an anonymous request"
        );
    }

    #[test]
    fn a_token_that_cannot_be_read_again_keeps_the_last_good_one() {
        let path = std::env::temp_dir().join(format!("ferry-token-keep-{}", std::process::id()));
        std::fs::write(&path, "first\n").unwrap();
        let t = Tokens::new(Token::File(path.clone()));
        assert_eq!(t.header().unwrap(), "Bearer first");
        std::fs::remove_file(&path).unwrap();
        // Past the refresh interval, the file is gone (a rotation between unlink and rename).
        t.cached.lock().as_mut().unwrap().0 -= Duration::from_millis(TOKEN_REFRESH_MS + 1);
        assert_eq!(t.header().unwrap(), "Bearer first");
        std::fs::write(&path, "second\n").unwrap();
        t.cached.lock().as_mut().unwrap().0 -= Duration::from_millis(TOKEN_REFRESH_MS + 1);
        assert_eq!(t.header().unwrap(), "Bearer second");
        std::fs::remove_file(&path).unwrap();
    }
}
