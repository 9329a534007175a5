//! The model's rules, case by case: every `validate` function's accepts and refusals.

use super::*;

fn user(name: &str, display: Option<&str>) -> Result<ValidUser, ValidationError> {
    NewUser {
        username: name.into(),
        display_name: display.map(Into::into),
    }
    .validate()
}

fn msg(s: UserId, r: UserId, c: &str) -> Result<ValidMessage, ValidationError> {
    NewMessage::to_user(s, r, c).validate()
}

#[test]
fn username_length_is_counted_in_characters() {
    assert!(user("ab", None).is_err());
    assert!(user("abc", None).is_ok());
    assert!(user(&"a".repeat(50), None).is_ok());
    assert!(user(&"a".repeat(51), None).is_err());
    // Three Cyrillic letters are six bytes but three characters.
    assert!(user("Жан", None).is_ok());
    assert_eq!(user("ab", None).unwrap_err().errors[0].field, "username");
}

#[test]
fn username_must_be_letters_and_digits() {
    assert!(user("alice42", None).is_ok());
    assert!(user("Алиса", None).is_ok());
    assert!(user("名前です", None).is_ok());
    for bad in [
        "al ice", "al-ice", "alice!", "ali_ce", "al\0ice", "<script>",
    ] {
        let e = user(bad, None).unwrap_err();
        assert_eq!(e.errors[0].field, "username", "{bad}");
        assert!(e.errors[0].message.contains("letters and digits"), "{bad}");
    }
}

#[test]
fn display_name_defaults_to_username_and_is_capped() {
    assert_eq!(user("alice", None).unwrap().display_name(), "alice");
    assert_eq!(user("alice", Some("  ")).unwrap().display_name(), "alice");
    assert_eq!(
        user("alice", Some("Alice S")).unwrap().display_name(),
        "Alice S"
    );
    assert!(user("alice", Some(&"x".repeat(100))).is_ok());
    let e = user("alice", Some(&"x".repeat(101))).unwrap_err();
    assert_eq!(e.errors[0].field, "display_name");
}

#[test]
fn every_failing_field_is_reported() {
    let e = user("a!", Some(&"x".repeat(101))).unwrap_err();
    let fields: Vec<_> = e.errors.iter().map(|e| e.field).collect();
    assert_eq!(fields, ["username", "display_name"]);
}

#[test]
fn content_is_stripped_and_bounded() {
    assert_eq!(msg(1, 2, "  hi \n").unwrap().content(), "hi");
    assert_eq!(
        msg(1, 2, "").unwrap_err().errors[0].message,
        "Message content cannot be empty"
    );
    assert!(msg(1, 2, " \t\n ").is_err());
    assert!(msg(1, 2, &"я".repeat(1000)).is_ok());
    let padded = format!("  {}  ", "x".repeat(1000));
    assert_eq!(msg(1, 2, &padded).unwrap().content().len(), 1000);
    assert_eq!(
        msg(1, 2, &"x".repeat(1001)).unwrap_err().errors[0].field,
        "content"
    );
}

#[test]
fn nul_characters_are_refused_in_stored_text() {
    assert_eq!(msg(1, 2, "a\0b").unwrap_err().errors[0].field, "content");
    assert_eq!(
        user("alice", Some("A\0")).unwrap_err().errors[0].field,
        "display_name"
    );
}

#[test]
fn cannot_message_yourself() {
    let e = msg(7, 7, "hi").unwrap_err();
    assert_eq!(e.errors[0].field, "receiver_id");
    assert_eq!(e.errors[0].message, "Cannot send message to yourself");
}

#[test]
fn a_message_goes_to_exactly_one_of_a_user_and_a_conversation() {
    let to_group = NewMessage::to_conversation(1, 9, " hi ")
        .validate()
        .unwrap();
    assert_eq!(
        (to_group.to(), to_group.receiver_id(), to_group.content()),
        (Recipient::Conversation(9), None, "hi")
    );
    let both = NewMessage {
        conversation_id: Some(9),
        ..NewMessage::to_user(1, 2, "hi")
    };
    let neither = NewMessage {
        receiver_id: None,
        ..NewMessage::to_user(1, 2, "hi")
    };
    for bad in [both, neither] {
        let e = bad.validate().unwrap_err();
        assert_eq!(e.errors[0].field, "conversation_id");
    }
    // Content rules hold for both forms, reported together with the target's.
    let e = NewMessage::to_conversation(1, 9, "  ")
        .validate()
        .unwrap_err();
    assert_eq!(e.errors[0].field, "content");
}

#[test]
fn client_id_is_bounded() {
    let with = |id: &str| NewMessage::to_user(1, 2, "x").with_client_id(id).validate();
    assert!(with("abc-123").is_ok());
    assert!(with("").is_err());
    assert!(with(&"k".repeat(65)).is_err());
}

#[test]
fn cannot_signal_typing_to_yourself() {
    let typing = |s, r| {
        TypingSignal {
            sender_id: s,
            to: Recipient::User(r),
        }
        .validate()
    };
    let valid = typing(1, 2).unwrap();
    assert_eq!((valid.sender_id(), valid.to()), (1, Recipient::User(2)));
    let e = typing(3, 3).unwrap_err();
    assert_eq!(e.errors.len(), 1);
    assert_eq!(e.errors[0].field, "receiver_id");
    assert_eq!(e.errors[0].message, "Cannot send typing to yourself");
}

