//! Parsing and normalizing one page of 200 activity log entries: the poller's
//! per-page CPU cost (`bench/run.sh micro`, recorded in BENCHMARKS.md).

use std::hint::black_box;

use azure_activity_poller::config::Format;
use azure_activity_poller::event::{Item, Page};
use azure_activity_poller::format::render_bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

/// A page shaped like the emulator's (and Azure's) Administrative entries.
fn page() -> Vec<u8> {
    let entries: Vec<String> = (0..200)
        .map(|i| {
            format!(
                r#"{{"authorization":{{"action":"Microsoft.Compute/virtualMachines/write","scope":"/subscriptions/089bd33f-d4ec-47fe-8ba5-0753aa5c5b33/resourceGroups/rg-01/providers/Microsoft.Compute/virtualMachines/vm-{i}"}},"caller":"admin@contoso.com","channels":"Operation","claims":{{"aud":"https://management.core.windows.net/","iss":"https://sts.windows.net/72f988bf-86f1-41af-91ab-2d7cd011db47/","iat":"1421876371","nbf":"1421876371","exp":"1421880271","ver":"1.0","http://schemas.microsoft.com/identity/claims/tenantid":"72f988bf-86f1-41af-91ab-2d7cd011db47","appid":"c44b4083-3bb0-49c1-b47d-974e53cbdf3c"}},"correlationId":"1e121103-0ba6-4300-ac9d-952bb5d0c{i:03}","description":"","eventDataId":"44ade6b4-3813-45e6-ae27-7420a95f{i:04}","eventName":{{"value":"EndRequest","localizedValue":"End request"}},"category":{{"value":"Administrative","localizedValue":"Administrative"}},"eventTimestamp":"2026-11-21T22:14:26.97{i:05}Z","id":"/subscriptions/089bd33f-d4ec-47fe-8ba5-0753aa5c5b33/resourceGroups/rg-01/providers/Microsoft.Compute/virtualMachines/vm-{i}/events/44ade6b4-3813-45e6-ae27-7420a95f{i:04}/ticks/635574752669792776","level":"Informational","operationId":"1e121103-0ba6-4300-ac9d-952bb5d0c80f","operationName":{{"value":"Microsoft.Compute/virtualMachines/write","localizedValue":"Create or Update Virtual Machine"}},"resourceGroupName":"rg-01","resourceProviderName":{{"value":"Microsoft.Compute","localizedValue":"Microsoft.Compute"}},"resourceType":{{"value":"Microsoft.Compute/virtualMachines","localizedValue":"Microsoft.Compute/virtualMachines"}},"resourceId":"/subscriptions/089bd33f-d4ec-47fe-8ba5-0753aa5c5b33/resourceGroups/rg-01/providers/Microsoft.Compute/virtualMachines/vm-{i}","status":{{"value":"Succeeded","localizedValue":"Succeeded"}},"subStatus":{{"value":"OK","localizedValue":"OK (HTTP Status Code: 200)"}},"submissionTimestamp":"2026-11-21T22:14:39.9936304Z","subscriptionId":"089bd33f-d4ec-47fe-8ba5-0753aa5c5b33","properties":{{"statusCode":"OK","serviceRequestId":null}},"relatedEvents":[],"httpRequest":{{"clientRequestId":"27003b25-91d3-418f-8eb1-29e537dcb249","clientIpAddress":"10.0.0.1","method":"PUT"}}}}"#
            )
        })
        .collect();
    format!(
        r#"{{"value":[{}],"nextLink":"https://management.azure.com/subscriptions/x?$skiptoken=abc"}}"#,
        entries.join(",")
    )
    .into_bytes()
}

fn bench(c: &mut Criterion) {
    let body = page();
    let page = Page::parse(&body).expect("a valid page");
    assert_eq!(page.items.len(), 200);
    let mut g = c.benchmark_group("page_of_200");
    g.throughput(Throughput::Elements(200));
    g.bench_function("parse", |b| b.iter(|| Page::parse(black_box(&body))));
    g.bench_function("parse_and_render_activity_log_alert", |b| {
        b.iter(|| {
            let page = Page::parse(black_box(&body)).expect("valid");
            let mut bytes = 0;
            for item in &page.items {
                if let Item::Entry(e) = item {
                    bytes +=
                        render_bytes(Format::ActivityLogAlert, e.raw.get()).map_or(0, |v| v.len());
                }
            }
            bytes
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
