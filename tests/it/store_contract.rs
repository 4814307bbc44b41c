//! The store contract: every operation of the core driven directly (no HTTP, no workers), the
//! same cases on SQLite and on Postgres, so the two backends cannot drift apart.

use std::collections::HashSet;
use std::time::Duration;

use chrono::Utc;
use imgbatch::core::{
    AttemptNext, AttemptRecord, Core, CreateOutcome, DeliveryState, ImageJob, ImageOutput,
    JobOutcome, NewRequest, Settled, WebhookRetry,
};
use imgbatch::csv_input::{parse_csv, CsvLimits};
use imgbatch::domain::{Owner, RequestId, Status};
use imgbatch::failure::{ErrorCode, Failure};

use crate::common::TestDb;
use crate::db_test;

const LEASE: Duration = Duration::from_secs(30);

async fn open(db: &TestDb) -> Core {
    let core = Core::connect(&db.url).await.unwrap();
    core.migrate().await.unwrap();
    core
}

/// A request of one product per row, each with the given image URLs.
fn request(owner: &Owner, rows: &[&[&str]], webhook: Option<&str>) -> NewRequest {
    let mut csv = String::from("S. No.,Product Name,Input Image Urls\n");
    for (i, urls) in rows.iter().enumerate() {
        csv.push_str(&format!("{},P{},\"{}\"\n", i + 1, i + 1, urls.join(",")));
    }
    let limits = CsvLimits {
        max_rows: 10_000,
        max_urls_per_product: 50,
        max_url_len: 2048,
    };
    NewRequest {
        id: RequestId::new(),
        owner: owner.clone(),
        idempotency_key: None,
        upload_digest: "digest".into(),
        webhook_url: webhook.map(Into::into),
        options: imgbatch::domain::ImageOptions::new(
            50,
            None,
            None,
            imgbatch::domain::FormatChoice::Jpeg,
        )
        .unwrap(),
        products: parse_csv(csv.as_bytes(), &limits).unwrap(),
        csv,
    }
}

async fn create(core: &Core, new: NewRequest) -> RequestId {
    match core.create_request(new).await.unwrap() {
        CreateOutcome::Created(id) => id,
        other => panic!("not created: {other:?}"),
    }
}

fn completed(job: &ImageJob) -> JobOutcome {
    JobOutcome::Completed(ImageOutput {
        key: format!("out/{}.jpg", job.id),
        url: format!("http://out/{}.jpg", job.id),
        input_format: "png".into(),
        codec: "pixels".into(),
        bytes_in: 1000,
        bytes_out: 400,
        width: 10,
        height: 20,
        output_format: "jpeg".into(),
        color_profile: Some("converted".into()),
        note: Some("a note".into()),
    })
}

fn failed(code: ErrorCode) -> JobOutcome {
    JobOutcome::Failed(Failure::new(code, format!("failed: {code}")))
}

async fn claim_all(core: &Core, worker: &str) -> Vec<ImageJob> {
    core.claim_images(worker, 1000, LEASE).await.unwrap()
}

/// Settles a job; whether it was recorded (the worker still held it).
async fn records(core: &Core, job: &ImageJob, worker: &str, outcome: &JobOutcome) -> bool {
    core.settle_image(job, worker, outcome)
        .await
        .unwrap()
        .recorded
}

async fn status_of(core: &Core, id: RequestId) -> Status {
    core.request_detail(id, &Owner::open())
        .await
        .unwrap()
        .unwrap()
        .request
        .status
}

db_test!(claims_never_hand_a_job_to_two_callers, |db| {
    let core = open(&db).await;
    let urls: Vec<String> = (0..60).map(|i| format!("http://o/{i}.png")).collect();
    let rows: Vec<Vec<&str>> = urls
        .chunks(3)
        .map(|c| c.iter().map(|s| s.as_str()).collect())
        .collect();
    let rows: Vec<&[&str]> = rows.iter().map(|r| r.as_slice()).collect();
    let id = create(&core, request(&Owner::open(), &rows, None)).await;

    let mut tasks = Vec::new();
    for w in 0..4 {
        let core = core.clone();
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let jobs = core.claim_images(&format!("w{w}"), 3, LEASE).await.unwrap();
                if jobs.is_empty() {
                    return mine;
                }
                mine.extend(jobs.into_iter().map(|j| j.id));
            }
        }));
    }
    let mut seen = HashSet::new();
    let mut total = 0;
    for t in tasks {
        for job in t.await.unwrap() {
            total += 1;
            assert!(seen.insert(job), "job {job} handed out twice");
        }
    }
    assert_eq!(total, 60);
    assert_eq!(core.queue_depth().await.unwrap(), (0, 60));
    assert_eq!(status_of(&core, id).await, Status::Processing);
});

