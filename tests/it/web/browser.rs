//! One headless Chromium for the whole test binary, driven through chromedriver (WebDriver).
//!
//! Starting a browser costs about a second of CPU each time, so the browser tests share one:
//! it lives on a thread and runtime of its own (a test's runtime ends with the test), and the
//! tests take turns with it. Chromedriver and Chromium die with the test process: each is
//! started with a parent-death signal, and an exit handler ends them and removes their folder.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use fantoccini::wd::Capabilities;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};
use tokio::sync::{Mutex, MutexGuard};

pub struct Browser {
    pub client: Client,
    /// Chromium saves downloads here.
    pub downloads: PathBuf,
}

struct Shared {
    browser: Browser,
    turn: Mutex<()>,
}

/// The browser while a test has it; other browser tests wait.
pub struct Turn {
    _turn: MutexGuard<'static, ()>,
    pub browser: &'static Browser,
}

impl std::ops::Deref for Turn {
    type Target = Client;
    fn deref(&self) -> &Client {
        &self.browser.client
    }
}

static SHARED: OnceLock<Result<Shared, String>> = OnceLock::new();
static CLEANUP: OnceLock<(u32, PathBuf)> = OnceLock::new();

/// The shared browser, or None (with a note) where chromium or chromedriver is not installed;
/// with `IMGBATCH_REQUIRE_BROWSER=1` (CI) a missing browser fails the test instead.
pub async fn take() -> Option<Turn> {
    let required = std::env::var("IMGBATCH_REQUIRE_BROWSER").is_ok_and(|v| v == "1");
    let (Some(driver), Some(chromium)) = (find("chromedriver"), find("chromium")) else {
        assert!(
            !required,
            "IMGBATCH_REQUIRE_BROWSER=1 but chromium or chromedriver is not installed \
             (apt-get install chromium chromium-driver)"
        );
        eprintln!(
            "note: chromium or chromedriver is not installed: skipping this browser test \
             (apt-get install chromium chromium-driver)"
        );
        return None;
    };
    let shared = tokio::task::block_in_place(|| {
        SHARED.get_or_init(|| {
            let (tx, rx) = std::sync::mpsc::channel();
            // This thread never ends: chromedriver's parent-death signal is tied to it.
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async move {
                    let _ = tx.send(launch(&driver, &chromium).await);
                    std::future::pending::<()>().await
                })
            });
            rx.recv()
                .unwrap_or_else(|_| Err("the browser thread died".into()))
        })
    });
    let shared = match shared {
        Ok(s) => s,
        Err(e) => panic!("the browser did not start: {e}"),
    };
    Some(Turn {
        _turn: shared.turn.lock().await,
        browser: &shared.browser,
    })
}

fn find(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

async fn launch(driver: &Path, chromium: &Path) -> Result<Shared, String> {
    let dir = std::env::temp_dir().join(format!("imgbatch-browser-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let downloads = dir.join("downloads");
    std::fs::create_dir_all(&downloads).map_err(|e| e.to_string())?;
    // Chromium through setpriv, so that it too is killed when chromedriver dies.
    let binary = match find("setpriv") {
        Some(setpriv) => {
            let wrapper = dir.join("chromium");
            std::fs::write(
                &wrapper,
                format!(
                    "#!/bin/sh\nexec {} --pdeathsig KILL {} \"$@\"\n",
                    setpriv.display(),
                    chromium.display()
                ),
            )
            .map_err(|e| e.to_string())?;
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755))
                .map_err(|e| e.to_string())?;
            wrapper
        }
        None => chromium.to_path_buf(),
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| e.to_string())?
        .port();
    let mut cmd = Command::new(driver);
    cmd.arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(|e| format!("chromedriver: {e}"))?;
    let _ = CLEANUP.set((child.id(), dir.clone()));
    // SAFETY: registers a plain extern "C" function.
    unsafe { libc::atexit(cleanup) };

    let webdriver = format!("http://127.0.0.1:{port}");
    let start = Instant::now();
    loop {
        let ready = reqwest::get(format!("{webdriver}/status")).await;
        if ready.is_ok_and(|r| r.status().is_success()) {
            break;
        }
        if start.elapsed() > Duration::from_secs(20) {
            return Err("chromedriver did not answer in 20 s".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let args = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        // Without these a closed network refuses many connections, and each costs time.
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        "--window-size=1280,900",
    ]
    .into_iter()
    .map(String::from)
    .chain([format!("--user-data-dir={}", dir.join("profile").display())])
    .collect::<Vec<_>>();
    let mut caps = Capabilities::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": binary,
            "args": args,
            "prefs": {
                "download.default_directory": downloads,
                "download.prompt_for_download": false,
            },
        }),
    );
    let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&webdriver)
        .await
        .map_err(|e| format!("new WebDriver session: {e}"))?;
    Ok(Shared {
        browser: Browser { client, downloads },
        turn: Mutex::new(()),
    })
}

