//! The user directory's search, `GET /users/?q=`, over real HTTP on both backends: prefix of
//! the username or the display name in any case, paged by id, LIKE's own characters taken
//! literally, bad input a 422 naming `q`, and no `q` the unchanged list of Part 1.

#[macro_use]
mod support;

use serde_json::{json, Value};
use support::{name, Backend, Backends, TestServer};

suite!(
    search_matches_prefixes_of_either_name_in_any_case,
    search_pages_by_id_and_leaves_the_plain_list_alone,
    search_takes_like_characters_literally,
    search_rejects_bad_input_with_a_query_detail,
);

async fn setup(kind: Backend) -> (Backends, TestServer) {
    let backends = Backends::new(kind).await;
    let server = TestServer::open(&backends).await;
    (backends, server)
}

async fn create(server: &TestServer, username: &str, display_name: &str) -> i64 {
    let (status, body) = server
        .post(
            "/users/",
            json!({"username": username, "display_name": display_name}),
        )
        .await;
    assert_eq!(status, 200, "create {username}: {body}");
    body["id"].as_i64().expect("id")
}

/// The ids of a 200 answer to `GET path`.
async fn ids(server: &TestServer, path: &str) -> Vec<i64> {
    let (status, body) = server.get(path).await;
    assert_eq!(status, 200, "{path}: {body}");
    body.as_array()
        .unwrap_or_else(|| panic!("{path}: a list, got {body}"))
        .iter()
        .map(|u| u["id"].as_i64().expect("id"))
        .collect()
}

/// `q` percent-encoded for a query string, every byte but ASCII letters and digits.
fn encode(q: &str) -> String {
    q.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

async fn search_matches_prefixes_of_either_name_in_any_case(kind: Backend) {
    let (_backends, s) = setup(kind).await;
    // A unique stem keeps this test's users apart from any other's on a shared database.
    let stem = name("zq");
    let ann = create(&s, &format!("{stem}ann"), "Ann Archer").await;
    let bob = create(&s, &format!("{stem}bob"), "Ånnika Berg").await;
    let cid = create(&s, "carol", &format!("{stem}Carol")).await;
    let other = create(&s, "dave", "Dave").await;

    let all = ids(&s, &format!("/users/?q={}", encode(&stem))).await;
    assert_eq!(all, vec![ann, bob, cid], "username or display name, by id");

    let upper = ids(&s, &format!("/users/?q={}", encode(&stem.to_uppercase()))).await;
    assert_eq!(upper, all, "case does not matter");

    let padded = ids(
        &s,
        &format!("/users/?q={}", encode(&format!("  {stem}b  "))),
    )
    .await;
    assert_eq!(padded, vec![bob], "q is trimmed");

    // Display names fold beyond ASCII: "ÅNN" finds "Ånnika" (and not "Ann").
    assert_eq!(
        ids(&s, &format!("/users/?q={}", encode("ÅNN"))).await,
        vec![bob]
    );
    assert_eq!(ids(&s, "/users/?q=dav").await, vec![other]);
    // A prefix, not a substring.
    assert!(ids(&s, "/users/?q=archer").await.is_empty());
}

async fn search_pages_by_id_and_leaves_the_plain_list_alone(kind: Backend) {
    let (_backends, s) = setup(kind).await;
    let stem = name("pg");
    let mut made = Vec::new();
    for i in 0..5 {
        made.push(create(&s, &format!("{stem}{i}"), "Page Person").await);
    }
    let q = encode(&stem);
    assert_eq!(ids(&s, &format!("/users/?q={q}&limit=2")).await, made[..2]);
    assert_eq!(
        ids(&s, &format!("/users/?q={q}&skip=2&limit=2")).await,
        made[2..4]
    );
    assert_eq!(ids(&s, &format!("/users/?q={q}&skip=4")).await, made[4..]);
    assert!(ids(&s, &format!("/users/?q={q}&skip=5")).await.is_empty());

    // Without q: every user by id, as Part 1 has it.
    let listed = ids(&s, "/users/?limit=1000").await;
    assert!(made.iter().all(|id| listed.contains(id)));
    assert!(listed.windows(2).all(|w| w[0] < w[1]), "{listed:?}");
}

async fn search_takes_like_characters_literally(kind: Backend) {
    let (_backends, s) = setup(kind).await;
    let stem = name("lk");
    let plain = create(&s, &format!("{stem}x"), "Plain").await;
    let percent = create(&s, &format!("{stem}y"), "100% sure").await;
    let under = create(&s, &format!("{stem}z"), "a_b").await;
    let slash = create(&s, &format!("{stem}w"), r"back\slash").await;

    assert_eq!(
        ids(&s, &format!("/users/?q={}", encode("100%"))).await,
        vec![percent]
    );
    assert!(ids(&s, &format!("/users/?q={}", encode("%")))
        .await
        .is_empty());
    assert_eq!(
        ids(&s, &format!("/users/?q={}", encode("a_"))).await,
        vec![under]
    );
    assert!(ids(&s, &format!("/users/?q={}", encode("_")))
        .await
        .is_empty());
    assert_eq!(
        ids(&s, &format!("/users/?q={}", encode(r"back\"))).await,
        vec![slash]
    );
    assert_eq!(
        ids(&s, &format!("/users/?q={}", encode(&stem))).await,
        vec![plain, percent, under, slash]
    );
}

fn detail_locs(body: &Value) -> Vec<Value> {
    body["detail"]
        .as_array()
        .unwrap_or_else(|| panic!("a detail list, got {body}"))
        .iter()
        .map(|d| d["loc"].clone())
        .collect()
}

async fn search_rejects_bad_input_with_a_query_detail(kind: Backend) {
    let (_backends, s) = setup(kind).await;
    let long = "a".repeat(51);
    for q in ["", "%20%20", long.as_str(), "a%00b"] {
        let (status, body) = s.get(&format!("/users/?q={q}")).await;
        assert_eq!(status, 422, "q={q}: {body}");
        assert_eq!(detail_locs(&body), vec![json!(["query", "q"])], "q={q}");
    }
    // Exactly 50 characters is allowed.
    let (status, body) = s.get(&format!("/users/?q={}", "a".repeat(50))).await;
    assert_eq!(status, 200, "{body}");
    // Bad paging next to a good q is reported the same way as without it.
    let (status, body) = s.get("/users/?q=ab&limit=0").await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(detail_locs(&body), vec![json!(["query", "limit"])]);
    let (status, body) = s.get("/users/?q=&skip=-1").await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(detail_locs(&body).len(), 2, "both fields reported: {body}");
}
