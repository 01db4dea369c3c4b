//! The fake Graph API answers like Meta documents: accepted sends, scripted
//! errors, token and shape refusals, read receipts, the two-step media
//! download and media upload.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

use std::time::Duration;

use serde_json::{Value, json};
use test_support::graph::{FakeGraph, PHONE_NUMBER_ID, Reply, TOKEN, VERSION};

fn messages_url(graph: &FakeGraph) -> String {
    format!("{}/{VERSION}/{PHONE_NUMBER_ID}/messages", graph.url())
}

fn text_message(body: &str) -> Value {
    json!({
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": "16505551234",
        "type": "text",
        "text": { "body": body },
    })
}

async fn post(graph: &FakeGraph, body: &Value) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(messages_url(graph))
        .bearer_auth(TOKEN)
        .json(body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

fn assert_error(body: &Value, code: u64) {
    let error = &body["error"];
    assert_eq!(error["code"], code, "{body}");
    assert!(error["message"].is_string(), "{body}");
    assert_eq!(error["type"], "OAuthException", "{body}");
    assert!(error["fbtrace_id"].is_string(), "{body}");
}

#[tokio::test]
async fn an_accepted_send_answers_a_wamid() {
    let graph = FakeGraph::start().await;
    let (status, body) = post(&graph, &text_message("Hello")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["messaging_product"], "whatsapp");
    assert_eq!(
        body["contacts"],
        json!([{ "input": "16505551234", "wa_id": "16505551234" }])
    );
    let wamid = body["messages"][0]["id"].as_str().unwrap().to_owned();
    assert!(wamid.starts_with("wamid."), "{wamid}");
    assert!(body["messages"][0].get("message_status").is_none());

    // A reply with context, a template, a reaction, media by link and by id.
    let reply = json!({
        "messaging_product": "whatsapp", "to": "+16505551234", "type": "text",
        "context": { "message_id": "wamid.inbound" },
        "text": { "body": "Re", "preview_url": false },
    });
    let template = json!({
        "messaging_product": "whatsapp", "to": "16505551234", "type": "template",
        "template": { "name": "hello_world", "language": { "code": "en_US" },
                      "components": [{ "type": "body", "parameters": [] }] },
    });
    let reaction = json!({
        "messaging_product": "whatsapp", "to": "16505551234", "type": "reaction",
        "reaction": { "message_id": "wamid.inbound", "emoji": "" },
    });
    let image = json!({
        "messaging_product": "whatsapp", "to": "16505551234", "type": "image",
        "image": { "link": "https://example.com/a.jpg", "caption": "A" },
    });
    let document = json!({
        "messaging_product": "whatsapp", "to": "16505551234", "type": "document",
        "document": { "id": "1234567890", "caption": "Invoice", "filename": "invoice.pdf" },
    });
    let audio = json!({
        "messaging_product": "whatsapp", "to": "16505551234", "type": "audio",
        "audio": { "id": "1234567890" },
    });
    for message in [&reply, &template, &reaction, &image, &document, &audio] {
        let (status, body) = post(&graph, message).await;
        assert_eq!(status, 200, "{message} -> {body}");
    }
    let (_, body) = post(&graph, &reply).await;
    assert_eq!(body["contacts"][0]["input"], "+16505551234");
    assert_eq!(body["contacts"][0]["wa_id"], "16505551234");
    let (_, body) = post(&graph, &template).await;
    assert_eq!(body["messages"][0]["message_status"], "accepted");

    let sends = graph.sends();
    assert_eq!(sends.len(), 9);
    assert_eq!(sends[0].wamid.as_deref(), Some(wamid.as_str()));
    assert_eq!(sends[0].answer_status, 200);
    assert_eq!(
        sends[0].authorization.as_deref(),
        Some(&*format!("Bearer {TOKEN}"))
    );
    assert_eq!(sends[0].body["text"]["body"], "Hello");
    let mut wamids: Vec<_> = sends.iter().filter_map(|s| s.wamid.clone()).collect();
    wamids.sort();
    wamids.dedup();
    assert_eq!(wamids.len(), 9, "every wamid is unique");
    assert!(graph.invalid().is_empty(), "{:?}", graph.invalid());
}

#[tokio::test]
async fn scripted_replies_answer_the_next_sends_in_order() {
    let graph = FakeGraph::start().await;
    graph.script([
        Reply::ReEngagement131047,
        Reply::RateLimit130429,
        Reply::Undeliverable131026,
        Reply::ServerError,
        Reply::ExpiredToken190,
    ]);
    // A read receipt does not use the script.
    let read = json!({"messaging_product": "whatsapp", "status": "read", "message_id": "wamid.x"});
    assert_eq!(post(&graph, &read).await.0, 200);

    let (status, body) = post(&graph, &text_message("late")).await;
    assert_eq!(status, 400);
    assert_error(&body, 131047);
    assert_eq!(body["error"]["message"], "(#131047) Re-engagement message");
    assert_eq!(body["error"]["error_data"]["messaging_product"], "whatsapp");
    assert!(body["error"]["error_data"]["details"].is_string());
    assert_eq!(body["error"]["error_subcode"], 2494010);

    let (status, body) = post(&graph, &text_message("fast")).await;
    assert_eq!(status, 429);
    assert_error(&body, 130429);
    assert_eq!(body["error"]["message"], "(#130429) Rate limit hit");

    let (status, body) = post(&graph, &text_message("nobody")).await;
    assert_eq!(status, 400);
    assert_error(&body, 131026);

    let (status, body) = post(&graph, &text_message("oops")).await;
    assert_eq!(status, 500);
    assert_error(&body, 131000);

    let (status, body) = post(&graph, &text_message("expired")).await;
    assert_eq!(status, 401);
    assert_error(&body, 190);
    assert!(body["error"].get("error_data").is_none());

    // The script ran out: accepted again.
    let (status, _) = post(&graph, &text_message("ok")).await;
    assert_eq!(status, 200);

    let statuses: Vec<_> = graph.sends().iter().map(|s| s.answer_status).collect();
    assert_eq!(statuses, [400, 429, 400, 500, 401, 200]);
    assert!(graph.sends()[..5].iter().all(|s| s.wamid.is_none()));
    assert!(graph.invalid().is_empty(), "{:?}", graph.invalid());
}

#[tokio::test]
async fn no_answer_holds_the_request_until_the_client_times_out() {
    let graph = FakeGraph::start().await;
    graph.script([Reply::NoAnswer]);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let error = client
        .post(messages_url(&graph))
        .bearer_auth(TOKEN)
        .json(&text_message("hold"))
        .send()
        .await
        .unwrap_err();
    assert!(error.is_timeout(), "{error}");
    graph
        .wait_for("the held send", Duration::from_secs(5), |requests| {
            requests.iter().any(|r| r.answer_status == 0)
        })
        .await;
    // The next send is accepted.
    assert_eq!(post(&graph, &text_message("again")).await.0, 200);
}

#[tokio::test]
async fn a_wrong_or_missing_token_is_refused_with_190() {
    let graph = FakeGraph::start().await;
    let client = reqwest::Client::new();
    let response = client
        .post(messages_url(&graph))
        .bearer_auth("EAAG-wrong")
        .json(&text_message("Hello"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 401);
    assert!(response.headers().contains_key("www-authenticate"));
    let body: Value = response.json().await.unwrap();
    assert_error(&body, 190);

    let response = client
        .post(messages_url(&graph))
        .json(&text_message("Hello"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 401);

    let invalid = graph.invalid();
    assert_eq!(invalid.len(), 2, "{invalid:?}");
    assert!(invalid[0].1.contains("Bearer"), "{}", invalid[0].1);
    assert_eq!(graph.sends().len(), 2, "refused sends are still sends");
    assert!(graph.sends().iter().all(|s| s.wamid.is_none()));
}

#[tokio::test]
async fn shape_errors_are_refused_with_100_and_recorded() {
    let graph = FakeGraph::start().await;
    let bad = [
        json!({"to": "16505551234", "type": "text", "text": {"body": "no product"}}),
        json!({"messaging_product": "whatsapp", "type": "text", "text": {"body": "no to"}}),
        json!({"messaging_product": "whatsapp", "to": "abc", "type": "text", "text": {"body": "x"}}),
        json!({"messaging_product": "whatsapp", "to": "1", "recipient_type": "group",
               "type": "text", "text": {"body": "x"}}),
        json!({"messaging_product": "whatsapp", "to": "1", "type": "text", "text": {"body": ""}}),
        json!({"messaging_product": "whatsapp", "to": "1", "type": "text",
               "text": {"body": "x".repeat(4097)}}),
        json!({"messaging_product": "whatsapp", "to": "1", "type": "image", "text": {"body": "x"}}),
        json!({"messaging_product": "whatsapp", "to": "1", "type": "image",
               "image": {"link": "https://e.com/a.jpg", "id": "1"}}),
        json!({"messaging_product": "whatsapp", "to": "1", "type": "image",
               "image": {"link": "ftp://e.com/a.jpg"}}),
        json!({"messaging_product": "whatsapp", "to": "1", "type": "audio",
               "audio": {"id": "1", "caption": "no captions on audio"}}),
        json!({"messaging_product": "whatsapp", "to": "1", "type": "template",
               "template": {"name": "t"}}),
        json!({"messaging_product": "whatsapp", "to": "1", "type": "reaction",
               "reaction": {"message_id": "wamid.x"}}),
        json!({"messaging_product": "whatsapp", "to": "1", "type": "text",
               "text": {"body": "x"}, "context": {"message_id": 5}}),
        json!({"messaging_product": "whatsapp", "to": "1", "type": "poll", "poll": {}}),
        json!({"messaging_product": "whatsapp", "status": "delivered", "message_id": "wamid.x"}),
        json!({"messaging_product": "whatsapp", "status": "read"}),
    ];
    for body in &bad {
        let (status, answer) = post(&graph, body).await;
        assert_eq!(status, 400, "{body} -> {answer}");
        assert_error(&answer, 100);
        assert_eq!(answer["error"]["message"], "(#100) Invalid parameter");
        assert!(answer["error"]["error_data"]["details"].is_string());
    }
    // Not JSON.
    let response = reqwest::Client::new()
        .post(messages_url(&graph))
        .bearer_auth(TOKEN)
        .header("content-type", "application/x-www-form-urlencoded")
        .body("to=1&type=text")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
    // A wrong version, phone number id, path and method.
    let client = reqwest::Client::new();
    for (method, path) in [
        ("POST", format!("/v19.0/{PHONE_NUMBER_ID}/messages")),
        ("POST", format!("/{VERSION}/999/messages")),
        ("POST", format!("/{PHONE_NUMBER_ID}/messages")),
        ("GET", format!("/{VERSION}/{PHONE_NUMBER_ID}/messages")),
    ] {
        let response = client
            .request(method.parse().unwrap(), format!("{}{path}", graph.url()))
            .bearer_auth(TOKEN)
            .json(&text_message("x"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 400, "{method} {path}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], 100, "{body}");
        assert_eq!(body["error"]["type"], "GraphMethodException", "{body}");
    }
    let invalid = graph.invalid();
    assert_eq!(invalid.len(), bad.len() + 5, "{invalid:#?}");
    assert!(invalid.iter().all(|(_, why)| !why.is_empty()));
    assert!(graph.reads().is_empty());
}

#[tokio::test]
async fn a_read_receipt_answers_success() {
    let graph = FakeGraph::start().await;
    let read =
        json!({"messaging_product": "whatsapp", "status": "read", "message_id": "wamid.in1"});
    let (status, body) = post(&graph, &read).await;
    assert_eq!(status, 200);
    assert_eq!(body, json!({"success": true}));
    assert_eq!(graph.reads(), ["wamid.in1"]);
    assert!(graph.sends().is_empty());
    assert_eq!(graph.requests().len(), 1);
    assert!(graph.invalid().is_empty());
}

#[tokio::test]
async fn media_downloads_in_two_steps_with_the_bearer() {
    let graph = FakeGraph::start().await;
    let bytes = b"\xff\xd8\xff\xe0 fake jpeg".to_vec();
    graph.add_media("1037543291543636", &bytes, "image/jpeg");
    let client = reqwest::Client::new();

    let info: Value = client
        .get(format!("{}/{VERSION}/1037543291543636", graph.url()))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(info["messaging_product"], "whatsapp");
    assert_eq!(info["id"], "1037543291543636");
    assert_eq!(info["mime_type"], "image/jpeg");
    assert_eq!(info["file_size"], bytes.len());
    use sha2::Digest;
    assert_eq!(info["sha256"], hex::encode(sha2::Sha256::digest(&bytes)));
    let url = info["url"].as_str().unwrap();
    assert!(
        url.starts_with(&format!("{}/media-download/", graph.url())),
        "{url}"
    );

    // Without the bearer: refused.
    let response = client.get(url).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 401);
    assert_eq!(graph.downloads("1037543291543636"), 0);

    let response = client.get(url).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(response.headers()["content-type"], "image/jpeg");
    assert_eq!(response.bytes().await.unwrap().as_ref(), bytes.as_slice());
    assert_eq!(graph.downloads("1037543291543636"), 1);

    // The URL without its query string is not the URL.
    let bare = url.split('?').next().unwrap();
    let response = client.get(bare).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 404);
    assert_eq!(graph.downloads("1037543291543636"), 1);
    assert_eq!(graph.invalid().len(), 2, "{:?}", graph.invalid());

    // Unknown media: Graph's error, but not a shape error.
    let response = client
        .get(format!("{}/{VERSION}/999999", graph.url()))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], 100);
    assert_eq!(body["error"]["error_subcode"], 33);
    assert_eq!(graph.invalid().len(), 2);
}

#[tokio::test]
async fn an_upload_answers_an_id_that_can_be_sent_and_retrieved() {
    let graph = FakeGraph::start().await;
    let boundary = "X-FAKE-GRAPH-BOUNDARY";
    let file = b"%PDF-1.4 fake\r\n--not-the-boundary\r\n".to_vec();
    let mut body = Vec::new();
    for (name, value) in [
        ("messaging_product", "whatsapp"),
        ("type", "application/pdf"),
    ] {
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
            )
            .as_bytes(),
        );
    }
    body.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; \
             filename=\"invoice.pdf\"\r\nContent-Type: application/pdf\r\n\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(&file);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());

    let client = reqwest::Client::new();
    let response = client
        .post(format!("{}/{VERSION}/{PHONE_NUMBER_ID}/media", graph.url()))
        .bearer_auth(TOKEN)
        .header(
            "content-type",
            format!("multipart/form-data; boundary={boundary}"),
        )
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let answer: Value = response.json().await.unwrap();
    let id = answer["id"].as_str().unwrap().to_owned();
    assert!(id.bytes().all(|b| b.is_ascii_digit()), "{id}");
    assert_eq!(
        graph.uploads(),
        [(
            id.clone(),
            "application/pdf".to_owned(),
            "invoice.pdf".to_owned(),
            file.clone()
        )]
    );

    // Sendable by id, and retrievable like any media.
    let document = json!({
        "messaging_product": "whatsapp", "to": "16505551234", "type": "document",
        "document": { "id": id, "filename": "invoice.pdf" },
    });
    assert_eq!(post(&graph, &document).await.0, 200);
    let info: Value = client
        .get(format!("{}/{VERSION}/{id}", graph.url()))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(info["mime_type"], "application/pdf");
    assert_eq!(info["file_size"], file.len());

    // An upload without messaging_product is a shape error.
    let response = client
        .post(format!("{}/{VERSION}/{PHONE_NUMBER_ID}/media", graph.url()))
        .bearer_auth(TOKEN)
        .header(
            "content-type",
            format!("multipart/form-data; boundary={boundary}"),
        )
        .body(format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"type\"\r\n\r\nimage/png\r\n\
             --{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.png\"\r\n\
             \r\npng\r\n--{boundary}--\r\n"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
    assert_eq!(graph.invalid().len(), 1, "{:?}", graph.invalid());
    assert_eq!(graph.uploads().len(), 1);
}

#[tokio::test]
async fn env_points_a_backend_at_the_fake() {
    let graph = FakeGraph::start().await;
    let env: std::collections::HashMap<_, _> = graph.env().into_iter().collect();
    assert_eq!(env["WHATSAPP_ACCESS_TOKEN"], TOKEN);
    assert_eq!(env["WHATSAPP_PHONE_NUMBER_ID"], PHONE_NUMBER_ID);
    assert_eq!(env["GRAPH_API_URL"], graph.url());
    assert_eq!(env["GRAPH_API_VERSION"], VERSION);
    let url = graph.url();
    drop(graph);
    // Stopped: nothing listens any more.
    test_support::wait_until(
        "the fake to stop listening",
        Duration::from_secs(5),
        || async { reqwest::get(format!("{url}/{VERSION}/1")).await.is_err() },
    )
    .await;
}
