//! raft-rs logs through slog; this drain forwards its records to `tracing` under the target `raft`.

use std::fmt::Write as _;

/// A slog drain that emits tracing events.
struct ToTracing;

struct Kv(String);

impl slog::Serializer for Kv {
    fn emit_arguments(&mut self, key: slog::Key, val: &std::fmt::Arguments<'_>) -> slog::Result {
        let _ = write!(self.0, " {key}={val}");
        Ok(())
    }
}

impl slog::Drain for ToTracing {
    type Ok = ();
    type Err = slog::Never;

    fn log(&self, r: &slog::Record<'_>, kv: &slog::OwnedKVList) -> Result<(), slog::Never> {
        use slog::KV;
        let mut s = Kv(String::new());
        let _ = r.kv().serialize(r, &mut s);
        let _ = kv.serialize(r, &mut s);
        match r.level() {
            slog::Level::Critical | slog::Level::Error => {
                tracing::error!(target: "raft", "{}{}", r.msg(), s.0)
            }
            slog::Level::Warning => tracing::warn!(target: "raft", "{}{}", r.msg(), s.0),
            slog::Level::Info => tracing::info!(target: "raft", "{}{}", r.msg(), s.0),
            _ => tracing::debug!(target: "raft", "{}{}", r.msg(), s.0),
        }
        Ok(())
    }
}

/// A logger for the Raft group of `group`.
pub fn raft_logger(group: &str) -> slog::Logger {
    slog::Logger::root(
        slog::Drain::fuse(ToTracing),
        slog::o!("group" => group.to_owned()),
    )
}