db_test!(claims_follow_csv_order_and_skip_duplicates, |db| {
    let core = open(&db).await;
    let owner = Owner::open();
    let id = create(
        &core,
        request(
            &owner,
            &[&["http://o/a", "http://o/b"], &["http://o/a", "http://o/c"]],
            None,
        ),
    )
    .await;
    let jobs = claim_all(&core, "w").await;
    let urls: Vec<&str> = jobs.iter().map(|j| j.input_url.as_str()).collect();
    assert_eq!(urls, ["http://o/a", "http://o/b", "http://o/c"]);
    assert!(jobs.iter().all(|j| j.request_id == id && j.attempts == 1));
    assert_eq!(core.queue_depth().await.unwrap(), (0, 3));
});

db_test!(duplicates_take_their_originals_result_and_roll_up, |db| {
    let core = open(&db).await;
    let id = create(
        &core,
        request(
            &Owner::open(),
            &[&["http://o/a", "http://o/b"], &["http://o/a"]],
            None,
        ),
    )
    .await;
    let jobs = claim_all(&core, "w").await;
    let (a, b) = (&jobs[0], &jobs[1]);
    let s = core.settle_image(a, "w", &completed(a)).await.unwrap();
    assert_eq!(
        s,
        Settled {
            recorded: true,
            request_finished: None
        }
    );
    let detail = core
        .request_detail(id, &Owner::open())
        .await
        .unwrap()
        .unwrap();
    // The second product's only image is the duplicate: done with the original.
    assert_eq!(detail.products[1].status, Status::Completed);
    assert_eq!(detail.products[0].status, Status::Processing);
    assert_eq!(
        detail.images[2].output_url,
        Some(format!("http://out/{}.jpg", a.id))
    );
    assert_eq!(detail.request.completed_images, 2);

    let s = core
        .settle_image(b, "w", &failed(ErrorCode::NotFound))
        .await
        .unwrap();
    assert_eq!(s.request_finished, Some(Status::CompletedWithErrors));
    let detail = core
        .request_detail(id, &Owner::open())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(detail.products[0].status, Status::CompletedWithErrors);
    assert_eq!(detail.images[1].error_code, Some(ErrorCode::NotFound));
    assert_eq!(detail.images[1].error.as_deref(), Some("failed: not_found"));
    assert_eq!(detail.images[0].error_code, None);
    assert_eq!(
        (
            detail.request.completed_images,
            detail.request.failed_images
        ),
        (2, 1)
    );
});

db_test!(roll_ups_reach_every_final_status, |db| {
    let core = open(&db).await;
    for (outcomes, want) in [
        (vec![true, true], Status::Completed),
        (vec![false, false], Status::Failed),
        (vec![true, false], Status::CompletedWithErrors),
    ] {
        let urls: Vec<String> = (0..outcomes.len())
            .map(|i| format!("http://o/{}/{i}", uuid::Uuid::new_v4()))
            .collect();
        let urls: Vec<&str> = urls.iter().map(|s| s.as_str()).collect();
        let id = create(&core, request(&Owner::open(), &[&urls], None)).await;
        let jobs = claim_all(&core, "w").await;
        let mut finished = Vec::new();
        for (job, ok) in jobs.iter().zip(&outcomes) {
            let outcome = if *ok {
                completed(job)
            } else {
                failed(ErrorCode::Undecodable)
            };
            let s = core.settle_image(job, "w", &outcome).await.unwrap();
            finished.extend(s.request_finished);
        }
        assert_eq!(finished, [want], "finished once, with the final status");
        let detail = core
            .request_detail(id, &Owner::open())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(detail.request.status, want);
        assert_eq!(detail.products[0].status, want);
    }
});

