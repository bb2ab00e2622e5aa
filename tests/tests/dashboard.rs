//! The dashboard as the aggregator serves it: the page and every asset it
//! references, gzip when accepted and identity otherwise, ETag revalidation,
//! cache headers, and the `http.dashboard` switch. (The dashboard itself is
//! tested in a real browser by `dashboard/e2e`, run by `make test`.)

use std::io::Read;

use hostpulse_tests::{TestAggregator, http_request};

fn gunzip(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(bytes)
        .read_to_end(&mut out)
        .expect("valid gzip");
    out
}

/// The `/assets/...` paths a page references.
fn assets_in(page: &str) -> Vec<String> {
    page.split('"')
        .filter(|s| s.starts_with("/assets/"))
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn serves_the_embedded_dashboard_compressed_and_cacheable() {
    let agg = TestAggregator::start(|_| {}).await;

    let gz = http_request(agg.http, "/", &[("Accept-Encoding", "gzip, br")]).await;
    assert_eq!(gz.status, 200);
    assert_eq!(gz.header("content-encoding"), Some("gzip"));
    assert_eq!(gz.header("content-type"), Some("text/html; charset=utf-8"));
    assert_eq!(gz.header("cache-control"), Some("no-cache"));
    assert_eq!(gz.header("vary"), Some("Accept-Encoding"));
    let page = String::from_utf8(gunzip(&gz.body)).expect("UTF-8 page");
    let assets = assets_in(&page);
    assert!(
        page.contains("id=\"root\"") && !assets.is_empty(),
        "the aggregator embeds a built dashboard (run `make dashboard` before building it); got:\n{page}"
    );

    let plain = http_request(agg.http, "/", &[]).await;
    assert_eq!(plain.status, 200);
    assert_eq!(plain.header("content-encoding"), None);
    assert_eq!(String::from_utf8_lossy(&plain.body), page);

    let etag = gz.header("etag").expect("an ETag").to_string();
    let again = http_request(agg.http, "/", &[("If-None-Match", &etag)]).await;
    assert_eq!(again.status, 304);
    assert!(again.body.is_empty());

    let mut kinds = Vec::new();
    for path in &assets {
        let r = http_request(agg.http, path, &[("Accept-Encoding", "gzip")]).await;
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(
            r.header("cache-control"),
            Some("public, max-age=31536000, immutable"),
            "{path}"
        );
        let raw = gunzip(&r.body);
        assert!(raw.len() > r.body.len(), "{path} is smaller compressed");
        kinds.push(r.header("content-type").unwrap_or("").to_string());
    }
    assert!(
        kinds.iter().any(|k| k.starts_with("text/javascript")),
        "{kinds:?}"
    );
    assert!(kinds.iter().any(|k| k.starts_with("text/css")), "{kinds:?}");

    let missing = http_request(agg.http, "/assets/nope.js", &[]).await;
    assert_eq!(missing.status, 404);
    agg.stop().await;
}

#[tokio::test]
async fn the_dashboard_can_be_switched_off() {
    let agg = TestAggregator::start(|c| c.http.dashboard = false).await;
    assert_eq!(http_request(agg.http, "/", &[]).await.status, 404);
    // The API stays.
    assert_eq!(http_request(agg.http, "/healthz", &[]).await.status, 200);
    agg.stop().await;
}
