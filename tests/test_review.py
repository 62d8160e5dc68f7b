"""Curator review: the API on a real server process, decisions that survive restarts and concurrent
reviewers, the token, path escapes, `restore --redo`, and the page in a real headless browser."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from oldphoto.flows.restore import restore_archive
from oldphoto.flows.runner import task_runner
from oldphoto.tasks.restore import RestoreConfig, read_manifest
from oldphoto.tasks.review import decision_files, fold_decisions, read_decisions

from conftest import _free_port
from test_restore_flow import picture, save

pytestmark = pytest.mark.usefixtures("prefect_api")

KEYS = ["a.png", "b.png", "box/c.png", "d.jpg", "e.png", "f.png"]


def restore(src: str, dst: str, model: str, **options) -> dict:
    return restore_archive.with_options(task_runner=task_runner(1))(src, dst, RestoreConfig(model=model, **options))


@pytest.fixture
def archive(tmp_path, model) -> tuple[Path, Path]:
    """(SRC, DST): six scans, one that is not an image, restored with the tiny model."""
    src, dst = tmp_path / "scans", tmp_path / "restored"
    for i, key in enumerate(KEYS):
        (src / key).parent.mkdir(parents=True, exist_ok=True)
        (src / key).write_bytes(save(picture(40 + 8 * i, 56, i), "JPEG" if key.endswith(".jpg") else "PNG"))
    (src / "notes.jpg").write_bytes(b"not a photograph")
    summary = restore(str(src), str(dst), model)
    assert (summary["restored"], summary["failed"]) == (6, 1)
    return src, dst


@contextlib.contextmanager
def server(dst: Path, *args: str, env: dict[str, str] | None = None, host: str = "127.0.0.1"):
    """`oldphoto review DST` as its own process; yields (base URL, the first lines it printed)."""
    port = _free_port()
    process = subprocess.Popen([sys.executable, "-m", "oldphoto.cli", "review", str(dst), "--host", host,
                                "--port", str(port), *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, env={**os.environ, **(env or {})})
    lines = [process.stdout.readline() for _ in range(3)]
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            with contextlib.suppress(httpx.TransportError):
                httpx.get(base + "/favicon.ico", timeout=2)
                break
            time.sleep(0.1)
        else:
            raise AssertionError(f"the review server did not answer: {lines}")
        yield base, lines
    finally:
        process.kill()
        process.wait()


def items(base: str, which: str = "all", **params) -> dict:
    answer = httpx.get(f"{base}/api/items", params={"filter": which, **params})
    answer.raise_for_status()
    return answer.json()


def decide(base: str, key: str, decision: str, **body) -> httpx.Response:
    return httpx.post(f"{base}/api/decisions", json={"key": key, "decision": decision, **body})


def test_api_decisions_survive_a_killed_server_and_bad_requests_are_refused(archive):
    src, dst = archive
    with server(dst) as (base, lines):
        assert f"originals: {src}" in lines[0], "SRC found from the run's report without --src"
        listed = items(base)
        assert listed["counts"] == {"undecided": 6, "accepted": 0, "rejected": 0, "redo": 0, "failed": 1, "all": 7}
        assert [i["key"] for i in items(base, "failed")["items"]] == ["notes.jpg"]
        page = items(base, "undecided", offset=2, limit=3)
        assert (page["total"], [i["key"] for i in page["items"]]) == (6, ["box/c.png", "d.jpg", "e.png"])

        assert decide(base, "a.png", "accept").json()["state"] == "accept"
        answer = decide(base, "b.png", "reject", note="faces smeared", reviewer="anna")
        assert (answer.status_code, answer.json()["note"], answer.json()["reviewer"]) == (200, "faces smeared", "anna")
        assert decide(base, "box/c.png", "redo", note="try", settings={"scratch": "off"}).json()["settings"] == {"scratch": "off"}
        # Refused, with the reason, and nothing stored:
        stored = len(decision_files(str(dst)))
        assert decide(base, "missing.png", "accept").status_code == 404
        assert decide(base, "../scans/a.png", "accept").status_code == 400
        assert decide(base, "/etc/passwd", "accept").status_code == 400
        assert decide(base, "a.png", "maybe").status_code == 422
        assert decide(base, "a.png", "redo", settings={"scratch": "sometimes"}).status_code == 422
        assert decide(base, "a.png", "redo", settings={"password": "x"}).status_code == 422
        assert httpx.get(f"{base}/api/view/after", params={"key": "../../etc/passwd"}).status_code == 400
        assert httpx.get(f"{base}/api/tile/after", params={"key": "a.png", "row": 5, "col": 0}).status_code == 404
        assert len(decision_files(str(dst))) == stored == 3

        # Renditions: the view, a full-resolution tile, the mask overlay (cached under DST/_review).
        item = httpx.get(f"{base}/api/item", params={"key": "b.png"}).json()
        assert (item["width"], item["height"], item["before"], item["mask"]) == (56, 48, True, True)
        tile = Image.open(io.BytesIO(httpx.get(f"{base}/api/tile/after", params={"key": "b.png", "row": 0, "col": 0}).content))
        restored = np.asarray(Image.open(dst / "b.png").convert("RGB")).astype(float)
        assert tile.size == (56, 48) and np.abs(np.asarray(tile).astype(float) - restored).mean() < 3
        before = Image.open(io.BytesIO(httpx.get(f"{base}/api/view/before", params={"key": "b.png"}).content))
        original = np.asarray(Image.open(src / "b.png").convert("RGB")).astype(float)
        to_original = np.abs(np.asarray(before).astype(float) - original).mean()
        assert to_original < 8 and to_original < np.abs(restored - original).mean() / 2, "the original, JPEG-encoded"
        assert Image.open(io.BytesIO(httpx.get(f"{base}/api/view/mask", params={"key": "b.png"}).content)).mode == "RGBA"
        assert any((dst / "_review" / "cache").rglob("tile-0-0.jpg"))

    # The server was killed (SIGKILL): every answered decision is there for the next one.
    with server(dst) as (base, _):
        listed = {i["key"]: i for i in items(base)["items"]}
        assert {k: listed[k]["state"] for k in ("a.png", "b.png", "box/c.png", "d.jpg")} == {
            "a.png": "accept", "b.png": "reject", "box/c.png": "redo", "d.jpg": "undecided"}
        assert listed["b.png"]["note"] == "faces smeared"
        assert items(base)["counts"] == {"undecided": 3, "accepted": 1, "rejected": 1, "redo": 1, "failed": 1, "all": 7}
        # Undo: the page posts the state before the last decision.
        assert decide(base, "a.png", "undecided").json()["state"] == "undecided"
        assert items(base, "accepted")["total"] == 0
    kinds = sorted(Path(f).name.split("-")[0] for f in decision_files(str(dst)))
    assert kinds == ["folded", "part"], "the second server folded the first's parts at its start; then the undo"


def test_two_reviewers_at_once_lose_nothing(archive):
    _, dst = archive
    answered: list[tuple[str, str]] = []
    lock = threading.Lock()

    def reviewer(base: str, name: str, keys: list[str]) -> None:
        for round_ in range(6):
            for key in keys:
                decision = ("accept", "reject", "redo")[(round_ + len(name)) % 3]
                if decide(base, key, decision, reviewer=name).status_code == 200:
                    with lock:
                        answered.append((key, decision))

    with server(dst) as (one, _), server(dst) as (two, _):
        shared = ["a.png", "b.png", "box/c.png"]  # both review these at once
        threads = [threading.Thread(target=reviewer, args=(one, "anna", shared + ["d.jpg"])),
                   threading.Thread(target=reviewer, args=(two, "bo", shared + ["e.png"]))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(answered) == 2 * 6 * 4
        # Each server sees the other's decisions on its next listing.
        assert items(one, "all")["counts"]["undecided"] == 1 == items(two, "all")["counts"]["undecided"]
    rows = read_decisions(str(dst))
    from oldphoto.tasks.review import read_decision_files
    stored = read_decision_files(str(dst), decision_files(str(dst)))
    assert len(stored) == len(answered), "one stored row per answered request"
    assert {r["reviewer"] for r in stored} == {"anna", "bo"}
    assert rows["d.jpg"]["reviewer"] == "anna" and rows["e.png"]["reviewer"] == "bo"


def test_folding_while_parts_arrive_keeps_every_decision(tmp_path):
    from oldphoto.tasks.review import append_decision

    dst = str(tmp_path)
    for i in range(5):
        append_decision(dst, {"key": f"{i}.png", "decision": "accept", "note": "", "settings": "{}", "reviewer": "x",
                              "model_version": "m", "restored_at": None})
    files = decision_files(dst)
    assert fold_decisions(dst) == 5 and len(decision_files(dst)) == 1
    append_decision(dst, {"key": "0.png", "decision": "reject", "note": "", "settings": "{}", "reviewer": "y",
                          "model_version": "m", "restored_at": None})
    assert fold_decisions(dst) == 0, "one part alone is not worth a fold"
    rows = read_decisions(dst)
    assert len(rows) == 5 and rows["0.png"]["decision"] == "reject" and rows["4.png"]["decision"] == "accept"
    assert not files & decision_files(dst)


def test_a_token_is_required_off_loopback(archive):
    _, dst = archive
    with server(dst, host="0.0.0.0", env={"OLDPHOTO_REVIEW_TOKEN": "s3cret-token-for-tests"}) as (base, lines):
        assert "s3cret" not in "".join(lines), "a token the user set is not echoed"
        assert httpx.get(f"{base}/api/items").status_code == 401
        assert httpx.get(f"{base}/").status_code == 401
        assert decide(base, "a.png", "accept").status_code == 401
        assert httpx.get(f"{base}/api/items", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert httpx.get(f"{base}/api/items", headers={"Authorization": "Bearer s3cret-token-for-tests"}).status_code == 200
        with httpx.Client(base_url=base, follow_redirects=True) as browser:
            opened = browser.get("/", params={"token": "s3cret-token-for-tests"})
            assert opened.status_code == 200 and str(opened.url) == f"{base}/", "the token leaves the address bar"
            assert "s3cret" not in opened.text
            assert browser.get("/api/items").status_code == 200, "the cookie carries it"
    with server(dst, host="0.0.0.0") as (base, lines):
        printed = "".join(lines)
        assert "?token=" in printed, "a generated token is printed once"
        token = printed.split("?token=")[1].split()[0]
        assert httpx.get(f"{base}/api/items").status_code == 401
        assert httpx.get(f"{base}/api/items", headers={"Authorization": f"Bearer {token}"}).status_code == 200


def test_review_over_s3_serves_no_credentials(bucket, model, tmp_path):
    import boto3

    s3 = boto3.client("s3", endpoint_url=os.environ["OLDPHOTO_S3_ENDPOINT_URL"])
    for i in range(2):
        s3.put_object(Bucket=bucket.removeprefix("s3://"), Key=f"scans/{i}.png", Body=save(picture(40, 48, i), "PNG"))
    restore(f"{bucket}/scans", f"{bucket}/restored", model)
    with server(f"{bucket}/restored") as (base, lines):
        assert f"originals: {bucket}/scans" in lines[0]
        assert items(base)["counts"]["undecided"] == 2
        assert decide(base, "1.png", "reject", note="too dark").status_code == 200
        seen = httpx.get(f"{base}/").text + json.dumps(items(base)) + httpx.get(f"{base}/api/item", params={"key": "0.png"}).text
        assert os.environ["AWS_SECRET_ACCESS_KEY"] not in seen.replace(f"{bucket}", "")
        assert httpx.get(f"{base}/api/view/before", params={"key": "0.png"}).status_code == 200
    assert read_decisions(f"{bucket}/restored")["1.png"]["note"] == "too dark"


def test_restore_redo_restores_only_those_with_their_settings(archive, model):
    src, dst = archive
    with server(dst) as (base, _):
        decide(base, "a.png", "accept")
        decide(base, "b.png", "reject", note="smeared")
        decide(base, "box/c.png", "redo", settings={"scratch": "off", "colour": "restore"})
    before = read_manifest(str(dst))
    untouched = {k: ((dst / k).read_bytes(), (dst / k).stat().st_mtime_ns) for k in KEYS if k != "b.png"}

    summary = restore(str(src), str(dst), model, redo="rejected")
    assert (summary["images"], summary["restored"], summary["skipped"]) == (1, 1, 0)
    after = read_manifest(str(dst))
    assert after["b.png"]["restored_at"] > before["b.png"]["restored_at"]
    assert {k: ((dst / k).read_bytes(), (dst / k).stat().st_mtime_ns) for k in untouched} == untouched
    assert all(after[k] == before[k] for k in before if k != "b.png"), "no other manifest row changed"

    summary = restore(str(src), str(dst), model, redo="redo")
    assert summary["restored"] == 1
    after = read_manifest(str(dst))
    assert json.loads(after["box/c.png"]["settings"]) == {"scratch": "off", "colour": "restore"}
    assert after["box/c.png"]["damaged"] == 0.0, "restored with scratch off: nothing marked"
    with server(dst) as (base, _):
        states = {i["key"]: i["state"] for i in items(base)["items"]}
        assert (states["a.png"], states["b.png"], states["box/c.png"]) == ("accept", "undecided", "undecided"), \
            "a new restoration is undecided; the accepted one keeps its decision"
    assert restore(str(src), str(dst), model, redo="rejected")["images"] == 0, "nothing rejected any more"


def _browser():
    """Debian's chromium and chromium-driver (the test set-up installs them: .ci/browser)."""
    webdriver = pytest.importorskip("selenium.webdriver")
    driver, chromium = shutil.which("chromedriver"), shutil.which("chromium") or shutil.which("chromium-browser")
    if not driver or not chromium:
        pytest.skip("chromium and chromium-driver are not installed and could not be (.ci/browser: no root or no packages)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,900"):
        options.add_argument(argument)
    return webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver))


