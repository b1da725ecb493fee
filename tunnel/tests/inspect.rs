//! The inspector's API over real HTTP: a ggrok server and an origin on 127.0.0.1:0, a real
//! tunnel between them, and the inspector of that tunnel on its own 127.0.0.1:0.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use ggrok_test_support::{
    origin::Origin,
    server::{config, Server},
    tunnels::tunnel,
    visitors::{get, host, visitor},
};
use ggrok_tunnel::{
    inspect::{self, Inspected, CLI_TUNNEL_NAME},
    Exchange, Tunnel,
};
use serde_json::{json, Value};

/// A server, an origin, a tunnel named `name` to it, and the tunnel's inspector.
struct Setup {
    server: Server,
    _origin: Origin,
    tunnel: Tunnel,
    url: String,
    inspector: SocketAddr,
    agent: inspect::Agent,
}

async fn setup(name: &str) -> Setup {
    let server = Server::start(config()).await;
    let origin = Origin::start().await;
    let (tunnel, url) = tunnel(&server, origin.port(), Some(name)).await;
    let listener = inspect::bind(0).await.unwrap();
    let inspector = listener.local_addr().unwrap();
    let tunnels = vec![Inspected {
        name: CLI_TUNNEL_NAME.to_owned(),
        handle: tunnel.handle(),
    }];
    let agent = inspect::Agent::new(tunnels);
    tokio::spawn(inspect::serve(
        listener,
        agent.clone(),
        std::future::pending::<()>(),
    ));
    Setup {
        server,
        _origin: origin,
        tunnel,
        url,
        inspector,
        agent,
    }
}

impl Setup {
    fn api(&self, path: &str) -> String {
        format!("http://{}{path}", self.inspector)
    }

    /// Sends `req` through the tunnel and waits until its exchange is recorded.
    async fn visit(&self, req: reqwest::RequestBuilder) -> Arc<Exchange> {
        let mut recorded = self.tunnel.traffic().subscribe();
        let resp = req.send().await.unwrap();
        let _ = resp.bytes().await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), recorded.recv())
            .await
            .unwrap()
            .unwrap()
    }

    async fn get_json(&self, path: &str) -> (u16, Value) {
        let resp = visitor().get(self.api(path)).send().await.unwrap();
        let status = resp.status().as_u16();
        (
            status,
            serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap(),
        )
    }

    fn post(&self, body: &Value) -> reqwest::RequestBuilder {
        visitor()
            .post(self.api("/api/requests/http"))
            .header("content-type", "application/json")
            .body(body.to_string())
    }
}

