//! Unit tests: one per rule of etcd's semantics the key space implements.

use super::store::Version;
use super::*;

fn put_req(key: &str, value: &str) -> PutRequest {
    PutRequest {
        key: key.into(),
        value: value.into(),
        ..PutRequest::default()
    }
}

fn put(s: &mut KeySpace, key: &str, value: &str) -> PutResponse {
    s.put(&put_req(key, value), &NoLeases).unwrap()
}

fn del(key: &str, range_end: &[u8]) -> DeleteRangeRequest {
    DeleteRangeRequest {
        key: key.into(),
        range_end: range_end.to_vec(),
        prev_kv: true,
    }
}

fn get(key: &str, range_end: &[u8]) -> RangeRequest {
    RangeRequest {
        key: key.into(),
        range_end: range_end.to_vec(),
        ..RangeRequest::default()
    }
}

fn keys(r: &RangeResponse) -> Vec<String> {
    r.kvs
        .iter()
        .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
        .collect()
}

fn kv(s: &KeySpace, key: &str) -> Option<KeyValue> {
    s.range(&get(key, b"")).unwrap().kvs.pop()
}

fn cmp(key: &str, result: CompareResult, target: CompareTarget) -> Compare {
    Compare {
        result,
        target,
        key: key.into(),
        range_end: vec![],
    }
}

/// A store with keys a..e, put in that order at revisions 2..6.
fn five() -> KeySpace {
    let mut s = KeySpace::new();
    for k in ["a", "b", "c", "d", "e"] {
        put(&mut s, k, k);
    }
    s
}

#[test]
fn a_fresh_store_is_at_revision_1_and_empty() {
    let s = KeySpace::new();
    assert_eq!(
        (s.revision(), s.compact_revision(), s.len(), s.is_empty()),
        (1, 0, 0, true)
    );
}

#[test]
fn each_put_and_each_effective_delete_adds_one_revision() {
    let mut s = KeySpace::new();
    put(&mut s, "a", "1");
    put(&mut s, "a", "2");
    assert_eq!(s.revision(), 3);
    assert_eq!(s.delete_range(&del("zz", b"")).unwrap().deleted, 0);
    assert_eq!(
        s.revision(),
        3,
        "a delete that deleted nothing is no change"
    );
    put(&mut s, "b", "1");
    let d = s.delete_range(&del("a", b"\0")).unwrap();
    assert_eq!(
        (d.deleted, s.revision()),
        (2, 5),
        "one delete of two keys is one revision"
    );
    s.range(&get("a", b"")).unwrap();
    assert_eq!(s.revision(), 5, "a range changes nothing");
}

#[test]
fn versions_count_puts_and_a_delete_ends_the_generation() {
    let mut s = KeySpace::new();
    for v in ["1", "2", "3"] {
        put(&mut s, "k", v);
    }
    let k = kv(&s, "k").unwrap();
    assert_eq!(
        (k.create_revision, k.mod_revision, k.version, k.value),
        (2, 4, 3, b"3".to_vec())
    );
    s.delete_range(&del("k", b"")).unwrap();
    assert_eq!(kv(&s, "k"), None);
    put(&mut s, "k", "new");
    let k = kv(&s, "k").unwrap();
    assert_eq!(
        (k.create_revision, k.mod_revision, k.version),
        (6, 6, 1),
        "a re-creation starts over"
    );
    let old = s
        .range(&RangeRequest {
            revision: 3,
            ..get("k", b"")
        })
        .unwrap();
    assert_eq!(
        (old.kvs[0].version, old.kvs[0].value.as_slice()),
        (2, &b"2"[..]),
        "history is readable"
    );
}

#[test]
fn prefix_end_follows_clientv3() {
    assert_eq!(prefix_end(b"a"), b"b");
    assert_eq!(prefix_end(b"ab"), b"ac");
    assert_eq!(prefix_end(b"a\xff"), b"b");
    assert_eq!(prefix_end(b"a\xfe\xff\xff"), b"a\xff");
    assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
    assert_eq!(prefix_end(b""), vec![0]);
}

#[test]
fn range_end_conventions() {
    let s = five();
    assert_eq!(
        keys(&s.range(&get("b", b"")).unwrap()),
        ["b"],
        "empty: one key"
    );
    assert_eq!(
        keys(&s.range(&get("c", b"\0")).unwrap()),
        ["c", "d", "e"],
        "[0]: to the end"
    );
    assert_eq!(
        keys(&s.range(&get("\0", b"\0")).unwrap()).len(),
        5,
        "[0],[0]: everything"
    );
    assert_eq!(
        keys(&s.range(&get("b", b"d")).unwrap()),
        ["b", "c"],
        "half-open"
    );
    assert!(
        s.range(&get("d", b"b")).unwrap().kvs.is_empty(),
        "an end below the key: nothing"
    );
    assert!(
        s.range(&get("b", b"b")).unwrap().kvs.is_empty(),
        "an end equal to the key: nothing"
    );
    assert_eq!(keys(&s.range(&get("a", &prefix_end(b"a"))).unwrap()), ["a"]);
}