db_test!(settling_twice_changes_nothing, |db| {
    let core = open(&db).await;
    let id = create(
        &core,
        request(&Owner::open(), &[&["http://o/a", "http://o/b"]], None),
    )
    .await;
    let jobs = claim_all(&core, "w").await;
    let first = core
        .settle_image(&jobs[0], "w", &completed(&jobs[0]))
        .await
        .unwrap();
    assert!(first.recorded);
    for outcome in [completed(&jobs[0]), failed(ErrorCode::Timeout)] {
        let again = core.settle_image(&jobs[0], "w", &outcome).await.unwrap();
        assert_eq!(again, Settled::default());
    }
    let detail = core
        .request_detail(id, &Owner::open())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (
            detail.request.completed_images,
            detail.request.failed_images
        ),
        (1, 0)
    );
    assert_eq!(detail.images[0].status, Status::Completed);
    // Another worker's settlement of a job it does not hold changes nothing either.
    let other = core
        .settle_image(&jobs[1], "intruder", &completed(&jobs[1]))
        .await
        .unwrap();
    assert!(!other.recorded);
});

db_test!(retries_requeue_with_their_kind_until_due, |db| {
    let core = open(&db).await;
    let id = create(&core, request(&Owner::open(), &[&["http://o/a"]], None)).await;
    let job = claim_all(&core, "w").await.remove(0);
    let later = Utc::now() + chrono::Duration::seconds(3600);
    let retry = JobOutcome::Retry {
        failure: Failure::new(ErrorCode::Connection, "could not connect"),
        at: later,
    };
    let s = core.settle_image(&job, "w", &retry).await.unwrap();
    assert_eq!(
        s,
        Settled {
            recorded: true,
            request_finished: None
        }
    );
    // Not due for an hour: nothing to claim, and the dispatcher knows when to look again.
    assert!(claim_all(&core, "w").await.is_empty());
    let next = core.next_runnable_at().await.unwrap().unwrap();
    assert!(
        (next - later).num_milliseconds().abs() < 1000,
        "{next} vs {later}"
    );
    let detail = core
        .request_detail(id, &Owner::open())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(detail.images[0].status, Status::Pending);
    assert_eq!(detail.images[0].error_code, Some(ErrorCode::Connection));
    assert_eq!(core.queue_depth().await.unwrap(), (1, 0));
});

db_test!(leases_lapse_and_are_reclaimed, |db| {
    let core = open(&db).await;
    let id = create(
        &core,
        request(&Owner::open(), &[&["http://o/a", "http://o/b"]], None),
    )
    .await;
    let jobs = core
        .claim_images("dead", 10, Duration::from_millis(1))
        .await
        .unwrap();
    assert_eq!(jobs.len(), 2);
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(core.reclaim_expired().await.unwrap(), 2);
    let again = claim_all(&core, "alive").await;
    assert_eq!(again.len(), 2);
    assert!(
        again.iter().all(|j| j.attempts == 2),
        "the lost attempt counts"
    );
    // The dead worker's late outcome is dropped; the new holder's counts.
    assert!(!records(&core, &jobs[0], "dead", &completed(&jobs[0])).await);
    assert!(records(&core, &again[0], "alive", &completed(&again[0])).await);
    assert_eq!(status_of(&core, id).await, Status::Processing);
});

db_test!(heartbeats_keep_leases_and_release_hands_jobs_back, |db| {
    let core = open(&db).await;
    create(
        &core,
        request(&Owner::open(), &[&["http://o/a", "http://o/b"]], None),
    )
    .await;
    let jobs = core
        .claim_images("w", 10, Duration::from_millis(1))
        .await
        .unwrap();
    assert_eq!(core.heartbeat("w", LEASE).await.unwrap(), 2);
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(
        core.reclaim_expired().await.unwrap(),
        0,
        "renewed leases hold"
    );
    assert_eq!(core.heartbeat("someone-else", LEASE).await.unwrap(), 0);

    assert_eq!(core.release("w").await.unwrap(), 2);
    let again = claim_all(&core, "w2").await;
    assert_eq!(again.len(), 2);
    assert!(
        again.iter().all(|j| j.attempts == 1),
        "a released attempt does not count"
    );
    assert!(!records(&core, &jobs[0], "w", &completed(&jobs[0])).await);
});