#[tokio::test]
async fn tunnels_and_requests_in_ngrok_shape() {
    let s = setup("shape").await;
    let (status, tunnels) = s.get_json("/api/tunnels").await;
    assert_eq!(status, 200);
    assert_eq!(tunnels["uri"], "/api/tunnels");
    let t = &tunnels["tunnels"][0];
    assert_eq!(t["name"], CLI_TUNNEL_NAME);
    assert_eq!(t["public_url"], s.url);
    assert_eq!(t["proto"], "http");
    assert_eq!(
        t["config"]["addr"],
        format!("http://localhost:{}", s.tunnel.handle().local().port)
    );

    let first = s.visit(get(&s.server, "shape", "/echo?x=1")).await;
    let second = s
        .visit(
            visitor()
                .post(format!("{}/echo", s.server.url()))
                .header("host", host(&s.server, "shape"))
                .header("content-type", "application/json")
                .body(r#"{"hello":"world"}"#),
        )
        .await;

    let (status, list) = s.get_json("/api/requests/http").await;
    assert_eq!(status, 200);
    assert_eq!(list["uri"], "/api/requests/http");
    let rows = list["requests"].as_array().unwrap();
    let ids: Vec<&str> = rows.iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(
        ids,
        [second.id.to_string(), first.id.to_string()],
        "newest first"
    );
    let r = &rows[1];
    assert_eq!(r["uri"], format!("/api/requests/http/{}", first.id));
    assert_eq!(r["tunnel_name"], CLI_TUNNEL_NAME);
    assert_eq!(r["request"]["method"], "GET");
    assert_eq!(r["request"]["uri"], "/echo?x=1");
    assert_eq!(r["request"]["proto"], "HTTP/1.1");
    assert!(
        r["request"]["headers"]["X-Forwarded-For"][0].is_string(),
        "{r}"
    );
    assert_eq!(r["response"]["status"], "200 OK");
    assert_eq!(r["response"]["status_code"], 200);
    assert_eq!(r["duration"], first.duration_ms * 1_000_000);
    assert!(r["start"].as_str().unwrap().ends_with('Z'), "{r}");
    assert_eq!(r["ggrok"]["path"], "/echo?x=1");

    let (_, limited) = s.get_json("/api/requests/http?limit=1").await;
    assert_eq!(limited["requests"].as_array().unwrap().len(), 1);
    let (_, named) = s
        .get_json(&format!("/api/requests/http?tunnel_name={CLI_TUNNEL_NAME}"))
        .await;
    assert_eq!(named["requests"].as_array().unwrap().len(), 2);
    let (status, missing) = s.get_json("/api/requests/http?tunnel_name=nope").await;
    assert_eq!((status, missing["status_code"].clone()), (404, json!(404)));

    let (status, one) = s
        .get_json(&format!("/api/requests/http/{}", second.id))
        .await;
    assert_eq!(status, 200);
    assert_eq!(one["request"]["method"], "POST");
    let d = &one["ggrok"];
    assert_eq!(d["requestBody"]["kind"], "json");
    assert_eq!(d["requestBody"]["text"], "{\n  \"hello\": \"world\"\n}");
    assert_eq!(d["responseBody"]["text"], "{\n  \"hello\": \"world\"\n}");
    let curl = d["curl"].as_str().unwrap();
    assert!(
        curl.starts_with(&format!(
            "curl 'http://localhost:{}/echo'",
            s.tunnel.handle().local().port
        )),
        "{curl}"
    );
    assert!(
        curl.ends_with("--data-binary '{\"hello\":\"world\"}'"),
        "{curl}"
    );
    assert_eq!(s.get_json("/api/requests/http/999999").await.0, 404);

    let deleted = visitor()
        .delete(s.api("/api/requests/http"))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status().as_u16(), 204);
    let (_, empty) = s.get_json("/api/requests/http").await;
    assert_eq!(empty["requests"], json!([]));
}

#[tokio::test]
async fn replay_with_edits() {
    let s = setup("replay").await;
    let original = s.visit(get(&s.server, "replay", "/echo?n=1")).await;

    // As captured.
    let resp = s
        .post(&json!({ "id": original.id.to_string() }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let again: Value = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
    assert_ne!(again["id"], original.id.to_string());
    assert_eq!(again["request"]["uri"], "/echo?n=1");
    assert_eq!(
        again["response"]["headers"]["X-Echo-Method"],
        json!(["GET"])
    );

    // Method, path, headers and body changed.
    let edits = json!({
        "id": original.id.to_string(),
        "tunnel_name": CLI_TUNNEL_NAME,
        "edits": {
            "method": "PUT",
            "path": "/echo?n=2",
            "headers": [["x-multi", "one"], ["x-multi", "two"], ["content-type", "text/plain"]],
            "body": "edited body",
        },
    });
    let resp = s.post(&edits).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let edited: Value = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
    let h = &edited["response"]["headers"];
    assert_eq!(h["X-Echo-Method"], json!(["PUT"]));
    assert_eq!(h["X-Echo-Uri"], json!(["/echo?n=2"]));
    assert_eq!(h["X-Echo-X-Multi"], json!(["one|two"]));
    assert_eq!(edited["ggrok"]["responseBody"]["text"], "edited body");
    assert_eq!(edited["ggrok"]["remoteAddr"], "replay");

    // Bad edits are refused with a reason, and nothing is sent.
    let before = s.tunnel.traffic().recent().len();
    for (edits, reason) in [
        (
            json!({ "headers": [["bad name", "x"]] }),
            "not a header name",
        ),
        (json!({ "path": "no-slash" }), "must start with '/'"),
        (json!({ "method": "GE T" }), "method"),
        (json!({ "colour": "red" }), "unknown field"),
    ] {
        let resp = s
            .post(&json!({ "id": original.id.to_string(), "edits": edits }))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 400, "{edits}");
        let err: Value = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
        assert!(err["msg"].as_str().unwrap().contains(reason), "{err}");
    }
    assert_eq!(s.tunnel.traffic().recent().len(), before);
    let resp = s.post(&json!({ "id": "424242" })).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 404);
}

