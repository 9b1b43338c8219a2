//! The command script every system under comparison runs, starting from an empty cluster
//! (revision 1). It covers etcd's KV surface as etcdctl 3.4 exposes it: put (with
//! `--prev-kv`), the get options (prefix, revision incl. compacted and future, from-key,
//! limit, sort, keys-only, count-only where etcdctl has it), del (key, prefix, prev-kv), txn
//! compares and both branches, the seed's generation-number CAS, compaction and reading below
//! it, the duplicate-key and too-large errors, the shape of endpoint status and member
//! list, and leases (grant, put with a lease, timetolive, keep-alive once, list, revoke and
//! their refusals).

use serde_json::Value;

use super::compare::base64_decode;
use super::etcdctl::{etcdctl, Step};

/// A value 64 KiB over etcd's default `--max-request-bytes` (1.5 MiB): refused.
const TOO_LARGE: usize = 1536 * 1024 + 64 * 1024;
/// etcd's error for a read below the compaction revision (and a compaction at or below it).
const COMPACTED: &str = "etcdserver: mvcc: required revision has been compacted";
/// etcd's error for a read or compaction above the current revision.
const FUTURE: &str = "etcdserver: mvcc: required revision is a future revision";

/// `header.revision` of a JSON output.
fn header_revision(json: &Value) -> Option<String> {
    Some(json.pointer("/header/revision")?.as_i64()?.to_string())
}

/// `mod_revision` of the first key of a `get` output.
fn first_mod_revision(json: &Value) -> Option<String> {
    Some(json.pointer("/kvs/0/mod_revision")?.as_i64()?.to_string())
}

/// The first key's value (a decimal number), plus one.
fn first_value_plus_one(json: &Value) -> Option<String> {
    let bytes = base64_decode(json.pointer("/kvs/0/value")?.as_str()?)?;
    let n: i64 = std::str::from_utf8(&bytes).ok()?.parse().ok()?;
    Some((n + 1).to_string())
}

/// A `lease grant -w json`'s lease id, in the hex etcdctl takes.
fn lease_id(json: &Value) -> Option<String> {
    Some(format!("{:x}", json.pointer("/ID")?.as_i64()?))
}

/// etcd's error for a lease that does not exist.
const NO_LEASE: &str = "etcdserver: requested lease not found";

/// Whether this etcdctl has `get --count-only` (etcdctl 3.5 and later; 3.4 does not).
fn has_count_only() -> bool {
    etcdctl(
        &["127.0.0.1:1".to_string()],
        &["get".into(), "--help".into()],
        None,
    )
    .is_some_and(|o| o.stdout.contains("--count-only"))
}