def test_a_curator_works_through_the_page_in_a_real_browser(archive):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    _, dst = archive
    browser = _browser()
    wait = WebDriverWait(browser, 15)
    try:
        with server(dst) as (base, _):
            browser.get(base)
            cards = wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#grid .card"))
            assert [c.get_attribute("data-key") for c in cards] == sorted(KEYS)
            cards[1].click()  # b.png
            wait.until(ec.text_to_be_present_in_element((By.ID, "item-key"), "b.png"))
            after = wait.until(lambda b: b.find_element(By.CSS_SELECTOR, "#after-layer img"))
            wait.until(lambda b: b.execute_script("return arguments[0].complete && arguments[0].naturalWidth", after))
            slider = browser.find_element(By.ID, "slider")
            browser.execute_script("arguments[0].value = 80; arguments[0].dispatchEvent(new Event('input'))", slider)
            assert "80%" in browser.find_element(By.ID, "after-layer").value_of_css_property("clip-path")
            browser.find_element(By.ID, "show-mask").click()
            wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#mask-layer img"))
            browser.find_element(By.ID, "zoom").click()
            wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#after-layer img.tile"))
            note = browser.find_element(By.ID, "note")
            note.send_keys("the face is smeared")
            browser.find_element(By.ID, "reject").click()
            wait.until(ec.text_to_be_present_in_element((By.ID, "item-key"), "box/c.png"))  # moves on
            assert read_decisions(str(dst))["b.png"]["note"] == "the face is smeared"
            browser.find_element(By.TAG_NAME, "body").send_keys("a")  # keyboard: accept box/c.png
            wait.until(ec.text_to_be_present_in_element((By.ID, "item-key"), "d.jpg"))
            browser.find_element(By.TAG_NAME, "body").send_keys("u")  # undo: box/c.png undecided again
            wait.until(ec.text_to_be_present_in_element((By.ID, "item-key"), "box/c.png"))
            assert wait.until(lambda b: read_decisions(str(dst))["box/c.png"]["decision"] == "undecided")
        with server(dst) as (base, _):  # a new server: the decision is still there, on the page
            browser.get(base)
            wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#filters button"))
            browser.find_element(By.CSS_SELECTOR, "#filters button[data-filter=rejected]").click()
            card = wait.until(lambda b: b.find_element(By.CSS_SELECTOR, "#grid .card[data-key='b.png']"))
            assert "reject" in card.text
            assert browser.find_element(By.CSS_SELECTOR, "#filters button[data-filter=rejected]").text == "rejected 1"
    finally:
        browser.quit()


def test_a_decision_on_a_row_of_an_older_manifest_holds_across_reruns(tmp_path):
    """Manifests written before `restored_at` existed: the run's finish time stands for it, and a
    rerun that skips the item keeps that, so the curator's decision keeps holding."""
    from datetime import datetime, timedelta, timezone

    from oldphoto.tasks.restore import read_manifest, record_skipped, restored_at
    from oldphoto.tasks.review import current_decision

    then = datetime(2026, 1, 2, tzinfo=timezone.utc)
    old = {"key": "a.png", "size": 1, "sha256": "0", "stamp": "1:1", "status": "restored", "reason": None,
           "output_key": "a.png", "model_name": "m", "model_version": "v", "seconds": 1.0, "finished_at": then}
    decision = {"decision": "accept", "restored_at": restored_at(old)}
    record_skipped.fn(str(tmp_path), {"a.png": old}, "rerun")
    skipped = read_manifest(str(tmp_path))["a.png"]
    assert skipped["finished_at"] > then and skipped["restored_at"] == then
    assert current_decision(skipped, decision) == "accept"
    assert current_decision(skipped | {"restored_at": then + timedelta(days=1)}, decision) == "undecided"