#[tokio::test]
async fn other_hosts_and_cross_origin_changes_are_refused() {
    let s = setup("guard").await;
    let original = s.visit(get(&s.server, "guard", "/echo")).await;
    let port = s.inspector.port();

    // DNS rebinding: a page on another name that resolves to 127.0.0.1.
    for host in [
        format!("evil.example:{port}"),
        format!("127.0.0.1:{}", port + 1),
    ] {
        let resp = visitor()
            .get(s.api("/api/requests/http"))
            .header("host", &host)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 403, "{host}");
    }
    for host in [format!("localhost:{port}"), format!("[::1]:{port}")] {
        let resp = visitor()
            .get(s.api("/api/tunnels"))
            .header("host", &host)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200, "{host}");
    }

    let replay = json!({ "id": original.id.to_string() });
    let before = s.tunnel.traffic().recent().len();
    // A form or fetch from another page: its Origin, or a body that is not JSON.
    let cross = s
        .post(&replay)
        .header("origin", "http://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(cross.status().as_u16(), 403);
    let form = visitor()
        .post(s.api("/api/requests/http"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("id={}", original.id))
        .send()
        .await
        .unwrap();
    assert_eq!(form.status().as_u16(), 415);
    let wipe = visitor()
        .delete(s.api("/api/requests/http"))
        .header("origin", "http://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(wipe.status().as_u16(), 403);
    assert_eq!(
        s.tunnel.traffic().recent().len(),
        before,
        "nothing replayed or wiped"
    );

    // The inspector's own page may.
    let same = s
        .post(&replay)
        .header("origin", format!("http://127.0.0.1:{port}"))
        .send()
        .await
        .unwrap();
    assert_eq!(same.status().as_u16(), 200);

    // Every answer forbids sniffing and framing.
    let resp = visitor().get(s.api("/api/tunnels")).send().await.unwrap();
    assert_eq!(resp.headers()["x-content-type-options"], "nosniff");
    assert_eq!(resp.headers()["x-frame-options"], "DENY");
    let page = visitor().get(s.api("/")).send().await.unwrap();
    assert!(page.headers().contains_key("content-security-policy"));
}

#[tokio::test]
async fn har_export_of_the_listed_rows() {
    let s = setup("har").await;
    let a = s.visit(get(&s.server, "har", "/echo?q=a%20b")).await;
    let b = s
        .visit(
            visitor()
                .post(format!("{}/echo", s.server.url()))
                .header("host", host(&s.server, "har"))
                .body(vec![0u8, 0xff, 1]),
        )
        .await;
    let _c = s.visit(get(&s.server, "har", "/status?404")).await;

    let resp = visitor()
        .get(s.api(&format!(
            "/api/requests/http?format=har&ids={},{}",
            a.id, b.id
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert!(resp.headers()["content-disposition"]
        .to_str()
        .unwrap()
        .contains("ggrok.har"));
    let har: Value = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
    let log = &har["log"];
    assert_eq!(log["version"], "1.2");
    assert_eq!(log["creator"]["name"], "ggrok");
    let entries = log["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 2, "only the rows asked for");
    // Every field HAR 1.2 requires, with its type.
    for e in entries {
        assert!(
            e["startedDateTime"].is_string() && e["time"].is_number(),
            "{e}"
        );
        let req = &e["request"];
        for f in ["method", "url", "httpVersion"] {
            assert!(req[f].is_string(), "{f}: {req}");
        }
        for f in ["cookies", "headers", "queryString"] {
            assert!(req[f].is_array(), "{f}: {req}");
        }
        assert!(req["headersSize"].is_number() && req["bodySize"].is_number());
        let res = &e["response"];
        assert!(res["status"].is_number() && res["statusText"].is_string());
        assert!(res["headers"].is_array() && res["cookies"].is_array());
        assert!(res["content"]["size"].is_number() && res["content"]["mimeType"].is_string());
        assert!(res["redirectURL"].is_string());
        assert!(e["cache"].is_object() && e["timings"]["wait"].is_number());
    }
    let post = &entries[0];
    assert_eq!(post["request"]["method"], "POST");
    assert_eq!(post["request"]["postData"]["encoding"], "base64");
    assert_eq!(post["request"]["postData"]["text"], "AP8B");
    let get = &entries[1];
    assert_eq!(
        get["request"]["queryString"],
        json!([{ "name": "q", "value": "a b" }])
    );
}

#[tokio::test]
async fn websocket_frames_are_listed_capped() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::{client::IntoClientRequest, Message};
    let s = setup("frames").await;
    let mut upgraded = s.tunnel.traffic().subscribe();
    let mut req = format!("ws://{}/ws", s.server.addr)
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("host", host(&s.server, "frames").parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    let exchange = upgraded.recv().await.unwrap();
    assert!(exchange.upgraded);

    ws.send(Message::text("hello <b>")).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::text("hello <b>")
    );
    let big = vec![7u8; 100_000];
    ws.send(Message::binary(big.clone())).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::binary(big));

    let (_, one) = s
        .get_json(&format!("/api/requests/http/{}", exchange.id))
        .await;
    let frames = one["ggrok"]["frames"].as_array().unwrap();
    let seen: Vec<(bool, &str, u64, &str)> = frames
        .iter()
        .map(|f| {
            (
                f["fromVisitor"].as_bool().unwrap(),
                f["kind"].as_str().unwrap(),
                f["size"].as_u64().unwrap(),
                f["text"].as_str().unwrap(),
            )
        })
        .map(|(d, k, n, t)| (d, k, n, &t[..t.len().min(11)]))
        .collect();
    assert_eq!(
        seen,
        [
            (true, "text", 9, "hello <b>"),
            (false, "text", 9, "hello <b>"),
            (true, "binary", 100_000, "07 07 07 07"),
            (false, "binary", 100_000, "07 07 07 07"),
        ]
    );
    assert_eq!(frames[2]["truncated"], true);
    assert!(frames[3]["atMs"].as_u64().unwrap() >= frames[0]["atMs"].as_u64().unwrap());

    // Capped per connection: later frames are counted.
    let cap = ggrok_tunnel::frames::MAX_FRAMES;
    for i in 0..cap {
        ws.send(Message::text(i.to_string())).await.unwrap();
        ws.next().await.unwrap().unwrap();
    }
    let (_, one) = s
        .get_json(&format!("/api/requests/http/{}", exchange.id))
        .await;
    assert_eq!(one["ggrok"]["frames"].as_array().unwrap().len(), cap);
    // 4 frames before, 2 per round trip since.
    assert_eq!(one["ggrok"]["framesDropped"], (4 + 2 * cap - cap) as u64);
    // An upgrade has no body to end: no error (it said "body not read to the end").
    assert_eq!(one["ggrok"]["error"], Value::Null, "{one}");
    drop(ws);
    let (_, closed) = s
        .get_json(&format!("/api/requests/http/{}", exchange.id))
        .await;
    assert_eq!(closed["ggrok"]["error"], Value::Null, "{closed}");
}

/// A live page's event stream ends when a tunnel is added or removed (the API started or
/// stopped one); the page reconnects within the `retry` it was given and loads the lists again.
#[tokio::test]
async fn live_pages_reload_when_the_tunnels_change() {
    let s = setup("events").await;
    let mut resp = visitor().get(s.api("/api/events")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut got = resp
        .chunk()
        .await
        .unwrap()
        .expect("the stream starts")
        .to_vec();
    s.agent.add(Inspected {
        name: "more".to_owned(),
        handle: s.tunnel.handle(),
    });
    tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(chunk) = resp.chunk().await.unwrap() {
            got.extend_from_slice(&chunk);
        }
    })
    .await
    .expect("the stream ends");
    let got = String::from_utf8(got).unwrap();
    assert!(got.starts_with("retry: 500\n\n"), "{got}");
    assert!(got.contains(r#""type":"status""#), "{got}");
}
