"""The web console in a real browser (headless Chromium): what a musician sees and does on it,
and the session folder's index.html opened from disk."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest
from browser import chromium, page_errors, wait_for
from conftest import pools_full, write_config
from helpers import Daemon

#: A hat whose clips take a while (many sampling steps), so its pool level and a job's progress
#: visibly move on the page while the test watches.
SLOW_HAT = """
[instruments.hat]
model = "m"
pool = 3
steps = 400
"""


@pytest.fixture
def browser() -> Any:
    driver = chromium()
    yield driver
    driver.quit()


def _levels(driver: Any) -> dict[str, tuple[int, int]]:
    """Each pad's pool level as the page shows it: (ready, target)."""
    levels = driver.execute_script("""
        const out = {};
        for (const pad of document.querySelectorAll('#pads .pad[data-instrument]')) {
          const level = pad.querySelector('.level');
          out[pad.dataset.instrument] = [Number(level.dataset.ready), Number(level.dataset.target)];
        }
        return out;""")
    return {name: (ready, target) for name, (ready, target) in levels.items()}


def _clip_names(driver: Any) -> list[str]:
    return driver.execute_script("return [...document.querySelectorAll('#clips li.clip')].map(li => li.dataset.name)")


def test_console_shows_pools_live_and_a_pad_adds_its_clip(tmp_path: Path, tiny_model: Path, start_daemon,
                                                           browser: Any) -> None:
    config = write_config(tmp_path / "c.toml", tiny_model, pool=3, instruments=("kick", "snare"), extra=SLOW_HAT)
    daemon, client = start_daemon(config)
    browser.get(f"http://127.0.0.1:{daemon.web_port}/")
    wait_for(browser, lambda d: d.find_element("id", "connection").get_attribute("data-state") == "open", 10,
             "the page's WebSocket to open")
    pads = wait_for(browser, lambda d: [p.get_attribute("data-instrument")
                                        for p in d.find_elements("css selector", "#pads .pad")] or None, 10, "pads")
    assert pads == ["kick", "snare", "hat"]

    # live pool levels: the slow hat's pool is seen filling, step by step, to what status says
    seen: set[int] = set()

    def hat_full(d: Any) -> bool:
        ready, target = _levels(d)["hat"]
        seen.add(ready)
        return ready == target == 3

    wait_for(browser, hat_full, 120, "the hat pool to show full")
    assert len(seen) >= 2, f"the page showed the hat pool only at {seen}"
    status = client.wait_until(pools_full(), what="pools to fill")
    wait_for(browser, lambda d: _levels(d) == {n: (i["ready"], i["target"]) for n, i in status["instruments"].items()},
             5, "the page's levels to match status")

    # a click on a pad makes a new clip appear at the top of the list within a second
    before = set(_clip_names(browser))
    pad = browser.find_element("css selector", '#pads .pad[data-instrument="hat"]')
    clicked = time.monotonic()
    pad.click()
    newest = wait_for(browser, lambda d: (names := _clip_names(d)) and names[0] not in before and names[0], 1.0,
                      "the played clip on the page")
    took = time.monotonic() - clicked
    session = daemon.session_dir()
    assert (session / newest).is_file() and newest.endswith("-hat.wav"), newest
    # and the hat's level shows the hole the play left, then the refill
    wait_for(browser, lambda d: _levels(d)["hat"][0] < 3, 5, "the hat level to drop")
    wait_for(browser, lambda d: _levels(d)["hat"][0] == 3, 60, "the hat level to refill")
    if os.environ.get("GENBRIDGE_SCREENSHOT"):  # make screenshot: the README's picture
        client.send("/genbridge/drum/play", "kick", 110)
        client.send("/genbridge/drum/play", "snare", 90)
        wait_for(browser, lambda d: len(_clip_names(d)) >= 3, 5, "clips for the screenshot")
        time.sleep(1.0)  # waveforms drawn: a picture, not a check
        browser.save_screenshot(os.environ["GENBRIDGE_SCREENSHOT"])
    assert not page_errors(browser), page_errors(browser)
    print(f"click to clip on the page: {took * 1000:.0f} ms")