extern "C" fn cleanup() {
    if let Some((pid, dir)) = CLEANUP.get() {
        // SAFETY: kill(2) on the pid of the chromedriver we started.
        unsafe { libc::kill(*pid as i32, libc::SIGKILL) };
        // Chromium follows it (its parent-death signal); give it a moment to let go.
        std::thread::sleep(Duration::from_millis(200));
        let _ = std::fs::remove_dir_all(dir);
    }
}

impl Turn {
    /// Runs `script` (a function body; `arguments` holds `args`) and returns its value.
    pub async fn js(&self, script: &str, args: Vec<Value>) -> Value {
        self.execute(script, args)
            .await
            .unwrap_or_else(|e| panic!("script failed: {e}\n{script}"))
    }

    /// Waits until `script` returns something truthy (not false, null, 0 or ""), and
    /// returns it; panics after `timeout`, saying what it waited for and what the page shows.
    pub async fn until(&self, what: &str, timeout: Duration, script: &str) -> Value {
        let start = Instant::now();
        loop {
            let v = self.js(script, vec![]).await;
            let truthy = match &v {
                Value::Null => false,
                Value::Bool(b) => *b,
                Value::Number(n) => n.as_f64() != Some(0.0),
                Value::String(s) => !s.is_empty(),
                _ => true,
            };
            if truthy {
                return v;
            }
            if start.elapsed() > timeout {
                let page = self.js("return document.body.innerText", vec![]).await;
                panic!("waited {timeout:?} for {what}; the page says:\n{page}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn css(&self, selector: &str) -> fantoccini::elements::Element {
        self.wait()
            .at_most(Duration::from_secs(10))
            .for_element(Locator::Css(selector))
            .await
            .unwrap_or_else(|e| panic!("no element {selector}: {e}"))
    }

    /// Opens `url` and waits for the page's script to have run.
    pub async fn open(&self, url: &str) {
        self.goto(url).await.unwrap();
        self.until(
            "the page to load",
            Duration::from_secs(10),
            "return document.readyState === 'complete'",
        )
        .await;
    }

    /// Saves a screenshot of the whole page at `width` into `IMGBATCH_SCREENSHOTS/name.png`,
    /// when that folder is set (to refresh the ones in docs/); otherwise does nothing.
    pub async fn screenshot_to_docs(&self, name: &str, width: u32) {
        let Some(dir) = std::env::var_os("IMGBATCH_SCREENSHOTS") else {
            return;
        };
        self.set_window_size(width, 900).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let height = self
            .js("return document.documentElement.scrollHeight", vec![])
            .await
            .as_u64()
            .unwrap_or(900)
            .clamp(600, 2400) as u32
            // The window is taller than its viewport by the browser's own frame.
            + 100;
        self.set_window_size(width, height).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let png = self.screenshot().await.unwrap();
        std::fs::write(Path::new(&dir).join(format!("{name}.png")), png).unwrap();
        self.set_window_size(1280, 900).await.unwrap();
    }

    /// Waits for a finished download named `name` and returns its bytes (and removes it).
    pub async fn download(&self, name: &str, timeout: Duration) -> Vec<u8> {
        let path = self.browser.downloads.join(name);
        let partial = self.browser.downloads.join(format!("{name}.crdownload"));
        let start = Instant::now();
        loop {
            if path.is_file() && !partial.exists() {
                let bytes = std::fs::read(&path).unwrap();
                let _ = std::fs::remove_file(&path);
                return bytes;
            }
            assert!(
                start.elapsed() < timeout,
                "no download {name} in {timeout:?}; the folder has {:?}",
                std::fs::read_dir(&self.browser.downloads).map(|d| d
                    .filter_map(|e| e.ok())
                    .map(|e| e.file_name())
                    .collect::<Vec<_>>())
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