#[test]
fn limit_cuts_and_sets_more_while_count_counts_everything() {
    let s = five();
    let r = s
        .range(&RangeRequest {
            limit: 2,
            ..get("a", b"\0")
        })
        .unwrap();
    assert_eq!(
        (keys(&r), r.more, r.count),
        (vec!["a".to_string(), "b".into()], true, 5)
    );
    let r = s
        .range(&RangeRequest {
            limit: 5,
            ..get("a", b"\0")
        })
        .unwrap();
    assert_eq!((r.kvs.len(), r.more, r.count), (5, false, 5));
    let r = s
        .range(&RangeRequest {
            count_only: true,
            limit: 1,
            ..get("a", b"\0")
        })
        .unwrap();
    assert_eq!(
        (r.kvs.len(), r.more, r.count),
        (0, false, 5),
        "count_only returns no kvs"
    );
    let r = s
        .range(&RangeRequest {
            keys_only: true,
            ..get("a", b"")
        })
        .unwrap();
    assert_eq!(
        (r.kvs[0].value.len(), r.kvs[0].mod_revision),
        (0, 2),
        "keys_only drops values"
    );
}

#[test]
fn filters_apply_after_the_count_and_before_the_limit() {
    let s = five(); // a..e at mod revisions 2..6
    let r = s
        .range(&RangeRequest {
            min_mod_revision: 3,
            max_mod_revision: 5,
            limit: 2,
            ..get("a", b"\0")
        })
        .unwrap();
    assert_eq!(
        (keys(&r), r.more, r.count),
        (vec!["b".to_string(), "c".into()], true, 5)
    );
    let r = s
        .range(&RangeRequest {
            min_create_revision: 5,
            limit: 2,
            ..get("a", b"\0")
        })
        .unwrap();
    assert_eq!(
        (keys(&r), r.more),
        (vec!["d".to_string(), "e".into()], false),
        "more counts the filtered kvs"
    );
    let r = s
        .range(&RangeRequest {
            max_create_revision: 2,
            ..get("a", b"\0")
        })
        .unwrap();
    assert_eq!(keys(&r), ["a"]);
}

#[test]
fn sorting_follows_etcds_apply_layer() {
    let mut s = KeySpace::new();
    put(&mut s, "a", "3");
    put(&mut s, "b", "1");
    put(&mut s, "c", "2");
    put(&mut s, "b", "1"); // b: version 2, mod 5
    let sorted = |order, target| {
        keys(
            &s.range(&RangeRequest {
                sort_order: order,
                sort_target: target,
                ..get("a", b"\0")
            })
            .unwrap(),
        )
    };
    assert_eq!(sorted(SortOrder::Descend, SortTarget::Key), ["c", "b", "a"]);
    assert_eq!(
        sorted(SortOrder::None, SortTarget::Mod),
        ["a", "c", "b"],
        "no order on a non-key target: ascending"
    );
    assert_eq!(
        sorted(SortOrder::Descend, SortTarget::Version),
        ["b", "a", "c"],
        "ties keep key order"
    );
    assert_eq!(
        sorted(SortOrder::Ascend, SortTarget::Value),
        ["b", "c", "a"]
    );
    assert_eq!(
        sorted(SortOrder::Descend, SortTarget::Create),
        ["c", "b", "a"]
    );
    let r = s
        .range(&RangeRequest {
            sort_order: SortOrder::Descend,
            sort_target: SortTarget::Value,
            keys_only: true,
            limit: 1,
            ..get("a", b"\0")
        })
        .unwrap();
    assert_eq!(
        (keys(&r), r.kvs[0].value.len(), r.more),
        (vec!["a".to_string()], 0, true),
        "sorted on values, then dropped"
    );
}

