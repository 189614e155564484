//! Each job runs in a `taskgate.job` span whose parent is the submitter's span.

use std::sync::{Arc, Mutex};

use taskgate::Pool;

/// Records every `taskgate.job` span: its parent's name and its fields.
#[derive(Clone, Default)]
struct SpanLog(Arc<Mutex<Vec<SpanRecord>>>);

/// A span's name, its parent's name, and its fields as `name=value;` pairs.
type SpanRecord = (String, Option<String>, String);

impl<S> tracing_subscriber::Layer<S> for SpanLog
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        struct Fields(String);
        impl tracing::field::Visit for Fields {
            fn record_debug(&mut self, f: &tracing::field::Field, v: &dyn std::fmt::Debug) {
                self.0.push_str(&format!("{}={:?};", f.name(), v));
            }
            fn record_str(&mut self, f: &tracing::field::Field, v: &str) {
                self.0.push_str(&format!("{}={};", f.name(), v));
            }
        }
        let span = ctx.span(id).unwrap();
        let parent = span.parent().map(|p| p.name().to_string());
        let mut fields = Fields(String::new());
        attrs.record(&mut fields);
        self.0
            .lock()
            .unwrap()
            .push((span.name().to_string(), parent, fields.0));
    }
}

#[tokio::test(start_paused = true)]
async fn jobs_run_in_a_span_under_the_submitters_span() {
    use tracing::Instrument;
    use tracing_subscriber::layer::SubscriberExt;

    // A global subscriber (this file holds one test): a thread-local default can
    // miss callsites whose interest another test thread cached first.
    let log = SpanLog::default();
    let subscriber = tracing_subscriber::registry().with(log.clone());
    tracing::subscriber::set_global_default(subscriber).unwrap();

    let pool = Pool::builder().workers(1).name("api").build().unwrap();
    let inner_span_seen = pool
        .run(async { tracing::Span::current().metadata().map(|m| m.name()) })
        .instrument(tracing::info_span!("request"))
        .await
        .unwrap();
    assert_eq!(inner_span_seen, Some("taskgate.job"));
    let h = pool.submit(async {}).await.unwrap();
    let id = h.id();
    h.await.unwrap();

    let spans = log.0.lock().unwrap().clone();
    let jobs: Vec<_> = spans.iter().filter(|s| s.0 == "taskgate.job").collect();
    assert_eq!(jobs.len(), 2, "{spans:?}");
    assert_eq!(jobs[0].1.as_deref(), Some("request"));
    assert!(jobs[0].2.contains("pool=api;"), "{:?}", jobs[0]);
    assert_eq!(jobs[1].1, None, "no current span at submit: a root span");
    assert!(jobs[1].2.contains(&format!("job={id};")), "{:?}", jobs[1]);
}
