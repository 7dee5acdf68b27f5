//! Snowplow's tracker protocol, request by request: `payload_data` POSTs and the GET pixel,
//! self-describing events and contexts decoded whichever way a tracker encodes them, the
//! collector's fields, `eid` dedup, the source (API key or app id), CORS with credentials,
//! and each rule a 400 that names the field (Snowplow's trackers drop a 400 rather than
//! retry it) with nothing of the request stored. The official trackers' runs are in
//! tests/snowplow_sdk.rs.

mod common;

use std::path::Path;

use base64::Engine as _;
use common::{TestServer, test_config};
use serde_json::{Value, json};

const TP2: &str = "/com.snowplowanalytics.snowplow/tp2";
const SCHEMA: &str = "iglu:com.snowplowanalytics.snowplow/payload_data/jsonschema/1-0-4";
const ORIGIN: &str = "http://127.0.0.1:1";

fn config(dir: &Path) -> firehose_edge::Config {
    let mut config = test_config(dir);
    config
        .auth
        .sources
        .insert("server".to_owned(), "server-api-key-0123456789".to_owned());
    config
        .snowplow
        .app_ids
        .insert("web-shop".to_owned(), "web".to_owned());
    config.cors.allowed_origins = vec![ORIGIN.to_owned()];
    config
}

fn ue() -> Value {
    json!({"schema": "iglu:com.snowplowanalytics.snowplow/unstruct_event/jsonschema/1-0-0",
           "data": {"schema": "iglu:com.example/checkout/jsonschema/1-0-0", "data": {"price": 42}}})
}

fn contexts() -> Value {
    json!({"schema": "iglu:com.snowplowanalytics.snowplow/contexts/jsonschema/1-0-0",
           "data": [{"schema": "iglu:com.example/user/jsonschema/1-0-0", "data": {"tier": "gold"}}]})
}

fn event(eid: &str) -> Value {
    json!({"e": "se", "eid": eid, "aid": "web-shop", "p": "web", "tv": "js-4.10.1",
           "se_ca": "shop", "se_ac": "buy", "dtm": "1795521590000", "stm": "1795521595000"})
}

fn payload(events: Vec<Value>) -> String {
    json!({"schema": SCHEMA, "data": events}).to_string()
}

async fn post(server: &TestServer, body: String, headers: &[(&str, &str)]) -> (u16, String) {
    let mut request = reqwest::Client::new()
        .post(server.url(TP2))
        .header("content-type", "application/json; charset=UTF-8")
        .body(body);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    (
        response.status().as_u16(),
        response.text().await.unwrap_or_default(),
    )
}

async fn records(server: &TestServer, n: usize) -> Vec<Value> {
    server.sink.wait_for_events(n).await;
    server.sink.records("snowplow_events")
}