#[test]
fn reads_outside_the_history_fail() {
    let mut s = five(); // revision 6
    assert_eq!(
        s.range(&RangeRequest {
            revision: 7,
            ..get("a", b"")
        }),
        Err(MvccError::FutureRevision)
    );
    assert_eq!(s.compact(7), Err(MvccError::FutureRevision));
    s.compact(4).unwrap();
    assert_eq!(
        s.range(&RangeRequest {
            revision: 3,
            ..get("a", b"\0")
        }),
        Err(MvccError::Compacted {
            compact_revision: 4
        })
    );
    assert_eq!(
        keys(
            &s.range(&RangeRequest {
                revision: 4,
                ..get("a", b"\0")
            })
            .unwrap()
        ),
        ["a", "b", "c"]
    );
    assert_eq!(
        s.compact(4),
        Err(MvccError::Compacted {
            compact_revision: 4
        })
    );
    assert_eq!(
        s.compact(3),
        Err(MvccError::Compacted {
            compact_revision: 4
        })
    );
    assert_eq!(
        s.changes(3, b"a", b"\0", false),
        Err(MvccError::Compacted {
            compact_revision: 4
        })
    );
    assert_eq!(
        s.changes(4, b"a", b"\0", false).unwrap().len(),
        3,
        "c at 4, d, e"
    );
    assert_eq!(
        s.range(&RangeRequest {
            revision: -1,
            ..get("e", b"")
        })
        .unwrap()
        .kvs
        .len(),
        1,
        "negative: current"
    );
}

#[test]
fn compaction_keeps_the_latest_version_and_drops_deleted_keys() {
    let mut s = KeySpace::new();
    put(&mut s, "a", "1"); // 2
    put(&mut s, "a", "2"); // 3
    put(&mut s, "b", "1"); // 4
    s.delete_range(&del("b", b"")).unwrap(); // 5
    put(&mut s, "c", "1"); // 6
    s.delete_range(&del("c", b"")).unwrap(); // 7
    put(&mut s, "c", "2"); // 8
    assert_eq!(s.stored_versions(), 7);
    s.compact(7).unwrap();
    // a: its version at 3 stays (needed at 7); b: gone; c: only the re-creation at 8.
    assert_eq!((s.stored_keys(), s.stored_versions()), (2, 2));
    let at7 = s
        .range(&RangeRequest {
            revision: 7,
            ..get("\0", b"\0")
        })
        .unwrap();
    assert_eq!(
        (keys(&at7), at7.kvs[0].mod_revision),
        (vec!["a".to_string()], 3)
    );
    let events = s.changes(7, b"\0", b"\0", true).unwrap();
    assert_eq!(
        events.len(),
        1,
        "the delete of c at the compaction revision is gone with it"
    );
    assert_eq!(
        (
            events[0].kind,
            events[0].kv.mod_revision,
            &events[0].prev_kv
        ),
        (EventKind::Put, 8, &None)
    );
    s.compact(8).unwrap();
    assert_eq!(
        s.changes(8, b"\0", b"\0", false).unwrap().len(),
        1,
        "a put at the compaction revision survives"
    );
    assert_eq!(s.len(), 2);
}

#[test]
fn changes_list_every_event_in_revision_order() {
    let mut s = KeySpace::new();
    put(&mut s, "b", "1"); // 2
    put(&mut s, "a", "1"); // 3
    s.txn(
        &TxnRequest {
            success: vec![
                RequestOp::Put(put_req("b", "2")),
                RequestOp::DeleteRange(del("a", b"")),
                RequestOp::Put(put_req("c", "1")),
            ],
            ..TxnRequest::default()
        },
        &NoLeases,
    )
    .unwrap(); // 4
    let events = s.changes(3, b"\0", b"\0", true).unwrap();
    let got: Vec<(EventKind, &[u8], i64)> = events
        .iter()
        .map(|e| (e.kind, e.kv.key.as_slice(), e.kv.mod_revision))
        .collect();
    assert_eq!(
        got,
        [
            (EventKind::Put, &b"a"[..], 3),
            (EventKind::Put, b"b", 4),
            (EventKind::Delete, b"a", 4),
            (EventKind::Put, b"c", 4)
        ]
    );
    assert_eq!(
        events[2].kv,
        KeyValue {
            key: b"a".to_vec(),
            mod_revision: 4,
            ..KeyValue::default()
        },
        "etcd's delete kv"
    );
    assert_eq!(events[2].prev_kv.as_ref().map(|p| p.mod_revision), Some(3));
    assert_eq!(
        events[1].prev_kv.as_ref().map(|p| p.value.as_slice()),
        Some(&b"1"[..])
    );
    assert_eq!(events[0].prev_kv, None, "a creation has no previous kv");
    assert_eq!(s.changes(4, b"b", b"", false).unwrap().len(), 1, "one key");
    assert!(s.changes(5, b"\0", b"\0", false).unwrap().is_empty());
}

