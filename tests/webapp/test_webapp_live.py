"""The web UI as deployed: ``python -m webapp serve`` (waitress) in its own process.

Covers the commands an operator runs (upgrade-db, create-admin, serve), checks
that the web process never loads TensorFlow, and drives the pages in a real
headless Chromium through Playwright (skipped, with the reason, when either is
missing). Screenshots go to ``$KOA_ARTIFACTS_DIR`` (a temporary folder by default).
"""

import os
import re
import subprocess
import sys
import tempfile
import urllib.request

import pytest

import webapp_images as wi
from components import features
from koa.processes import ChildProcess, free_port
from webapp import ood_reasons
from webapp_testlib import REPO

ADMIN_NAME = "chief"
ADMIN_PASSWORD = "chief-password-2025"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


def _webapp_env(tmp_path, serving_target, model_base_path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KOA_")}
    env.update(
        SECRET_KEY="live-test-secret-" + "z" * 32,
        DATABASE_URL=f"sqlite:///{tmp_path}/live.sqlite",
        KOA_SERVING_TARGET=serving_target,
        KOA_MODEL_NAME="koa",
        KOA_MODEL_BASE_PATH=model_base_path,
        PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
    )
    return env


@pytest.fixture(scope="module")
def live_server(tmp_path_factory, serving_target, model_base_path):
    """Migrates, creates the first admin and serves the app; yields (url, pid)."""
    tmp_path = tmp_path_factory.mktemp("live")
    env = _webapp_env(tmp_path, serving_target, model_base_path)
    run = dict(env=env, cwd=str(tmp_path), capture_output=True, text=True, timeout=120)
    upgrade = subprocess.run([sys.executable, "-m", "webapp", "upgrade-db"], **run)
    assert upgrade.returncode == 0, upgrade.stderr
    admin = subprocess.run(
        [sys.executable, "-m", "webapp", "create-admin", "--username", ADMIN_NAME, "--password-stdin"],
        input=ADMIN_PASSWORD + "\n",
        **run,
    )
    assert admin.returncode == 0, admin.stderr
    port = free_port()
    log_path = tmp_path / "web.log"
    process = ChildProcess("web server", [
        sys.executable, "-m", "webapp", "serve", "--host", "127.0.0.1", "--port", str(port)],
        env=env, log_path=str(log_path), cwd=str(tmp_path))
    url = f"http://localhost:{port}"
    try:
        process.wait_until(
            lambda: urllib.request.urlopen(url + "/healthz", timeout=2).status == 200, 60,
            interval=0.2)
        yield url, process.pid, log_path
    finally:
        process.stop(timeout=20)


def _knee_images(tmp_path) -> list:
    """Two synthetic knee phantoms from the project's generator (labelled synthetic)."""
    from components import synthetic

    out = tmp_path / "synthetic"
    synthetic.generate(str(out), patients=1, size=224, seed=3)
    return sorted(str(p) for p in out.rglob("*.png"))


def _mapped_tensorflow_libraries(pid: int) -> list:
    with open(f"/proc/{pid}/maps", encoding="utf-8") as f:
        return sorted({line.split()[-1] for line in f if "tensorflow" in line and ".so" in line})


def test_served_web_process_never_loads_tensorflow(live_server, tmp_path):
    url, pid, _ = live_server
    if not os.path.exists(f"/proc/{pid}/maps"):
        pytest.skip("needs Linux /proc to inspect the web process's loaded libraries")
    # Exercise the gRPC path first so the client and its protobufs are loaded.
    with open(_knee_images(tmp_path)[0], "rb") as f:
        _api_upload(url, f.read())
    assert _mapped_tensorflow_libraries(pid) == []


def test_web_module_imports_stay_free_of_tensorflow():
    code = (
        "import sys, webapp, webapp.cli, webapp.grading, webapp.model_card_views, serving.client\n"
        "from webapp import create_app\n"
        "app = create_app({'SECRET_KEY': 'x' * 32, 'DATABASE_URL': 'sqlite://'})\n"
        "serving.client.ServingClient('127.0.0.1:1').close()\n"
        "bad = [m for m in sys.modules if m == 'tensorflow' or m.startswith('tensorflow.python')]\n"
        "print(bad)\n"
        "sys.exit(1 if bad else 0)\n"
    )
    env = dict(os.environ, PYTHONPATH=REPO)
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def _api_upload(url: str, image: bytes) -> None:
    """Signs in with the admin, creates an API token through the form and posts the image."""
    import http.cookiejar
    import json
    import urllib.parse

    class LocalhostIsSecure(http.cookiejar.DefaultCookiePolicy):
        # Browsers treat http://localhost as a secure context and send Secure
        # cookies to it; urllib does not unless told to.
        def return_ok_secure(self, cookie, request):
            return True

    jar = http.cookiejar.CookieJar(policy=LocalhostIsSecure())
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))

    def token_from(path):
        html = opener.open(url + path, timeout=30).read().decode()
        return re.search(r'name="csrf_token"[^>]*value="([^"]+)"', html).group(1)

    form = {"username": ADMIN_NAME, "password": ADMIN_PASSWORD, "csrf_token": token_from("/auth/login")}
    opener.open(url + "/auth/login", urllib.parse.urlencode(form).encode(), timeout=30)
    form = {"name": "live", "csrf_token": token_from("/account/tokens")}
    html = opener.open(url + "/account/tokens", urllib.parse.urlencode(form).encode(), timeout=30).read().decode()
    api_token = re.search(r'data-testid="new-token">([^<]+)<', html).group(1)
    request = urllib.request.Request(
        url + "/api/v1/predictions?side=L",
        data=image,
        headers={"Authorization": f"Bearer {api_token}", "Content-Type": "image/png"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        body = json.loads(response.read())
    assert response.status == 201 and 0 <= body["grade"] <= 4


def _artifacts_dir() -> str:
    path = os.environ.get("KOA_ARTIFACTS_DIR") or os.path.join(tempfile.gettempdir(), "koa_artifacts")
    path = os.path.join(path, "webapp")
    os.makedirs(path, exist_ok=True)
    return path


def _playwright():
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"headless browser test needs Debian's chromium at {CHROMIUM} (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("headless browser test needs the Python 'playwright' package")
    return sync_playwright


def test_browser_login_upload_and_read_grade(live_server, tmp_path, direct_client):
    sync_playwright = _playwright()
    url, _, _ = live_server
    shots = _artifacts_dir()
    images = _knee_images(tmp_path)
    problems = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.on(
                "response",
                lambda r: problems.append(f"{r.status} {r.url}") if r.status >= 400 else None,
            )
            page.goto(url + "/")
            assert "/auth/login" in page.url
            page.fill("#username", ADMIN_NAME)
            page.fill("#password", ADMIN_PASSWORD)
            page.click("button[type=submit]")
            page.wait_for_selector("#drop-zone")
            # One file picker on the page: the "Choose files" button.
            assert page.locator("#files").bounding_box()["width"] <= 1  # no second picker
            assert page.locator("label[for=files]").is_visible()
            page.screenshot(path=os.path.join(shots, "01_upload.png"), full_page=True)

            # Batch: two knees at once, each with its own side and progress row. The batch
            # side (Left) and reference are the defaults; one click makes the second Right.
            page.click("label[for=side-0]")
            page.fill("#study_reference", "live-1")
            page.set_input_files("#files", images[:2])
            rows = page.locator("#queue-list li")
            assert rows.count() == 2
            assert rows.nth(0).locator("input[value=L]").is_checked()
            assert rows.nth(1).locator(".file-reference").input_value() == "live-1"
            rows.nth(1).locator("label", has_text="Right").click()
            assert rows.nth(1).locator("input[value=R]").is_checked()
            page.screenshot(path=os.path.join(shots, "02a_batch_sides.png"), full_page=True)
            page.click("#upload-submit")
            # Locators, not wait_for_function: the app's CSP forbids evaluating strings.
            finished = page.locator("#queue-list li.done, #queue-list li.failed")
            finished.nth(1).wait_for(timeout=60_000)
            page.screenshot(path=os.path.join(shots, "02_batch_progress.png"), full_page=True)
            assert page.locator("#queue-list li.failed").count() == 0
            assert rows.nth(0).locator(".state").inner_text().startswith("left knee: grade")
            assert rows.nth(1).locator(".state").inner_text().startswith("right knee: grade")
            page.locator("#queue-list li.done a").first.click()
            page.wait_for_selector("[data-testid=grade]")
            assert page.get_attribute("[data-testid=side]", "data-side") == "L"
            assert page.locator("[data-testid=study-reference]").inner_text() == "LIVE-1"
            page.screenshot(path=os.path.join(shots, "03_result.png"), full_page=True)

            grade = int(page.get_attribute("[data-testid=grade]", "data-grade"))
            rows = page.locator("[data-testid=probabilities] tbody tr")
            shown = [float(rows.nth(i).get_attribute("data-probability")) for i in range(rows.count())]
            visible_percent = [rows.nth(i).locator("td.num").inner_text() for i in range(rows.count())]
            with open(images[0], "rb") as f:
                expected = direct_client.predict(f.read())
            assert grade == expected.grade
            assert shown == pytest.approx(expected.probabilities, abs=1e-5)
            assert visible_percent == [f"{p * 100:.1f}%" for p in expected.probabilities]
            assert page.locator("[data-testid=grade-name]").inner_text() == expected.grade_name

            # The Grad-CAM overlay is off until asked for; then the plain film stays beside
            # it (wide screen), with an opacity control and the colour scale.
            overlay = page.locator("img.overlay")
            assert not overlay.is_visible()
            assert not page.locator(".colour-bar").is_visible()
            assert not page.locator("#heatmap-opacity").is_visible()
            page.screenshot(path=os.path.join(shots, "04_result_plain.png"), full_page=True)
            page.click("label[for=toggle-heatmap]")
            assert overlay.is_visible()
            assert page.locator(".viewer-pair .plain-film img").is_visible()
            assert page.locator(".colour-bar").is_visible()
            page.fill("#heatmap-opacity", "30")
            assert overlay.evaluate("img => img.style.opacity") == "0.3"
            page.screenshot(path=os.path.join(shots, "04b_result_overlay.png"), full_page=True)
            page.click("label[for=toggle-heatmap]")
            assert not overlay.is_visible()
            page.click("label[for=toggle-heatmap]")

            page.click("text=Printable report")
            page.wait_for_selector(".report")
            assert page.locator("img.report-overlay").is_visible()
            page.emulate_media(media="print")
            assert not page.locator("header.site-header").is_visible()
            # The report's heatmap figure shows the overlay on paper too.
            assert page.locator("img.report-overlay").is_visible()
            page.screenshot(path=os.path.join(shots, "05_report_print.png"), full_page=True)
            page.emulate_media(media="screen")

            page.goto(url + "/model")
            page.wait_for_selector("[data-testid=confusion-matrix]")
            page.screenshot(path=os.path.join(shots, "06_model_card.png"), full_page=True)
            page.goto(url + "/history")
            assert page.locator("[data-testid=history] tbody tr[data-status=done]").count() >= 2
            page.screenshot(path=os.path.join(shots, "07_history.png"), full_page=True)

            # A file without a side (none chosen, none in the file) stays listed to be
            # corrected with one click and sent again; its result lists the earlier film
            # of the same reference and side.
            page.goto(url + "/")
            page.fill("#study_reference", "LIVE-1")
            page.set_input_files("#files", images[:1])
            before = len(problems)
            page.click("#upload-submit")
            row = page.locator("#queue-list li").first
            page.locator("#queue-list li.needs-fix").wait_for(timeout=60_000)
            assert "choose the knee's side" in row.inner_text()
            # The refusal is an expected 400 (the answer, and the console's note of it).
            refused = problems[before:]
            assert refused and all("400" in p for p in refused), refused
            del problems[before:]
            row.locator("label", has_text="Left").click()
            page.click("#upload-submit")
            page.locator("#queue-list li.done").wait_for(timeout=60_000)
            row.locator("a").click()
            page.wait_for_selector("[data-testid=priors]")
            priors = page.locator("[data-testid=priors] tbody tr")
            assert priors.count() == 2  # this film and the earlier left one
            assert priors.nth(1).locator("img.thumb").is_visible()
            prior_page = page.url.replace(url, "")
            page.screenshot(path=os.path.join(shots, "04c_result_priors.png"), full_page=True)

            # A phone's width: no page scrolls sideways.
            page.set_viewport_size({"width": 390, "height": 844})
            for name, path in (("result", "/predictions/1"), ("report", "/predictions/1/report"),
                               ("priors", prior_page), ("priors_report", prior_page + "/report"),
                               ("history", "/history"), ("model", "/model"),
                               ("tokens", "/account/tokens"), ("upload", "/")):
                page.goto(url + path)
                overflow = page.evaluate(
                    "() => document.documentElement.scrollWidth - window.innerWidth")
                page.screenshot(path=os.path.join(shots, f"09_{name}_390px.png"), full_page=True)
                assert overflow <= 0, f"{path} scrolls sideways by {overflow}px at 390 px"
            # The upload list with its per-file side and reference fits too.
            page.set_input_files("#files", images[:2])
            overflow = page.evaluate("() => document.documentElement.scrollWidth - window.innerWidth")
            page.screenshot(path=os.path.join(shots, "09_upload_list_390px.png"), full_page=True)
            assert overflow <= 0, f"the upload list scrolls sideways by {overflow}px at 390 px"
            page.set_viewport_size({"width": 1200, "height": 900})

            # A picture the model flags is listed as not graded, with the reason.
            colour = tmp_path / "colour.png"
            colour.write_bytes(wi.colour_png())
            page.goto(url + "/")
            page.click("label[for=side-1]")
            page.set_input_files("#files", [str(colour)])
            page.click("#upload-submit")
            flagged = page.locator("#queue-list li.failed")
            flagged.first.wait_for(timeout=60_000)
            text = flagged.first.inner_text()
            assert text.count("Not graded") == 1 and "undefined" not in text and "NaN" not in text
            assert ood_reasons.describe(features.REASON_COLOUR)[0].text in text
            assert "bar-failed" in flagged.first.locator("progress").get_attribute("class")
            page.screenshot(path=os.path.join(shots, "08_upload_not_graded.png"), full_page=True)
            # Its result page says why, in place of the grade.
            flagged.first.locator("a").click()
            reason = page.locator('[data-testid="ood-reason"][data-code="colour"]')
            reason.wait_for(timeout=30_000)
            assert page.locator('[data-testid="grade"]').count() == 0
            page.screenshot(path=os.path.join(shots, "10_result_not_graded.png"), full_page=True)
        finally:
            browser.close()
    # No script errors and no Content-Security-Policy violations on any page.
    assert problems == []
    assert all(os.path.getsize(os.path.join(shots, f)) > 0 for f in os.listdir(shots))