#[test]
fn read_marks_are_of_a_peer_and_a_message_id() {
    let mark = |reader, peer, up_to| {
        ReadMark {
            reader_id: reader,
            to: Recipient::User(peer),
            up_to,
        }
        .validate()
    };
    let valid = mark(1, 2, 1).unwrap();
    assert_eq!(
        (valid.reader_id(), valid.to(), valid.up_to()),
        (1, Recipient::User(2), 1)
    );
    let own = mark(4, 4, 10).unwrap_err();
    assert_eq!(own.errors[0].field, "peer_id");
    assert_eq!(own.errors[0].message, "Cannot mark your own messages read");
    for up_to in [0, -1, i64::MIN] {
        let e = mark(1, 2, up_to).unwrap_err();
        assert_eq!(e.errors[0].field, "up_to", "{up_to}");
        assert_eq!(e.errors[0].message, "up_to must be a message id");
    }
    // Only the first failing rule is reported.
    let both = mark(5, 5, 0).unwrap_err();
    assert_eq!(both.errors.len(), 1);
    assert_eq!(both.errors[0].field, "peer_id");
}

#[test]
fn page_bounds() {
    assert!(Page::new(0, 1).is_ok());
    assert!(Page::new(0, 1000).is_ok());
    assert_eq!(Page::new(0, 0).unwrap_err().errors[0].field, "limit");
    assert_eq!(Page::new(0, 1001).unwrap_err().errors[0].field, "limit");
    assert_eq!(Page::new(-1, 10).unwrap_err().errors[0].field, "skip");
}

#[test]
fn timestamps_have_microseconds_and_z() {
    let u = User {
        id: 1,
        username: "abc".into(),
        display_name: "abc".into(),
        created_at: DateTime::parse_from_rfc3339("2026-11-24T10:15:30.123456789Z")
            .unwrap()
            .with_timezone(&Utc)
            .trunc_subsecs(6),
    };
    let v = serde_json::to_value(&u).unwrap();
    assert_eq!(v["created_at"], "2026-11-24T10:15:30.123456Z");
}

fn search(q: &str) -> Result<UserSearch, ValidationError> {
    UserSearchRequest::new(q).validate()
}

fn named(username: &str, display_name: &str) -> User {
    User {
        id: 1,
        username: username.into(),
        display_name: display_name.into(),
        created_at: now(),
    }
}

#[test]
fn search_text_is_trimmed_then_one_to_fifty_characters() {
    assert_eq!(search("  Al ").unwrap().prefix(), "al");
    assert_eq!(search(&"Ж".repeat(50)).unwrap().prefix(), "ж".repeat(50));
    assert!(search(&format!("  {}  ", "a".repeat(50))).is_ok());
    for bad in ["", "   ", "\t\n", &"a".repeat(51), "a\0b"] {
        let e = search(bad).unwrap_err();
        assert_eq!(e.errors.len(), 1, "{bad:?}: {e}");
        assert_eq!(e.errors[0].field, "q", "{bad:?}");
    }
    assert_eq!(
        search("").unwrap_err().errors[0].message,
        "Search text cannot be empty"
    );
}

#[test]
fn search_pages_like_every_list_and_reports_every_field() {
    let ok = UserSearchRequest {
        skip: 5,
        limit: 1000,
        ..UserSearchRequest::new("a")
    }
    .validate()
    .unwrap();
    assert_eq!((ok.page().skip(), ok.page().limit()), (5, 1000));
    assert_eq!(search("a").unwrap().page().limit(), DEFAULT_USERS_LIMIT);
    let e = UserSearchRequest {
        q: " ".into(),
        skip: -1,
        limit: 0,
    }
    .validate()
    .unwrap_err();
    let fields: Vec<_> = e.errors.iter().map(|e| e.field).collect();
    assert_eq!(fields, ["skip", "limit", "q"]);
}

#[test]
fn search_matches_a_prefix_of_either_name_in_any_case() {
    let alice = named("alice42", "Wonder Land");
    assert!(search("ALI").unwrap().matches(&alice));
    assert!(search("wonder l").unwrap().matches(&alice));
    assert!(search("alice42").unwrap().matches(&alice));
    assert!(
        !search("lice").unwrap().matches(&alice),
        "a prefix, not a substring"
    );
    assert!(!search("alice420").unwrap().matches(&alice));
    // LIKE's metacharacters are plain characters here.
    assert!(!search("a%").unwrap().matches(&alice));
    assert!(!search("_lice").unwrap().matches(&alice));
    assert!(search("100%").unwrap().matches(&named("bob", "100% Bob")));
    // Simple case mapping, character by character, as PostgreSQL's lower().
    let elan = named("Élan", "ΣΟΦΙΑ İz");
    assert!(search("éL").unwrap().matches(&elan));
    assert!(search("σοφ").unwrap().matches(&elan));
    assert!(search("ΣΟΦΙΑ iZ").unwrap().matches(&elan));
    assert_eq!(fold_char('İ'), 'i');
    assert_eq!(fold_char('ß'), 'ß');
}