#[test]
fn put_flags_follow_etcd() {
    let mut s = KeySpace::new();
    let ignore = PutRequest {
        key: b"k".to_vec(),
        ignore_value: true,
        ..PutRequest::default()
    };
    assert_eq!(s.put(&ignore, &NoLeases), Err(MvccError::KeyNotFound));
    let ignore_lease = PutRequest {
        ignore_lease: true,
        ..put_req("k", "v")
    };
    assert_eq!(s.put(&ignore_lease, &NoLeases), Err(MvccError::KeyNotFound));
    assert_eq!(
        s.put(
            &PutRequest {
                lease: 7,
                ..put_req("k", "v")
            },
            &NoLeases
        ),
        Err(MvccError::LeaseNotFound(7))
    );
    assert_eq!(
        s.put(&put_req("", "v"), &NoLeases),
        Err(MvccError::EmptyKey)
    );
    assert_eq!(s.revision(), 1, "failed puts change nothing");
    put(&mut s, "k", "v1");
    let r = s
        .put(
            &PutRequest {
                prev_kv: true,
                ..ignore.clone()
            },
            &NoLeases,
        )
        .unwrap();
    assert_eq!(r.prev_kv.map(|p| p.value), Some(b"v1".to_vec()));
    let k = kv(&s, "k").unwrap();
    assert_eq!(
        (k.value.as_slice(), k.version),
        (&b"v1"[..], 2),
        "ignore_value keeps the value"
    );
    assert_eq!(
        put(&mut s, "k", "v2").prev_kv,
        None,
        "prev_kv only when asked"
    );
}

#[test]
fn leases_are_checked_through_the_lookup() {
    struct Lease5;
    impl LeaseLookup for Lease5 {
        fn exists(&self, lease: i64) -> bool {
            lease == 5
        }
    }
    let mut s = KeySpace::new();
    s.put(
        &PutRequest {
            lease: 5,
            ..put_req("k", "v")
        },
        &Lease5,
    )
    .unwrap();
    s.put(
        &PutRequest {
            ignore_lease: true,
            ..put_req("k", "w")
        },
        &Lease5,
    )
    .unwrap();
    assert_eq!(
        kv(&s, "k").map(|k| (k.lease, k.value)),
        Some((5, b"w".to_vec())),
        "ignore_lease keeps the lease"
    );
    assert!(NoLeases.exists(0) && !NoLeases.exists(5));
}

#[test]
fn compares_on_missing_keys_see_a_zero_kv_but_values_fail() {
    use CompareResult::*;
    use CompareTarget::*;
    let mut s = KeySpace::new();
    put(&mut s, "a", "x"); // 2
    let x = || b"x".to_vec();
    let cases = [
        (cmp("zz", Equal, Version(0)), true),
        (cmp("zz", Equal, Create(0)), true),
        (cmp("zz", Equal, Mod(0)), true),
        (cmp("zz", Equal, Lease(0)), true),
        (cmp("zz", Equal, Value(vec![])), false),
        (cmp("zz", NotEqual, Value(x())), false),
        (cmp("a", Equal, Value(x())), true),
        (cmp("a", Greater, Value(b"w".to_vec())), true),
        (cmp("a", Less, Mod(3)), true),
        (cmp("a", NotEqual, Version(1)), false),
    ];
    for (c, want) in cases {
        let txn = TxnRequest {
            compare: vec![c.clone()],
            ..TxnRequest::default()
        };
        assert_eq!(s.txn(&txn, &NoLeases).unwrap().succeeded, want, "{c:?}");
    }
    put(&mut s, "ab", "y"); // 3
    let over = |result, target| Compare {
        range_end: prefix_end(b"a"),
        ..cmp("a", result, target)
    };
    for (c, want) in [
        (over(Equal, Version(1)), true),
        (over(Equal, Value(x())), false),
    ] {
        let txn = TxnRequest {
            compare: vec![c.clone()],
            ..TxnRequest::default()
        };
        assert_eq!(
            s.txn(&txn, &NoLeases).unwrap().succeeded,
            want,
            "every key of the range: {c:?}"
        );
    }
    assert_eq!(s.revision(), 3, "compares write nothing");
}