db_test!(idempotency_keys_replay_or_refuse, |db| {
    let core = open(&db).await;
    let owner = Owner::of_key("key-a");
    let keyed = |owner: &Owner, digest: &str| {
        let mut r = request(owner, &[&["http://o/a"]], None);
        r.idempotency_key = Some("k1".into());
        r.upload_digest = digest.into();
        r
    };
    let first = create(&core, keyed(&owner, "d1")).await;
    assert_eq!(
        core.create_request(keyed(&owner, "d1")).await.unwrap(),
        CreateOutcome::Replayed(first)
    );
    assert_eq!(
        core.create_request(keyed(&owner, "d2")).await.unwrap(),
        CreateOutcome::KeyReused
    );
    // Keys are per owner.
    let other = create(&core, keyed(&Owner::of_key("key-b"), "d2")).await;
    assert_ne!(other, first);
    assert_eq!(core.count_requests().await.unwrap(), 2);
    // And a request is only its owner's.
    assert!(core
        .request_detail(first, &Owner::of_key("key-b"))
        .await
        .unwrap()
        .is_none());
    assert!(core
        .request_head(first, &Owner::open())
        .await
        .unwrap()
        .is_none());
    let head = core.request_head(first, &owner).await.unwrap().unwrap();
    assert_eq!(
        (head.total_images, head.version.status),
        (1, Status::Pending)
    );
});

db_test!(concurrent_uploads_with_one_key_make_one_request, |db| {
    let core = open(&db).await;
    let owner = Owner::of_key("k");
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let (core, owner) = (core.clone(), owner.clone());
        tasks.push(tokio::spawn(async move {
            let mut r = request(&owner, &[&["http://o/a"]], None);
            r.idempotency_key = Some("same".into());
            core.create_request(r).await.unwrap()
        }));
    }
    let mut ids = HashSet::new();
    for t in tasks {
        match t.await.unwrap() {
            CreateOutcome::Created(id) | CreateOutcome::Replayed(id) => ids.insert(id),
            CreateOutcome::KeyReused => panic!("same digest"),
        };
    }
    assert_eq!(ids.len(), 1);
    assert_eq!(core.count_requests().await.unwrap(), 1);
});