#[tokio::test]
async fn posts_and_pixels_land_once_decoded_with_the_collectors_fields() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(config(dir.path())).await;
    // Node's and the old browser's encoding: URL-safe base64 without padding; Python's:
    // with padding; the browser's v4 POST: plain JSON.
    let unpadded =
        |v: Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let padded = |v: Value| base64::engine::general_purpose::URL_SAFE.encode(v.to_string());
    let mut e1 = event("00000000-0000-4000-8000-000000000001");
    e1["e"] = "ue".into();
    e1["ue_px"] = unpadded(ue()).into();
    e1["cx"] = unpadded(contexts()).into();
    let mut e2 = event("00000000-0000-4000-8000-000000000002");
    e2["ue_pr"] = ue().to_string().into();
    e2["co"] = contexts().to_string().into();
    e2["e"] = "ue".into();
    let mut e3 = event("00000000-0000-4000-8000-000000000003");
    e3["cx"] = padded(contexts()).into();
    let body = payload(vec![e1, e2, e3]);
    let (status, answer) = post(
        &server,
        body.clone(),
        &[
            ("origin", ORIGIN),
            ("user-agent", "Mozilla/5.0 test"),
            ("referer", "http://shop/p"),
        ],
    )
    .await;
    assert_eq!((status, answer.as_str()), (200, "ok"));
    // A resend (a tracker that lost the answer) is stored once.
    assert_eq!(post(&server, body, &[]).await.0, 200);
    // The pixel: one event in the query string, form-encoded (Python's `+` for spaces).
    let pixel = format!(
        "/i?e=pv&eid=00000000-0000-4000-8000-000000000004&aid=web-shop&p=web&tv=py-1.1.0\
         &url=http%3A%2F%2Fshop%2Fa&page=Two+words&cx={}&stm=1795521595000",
        padded(contexts()).replace('=', "%3D")
    );
    let response = reqwest::Client::new()
        .get(server.url(&pixel))
        .header("origin", ORIGIN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "image/gif");
    assert_eq!(response.headers()["access-control-allow-origin"], ORIGIN);
    assert_eq!(
        response.headers()["access-control-allow-credentials"],
        "true"
    );
    assert!(
        response.headers()["cache-control"]
            .to_str()
            .unwrap()
            .contains("no-store")
    );
    let gif = response.bytes().await.unwrap();
    assert!(gif.starts_with(b"GIF89a") && gif.len() == 43);

    let records = records(&server, 4).await;
    assert_eq!(records.len(), 4, "{records:#?}");
    let by = |n: char| {
        records
            .iter()
            .find(|r| r["eid"].as_str().unwrap().ends_with(n))
            .unwrap()
    };
    for n in ['1', '2'] {
        assert_eq!(by(n)["unstruct_event"], ue());
        assert_eq!(by(n)["contexts"], contexts());
    }
    assert_eq!(by('3')["contexts"], contexts());
    assert_eq!(by('3')["unstruct_event"], Value::Null);
    assert_eq!(by('4')["contexts"], contexts());
    assert_eq!(by('4')["page"], "Two words");
    assert_eq!(by('4')["url"], "http://shop/a");
    let first = by('1');
    assert_eq!(first["source"], "web", "the app id names the source");
    assert_eq!(first["ip"], "127.0.0.1");
    assert_eq!(first["useragent"], "Mozilla/5.0 test");
    assert_eq!(first["referer"], "http://shop/p");
    assert_eq!(first["se_ca"], "shop");
    assert_eq!(first["dtm"], "1795521590000");
    assert!(first.get("ue_px").is_none() && first.get("cx").is_none());
    // Sent 5 s after it happened, by the device's clock.
    let t = |field: &str| {
        time::OffsetDateTime::parse(
            first[field].as_str().unwrap(),
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap()
    };
    assert_eq!(
        t("collector_tstamp") - t("derived_tstamp"),
        time::Duration::seconds(5)
    );
    server.stop().await;
}

#[tokio::test]
async fn each_rule_is_a_400_naming_the_field_and_nothing_of_the_request_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(config(dir.path())).await;
    let with = |field: &str, value: Value| {
        let mut bad = event("bad");
        if value.is_null() {
            bad.as_object_mut().unwrap().remove(field);
        } else {
            bad[field] = value;
        }
        payload(vec![event("fine"), bad])
    };
    let cases = [
        (with("e", Value::Null), "data[1].e"),
        (with("tv", Value::Null), "data[1].tv"),
        (with("p", Value::Null), "data[1].p"),
        (with("vid", json!(3)), "data[1].vid"),
        (with("ue_px", json!("%%%")), "data[1].ue_px"),
        (with("co", json!("[1, 2]")), "data[1].co"),
        (with("cx", json!("bm90IGpzb24")), "data[1].cx"),
        (with("dtm", json!("yesterday")), "data[1].dtm"),
        (with("stm", json!("12345678901234")), "data[1].stm"),
        (with("contexts", json!("{}")), "data[1].contexts"),
        (
            with("collector_tstamp", json!("x")),
            "data[1].collector_tstamp",
        ),
        (
            json!({"schema": "iglu:x/y/jsonschema/1-0-0", "data": [event("a")]}).to_string(),
            "schema",
        ),
        (json!({"schema": SCHEMA, "data": {}}).to_string(), "data"),
        (json!({"schema": SCHEMA, "data": []}).to_string(), "data"),
        ("not json".to_owned(), "$"),
    ];
    for (body, path) in cases {
        let (status, answer) = post(&server, body.clone(), &[]).await;
        assert_eq!(status, 400, "{body}: {answer}");
        let answer: Value = serde_json::from_str(&answer).unwrap();
        assert_eq!(answer["details"][0]["path"], path, "{body}: {answer}");
    }
    let response = reqwest::get(server.url("/i?e=pv&p=web&aid=web-shop"))
        .await
        .unwrap();
    assert_eq!(response.status(), 400, "a pixel without tv");
    assert_eq!(
        post(&server, payload(vec![event("last")]), &[]).await.0,
        200
    );
    let records = records(&server, 1).await;
    let eids: Vec<&str> = records.iter().map(|r| r["eid"].as_str().unwrap()).collect();
    assert_eq!(eids, ["last"], "a refused request left nothing behind");
    server.stop().await;
}