#[test]
fn a_txn_writes_at_one_revision_and_reads_its_own_writes() {
    let mut s = KeySpace::new();
    put(&mut s, "a", "0"); // 2
    let r = s
        .txn(
            &TxnRequest {
                compare: vec![cmp(
                    "a",
                    CompareResult::Equal,
                    CompareTarget::Value(b"0".to_vec()),
                )],
                success: vec![
                    RequestOp::Put(put_req("a", "1")),
                    RequestOp::Range(get("a", b"")),
                    RequestOp::Put(put_req("b", "1")),
                    RequestOp::Range(RangeRequest {
                        revision: 2,
                        ..get("a", b"")
                    }),
                ],
                failure: vec![],
            },
            &NoLeases,
        )
        .unwrap();
    assert!(r.succeeded);
    assert_eq!(s.revision(), 3);
    let ResponseOp::Range(own) = &r.responses[1] else {
        panic!("not a range: {:?}", r.responses[1])
    };
    assert_eq!(
        (own.kvs[0].value.as_slice(), own.kvs[0].mod_revision),
        (&b"1"[..], 3)
    );
    let ResponseOp::Range(before) = &r.responses[3] else {
        panic!("not a range")
    };
    assert_eq!(
        before.kvs[0].value, b"0",
        "an explicit revision reads the past"
    );
    assert_eq!(kv(&s, "b").map(|k| k.mod_revision), Some(3));
    let future = TxnRequest {
        success: vec![
            RequestOp::Put(put_req("c", "1")),
            RequestOp::Range(RangeRequest {
                revision: 4,
                ..get("c", b"")
            }),
        ],
        ..TxnRequest::default()
    };
    assert_eq!(
        s.txn(&future, &NoLeases),
        Err(MvccError::FutureRevision),
        "the txn's own revision is not readable by number"
    );
    let reads = TxnRequest {
        success: vec![RequestOp::Range(get("a", b""))],
        ..TxnRequest::default()
    };
    s.txn(&reads, &NoLeases).unwrap();
    let nothing = TxnRequest {
        success: vec![RequestOp::DeleteRange(del("zz", b""))],
        ..TxnRequest::default()
    };
    s.txn(&nothing, &NoLeases).unwrap();
    assert_eq!(
        s.revision(),
        3,
        "a txn that changed nothing keeps the revision"
    );
}

#[test]
fn nested_txns_share_the_revision_and_compare_against_the_state_before_the_txn() {
    let mut s = KeySpace::new();
    let nested = TxnRequest {
        compare: vec![cmp("a", CompareResult::Equal, CompareTarget::Version(0))],
        success: vec![RequestOp::Put(put_req("b", "inner"))],
        failure: vec![RequestOp::Put(put_req("c", "inner"))],
    };
    let outer = TxnRequest {
        success: vec![RequestOp::Put(put_req("a", "1")), RequestOp::Txn(nested)],
        ..TxnRequest::default()
    };
    let r = s.txn(&outer, &NoLeases).unwrap();
    let ResponseOp::Txn(inner) = &r.responses[1] else {
        panic!("not a txn")
    };
    assert!(
        inner.succeeded,
        "etcd evaluates every compare before the first write"
    );
    assert_eq!(s.revision(), 2);
    assert_eq!(kv(&s, "b").map(|k| k.mod_revision), Some(2));
    assert_eq!(kv(&s, "c"), None);
}

#[test]
fn a_failing_txn_changes_nothing() {
    let mut s = KeySpace::new();
    put(&mut s, "a", "0");
    let before = (s.snapshot(), s.changes(0, b"\0", b"\0", true).unwrap());
    for bad in [
        RequestOp::Put(PutRequest {
            lease: 9,
            ..put_req("z", "1")
        }),
        RequestOp::Put(PutRequest {
            ignore_value: true,
            ..put_req("missing", "")
        }),
        RequestOp::Range(RangeRequest {
            revision: 99,
            ..get("a", b"")
        }),
        RequestOp::Txn(TxnRequest {
            success: vec![RequestOp::Put(put_req("", "x"))],
            ..TxnRequest::default()
        }),
    ] {
        let txn = TxnRequest {
            success: vec![
                RequestOp::Put(put_req("a", "1")),
                RequestOp::Put(put_req("new", "1")),
                RequestOp::DeleteRange(del("a", b"")),
                bad,
            ],
            ..TxnRequest::default()
        };
        assert!(s.txn(&txn, &NoLeases).is_err());
        assert_eq!(
            (s.snapshot(), s.changes(0, b"\0", b"\0", true).unwrap()),
            before
        );
        assert_eq!((s.revision(), s.len()), (2, 1));
    }
}