db_test!(deliveries_are_queued_once_and_follow_their_attempts, |db| {
    let core = open(&db).await;
    let owner = Owner::of_key("hooked");
    let id = create(
        &core,
        request(&owner, &[&["http://o/a"]], Some("http://hook/x")),
    )
    .await;
    // Not finished: nothing to deliver, nothing to retry.
    assert!(core
        .claim_deliveries("w", 10, LEASE)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        core.retry_webhook(id, &owner).await.unwrap(),
        Some(WebhookRetry::NoDelivery)
    );
    assert_eq!(core.retry_webhook(id, &Owner::open()).await.unwrap(), None);

    let job = claim_all(&core, "w").await.remove(0);
    let s = core
        .settle_image(&job, "w", &completed(&job))
        .await
        .unwrap();
    assert_eq!(s.request_finished, Some(Status::Completed));

    let d = core.claim_deliveries("w", 10, LEASE).await.unwrap();
    assert_eq!(d.len(), 1);
    let d = d.into_iter().next().unwrap();
    assert_eq!(
        (d.request_id, d.url.as_str(), d.attempts),
        (id, "http://hook/x", 1)
    );
    assert_eq!(d.owner, owner);
    assert!(d.payload.is_none());
    assert!(
        core.claim_deliveries("w2", 10, LEASE)
            .await
            .unwrap()
            .is_empty(),
        "leased"
    );
    core.set_delivery_payload(d.id, "{\"a\":1}").await.unwrap();
    core.set_delivery_payload(d.id, "{\"b\":2}").await.unwrap();

    let attempt = |code: Option<u16>| AttemptRecord {
        at: Utc::now(),
        status_code: code,
        error: code.map(|c| format!("HTTP {c}")),
        duration_ms: 5,
    };
    let soon = Utc::now() - chrono::Duration::seconds(1);
    assert!(core
        .record_attempt(&d, "w", &attempt(Some(500)), AttemptNext::Retry(soon))
        .await
        .unwrap());
    // Recorded once: a second record of the same claim is no longer ours.
    assert!(!core
        .record_attempt(&d, "w", &attempt(Some(500)), AttemptNext::Failed)
        .await
        .unwrap());
    assert_eq!(
        core.retry_webhook(id, &owner).await.unwrap(),
        Some(WebhookRetry::NotFailed(DeliveryState::Pending))
    );
    let d2 = core
        .claim_deliveries("w", 10, LEASE)
        .await
        .unwrap()
        .remove(0);
    assert_eq!(d2.attempts, 2);
    assert_eq!(
        d2.payload.as_deref(),
        Some("{\"a\":1}"),
        "every retry sends the same bytes"
    );
    assert!(core
        .record_attempt(&d2, "w", &attempt(Some(410)), AttemptNext::Failed)
        .await
        .unwrap());
    let detail = core.request_detail(id, &owner).await.unwrap().unwrap();
    let hook = detail.webhook.unwrap();
    assert_eq!(
        (hook.state, hook.attempts, hook.last_status_code),
        (DeliveryState::Failed, 2, Some(410))
    );
    assert_eq!(hook.next_attempt_at, None);

    assert_eq!(
        core.retry_webhook(id, &owner).await.unwrap(),
        Some(WebhookRetry::Queued)
    );
    let d3 = core
        .claim_deliveries("w", 10, LEASE)
        .await
        .unwrap()
        .remove(0);
    assert_eq!(d3.attempts, 1, "a manual retry starts a fresh schedule");
    assert!(core
        .record_attempt(&d3, "w", &attempt(Some(200)), AttemptNext::Delivered)
        .await
        .unwrap());
    let hook = core
        .request_detail(id, &owner)
        .await
        .unwrap()
        .unwrap()
        .webhook
        .unwrap();
    assert_eq!(hook.state, DeliveryState::Delivered);
    assert!(hook.delivered_at.is_some());
    assert_eq!(
        core.webhook_attempts(id).await.unwrap(),
        [
            (Some(500), Some("HTTP 500".into())),
            (Some(410), Some("HTTP 410".into())),
            (Some(200), Some("HTTP 200".into()))
        ]
    );
});

db_test!(released_deliveries_do_not_count_the_attempt, |db| {
    let core = open(&db).await;
    let id = create(
        &core,
        request(&Owner::open(), &[&["http://o/a"]], Some("http://hook/")),
    )
    .await;
    let job = claim_all(&core, "w").await.remove(0);
    core.settle_image(&job, "w", &failed(ErrorCode::TooLarge))
        .await
        .unwrap();
    assert_eq!(status_of(&core, id).await, Status::Failed);
    assert_eq!(
        core.claim_deliveries("w", 10, LEASE).await.unwrap().len(),
        1
    );
    core.release("w").await.unwrap();
    let d = core.claim_deliveries("w2", 10, LEASE).await.unwrap();
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].attempts, 1);
});

db_test!(snapshots_page_in_csv_order, |db| {
    let core = open(&db).await;
    let owner = Owner::open();
    let id = create(
        &core,
        request(
            &owner,
            &[
                &["http://o/1", "http://o/2"],
                &["http://o/3"],
                &["http://o/1"],
            ],
            None,
        ),
    )
    .await;
    let job = claim_all(&core, "w").await.remove(0);
    core.settle_image(&job, "w", &completed(&job))
        .await
        .unwrap();
    let mut snap = core.read_snapshot().await.unwrap();
    assert!(snap
        .request(id, &Owner::of_key("x"))
        .await
        .unwrap()
        .is_none());
    let r = snap.request(id, &owner).await.unwrap().unwrap();
    assert_eq!(
        (r.total_products, r.total_images, r.completed_images),
        (3, 4, 2)
    );
    let page1 = snap.images(id, -1, 2).await.unwrap();
    let page2 = snap.images(id, page1[1].0, 10).await.unwrap();
    let ordinals: Vec<i64> = page1.iter().chain(&page2).map(|(o, _)| *o).collect();
    assert_eq!(ordinals, [0, 1, 2, 3]);
    let urls = snap.output_urls(id, 0, 10).await.unwrap();
    assert_eq!(urls.len(), 3);
    assert_eq!(
        urls[2].1,
        Some(format!("http://out/{}.jpg", job.id)),
        "the duplicate's output"
    );
    let products = snap.products(id, 0, 10).await.unwrap();
    let serials: Vec<i64> = products.iter().map(|p| p.serial_number).collect();
    assert_eq!(serials, [2, 3]);
    assert!(snap.webhook(id).await.unwrap().is_none());
    snap.close().await.unwrap();
});

