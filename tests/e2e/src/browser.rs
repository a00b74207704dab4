//! A real headless Chromium for the console's tests, driven over WebDriver (Debian's
//! `chromium` and `chromium-driver`, installed by `scripts/test.sh`): a chromedriver of the
//! test's own on a free port, a browser profile in a directory of its own, and screenshots
//! kept under `.local/console-screenshots/` (the suite's artifacts; the README shows one).

use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A browser session and the chromedriver behind it.
pub struct Browser {
    pub client: Client,
    driver: Child,
    profile: PathBuf,
}

/// Where screenshots go.
pub fn screenshot_dir() -> PathBuf {
    let root = std::env::var("SAGAPAY_LOCAL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| crate::workspace_root().join(".local"));
    root.join("console-screenshots")
}

fn program(candidates: &[&str]) -> String {
    candidates
        .iter()
        .find(|p| std::path::Path::new(p).exists())
        .unwrap_or(&candidates[0])
        .to_string()
}

impl Browser {
    /// Starts chromedriver and a headless Chromium with a window of 1400 × 1000.
    pub async fn start() -> Browser {
        let port = crate::free_port(20_000..30_000);
        let driver = Command::new(program(&["/usr/bin/chromedriver", "chromedriver"]))
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver runs (scripts/test.sh installs chromium-driver)");
        let profile =
            std::env::temp_dir().join(format!("sagapay-chromium-{}", uuid::Uuid::new_v4()));
        let caps = serde_json::json!({
            "goog:chromeOptions": {
                "binary": program(&["/usr/lib/chromium/chromium", "/usr/bin/chromium"]),
                "args": ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                         "--disable-gpu", "--window-size=1400,1000",
                         format!("--user-data-dir={}", profile.display())]
            }
        });
        let caps = caps.as_object().expect("an object").clone();
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        let client = loop {
            match ClientBuilder::new(HttpConnector::new())
                .capabilities(caps.clone())
                .connect(&url)
                .await
            {
                Ok(c) => break c,
                // chromedriver not listening yet: poll until the deadline.
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => panic!("no browser session from chromedriver at {url}: {e}"),
            }
        };
        Browser {
            client,
            driver,
            profile,
        }
    }

    pub async fn goto(&self, url: &str) {
        self.client.goto(url).await.expect("navigates");
    }

    /// The page's visible text (empty while a page is replaced by the next).
    pub async fn text(&self) -> String {
        match self.client.find(Locator::Css("body")).await {
            Ok(body) => body.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    /// Waits until the page shows `needle` (reloading it with `reload`), or panics with what
    /// it shows.
    pub async fn wait_for_text(&self, needle: &str, timeout: Duration, reload: bool) {
        let deadline = Instant::now() + timeout;
        loop {
            let text = self.text().await;
            if text.contains(needle) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the page never showed {needle:?}; it shows:\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
            if reload {
                self.client.refresh().await.expect("reloads");
            }
        }
    }

    /// Types `value` into the input named `name` (clearing it first).
    pub async fn fill(&self, name: &str, value: &str) {
        let input = self
            .client
            .find(Locator::Css(&format!("[name=\"{name}\"]")))
            .await
            .unwrap_or_else(|e| panic!("an input named {name}: {e}"));
        input.clear().await.expect("clears");
        input.send_keys(value).await.expect("types");
    }

    /// Clicks the element `css` matches and waits for the page it loads.
    pub async fn click(&self, css: &str) {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("an element {css}: {e}"))
            .click()
            .await
            .expect("clicks");
    }

    /// Saves a screenshot as `<name>.png` in [`screenshot_dir`].
    pub async fn screenshot(&self, name: &str) {
        let png = self.client.screenshot().await.expect("a screenshot");
        let dir = screenshot_dir();
        std::fs::create_dir_all(&dir).expect("the screenshot directory");
        std::fs::write(dir.join(format!("{name}.png")), png).expect("writes the screenshot");
    }

    /// Ends the session, chromedriver and the profile.
    pub async fn close(mut self) {
        let _ = self.client.clone().close().await;
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}