#[test]
fn a_txn_with_several_faults_fails_with_etcds_error() {
    let mut s = five(); // revision 6
    let txn = |ops: Vec<RequestOp>| TxnRequest {
        success: ops,
        ..TxnRequest::default()
    };
    let future = RequestOp::Range(RangeRequest {
        revision: 99,
        ..get("a", b"")
    });
    let bad_lease = RequestOp::Put(PutRequest {
        lease: 9,
        ..put_req("a", "1")
    });
    assert_eq!(
        s.txn(&txn(vec![future, bad_lease]), &NoLeases),
        Err(MvccError::LeaseNotFound(9)),
        "puts are checked before ranges"
    );
    let missing = RequestOp::Put(PutRequest {
        ignore_value: true,
        ..put_req("zz", "")
    });
    let bad_lease = RequestOp::Put(PutRequest {
        lease: 9,
        ..put_req("a", "1")
    });
    assert_eq!(
        s.txn(&txn(vec![bad_lease, missing]), &NoLeases),
        Err(MvccError::LeaseNotFound(9))
    );
    let negative = |rev| {
        RequestOp::Range(RangeRequest {
            revision: rev,
            ..get("a", b"")
        })
    };
    assert!(
        s.txn(&txn(vec![negative(-1)]), &NoLeases).is_ok(),
        "-1 is etcd's first revision before a compaction"
    );
    assert!(s.txn(&txn(vec![negative(-2)]), &NoLeases).is_err());
    assert!(
        s.range(&RangeRequest {
            revision: -2,
            ..get("a", b"")
        })
        .is_ok(),
        "outside a txn: the current revision"
    );
    s.compact(3).unwrap();
    assert_eq!(
        s.txn(&txn(vec![negative(-1)]), &NoLeases),
        Err(MvccError::Compacted {
            compact_revision: 3
        })
    );
}

#[test]
fn validate_txn_finds_duplicate_keys_like_etcd() {
    let p = |k: &str| RequestOp::Put(put_req(k, "v"));
    let d = |k: &str, end: &[u8]| RequestOp::DeleteRange(del(k, end));
    let t = |success: Vec<RequestOp>, failure: Vec<RequestOp>| {
        RequestOp::Txn(TxnRequest {
            compare: vec![],
            success,
            failure,
        })
    };
    let check = |ops: Vec<RequestOp>| {
        validate_txn(
            &TxnRequest {
                success: ops,
                ..TxnRequest::default()
            },
            128,
        )
    };
    assert_eq!(check(vec![p("a"), p("a")]), Err(MvccError::DuplicateKey));
    assert_eq!(
        check(vec![p("b"), d("a", b"c")]),
        Err(MvccError::DuplicateKey),
        "a put inside a deleted range"
    );
    assert_eq!(
        check(vec![d("a", b""), p("a")]),
        Err(MvccError::DuplicateKey)
    );
    assert_eq!(
        check(vec![d("a", b"\0"), p("zz")]),
        Err(MvccError::DuplicateKey),
        "[0]: to the end"
    );
    assert_eq!(
        check(vec![d("a", b""), p("ab")]),
        Ok(()),
        "a single-key delete covers only its key"
    );
    assert_eq!(
        check(vec![d("a", b"c"), d("b", b"d")]),
        Ok(()),
        "deletes may overlap"
    );
    assert_eq!(
        check(vec![p("a"), t(vec![p("a")], vec![])]),
        Err(MvccError::DuplicateKey),
        "nested"
    );
    assert_eq!(
        check(vec![t(vec![d("a", b"c")], vec![]), p("b")]),
        Err(MvccError::DuplicateKey),
        "nested delete"
    );
    assert_eq!(
        check(vec![t(vec![p("a")], vec![p("a")])]),
        Ok(()),
        "then and else exclude each other"
    );
    assert_eq!(
        check(vec![t(vec![p("a")], vec![]), t(vec![p("a")], vec![])]),
        Err(MvccError::DuplicateKey)
    );
    assert_eq!(check(vec![p("a"), p("b")]), Ok(()));
    let both = TxnRequest {
        compare: vec![],
        success: vec![p("a")],
        failure: vec![p("a")],
    };
    assert_eq!(
        validate_txn(&both, 128),
        Ok(()),
        "the branches are checked apart"
    );
}