def test_a_jobs_progress_bar_moves_and_cancel_stops_it(tmp_path: Path, tiny_model: Path, start_daemon,
                                                       browser: Any) -> None:
    config = write_config(tmp_path / "c.toml", tiny_model, pool=1, instruments=("kick", "snare"), extra=SLOW_HAT)
    daemon, client = start_daemon(config)
    client.wait_until(pools_full(), what="pools to fill")
    browser.get(f"http://127.0.0.1:{daemon.web_port}/")
    wait_for(browser, lambda d: d.find_elements("css selector", '#pads .generate[data-instrument="hat"]'), 10,
             "the hat's generate button")
    count = browser.find_element("id", "generate-count")
    count.clear()
    count.send_keys("6")
    browser.find_element("css selector", '#pads .generate[data-instrument="hat"]').click()
    job = wait_for(browser, lambda d: d.find_elements("css selector", "#jobs .job[data-job-id]"), 10, "the job")[0]
    job_id = int(job.get_attribute("data-job-id"))
    values: list[float] = []

    def progressed(d: Any) -> bool:
        value = d.execute_script(f"const p = document.querySelector('#jobs .job[data-job-id=\"{job_id}\"] progress');"
                                 "return p ? p.value : null;")
        if value is not None:
            values.append(float(value))
        return len({v for v in values if 0 < v < 1}) >= 2

    wait_for(browser, progressed, 60, "the progress bar to move")
    assert values == sorted(values), values  # forward only
    browser.find_element("css selector", f'#jobs .job[data-job-id="{job_id}"] button.cancel').click()
    wait_for(browser, lambda d: not d.find_elements("css selector", f'#jobs .job[data-job-id="{job_id}"]'), 10,
             "the cancelled job to leave the list")
    status = client.status()
    assert status["jobs"]["list"] == []
    made = len([p for p in daemon.session_dir().glob("*-hat.wav")])
    assert 1 <= made < 6, made  # some were made, the cancel dropped the rest
    assert not page_errors(browser), page_errors(browser)


def test_the_session_index_plays_every_clip_from_disk(tmp_path: Path, tiny_model: Path, start_daemon,
                                                      browser: Any) -> None:
    daemon, client = start_daemon(write_config(tmp_path / "c.toml", tiny_model, pool=2))
    client.wait_until(pools_full(), what="pools to fill")
    for name in ("kick", "snare", "hat", "kick"):
        client.request("/genbridge/drum/play", name, reply="/genbridge/drum/played")
    client.send("/genbridge/drum/generate", "snare", 2, 7)
    client.expect("/genbridge/job/started")
    for _ in range(2):
        client.expect("/genbridge/drum/ready")
    client.expect("/genbridge/job/done")
    session = daemon.session_dir()
    wavs = sorted(p.name for p in session.glob("*.wav"))
    assert len(wavs) == 6
    index = session / "index.html"

    def listed(d: Any) -> list[str] | None:
        d.get(index.as_uri())
        names = d.execute_script("return [...document.querySelectorAll('li.clip')].map(li => li.dataset.name)")
        return names if sorted(names) == wavs else None

    wait_for(browser, listed, 10, "index.html to list every clip")
    # every <audio> loads its WAV from disk: the browser reads its header and length
    durations = browser.execute_async_script("""
        const done = arguments[arguments.length - 1];
        const players = [...document.querySelectorAll('li.clip audio')];
        Promise.all(players.map(a => new Promise(ok => {
          if (a.readyState >= 1) return ok(a.duration);
          a.addEventListener('loadedmetadata', () => ok(a.duration), {once: true});
          a.addEventListener('error', () => ok(-1), {once: true});
          a.preload = 'metadata'; a.load();
        }))).then(done);""")
    assert len(durations) == 6 and all(abs(d - 4096 / 22050) < 0.01 for d in durations), durations


def test_serve_opens_the_console_on_port_9080_by_default(tmp_path: Path, tiny_model: Path, browser: Any) -> None:
    """The README's run command with no port given: the page on 127.0.0.1:9080 shows the three
    default instruments."""
    import socket

    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", 9080)) == 0:
            pytest.skip("something else listens on 127.0.0.1:9080")
    daemon = Daemon(tmp_path / "out", write_config(tmp_path / "c.toml", tiny_model, pool=1), own_web_port=False)
    try:
        daemon.wait_for_ping()
        assert "web console on http://127.0.0.1:9080/" in daemon.log()
        browser.get("http://127.0.0.1:9080/")
        pads = wait_for(browser, lambda d: [p.get_attribute("data-instrument")
                                            for p in d.find_elements("css selector", "#pads .pad")] or None, 10, "pads")
        assert pads == ["kick", "snare", "hat"]
    finally:
        daemon.stop()
