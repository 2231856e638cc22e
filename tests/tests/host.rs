//! The host's own routes on a service with nothing configured (SQLite, a
//! broker in the process), as `cargo run -p allocation` starts it:
//! `/health/live`, `/health/ready` and `/metrics`.

use std::time::Duration;

use allocation::config::Config;
use eda_core::testing::unique_name;
use serde_json::Value;

/// The allocation service on the host in this process, on a SQLite file
/// of its own, with these variables besides.
struct Running {
    base: String,
    /// `sqlite://…`: the service's database.
    db: String,
    config: Config,
    stop: tokio::sync::oneshot::Sender<()>,
    service: tokio::task::JoinHandle<Result<(), eda_core::host::HostError>>,
    dir: std::path::PathBuf,
}

impl Running {
    async fn start(vars: &[(&str, &str)]) -> Running {
        let dir = std::env::temp_dir().join(unique_name("host"));
        std::fs::create_dir_all(&dir).unwrap();
        let db = format!("sqlite://{}", dir.join("allocation.db").display());
        let config = Config::from_lookup(|name| match name {
            "DATABASE_URL" => Some(db.clone()),
            "PORT" => Some("0".into()),
            _ => vars
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned()),
        })
        .unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (address_tx, address_rx) = tokio::sync::oneshot::channel();
        let service = tokio::spawn(allocation::service::run(
            config.clone(),
            async {
                let _ = stopped.await;
            },
            move |address| {
                let _ = address_tx.send(address);
            },
        ));
        let address = tokio::time::timeout(Duration::from_secs(30), address_rx)
            .await
            .expect("the service starts")
            .unwrap();
        Running {
            base: format!("http://127.0.0.1:{}", address.port()),
            db,
            config,
            stop,
            service,
            dir,
        }
    }

    /// Stops it gracefully (it must end well) and removes its files.
    async fn stop(self) {
        self.stop.send(()).unwrap();
        self.service.await.unwrap().unwrap();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_with_nothing_configured_is_live_ready_and_measured() {
    let running = Running::start(&[]).await;
    let base = &running.base;
    let http = reqwest::Client::new();
    let get = |path: &str| http.get(format!("{base}{path}")).send();

    let live = get("/health/live").await.unwrap();
    assert_eq!(live.status().as_u16(), 200);

    let ready = get("/health/ready").await.unwrap();
    assert_eq!(ready.status().as_u16(), 200);
    let body: Value = ready.json().await.unwrap();
    assert_eq!(body["status"], "ready", "{body}");
    assert_eq!(body["checks"]["broker"]["state"], "in process", "{body}");
    assert_eq!(body["checks"]["consumer"]["state"], "consuming", "{body}");

    let metrics = get("/metrics").await.unwrap();
    assert_eq!(metrics.status().as_u16(), 200);
    let text = metrics.text().await.unwrap();
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
        .expect("the Prometheus text format");
    assert!(
        scrape
            .samples
            .iter()
            .any(|s| s.metric == "eda_consumer_consuming"),
        "{text}"
    );

    // The service's own routes are still there, behind the host's.
    let created = http
        .post(format!("{base}/batches"))
        .json(&serde_json::json!({"ref": "b1", "sku": "LAMP", "qty": 10, "eta": null}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status().as_u16(), 201);

    running.stop().await;
}

/// The host keeps the database tidy: with `EDA_RETENTION_SECONDS=1`,
/// published outbox rows and inbox rows past a second are deleted (every
/// half second), and `/metrics` counts the inbox's rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_inbox_and_published_outbox_rows_are_deleted() {
    let running = Running::start(&[("EDA_RETENTION_SECONDS", "1")]).await;
    assert_eq!(running.config.host.retention, Duration::from_secs(1));
    let (base, db) = (&running.base, &running.db);
    let http = reqwest::Client::new();
    let post = |path: &str, body: Value| http.post(format!("{base}{path}")).json(&body).send();
    let created = post(
        "/batches",
        serde_json::json!({"ref": "b1", "sku": "LAMP", "qty": 10, "eta": null}),
    )
    .await
    .unwrap();
    assert_eq!(created.status().as_u16(), 201);
    let allocated = post(
        "/allocate",
        serde_json::json!({"orderid": "o1", "sku": "LAMP", "qty": 1}),
    )
    .await
    .unwrap();
    assert_eq!(allocated.status().as_u16(), 201);

    let pool = eda_core::sqlx::SqlitePool::connect(db).await.unwrap();
    let count = |table: &'static str| {
        let pool = pool.clone();
        async move {
            eda_core::sqlx::query_scalar::<_, i64>(&format!("SELECT count(*) FROM {table}"))
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    // Just written: younger than the retention.
    assert!(count("eda_outbox").await >= 1, "the Allocated event's row");
    assert!(
        count("eda_inbox").await >= 1,
        "the read model's handler of Allocated, recorded"
    );
    let metrics = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let scrape = prometheus_parse::Scrape::parse(metrics.lines().map(|l| Ok(l.to_owned())))
        .expect("the Prometheus text format");
    let inbox_rows = scrape
        .samples
        .iter()
        .find(|s| s.metric == "eda_inbox_rows")
        .map(|s| match s.value {
            prometheus_parse::Value::Gauge(v) => v,
            ref other => panic!("eda_inbox_rows: {other:?}"),
        })
        .expect("eda_inbox_rows");
    assert_eq!(inbox_rows, count("eda_inbox").await as f64);

    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while count("eda_outbox").await > 0 || count("eda_inbox").await > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "rows past their retention were not deleted in 10 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    pool.close().await;
    running.stop().await;
}