db_test!(deleting_a_request_cascades, |db| {
    let core = open(&db).await;
    let owner = Owner::open();
    let id = create(
        &core,
        request(&owner, &[&["http://o/a", "http://o/a"]], Some("http://h/")),
    )
    .await;
    let keep = create(&core, request(&owner, &[&["http://o/b"]], None)).await;
    let job = claim_all(&core, "w").await.remove(0);
    core.settle_image(&job, "w", &completed(&job))
        .await
        .unwrap();
    let d = core
        .claim_deliveries("w", 10, LEASE)
        .await
        .unwrap()
        .remove(0);
    let attempt = AttemptRecord {
        at: Utc::now(),
        status_code: Some(200),
        error: None,
        duration_ms: 1,
    };
    core.record_attempt(&d, "w", &attempt, AttemptNext::Delivered)
        .await
        .unwrap();
    db.execute(&format!("DELETE FROM requests WHERE id = '{id}'"))
        .await;
    for table in ["products", "images", "webhook_deliveries"] {
        assert_eq!(
            db.scalar(&format!(
                "SELECT COUNT(*) FROM {table} WHERE request_id = '{id}'"
            ))
            .await,
            0,
            "{table}"
        );
    }
    assert_eq!(db.scalar("SELECT COUNT(*) FROM webhook_attempts").await, 0);
    assert!(core.request_detail(keep, &owner).await.unwrap().is_some());
    assert_eq!(core.count_requests().await.unwrap(), 1);
});

db_test!(settings_are_stored_once, |db| {
    let core = open(&db).await;
    assert_eq!(core.setting_or_insert("s", "first").await.unwrap(), "first");
    assert_eq!(
        core.setting_or_insert("s", "second").await.unwrap(),
        "first"
    );
    core.ping().await.unwrap();
    assert_eq!(
        core.backend(),
        if db.is_postgres() {
            "postgres"
        } else {
            "sqlite"
        }
    );
});

