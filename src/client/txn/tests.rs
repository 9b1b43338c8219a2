//! The Txn builder's wire requests, the answer's conversion, and the CAS helper.

use super::*;

fn client() -> Client {
    // Connects lazily: nothing listens there and nothing is sent.
    Client::new(vec!["127.0.0.1:1".into()]).unwrap()
}

fn key(k: &str) -> Option<pb::KeySelector> {
    Some(pb::KeySelector {
        key: k.into(),
        ..Default::default()
    })
}

fn compare(k: &str, target: Target, result: CompareResult, against: Against) -> pb::Compare {
    pb::Compare {
        keys: key(k),
        target: target.into(),
        result: result.into(),
        against: Some(against),
    }
}

fn put(k: &str, v: &str) -> pb::TxnOp {
    pb::TxnOp {
        op: Some(Op::Put(pb::TxnPut {
            key: k.into(),
            value: v.into(),
            prev_kv: false,
            lease: 0,
        })),
    }
}

fn get(k: &str) -> pb::TxnOp {
    pb::TxnOp {
        op: Some(Op::Range(pb::RangeRequest {
            keys: key(k),
            ..Default::default()
        })),
    }
}

#[test]
fn the_builder_puts_compares_and_branches_in_order() {
    let mut client = client();
    let txn = client
        .txn()
        .when(Compare::mod_revision("gen").eq(5))
        .when(Compare::value("owner").ne("me"))
        .and_then(TxnOp::put("gen", "6"))
        .and_then(TxnOp::delete_prefix("tmp/").with_prev_kv())
        .or_else(TxnOp::get("gen"));
    let expected = pb::TxnRequest {
        compare: vec![
            compare("gen", Target::Mod, CompareResult::Equal, Against::Number(5)),
            compare(
                "owner",
                Target::Value,
                CompareResult::NotEqual,
                Against::Value("me".into()),
            ),
        ],
        success: vec![
            put("gen", "6"),
            pb::TxnOp {
                op: Some(Op::Delete(pb::TxnDelete {
                    keys: Some(pb::KeySelector {
                        key: "tmp/".into(),
                        prefix: true,
                        ..Default::default()
                    }),
                    prev_kv: true,
                })),
            },
        ],
        failure: vec![get("gen")],
        session: None,
        fence: None,
    };
    assert_eq!(txn.request(), &expected);
}

#[test]
fn every_compare_target_and_operator_maps_to_its_wire_value() {
    let cases = [
        (
            Compare::version("k").gt(1),
            Target::Version,
            CompareResult::Greater,
        ),
        (
            Compare::create_revision("k").lt(9),
            Target::Create,
            CompareResult::Less,
        ),
        (
            Compare::lease("k").eq(0),
            Target::Lease,
            CompareResult::Equal,
        ),
        (
            Compare::mod_revision("k").ne(3),
            Target::Mod,
            CompareResult::NotEqual,
        ),
    ];
    for (compare, target, result) in cases {
        let c = compare.to_proto();
        assert_eq!(
            (c.target, c.result),
            (target.into(), result.into()),
            "{c:?}"
        );
        assert!(matches!(c.against, Some(Against::Number(_))), "{c:?}");
    }
    let c = Compare::value("k").with_prefix().gt("m").to_proto();
    assert!(c.keys.unwrap().prefix);
    assert_eq!(c.against, Some(Against::Value("m".into())));
}

#[test]
fn a_fenced_txn_carries_the_fence_and_ops_carry_their_selectors() {
    let mut client = client();
    let txn = client
        .txn()
        .fenced(&Fence::new("svc", 7))
        .and_then(TxnOp::put("k", "v").with_prev_kv())
        .and_then(TxnOp::delete_from_key("a"))
        .and_then(TxnOp::delete_range("a", "c"))
        .and_then(TxnOp::txn(vec![], vec![TxnOp::delete("x")], vec![]));
    let request = txn.request().clone();
    assert_eq!(
        request.fence,
        Some(pb::Fence {
            lock: "svc".into(),
            token: 7
        })
    );
    let selectors: Vec<(bool, String)> = request.success[1..3]
        .iter()
        .map(|op| match &op.op {
            Some(Op::Delete(d)) => {
                let k = d.keys.clone().unwrap();
                (k.from_key, k.range_end)
            }
            other => panic!("not a delete: {other:?}"),
        })
        .collect();
    assert_eq!(selectors, [(true, String::new()), (false, "c".into())]);
    assert!(matches!(&request.success[0].op, Some(Op::Put(p)) if p.prev_kv));
    assert!(
        matches!(&request.success[3].op, Some(Op::Txn(t)) if t.session.is_none() && t.success.len() == 1)
    );
}

