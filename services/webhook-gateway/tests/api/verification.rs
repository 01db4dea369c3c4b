use crate::helpers::{VERIFY_TOKEN, spawn_app};

#[tokio::test]
async fn the_challenge_is_echoed_for_the_right_token() {
    let app = spawn_app(None).await;
    let url = format!(
        "{}/webhook?hub.mode=subscribe&hub.verify_token={VERIFY_TOKEN}&hub.challenge=1158201444",
        app.address
    );
    let response = app.http.get(url).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "1158201444");
}

#[tokio::test]
async fn a_wrong_token_or_mode_is_forbidden() {
    let app = spawn_app(None).await;
    for query in [
        "hub.mode=subscribe&hub.verify_token=nope&hub.challenge=1",
        "hub.mode=unsubscribe&hub.verify_token=let-me-in&hub.challenge=1",
        "hub.challenge=1",
    ] {
        let response = app
            .http
            .get(format!("{}/webhook?{query}", app.address))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 403, "{query}");
        assert!(!crate::helpers::error_message(response).await.is_empty());
    }
}