db_test!(
    deletions_are_claimed_once_and_taken_up_again_after_their_lease,
    |db| {
        let core = open(&db).await;
        let owner = Owner::of_key("k");
        let mut finished = HashSet::new();
        for i in 0..12 {
            let url = format!("http://o/{i}.png");
            finished.insert(
                create(
                    &core,
                    request(&owner, &[&[url.as_str()]], Some("http://h/")),
                )
                .await,
            );
        }
        for job in claim_all(&core, "w").await {
            assert!(records(&core, &job, "w", &completed(&job)).await);
        }
        // Unfinished (its image claimed, never settled): never taken.
        let running = create(&core, request(&owner, &[&["http://o/x.png"]], None)).await;
        assert_eq!(claim_all(&core, "w").await.len(), 1);
        tokio::time::sleep(Duration::from_millis(5)).await;

        let mut tasks = Vec::new();
        for _ in 0..4 {
            let core = core.clone();
            tasks.push(tokio::spawn(async move {
                let mut mine = Vec::new();
                loop {
                    let ids = core
                        .claim_deletions(Duration::ZERO, LEASE, 2)
                        .await
                        .unwrap();
                    if ids.is_empty() {
                        return mine;
                    }
                    mine.extend(ids);
                }
            }));
        }
        let mut taken = HashSet::new();
        for t in tasks {
            for id in t.await.unwrap() {
                assert!(taken.insert(id), "request {id} handed to two janitors");
            }
        }
        assert_eq!(taken, finished, "every finished request, and only those");
        let any = *taken.iter().next().unwrap();
        // Marked: no longer served, its owner sees a tombstone, another owner nothing.
        assert!(core.request_detail(any, &owner).await.unwrap().is_none());
        assert!(core.request_head(any, &owner).await.unwrap().is_none());
        assert!(core.deleted_at(any, &owner).await.unwrap().is_some());
        assert!(core
            .deleted_at(any, &Owner::open())
            .await
            .unwrap()
            .is_none());
        assert!(core.request_head(running, &owner).await.unwrap().is_some());
        // Leased: nobody takes them again meanwhile.
        assert!(core
            .claim_deletions(Duration::ZERO, LEASE, 100)
            .await
            .unwrap()
            .is_empty());

        // A janitor that dies leaves its lease to run out; then its requests are taken up again.
        let dead = create(&core, request(&owner, &[&["http://o/d.png"]], None)).await;
        for job in claim_all(&core, "w").await {
            assert!(records(&core, &job, "w", &completed(&job)).await);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
        let short = Duration::from_millis(1);
        let got = core
            .claim_deletions(Duration::ZERO, short, 100)
            .await
            .unwrap();
        assert_eq!(got, [dead]);
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(
            core.claim_deletions(Duration::ZERO, LEASE, 100)
                .await
                .unwrap(),
            [dead]
        );

        for id in taken.iter().chain([&dead]) {
            assert!(core.delete_request_rows(*id).await.unwrap());
            assert!(
                !core.delete_request_rows(*id).await.unwrap(),
                "twice is harmless"
            );
        }
        assert_eq!(core.count_requests().await.unwrap(), 1);
        assert_eq!(db.scalar("SELECT COUNT(*) FROM images").await, 1);
        assert_eq!(
            db.scalar("SELECT COUNT(*) FROM webhook_deliveries").await,
            0
        );
        // Tombstones outlive the rows, until dropped.
        assert!(core.deleted_at(any, &owner).await.unwrap().is_some());
        assert_eq!(core.drop_tombstones(LEASE).await.unwrap(), 0);
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert_eq!(core.drop_tombstones(Duration::ZERO).await.unwrap(), 13);
        assert!(core.deleted_at(any, &owner).await.unwrap().is_none());
    }
);

db_test!(a_cancelled_request_runs_none_of_its_jobs_again, |db| {
    use imgbatch::core::CancelOutcome;
    let core = open(&db).await;
    let owner = Owner::open();
    let id = create(
        &core,
        request(
            &owner,
            &[&["http://o/a", "http://o/b"], &["http://o/c", "http://o/a"]],
            None,
        ),
    )
    .await;
    // Two jobs running, one pending (with its duplicate waiting for the first).
    let running = core.claim_images("w1", 2, LEASE).await.unwrap();
    assert_eq!(running.len(), 2);
    let Some(CancelOutcome::Cancelled(row)) = core.cancel_request(id, &owner).await.unwrap() else {
        panic!("cancelled")
    };
    // The pending original; the duplicate of a running one still waits for its result.
    assert_eq!((row.status, row.cancelled_images), (Status::Cancelled, 1));
    // One running job is told to retry later, the other completes: both recorded, neither
    // revives the request.
    let retry = JobOutcome::Retry {
        failure: Failure::new(ErrorCode::Timeout, "timed out"),
        at: Utc::now(),
    };
    let (a, b) = if running[0].input_url == "http://o/a" {
        (&running[0], &running[1])
    } else {
        (&running[1], &running[0])
    };
    assert!(records(&core, b, "w1", &retry).await);
    let settled = core.settle_image(a, "w1", &completed(a)).await.unwrap();
    assert_eq!(
        settled,
        Settled {
            recorded: true,
            request_finished: None
        }
    );
    // The retried job comes back to a claim, which cancels it instead of handing it out.
    assert!(core.claim_images("w2", 10, LEASE).await.unwrap().is_empty());
    let row = core.request_row(id, &owner).await.unwrap().unwrap();
    assert_eq!(row.status, Status::Cancelled);
    // a and its duplicate completed; b and c cancelled.
    assert_eq!((row.completed_images, row.cancelled_images), (2, 2));
    assert_eq!(row.bytes_in, 2000);
    assert_eq!(core.queue_depth().await.unwrap(), (0, 0));
    assert!(matches!(
        core.cancel_request(id, &owner).await.unwrap(),
        Some(CancelOutcome::Cancelled(_))
    ));
    assert!(core
        .cancel_request(id, &Owner::of_key("other"))
        .await
        .unwrap()
        .is_none());
    assert!(core
        .retry_request(id, &Owner::of_key("other"), None)
        .await
        .unwrap()
        .is_none());
});
