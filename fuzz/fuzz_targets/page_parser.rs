//! Arbitrary bytes as a response body of the Activity Logs - List call.
//!
//! `Page::parse` may reject the body, but must never panic; every item it
//! returns, an `Entry` or a `Malformed` one, must render in every output
//! format (and serialize, as it is POSTed) without panicking either.
#![no_main]

use azure_activity_poller::config::Format;
use azure_activity_poller::event::{Item, Page, format_ticks, to_nanos};
use azure_activity_poller::format::render;
use libfuzzer_sys::fuzz_target;

const FORMATS: [Format; 3] = [
    Format::ActivityLogAlert,
    Format::CommonAlertSchema,
    Format::EventData,
];

/// Fails to compile when `Format` gains a variant that `FORMATS` lacks.
#[allow(dead_code)]
fn every_format_is_listed(f: Format) {
    match f {
        Format::ActivityLogAlert | Format::CommonAlertSchema | Format::EventData => {}
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(page) = Page::parse(data) else {
        return;
    };
    for item in &page.items {
        let _ = item.status();
        let fields = match item {
            Item::Entry(e) => {
                // The watermark and the `$filter` use these.
                let _ = format_ticks(e.event_timestamp);
                let _ = to_nanos(e.event_timestamp);
                e.fields()
            }
            Item::Malformed(m) => m.fields(),
        };
        for format in FORMATS {
            let doc = render(format, &fields);
            let _ = serde_json::to_vec(&doc);
        }
    }
});