#[test]
fn validate_txn_limits_operations_and_requires_keys() {
    let p = |k: &str| RequestOp::Put(put_req(k, "v"));
    let c = cmp("a", CompareResult::Equal, CompareTarget::Version(0));
    let txn = |compare: Vec<Compare>, success: Vec<RequestOp>| TxnRequest {
        compare,
        success,
        failure: vec![],
    };
    assert_eq!(
        validate_txn(&txn(vec![], vec![p("a"), p("b"), p("c")]), 2),
        Err(MvccError::TooManyOps { max: 2 })
    );
    assert_eq!(
        validate_txn(&txn(vec![c.clone(); 3], vec![]), 2),
        Err(MvccError::TooManyOps { max: 2 })
    );
    assert_eq!(validate_txn(&txn(vec![], vec![p("a"), p("b")]), 2), Ok(()));
    // etcd's budget for a nested txn: the limit minus the parent's largest list.
    let nested = RequestOp::Txn(txn(vec![], vec![p("x"), p("y")]));
    assert_eq!(
        validate_txn(&txn(vec![], vec![p("a"), nested.clone()]), 3),
        Err(MvccError::TooManyOps { max: 3 })
    );
    assert_eq!(validate_txn(&txn(vec![], vec![p("a"), nested]), 4), Ok(()));
    assert_eq!(
        validate_txn(
            &txn(
                vec![cmp("", CompareResult::Equal, CompareTarget::Version(0))],
                vec![]
            ),
            8
        ),
        Err(MvccError::EmptyKey)
    );
    assert_eq!(
        validate_txn(&txn(vec![], vec![RequestOp::Range(get("", b""))]), 8),
        Err(MvccError::EmptyKey)
    );
    assert_eq!(
        validate_txn(&txn(vec![], vec![RequestOp::DeleteRange(del("", b""))]), 8),
        Err(MvccError::EmptyKey)
    );
    let deep = RequestOp::Txn(txn(
        vec![],
        vec![RequestOp::Put(PutRequest {
            ignore_value: true,
            ..put_req("k", "v")
        })],
    ));
    assert_eq!(
        validate_txn(&txn(vec![], vec![deep]), 8),
        Err(MvccError::ValueProvided)
    );
}

#[test]
fn validate_put_follows_etcd() {
    assert_eq!(validate_put(&put_req("", "v")), Err(MvccError::EmptyKey));
    assert_eq!(
        validate_put(&PutRequest {
            ignore_value: true,
            ..put_req("k", "v")
        }),
        Err(MvccError::ValueProvided)
    );
    assert_eq!(
        validate_put(&PutRequest {
            ignore_lease: true,
            lease: 3,
            ..put_req("k", "")
        }),
        Err(MvccError::LeaseProvided)
    );
    assert_eq!(
        validate_put(&PutRequest {
            ignore_value: true,
            ignore_lease: true,
            ..put_req("k", "")
        }),
        Ok(())
    );
    assert_eq!(validate_range(&get("", b"")), Err(MvccError::EmptyKey));
    assert_eq!(
        validate_delete_range(&del("", b"")),
        Err(MvccError::EmptyKey)
    );
}

#[test]
fn errors_read_as_etcds_without_its_prefix() {
    let texts = [
        (
            MvccError::Compacted {
                compact_revision: 3,
            },
            "mvcc: required revision has been compacted",
        ),
        (
            MvccError::FutureRevision,
            "mvcc: required revision is a future revision",
        ),
        (
            MvccError::DuplicateKey,
            "duplicate key given in txn request",
        ),
        (
            MvccError::TooManyOps { max: 128 },
            "too many operations in txn request",
        ),
        (MvccError::LeaseNotFound(5), "requested lease not found"),
        (MvccError::EmptyKey, "key is not provided"),
        (MvccError::ValueProvided, "value is provided"),
        (MvccError::LeaseProvided, "lease is provided"),
        (MvccError::KeyNotFound, "key not found"),
    ];
    for (e, text) in texts {
        assert_eq!(e.to_string(), text);
    }
}

#[test]
fn a_restored_snapshot_answers_like_the_original() {
    let mut s = five();
    put(&mut s, "b", "2");
    s.delete_range(&del("c", b"")).unwrap();
    s.compact(5).unwrap();
    put(&mut s, "f", "1");
    let bytes = postcard::to_allocvec(&s.snapshot_view()).unwrap();
    let snap: KeySpaceSnapshot = postcard::from_bytes(&bytes).unwrap();
    assert_eq!(snap, s.snapshot(), "the view and the copy encode alike");
    let r = KeySpace::restore(snap).unwrap();
    assert_eq!(
        (r.revision(), r.compact_revision(), r.len()),
        (s.revision(), s.compact_revision(), s.len())
    );
    for rev in 4..=s.revision() + 1 {
        let req = RangeRequest {
            revision: rev,
            ..get("\0", b"\0")
        };
        assert_eq!(r.range(&req), s.range(&req), "range at {rev}");
        assert_eq!(
            r.changes(rev, b"\0", b"\0", true),
            s.changes(rev, b"\0", b"\0", true),
            "changes from {rev}"
        );
    }
}

/// Encodes a snapshot by hand (its fields are private) to feed `restore` bad data.
fn raw_snapshot(
    revision: i64,
    compact: i64,
    keys: Vec<(Vec<u8>, Vec<Version>)>,
) -> KeySpaceSnapshot {
    let bytes = postcard::to_allocvec(&(revision, compact, keys)).unwrap();
    postcard::from_bytes(&bytes).unwrap()
}