/// The script (see the module doc). Steps print `-w json` wherever etcdctl has it.
pub fn script() -> Vec<Step> {
    let mut steps = vec![
        // Writes: revision 1 -> 2 -> 3, and prev_kv.
        Step::new("put foo bar -w json"),
        Step::new("get foo -w json"),
        Step::new("put foo baz --prev-kv -w json"),
        Step::new("get foo -w json"),
        Step::new("get missing -w json"),
        // A prefix: p/a, p/b, p/c, then p/a again so modify order differs from key order.
        Step::new("put p/a 1 -w json"),
        Step::new("put p/b 2 -w json"),
        Step::new("put p/c 3 -w json"),
        Step::new("put p/a 4 -w json"),
        Step::new("get p/ --prefix -w json"),
        // Reads at a revision: an old one, a future one (error).
        Step::new("get foo --rev 2 -w json"),
        Step::new("get p/ --prefix --rev 5 -w json"),
        Step::new("get foo --rev 1000 -w json").fails(FUTURE),
        Step::new("get p/b --from-key -w json"),
        Step::new("get p/ --prefix --limit 2 -w json"),
        Step::new("get p/ --prefix --limit 3 -w json"),
        Step::new("get p/ --prefix --sort-by=MODIFY --order=DESCEND -w json"),
        Step::new("get p/ --prefix --sort-by=VALUE --order=ASCEND --limit 2 -w json"),
        Step::new("get p/ --prefix --keys-only -w json"),
    ];
    if has_count_only() {
        steps.push(Step::new("get p/ --prefix --count-only -w json"));
    }
    // The seed's generation-number CAS: read gen and its mod revision, then txn
    // mod("gen") = REV -> put gen N+1, else read gen again.
    let cas = Step::new("txn -w json")
        .stdin("mod(\"gen\") = \"{gen_rev}\"\n\nput gen {gen_next}\n\nget gen\n\n");
    steps.extend([
        // Deletes: one key, a missing key (nothing deleted, no new revision), a prefix, with
        // and without prev_kv.
        Step::new("del p/c -w json"),
        Step::new("del p/c -w json"),
        Step::new("put q/1 x -w json"),
        Step::new("put q/2 y -w json"),
        Step::new("del q/ --prefix -w json"),
        Step::new("del p/ --prefix --prev-kv -w json"),
        Step::new("del foo --prev-kv -w json"),
        Step::new("get foo -w json"),
        // Txn: every compare kind true, success branch with put, get and del.
        Step::new("put k v -w json"),
        Step::new("put k v -w json"),
        Step::new("put tmp t -w json"),
        Step::new("txn -w json").stdin(
            "value(\"k\") = \"v\"\nversion(\"k\") = \"2\"\ncreate(\"k\") > \"0\"\n\
             mod(\"k\") < \"100\"\n\nput k v2\nget k\ndel tmp\n\nput k fail\n\n",
        ),
        // A false compare: the failure branch. Then true compares on a missing key's zero
        // values.
        Step::new("txn -w json")
            .stdin("value(\"k\") = \"v\"\n\nput k nope\n\nget k\ndel nothing\nput k2 x\n\n"),
        Step::new("txn -w json")
            .stdin("version(\"k\") = \"3\"\nmod(\"missing\") = \"0\"\n\nput k ok\n\nget k\n\n"),
        Step::new("get k --prefix -w json"),
        // The CAS twice: the second reuses the now stale revision, so it fails.
        Step::new("put gen 1 -w json"),
        Step::new("get gen -w json")
            .capture("gen_rev", first_mod_revision)
            .capture("gen_next", first_value_plus_one)
            .capture("compact_at", header_revision),
        cas.clone(),
        cas,
        Step::new("get gen -w json"),
        // Compaction (etcdctl prints it plainly), then reads below and at it.
        Step::new("compaction {compact_at}"),
        Step::new("get foo --rev 2 -w json").fails(COMPACTED),
        Step::new("get gen --rev {compact_at} -w json"),
        Step::new("compaction {compact_at}").fails(COMPACTED),
        Step::new("compaction 1000").fails(FUTURE),
        // Errors.
        Step::new("txn -w json")
            .stdin("\nput d a\nput d b\n\n\n")
            .fails("etcdserver: duplicate key given in txn request"),
        Step::new("put big -w json")
            .stdin(vec![b'x'; TOO_LARGE])
            .fails("etcdserver: request is too large"),
        Step::new("get big -w json"),
        // Cluster surface: only the shape is comparable.
        Step::new("endpoint status -w json").shape(),
        Step::new("member list -w json").shape(),
        // Leases: grant, attach two keys (and one put without), time to live with the keys,
        // keep-alive, list, revoke (both keys at one revision), then the answers for a lease
        // that is gone and the refusals.
        Step::new("lease grant 60 -w json").capture("lease", lease_id),
        Step::new("put --lease={lease} l/a 1 -w json"),
        Step::new("put --lease={lease} l/b 2 -w json"),
        Step::new("put l/c 3 -w json"),
        Step::new("get l/ --prefix -w json"),
        Step::new("lease timetolive {lease} --keys -w json"),
        Step::new("lease keep-alive --once {lease} -w json"),
        Step::new("lease list -w json"),
        Step::new("lease revoke {lease} -w json"),
        Step::new("get l/ --prefix -w json"),
        Step::new("lease timetolive {lease} -w json"),
        Step::new("lease revoke {lease}")
            .fails("failed to revoke lease (etcdserver: requested lease not found)"),
        Step::new("lease keep-alive --once {lease}").fails(NO_LEASE),
        Step::new("put --lease=1234abcd l/z 1 -w json").fails(NO_LEASE),
        Step::new("lease grant 9000000001 -w json")
            .fails("failed to grant lease (etcdserver: too large lease TTL)"),
        Step::new("lease list -w json"),
        // Below the minimum TTL (1.5 election timeouts: 1 s for both clusters here): raised.
        Step::new("lease grant 0 -w json"),
    ]);
    steps
}

/// `etcdctl watch` in the differential test (`watch.rs`): the history both systems get
/// (revision 1 -> 10), compacted at 4.
pub fn watch_history() -> Vec<Step> {
    vec![
        Step::new("put w/a 1"),
        Step::new("put w/b 2"),
        Step::new("put w/a 3"),
        Step::new("del w/b"),
        Step::new("txn").stdin("\nput w/c 4\nput w/d 5\nput x 6\n\n\n"),
        Step::new("put x 7"),
        Step::new("del w/ --prefix"),
        Step::new("put w/a 8"),
        Step::new("put w/b 9"),
        Step::new("compaction 4"),
    ]
}

/// The watches compared (etcdctl's arguments after `watch`).
pub const WATCHES: &[&str] = &[
    "--prefix w/ --rev 4",
    "--prefix w/ --rev 5 --prev-kv",
    "w/a --rev 4",
    "--rev 6 x",
    "--rev 2 w/a",
    "--prefix w/ --rev 100",
];