#[tokio::test]
async fn the_source_is_the_keys_or_the_app_ids_and_browsers_may_send_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(config(dir.path())).await;
    let mut other = event("e-1");
    other["aid"] = "unlisted-app".into();
    let (status, _) = post(&server, payload(vec![other.clone()]), &[]).await;
    assert_eq!(status, 401, "an app id not in snowplow.app_ids, and no key");
    // A tracker told to send a key (`customHeaders`): the key's source.
    let (status, _) = post(
        &server,
        payload(vec![other]),
        &[("x-api-key", "server-api-key-0123456789")],
    )
    .await;
    assert_eq!(status, 200);
    // `SP-Anonymous`: the browser tracker's server-side anonymisation keeps no address.
    let (status, _) = post(
        &server,
        payload(vec![event("e-2")]),
        &[("sp-anonymous", "*")],
    )
    .await;
    assert_eq!(status, 200);
    let records = records(&server, 2).await;
    let by = |eid: &str| records.iter().find(|r| r["eid"] == eid).unwrap();
    assert_eq!(by("e-1")["source"], "server");
    assert_eq!(by("e-2")["source"], "web");
    assert_eq!(by("e-2")["ip"], Value::Null);
    // The browser tracker's preflight (its JSON POST, and `SP-Anonymous`).
    let preflight = reqwest::Client::new()
        .request(reqwest::Method::OPTIONS, server.url(TP2))
        .header("origin", ORIGIN)
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "content-type, sp-anonymous",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(preflight.status(), 204);
    let h = preflight.headers();
    assert_eq!(h["access-control-allow-origin"], ORIGIN);
    assert_eq!(h["access-control-allow-credentials"], "true");
    let allowed = h["access-control-allow-headers"].to_str().unwrap();
    assert!(allowed.contains("sp-anonymous"), "{allowed}");
    server.stop().await;
}

/// The limits: more events than `server.max_events_per_request`, and an event whose record
/// would exceed Firehose's record limit, are 400s (the trackers retry a 413 forever, and
/// drop a 400); a body over `server.max_body_bytes` is the 413 every API answers. Nothing is
/// stored.
#[tokio::test]
async fn size_limits_refuse_the_request_and_store_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.server.max_events_per_request = 3;
    config.server.max_body_bytes = 2 << 20;
    let server = TestServer::start(config).await;
    let four = (0..4).map(|i| event(&format!("n-{i}"))).collect();
    let (status, answer) = post(&server, payload(four), &[]).await;
    assert_eq!(status, 400, "{answer}");
    assert!(answer.contains("over the limit of 3"), "{answer}");
    let mut big = event("big");
    big["url"] = "x".repeat(1_100_000).into();
    let (status, answer) = post(&server, payload(vec![big]), &[]).await;
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer.contains("data[0] encodes to a record of"),
        "{answer}"
    );
    let mut huge = event("huge");
    huge["url"] = "x".repeat(3 << 20).into();
    let (status, _) = post(&server, payload(vec![huge]), &[]).await;
    assert_eq!(status, 413);
    assert_eq!(
        post(&server, payload(vec![event("last")]), &[]).await.0,
        200
    );
    let records = records(&server, 1).await;
    assert_eq!(records.len(), 1, "only the last request stored");
    server.stop().await;
}

/// A request's events name one source: app ids of two different sources in one request are
/// a 400 naming the second one's `aid`, and nothing of it is stored.
#[tokio::test]
async fn a_request_whose_app_ids_name_two_sources_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config
        .snowplow
        .app_ids
        .insert("back-office".to_owned(), "server".to_owned());
    let server = TestServer::start(config).await;
    let mut other = event("m-2");
    other["aid"] = "back-office".into();
    let (status, answer) = post(&server, payload(vec![event("m-1"), other]), &[]).await;
    assert_eq!(status, 400, "{answer}");
    let answer: Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(answer["details"][0]["path"], "data[1].aid", "{answer}");
    assert_eq!(post(&server, payload(vec![event("m-3")]), &[]).await.0, 200);
    let records = records(&server, 1).await;
    let eids: Vec<&str> = records.iter().map(|r| r["eid"].as_str().unwrap()).collect();
    assert_eq!(eids, ["m-3"], "the refused request left nothing behind");
    server.stop().await;
}