fn ver(rev: i64, create: i64, version: i64) -> Version {
    Version {
        rev,
        sub: 0,
        create,
        version,
        lease: 0,
        value: Some(Box::from(&b"v"[..])),
    }
}

fn tomb(rev: i64) -> Version {
    Version {
        rev,
        sub: 0,
        create: 0,
        version: 0,
        lease: 0,
        value: None,
    }
}

#[test]
fn restore_refuses_inconsistent_snapshots() {
    let k = |s: &str| s.as_bytes().to_vec();
    let good = raw_snapshot(
        5,
        2,
        vec![
            (k("a"), vec![ver(2, 2, 1), tomb(3), ver(4, 4, 1)]),
            (k("b"), vec![ver(1, 1, 1)]),
        ],
    );
    let ok = KeySpace::restore(good).unwrap();
    assert_eq!((ok.len(), ok.revision()), (2, 5));
    let bad = [
        raw_snapshot(0, 0, vec![]),
        raw_snapshot(3, 4, vec![]),
        raw_snapshot(5, 0, vec![(k(""), vec![ver(2, 2, 1)])]),
        raw_snapshot(
            5,
            0,
            vec![(k("b"), vec![ver(2, 2, 1)]), (k("a"), vec![ver(3, 3, 1)])],
        ),
        raw_snapshot(5, 0, vec![(k("a"), vec![])]),
        raw_snapshot(5, 0, vec![(k("a"), vec![tomb(2)])]),
        raw_snapshot(5, 0, vec![(k("a"), vec![ver(6, 6, 1)])]),
        raw_snapshot(5, 0, vec![(k("a"), vec![ver(3, 3, 1), ver(2, 3, 2)])]),
        raw_snapshot(5, 0, vec![(k("a"), vec![ver(2, 2, 1), ver(3, 2, 3)])]),
        raw_snapshot(5, 0, vec![(k("a"), vec![ver(2, 2, 1), tomb(3), tomb(4)])]),
        raw_snapshot(
            5,
            0,
            vec![(k("a"), vec![ver(2, 2, 1), tomb(3), ver(4, 2, 2)])],
        ),
        raw_snapshot(5, 4, vec![(k("a"), vec![ver(2, 2, 1), ver(3, 2, 2)])]),
        raw_snapshot(5, 3, vec![(k("a"), vec![ver(2, 2, 1), ver(3, 2, 2)])]),
    ];
    for snap in bad {
        let shown = format!("{snap:?}");
        let e = KeySpace::restore(snap)
            .err()
            .unwrap_or_else(|| panic!("accepted {shown}"));
        assert!(
            e.starts_with("key space snapshot:") && !e.contains('\n'),
            "{e}"
        );
    }
}

/// Measures resident memory: 1,000,000 new keys, then one overwrite of each (a history
/// entry). Run: `cargo test --release --lib memory_per_key_and_per_version -- --ignored --nocapture`.
#[test]
#[ignore]
fn memory_per_key_and_per_version() {
    fn rss() -> u64 {
        let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
        let pages: u64 = statm
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        pages * 4096
    }
    const N: u64 = 1_000_000;
    let mut s = KeySpace::new();
    let value = [7u8; 8];
    let start = rss();
    for i in 0..N {
        let req = PutRequest {
            key: format!("key-{i:08}").into_bytes(),
            value: value.to_vec(),
            ..PutRequest::default()
        };
        s.put(&req, &NoLeases).unwrap();
    }
    let created = rss();
    for i in 0..N {
        let req = PutRequest {
            key: format!("key-{i:08}").into_bytes(),
            value: value.to_vec(),
            ..PutRequest::default()
        };
        s.put(&req, &NoLeases).unwrap();
    }
    let overwritten = rss();
    s.compact(s.revision()).unwrap();
    let compacted = rss();
    println!("keys of 12 bytes, values of 8 bytes, {N} keys (system allocator)");
    println!(
        "bytes per new key:                 {}",
        (created - start) / N
    );
    println!(
        "bytes per overwrite (history):     {}",
        (overwritten.saturating_sub(created)) / N
    );
    println!("bytes per key after compaction:    {} (RSS does not shrink when freed memory stays in the allocator)", compacted.saturating_sub(start) / N);
    println!(
        "size_of: Version {} B, change log entry {} B",
        std::mem::size_of::<Version>(),
        std::mem::size_of::<(i64, u32, std::sync::Arc<[u8]>)>()
    );
    assert_eq!(s.len(), N as usize);
}
