//! Who sees whose rows: an entry is never served to another role or to a session whose
//! settings change the answer.

use super::{cached_env, fill, hit, wire_bytes};
use crate::common::Wire;

fn bodies(reply: &[crate::common::Msg]) -> Vec<String> {
    reply
        .iter()
        .filter_map(|m| m.data_row())
        .map(|r| String::from_utf8(r[0].clone().unwrap()).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_roles_under_row_level_security_each_get_their_own_rows() {
    let env = cached_env(1, "").await;
    env.direct()
        .await
        .batch_execute(
            "create table docs (owner name, body text);
             insert into docs values ('app', 'a1'), ('app', 'a2'), ('md5user', 'm1');
             alter table docs enable row level security;
             create policy own on docs using (owner = current_user);
             grant select on docs to app, md5user",
        )
        .await
        .unwrap();
    let sql = "select body from docs order by body";
    let mut app = Wire::connect(env.port(), "app", "app", "app", &[]).await;
    let mut md5 = Wire::connect(env.port(), "md5user", "md5pw", "app", &[]).await;
    let app_rows = fill(&env, &mut app, sql).await;
    assert_eq!(bodies(&app_rows), ["a1", "a2"]);
    for _ in 0..3 {
        let (was_hit, r) = hit(&env, &mut md5, sql).await;
        assert_eq!(
            bodies(&r),
            ["m1"],
            "md5user never gets app's entry (hit: {was_hit})"
        );
        let (was_hit, r) = hit(&env, &mut app, sql).await;
        assert!(was_hit);
        assert_eq!(wire_bytes(&r), wire_bytes(&app_rows));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_on_different_search_paths_do_not_share_entries() {
    let env = cached_env(0, "").await;
    env.direct()
        .await
        .batch_execute(
            "create schema s1; create schema s2;
             create table s1.t (v text); create table s2.t (v text);
             insert into s1.t values ('one'); insert into s2.t values ('two');
             grant usage on schema s1, s2 to app; grant select on s1.t, s2.t to app",
        )
        .await
        .unwrap();
    let sql = "select v from t";
    let mut one = Wire::connect(env.port(), "app", "app", "app", &[]).await;
    one.simple("set search_path = s1").await;
    let mut two = Wire::connect(env.port(), "app", "app", "app", &[]).await;
    two.simple("set search_path = s2").await;
    for _ in 0..3 {
        assert_eq!(bodies(&one.simple(sql).await), ["one"]);
        assert_eq!(bodies(&two.simple(sql).await), ["two"]);
    }
}