#[test]
fn a_range_op_takes_the_txn_consistency() {
    let op = TxnOp::range(
        "p/",
        &RangeOptions {
            serializable: true,
            ..RangeOptions::prefix()
        },
    )
    .to_proto();
    let Some(Op::Range(r)) = op.op else {
        panic!("not a range")
    };
    assert_eq!(r.consistency, i32::from(pb::Consistency::Unspecified));
    assert!(r.keys.unwrap().prefix);
}

#[test]
fn cas_compares_the_value_or_absence_then_puts_or_reads() {
    let mut client = client();
    let request = client.cas_txn("gen", Some("5"), "6").request().clone();
    assert_eq!(
        request.compare,
        [compare(
            "gen",
            Target::Value,
            CompareResult::Equal,
            Against::Value("5".into())
        )]
    );
    assert_eq!(request.success, [put("gen", "6")]);
    assert_eq!(request.failure, [get("gen")]);

    let request = client.cas_txn("gen", None, "1").request().clone();
    assert_eq!(
        request.compare,
        [compare(
            "gen",
            Target::Create,
            CompareResult::Equal,
            Against::Number(0)
        )],
        "absent means create revision 0"
    );
}

fn kv(key: &str, value: &str, rev: i64) -> pb::KeyValue {
    pb::KeyValue {
        key: key.into(),
        value: value.into(),
        create_revision: 2,
        mod_revision: rev,
        version: 3,
        lease: 0,
    }
}

fn header(revision: i64) -> Option<pb::ResponseHeader> {
    Some(pb::ResponseHeader {
        node_id: 2,
        term: 4,
        index: 40,
        revision,
    })
}

#[test]
fn a_failed_cas_reports_the_current_value_and_a_successful_one_none() {
    let failed = pb::TxnResponse {
        header: header(9),
        succeeded: false,
        results: vec![pb::TxnOpResult {
            result: Some(OpResultPb::Range(pb::RangeResponse {
                kvs: vec![kv("gen", "7", 8)],
                count: 1,
                ..Default::default()
            })),
        }],
    };
    let cas = CasResult::from(TxnResult::try_from(failed).unwrap());
    assert!(!cas.succeeded);
    let current = cas.current.unwrap();
    assert_eq!((current.value.as_str(), current.mod_revision), ("7", 8));
    assert_eq!(cas.header.revision, 9);

    let absent = pb::TxnResponse {
        header: header(9),
        succeeded: false,
        results: vec![pb::TxnOpResult {
            result: Some(OpResultPb::Range(pb::RangeResponse::default())),
        }],
    };
    assert_eq!(
        CasResult::from(TxnResult::try_from(absent).unwrap()).current,
        None
    );

    let ok = pb::TxnResponse {
        header: header(10),
        succeeded: true,
        results: vec![pb::TxnOpResult {
            result: Some(OpResultPb::Put(pb::TxnPutResult { prev_kv: None })),
        }],
    };
    let cas = CasResult::from(TxnResult::try_from(ok).unwrap());
    assert!(cas.succeeded && cas.current.is_none());
    assert_eq!(cas.header.index, 40);
}

#[test]
fn txn_answers_convert_op_by_op_and_an_empty_result_is_an_error() {
    let response = pb::TxnResponse {
        header: header(5),
        succeeded: true,
        results: vec![
            pb::TxnOpResult {
                result: Some(OpResultPb::Delete(pb::TxnDeleteResult {
                    deleted: 2,
                    prev_kvs: vec![kv("a", "1", 3)],
                })),
            },
            pb::TxnOpResult {
                result: Some(OpResultPb::Txn(pb::TxnResponse {
                    header: None,
                    succeeded: false,
                    results: vec![],
                })),
            },
        ],
    };
    let result = TxnResult::try_from(response).unwrap();
    assert_eq!(result.header.revision, 5);
    assert!(matches!(
        &result.results[0],
        OpResult::Delete { deleted: 2, prev_kvs } if prev_kvs[0].key == "a"
    ));
    assert!(matches!(&result.results[1], OpResult::Txn(t) if !t.succeeded));

    let broken = pb::TxnResponse {
        results: vec![pb::TxnOpResult { result: None }],
        ..Default::default()
    };
    let error = TxnResult::try_from(broken).unwrap_err();
    assert!(matches!(error, ClientError::Server { .. }), "{error}");
}
