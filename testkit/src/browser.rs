//! Headless Chromium driven over the W3C WebDriver protocol: Debian's
//! `chromium` and `chromium-driver` (`make deps` installs them), spoken to
//! with plain HTTP+JSON — the few commands the viewer's tests need.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

/// W3C's key for an element reference in responses.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A chromedriver process and one browser session; both end on drop.
pub struct Browser {
    driver: Child,
    base: String,
    session: String,
    http: reqwest::Client,
    _profile: TempDir,
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn find(names: &[&str], variable: &str) -> anyhow::Result<PathBuf> {
    if let Ok(path) = std::env::var(variable) {
        return Ok(PathBuf::from(path));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path).chain([PathBuf::from("/usr/bin")]) {
        for name in names {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    bail!(
        "{} not found (set {variable}, or run `make deps`, which installs Debian's chromium and chromium-driver)",
        names.join(" or ")
    )
}

impl Browser {
    /// Starts chromedriver on a free port and a headless Chromium session
    /// of `width` × `height` CSS pixels.
    pub async fn start(width: u32, height: u32) -> anyhow::Result<Self> {
        let driver_path = find(&["chromedriver"], "ASSAY_CHROMEDRIVER")?;
        let chromium = find(&["chromium", "chromium-browser"], "ASSAY_CHROMIUM")?;
        let port = crate::free_port();
        let driver = Command::new(&driver_path)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", driver_path.display()))?;
        let profile = TempDir(
            std::env::temp_dir().join(format!("assay-chromium-{}", uuid::Uuid::new_v4().simple())),
        );
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()?;
        let base = format!("http://127.0.0.1:{port}");
        let mut browser = Self {
            driver,
            base,
            session: String::new(),
            http,
            _profile: profile,
        };
        crate::eventually(Duration::from_secs(20), "chromedriver to start", || {
            let (http, base) = (browser.http.clone(), browser.base.clone());
            async move {
                let ready = match http.get(format!("{base}/status")).send().await {
                    Ok(response) => response
                        .json::<Value>()
                        .await
                        .ok()
                        .is_some_and(|status| status["value"]["ready"] == json!(true)),
                    Err(_) => false,
                };
                Ok(ready.then_some(()))
            }
        })
        .await?;
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--no-first-run", "--disable-extensions", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--disable-default-apps",
                    "--hide-scrollbars",
                    format!("--window-size={width},{height}"),
                    format!("--user-data-dir={}", browser._profile.0.display()),
                ],
            },
        }}});
        let created = browser
            .command(reqwest::Method::POST, "/session", Some(capabilities))
            .await
            .context("creating a Chromium session")?;
        browser.session = created["sessionId"]
            .as_str()
            .context("no session id")?
            .to_owned();
        Ok(browser)
    }

    async fn command(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await?;
        let status = response.status();
        let value: Value = response.json().await?;
        if !status.is_success() {
            bail!("webdriver {path}: {status}: {}", value["value"]);
        }
        Ok(value["value"].clone())
    }

    async fn session_command(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        self.command(method, &format!("/session/{}{path}", self.session), body)
            .await
    }

    pub async fn goto(&self, url: &str) -> anyhow::Result<()> {
        self.session_command(reqwest::Method::POST, "/url", Some(json!({"url": url})))
            .await
            .map(drop)
    }

    pub async fn url(&self) -> anyhow::Result<String> {
        Ok(self
            .session_command(reqwest::Method::GET, "/url", None)
            .await?
            .as_str()
            .unwrap_or_default()
            .to_owned())
    }

    /// Runs `script` (a function body; `arguments` holds `args`) and returns its value.
    pub async fn execute(&self, script: &str, args: Vec<Value>) -> anyhow::Result<Value> {
        self.session_command(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({"script": script, "args": args})),
        )
        .await
    }

    /// Evaluates `expression` until it is truthy (not null, false, 0 or "");
    /// returns its value.
    pub async fn wait_for(
        &self,
        what: &str,
        expression: &str,
        limit: Duration,
    ) -> anyhow::Result<Value> {
        let script = format!("return ({expression});");
        crate::eventually(limit, what, || async {
            let value = self.execute(&script, vec![]).await?;
            let truthy = match &value {
                Value::Null | Value::Bool(false) => false,
                Value::Number(number) => number.as_f64() != Some(0.0),
                Value::String(text) => !text.is_empty(),
                _ => true,
            };
            Ok(truthy.then_some(value))
        })
        .await
    }

    async fn element(&self, css: &str) -> anyhow::Result<String> {
        let found = self
            .session_command(
                reqwest::Method::POST,
                "/element",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await
            .with_context(|| format!("finding {css}"))?;
        Ok(found[ELEMENT]
            .as_str()
            .with_context(|| format!("no element id in {found}"))?
            .to_owned())
    }

    /// Types `text` into the element `css` as keystrokes.
    pub async fn type_into(&self, css: &str, text: &str) -> anyhow::Result<()> {
        let element = self.element(css).await?;
        self.session_command(
            reqwest::Method::POST,
            &format!("/element/{element}/clear"),
            Some(json!({})),
        )
        .await?;
        self.session_command(
            reqwest::Method::POST,
            &format!("/element/{element}/value"),
            Some(json!({"text": text})),
        )
        .await
        .map(drop)
    }

    pub async fn click(&self, css: &str) -> anyhow::Result<()> {
        let element = self.element(css).await?;
        self.session_command(
            reqwest::Method::POST,
            &format!("/element/{element}/click"),
            Some(json!({})),
        )
        .await
        .map(drop)
    }

    /// Sends keystrokes to the focused element (WebDriver key codes, e.g. `\u{E015}` for ArrowDown).
    pub async fn keys(&self, text: &str) -> anyhow::Result<()> {
        let actions: Vec<Value> = text
            .chars()
            .flat_map(|key| {
                [
                    json!({"type": "keyDown", "value": key.to_string()}),
                    json!({"type": "keyUp", "value": key.to_string()}),
                ]
            })
            .collect();
        self.session_command(
            reqwest::Method::POST,
            "/actions",
            Some(json!({"actions": [{"type": "key", "id": "keyboard", "actions": actions}]})),
        )
        .await
        .map(drop)
    }

    pub async fn set_size(&self, width: u32, height: u32) -> anyhow::Result<()> {
        self.session_command(
            reqwest::Method::POST,
            "/window/rect",
            Some(json!({"width": width, "height": height})),
        )
        .await
        .map(drop)
    }

    /// Emulates the system's colour-scheme setting (`"light"` or `"dark"`)
    /// for `prefers-color-scheme`, through chromedriver's DevTools bridge:
    /// WebDriver itself has no command for it.
    pub async fn prefer_color_scheme(&self, scheme: &str) -> anyhow::Result<()> {
        self.session_command(
            reqwest::Method::POST,
            "/goog/cdp/execute",
            Some(json!({"cmd": "Emulation.setEmulatedMedia", "params": {
                "features": [{"name": "prefers-color-scheme", "value": scheme}]}})),
        )
        .await
        .map(drop)
    }

    /// Saves a PNG of the viewport to `path`.
    pub async fn screenshot(&self, path: &Path) -> anyhow::Result<()> {
        let encoded = self
            .session_command(reqwest::Method::GET, "/screenshot", None)
            .await?;
        let bytes = decode_base64(encoded.as_str().context("screenshot is not text")?)?;
        std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            // Best effort, without a runtime: the driver is killed right after.
            let url = format!("{}/session/{}", self.base, self.session);
            let _ = std::thread::spawn(move || {
                let _ = std::net::TcpStream::connect_timeout(
                    &url_address(&url),
                    Duration::from_millis(200),
                )
                .and_then(|mut stream| {
                    use std::io::Write as _;
                    let path = url.splitn(4, '/').nth(3).unwrap_or_default();
                    write!(
                        stream,
                        "DELETE /{path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    )?;
                    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
                    let mut answer = [0u8; 64];
                    use std::io::Read as _;
                    let _ = stream.read(&mut answer);
                    Ok(())
                });
            })
            .join();
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn url_address(url: &str) -> std::net::SocketAddr {
    let host = url
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap_or_default();
    host.parse()
        .unwrap_or_else(|_| std::net::SocketAddr::from(([127, 0, 0, 1], 9)))
}

fn decode_base64(text: &str) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut buffer, mut bits) = (0u32, 0u32);
    for byte in text.bytes() {
        let value = match byte {
            b'A'..=b'Z' => byte - b'A',
            b'a'..=b'z' => byte - b'a' + 26,
            b'0'..=b'9' => byte - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' | b'\n' | b'\r' => continue,
            _ => bail!("not base64"),
        };
        buffer = (buffer << 6) | u32::from(value);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((buffer >> bits) as u8);
            buffer &= (1 << bits) - 1;
        }
    }
    Ok(out)
}
