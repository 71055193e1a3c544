//! W3C trace context (`traceparent`) across Ferry, on top of `tracing`.
//!
//! `tracing` spans carry no trace id of their own, so [`TraceContextLayer`] (add it to a
//! `tracing_subscriber::Registry`) gives every span one: a root span starts a new trace, a child span
//! inherits its parent's trace id with a span id of its own, and a span created with a `traceparent` field
//! (a consumer handling a record) continues that remote trace. Then:
//!
//! - the [`Producer`](crate::Producer) writes a `traceparent` header on each record sent inside a span
//!   (unless the record already has one), naming that span;
//! - a consumer reads it with [`ConsumedRecord::traceparent`](crate::ConsumedRecord::traceparent) and
//!   handles the record inside [`consume_span`], so the handling joins the sender's trace.
//!
//! Without the layer (or outside any span) nothing is written: no invented ids.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing::Subscriber;
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

pub use crate::record::TRACEPARENT_HEADER;

/// A span's place in a distributed trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: u128,
    pub span_id: u64,
    pub sampled: bool,
}

impl TraceContext {
    /// `00-<trace id>-<span id>-<flags>`, W3C Trace Context version 00.
    pub fn traceparent(&self) -> String {
        let mut s = String::with_capacity(55);
        let _ = write!(
            s,
            "00-{:032x}-{:016x}-{:02x}",
            self.trace_id,
            self.span_id,
            u8::from(self.sampled)
        );
        s
    }

    /// Parses a `traceparent` value (version 00; all-zero ids are invalid, as the spec says).
    pub fn parse(value: &str) -> Option<TraceContext> {
        let parts: Vec<&str> = value.trim().split('-').collect();
        let [version, trace, span, flags] = parts.as_slice() else {
            return None;
        };
        let hex = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit());
        if *version != "00" || !hex(trace, 32) || !hex(span, 16) || !hex(flags, 2) {
            return None;
        }
        let trace_id = u128::from_str_radix(trace, 16).ok()?;
        let span_id = u64::from_str_radix(span, 16).ok()?;
        let flags = u8::from_str_radix(flags, 16).ok()?;
        (trace_id != 0 && span_id != 0).then_some(TraceContext {
            trace_id,
            span_id,
            sampled: flags & 1 == 1,
        })
    }
}

/// Random-enough ids without a random number crate: a per-process seed (time and address) mixed with a
/// counter through SplitMix64.
fn next_id() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    static SEED: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let seed = *SEED.get_or_init(|| {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        t ^ (&COUNTER as *const AtomicU64 as u64) ^ u64::from(std::process::id()).rotate_left(32)
    });
    let mut z = seed.wrapping_add(
        COUNTER
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15),
    );
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (z ^ (z >> 31)).max(1)
}

/// Gives every span a [`TraceContext`] (see the module docs).
#[derive(Debug, Default, Clone, Copy)]
pub struct TraceContextLayer;

struct TraceparentField(Option<TraceContext>);

impl Visit for TraceparentField {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == TRACEPARENT_HEADER {
            self.0 = TraceContext::parse(value);
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == TRACEPARENT_HEADER {
            self.0 = TraceContext::parse(&format!("{value:?}"));
        }
    }
}

impl<S> Layer<S> for TraceContextLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut remote = TraceparentField(None);
        attrs.record(&mut remote);
        let parent = span
            .parent()
            .and_then(|p| p.extensions().get::<TraceContext>().copied());
        let context = match (remote.0, parent) {
            (Some(r), _) => TraceContext {
                span_id: next_id(),
                ..r
            },
            (None, Some(p)) => TraceContext {
                span_id: next_id(),
                ..p
            },
            (None, None) => TraceContext {
                trace_id: (u128::from(next_id()) << 64) | u128::from(next_id()),
                span_id: next_id(),
                sampled: true,
            },
        };
        span.extensions_mut().insert(context);
    }
}

/// The trace context of the current span, if a [`TraceContextLayer`] gave it one.
pub fn current() -> Option<TraceContext> {
    tracing::Span::current().with_subscriber(|(id, dispatch)| {
        let registry = dispatch.downcast_ref::<tracing_subscriber::Registry>()?;
        let span = registry.span(id)?;
        let ext = span.extensions();
        ext.get::<TraceContext>().copied()
    })?
}

/// A span for handling a consumed record: it continues the sender's trace when the record carries a
/// `traceparent` header.
pub fn consume_span(record: &crate::ConsumedRecord) -> tracing::Span {
    match record.traceparent() {
        Some(tp) => tracing::info_span!(
            "ferry.consume",
            topic = %record.topic,
            partition = record.partition,
            offset = record.offset,
            traceparent = tp
        ),
        None => tracing::info_span!(
            "ferry.consume",
            topic = %record.topic,
            partition = record.partition,
            offset = record.offset
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::layer::SubscriberExt;

    #[test]
    fn spans_carry_and_continue_traces() {
        let subscriber = tracing_subscriber::registry().with(TraceContextLayer);
        tracing::subscriber::with_default(subscriber, || {
            assert_eq!(current(), None, "outside any span");
            let root = tracing::info_span!("request");
            let _g = root.enter();
            let a = current().expect("root span has a context");
            let child = tracing::info_span!("publish");
            let _c = child.enter();
            let b = current().unwrap();
            assert_eq!(a.trace_id, b.trace_id, "a child continues the trace");
            assert_ne!(a.span_id, b.span_id);
            let header = b.traceparent();
            assert_eq!(TraceContext::parse(&header), Some(b));
            // A consumer's span continues the sender's trace.
            let remote = tracing::info_span!("handle", traceparent = header.as_str());
            let _r = remote.enter();
            let c = current().unwrap();
            assert_eq!(c.trace_id, b.trace_id);
            assert_ne!(c.span_id, b.span_id);
        });
        assert_eq!(TraceContext::parse("00-0000-01-01"), None);
        assert_eq!(
            TraceContext::parse("00-00000000000000000000000000000000-0000000000000001-01"),
            None,
            "zero trace id"
        );
    }
}
